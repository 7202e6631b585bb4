"""Doctor's uplink checks: the token file, then DNS, TCP, TLS and authentication, each on its own,
so the first one that fails says where the path to the server breaks.

Every transport is checked through the registry (agent.uplink.transports) by its URL's scheme:
the transport says where it connects and whether TLS is checked there (its ``endpoint``), and
runs the authentication check itself -- an exchange that stores nothing, judged by what that
kind of server answers (its ``check_write``; for HTTP, agent.uplink.http says what each server
answers to an empty write). The token, DNS, TCP and TLS checks are the same for every transport.
Checks are named ``uplink dns`` and so on for the upstream named "default", ``uplink <name>
dns`` for any other.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import ssl
import stat
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from requests.utils import DEFAULT_CA_BUNDLE_PATH

from agent.config import Config, UplinkConfig
from agent.core.credentials import (
    CredentialError,
    Secret,
    check_environment,
    credential_name,
    exposure,
    looks_like_token,
    read_token,
    token_path,
)
from agent.core.errors import ConfigError, describe
from agent.core.reading import DEFAULT_UPSTREAM
from agent.doctor.report import Check, Status
from agent.uplink.sink import Transport
from agent.uplink.transports import transport_for

Address = tuple[int, Any]  # (family, sockaddr) from getaddrinfo
CERT_WARN_DAYS = 14  # a certificate expiring sooner is a WARN: someone must renew it


def check_upstream(config: Config, settings: UplinkConfig, environ: Mapping[str, str],
                   token_source: Path) -> list[Check]:
    """The checks of one upstream, through its transport (see the module docstring)."""
    label = "uplink" if settings.name == DEFAULT_UPSTREAM else f"uplink {settings.name}"
    try:
        transport = transport_for(settings)
    except ConfigError as exc:
        return [Check(label, Status.FAIL, exc.problems[0], "fix uplink.url, then run "
                      "envagent config check")]
    endpoint = transport.endpoint(settings.url)
    host, port = endpoint.host, endpoint.port
    path, origin = _token_source(settings, environ, token_source)
    token = None if path is None else check_token_file(path, origin, label=label)
    dns, addresses = _dns(label, host, port)
    checks = ([] if token is None else [token]) + [dns]
    if not addresses:
        return checks + _skipped(label, ("tcp", "tls", "auth"), "name resolution failed")
    tcp, sock = _tcp(label, host, port, addresses, settings.connect_timeout)
    checks.append(tcp)
    if sock is None:
        return checks + _skipped(label, ("tls", "auth"), "no TCP connection")
    with sock:
        if endpoint.tls:
            tls = _tls(label, sock, host, settings)
        else:
            scheme = urlsplit(settings.url).scheme.lower()
            why = ("HJ 212 has no TLS: protect the link with a private APN or a VPN"
                   if scheme == "hj212" else
                   f"plain {scheme} to this machine (allowed for a loopback host only)")
            tls = Check(f"{label} tls", Status.SKIP, f"{why}: nothing to check")
    checks.append(tls)
    if tls.status is Status.FAIL:
        return checks + _skipped(label, ("auth",), "no TLS session")
    return checks + [_auth(label, transport, config, settings, environ, token_source)]


def _skipped(label: str, names: tuple[str, ...], why: str) -> list[Check]:
    return [Check(f"{label} {n}", Status.SKIP, f"not tried: {why}") for n in names]


def _dns(label: str, host: str, port: int) -> tuple[Check, list[Address]]:
    try:
        ipaddress.ip_address(host)
        literal = True
    except ValueError:
        literal = False
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        return Check(f"{label} dns", Status.FAIL, f"cannot resolve {host}: {reason}",
                     "check the host name in uplink.url, and this unit's DNS: "
                     "resolvectl status (or /etc/resolv.conf)"), []
    addresses: list[Address] = list(dict.fromkeys(
        (int(family), sockaddr) for family, _, _, _, sockaddr in infos))
    if literal:
        return Check(f"{label} dns", Status.PASS, f"{host} is an address: no lookup needed"), \
            addresses
    shown = ", ".join(str(a[1][0]) for a in addresses[:3])
    return Check(f"{label} dns", Status.PASS, f"{host} is {shown}"), addresses


def _tcp(label: str, host: str, port: int, addresses: list[Address],
         timeout: float) -> tuple[Check, socket.socket | None]:
    errors: list[str] = []
    for family, sockaddr in addresses:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        started = time.monotonic()
        try:
            sock.connect(sockaddr)
        except TimeoutError:
            errors.append(f"{sockaddr[0]}: no answer within {timeout:g} s")
        except OSError as exc:
            errors.append(f"{sockaddr[0]}: {exc.strerror or exc}")
        else:
            took = (time.monotonic() - started) * 1000
            return Check(f"{label} tcp", Status.PASS, f"connected to {sockaddr[0]} port {port} "
                         f"in {took:.0f} ms"), sock
        sock.close()
    refused = any("refused" in e.lower() for e in errors)
    hint = (f"is the server running and listening on port {port}?" if refused else
            f"a firewall may drop port {port}, or the server is down; check the port in "
            "uplink.url")
    return Check(f"{label} tcp", Status.FAIL, f"cannot connect to {host} port {port}: "
                 + "; ".join(errors), hint), None


def _tls(label: str, sock: socket.socket, host: str, settings: UplinkConfig) -> Check:
    """A verified handshake, as the uplink's session does it (requests' CA bundle unless
    uplink.ca_file), and the certificate's expiry."""
    try:
        context = ssl.create_default_context(cafile=str(settings.ca_file or
                                                         DEFAULT_CA_BUNDLE_PATH))
        if settings.client_cert is not None:
            context.load_cert_chain(settings.client_cert, settings.client_key)
    except (OSError, ssl.SSLError) as exc:
        return Check(f"{label} tls", Status.FAIL, f"cannot load the CA or client certificate: "
                     f"{_ssl_reason(exc)}", "check uplink.ca_file, client_cert and client_key")
    try:
        with context.wrap_socket(sock, server_hostname=host) as tls:
            cert, version = tls.getpeercert() or {}, tls.version()
    except ssl.SSLCertVerificationError as exc:
        return Check(f"{label} tls", Status.FAIL, f"the server's certificate is not trusted: "
                     f"{exc.verify_message}", "set uplink.ca_file to the CA that signed it "
                     "(verification is never turned off)")
    except (OSError, ssl.SSLError) as exc:
        return Check(f"{label} tls", Status.FAIL, f"TLS handshake failed: {_ssl_reason(exc)}",
                     "is the port in uplink.url an https port?")
    expires = cert.get("notAfter")
    if not isinstance(expires, str):
        return Check(f"{label} tls", Status.PASS, f"{version}, certificate verified")
    days = (ssl.cert_time_to_seconds(expires) - time.time()) / 86400
    detail = f"{version}, certificate verified, valid until {expires}"
    if days < CERT_WARN_DAYS:
        return Check(f"{label} tls", Status.WARN, f"{detail} ({days:.0f} days left)",
                     "ask the server's administrator to renew its certificate")
    return Check(f"{label} tls", Status.PASS, detail)


def _ssl_reason(exc: OSError) -> str:
    """OpenSSL's reason in words (``WRONG_VERSION_NUMBER`` -> ``wrong version number``), or the
    file and what is wrong with it, never ``[SSL: ...] ... (_ssl.c:1006)``."""
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason).lower().replace("_", " ")
    return describe(exc)


def _auth(label: str, transport: Transport, config: Config, settings: UplinkConfig,
          environ: Mapping[str, str], token_source: Path) -> Check:
    try:
        check_environment(environ)  # `envagent run` refuses to start with a token there
    except ConfigError as exc:
        return Check(f"{label} auth", Status.FAIL, exc.problems[0], None)
    path, origin = _token_source(settings, environ, token_source)
    token: Secret | None = None
    # a token pasted in place of the file's name is never repeated (credentials.read_token)
    named = None if path is None else (f"{origin}, whose value looks like a token (not repeated "
                                       "here)" if looks_like_token(path) else f"{path} ({origin})")
    if path is not None:
        if path.exists() and not os.access(path, os.R_OK):
            return Check(f"{label} auth", Status.WARN, f"cannot read the token file {named} as "
                         "this user: authentication not tested",
                         "run it as root: sudo envagent doctor")
        try:
            token = read_token(path, what=settings.secret_name,
                               key=f"uplink.{settings.secret_key}")
        except CredentialError as exc:
            return Check(f"{label} auth", Status.FAIL, str(exc), None)
    verdict = transport.check_write(config, settings, token, named)
    return Check(f"{label} auth", Status(verdict.level), verdict.detail, verdict.hint)


def _token_source(settings: UplinkConfig, environ: Mapping[str, str],
                  token_source: Path) -> tuple[Path | None, str]:
    """The token file the agent would read, and where that name comes from: ``token_source``
    is the default upstream's LoadCredential= file; another upstream's sits beside it under its
    own credential's name (agent.core.credentials.credential_name)."""
    path = token_path(settings.token_file, environ, settings.name)
    origin = f"uplink.{settings.secret_key}"  # token_file, or an HJ 212 or MQTT upstream's
    if settings.token_file is None and path is not None:
        origin = "$CREDENTIALS_DIRECTORY"
    source = token_source.with_name(credential_name(settings.name)) \
        if settings.name != DEFAULT_UPSTREAM else token_source
    if path is None and source.exists():
        path, origin = source, "the service's LoadCredential= file"
    return path, origin


def check_token_file(path: Path, origin: str, *, label: str = "uplink") -> Check | None:
    """WARN when other users can read the token file, by the rule ``run`` warns with
    (credentials.exposure); None when it is missing, or when its name looks like the token
    itself (the auth check says so, without repeating it)."""
    if looks_like_token(path):
        return None
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return None
    except OSError as exc:
        return Check(f"{label} token", Status.SKIP, f"not checked: cannot look at {path} "
                     f"({origin}): {exc.strerror or type(exc).__name__}")
    exposed = exposure(path, mode)
    if exposed is not None:
        return Check(f"{label} token", Status.WARN, f"{exposed} ({origin})",
                     f"sudo chmod 600 {path}: the service reads it as its owner (or through "
                     "LoadCredential=, as root)")
    return Check(f"{label} token", Status.PASS, f"{path} ({origin}) can be read by its owner "
                 f"only (mode {stat.S_IMODE(mode):04o})")
