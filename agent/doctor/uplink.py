"""Doctor's uplink checks: DNS, TCP, TLS and authentication, each on its own, so the first one
that fails says where the path to the server breaks.

The authentication check sends a real write that stores nothing: the configured encoder's
encoding of zero readings (an empty body for line protocol, a ``count: 0`` batch for JSON),
through the product's own HttpSink -- same session (``trust_env`` off, TLS verified, redirects
never followed), same Authorization header, same token loading. What the servers answer to it
(read in their sources, and VictoriaMetrics tried):

- VictoriaMetrics ``/write`` and ``/api/v2/write``: 204; 401 with ``-httpAuth.*`` or vmauth and a
  wrong or missing token.
- InfluxDB 1.x ``/write``: 204 (nothing parsed, nothing written) after the database lookup (404
  "database not found") and the authorisation (401 bad credentials, 403 no or unauthorised user).
- InfluxDB 2.x ``/api/v2/write``: 400 ``{"code":"invalid","message":"writing requires points"}``,
  but only after the token (401), the org and bucket (404) and the write permission (403) were
  checked -- so that 400 is a PASS.
- Telegraf ``http_listener_v2`` / ``influxdb_listener``: 204 (no metrics), 401 with basic auth.
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
    exposure,
    looks_like_token,
    read_token,
    token_path,
)
from agent.core.errors import ConfigError, describe
from agent.doctor.report import Check, Status
from agent.uplink.sinks import Failure, Reply
from agent.uplink.worker import build_sink

Address = tuple[int, Any]  # (family, sockaddr) from getaddrinfo
CERT_WARN_DAYS = 14  # a certificate expiring sooner is a WARN: someone must renew it
INFLUX2_EMPTY = "writing requires points"  # InfluxDB 2's answer to an empty write, after auth


def check_uplink(config: Config, environ: Mapping[str, str], token_source: Path) -> list[Check]:
    settings = config.uplink
    assert settings is not None
    parts = urlsplit(settings.url)
    host, https = parts.hostname or "", parts.scheme.lower() == "https"
    port = parts.port or (443 if https else 80)
    path, origin = _token_source(settings, environ, token_source)
    token = None if path is None else check_token_file(path, origin)
    dns, addresses = _dns(host, port)
    checks = ([] if token is None else [token]) + [dns]
    if not addresses:
        return checks + _skipped(("tcp", "tls", "auth"), "name resolution failed")
    tcp, sock = _tcp(host, port, addresses, settings.connect_timeout)
    checks.append(tcp)
    if sock is None:
        return checks + _skipped(("tls", "auth"), "no TCP connection")
    with sock:
        if https:
            tls = _tls(sock, host, settings)
        else:
            tls = Check("uplink tls", Status.SKIP, "plain http to this machine "
                        "(allow_insecure_http): nothing to check")
    checks.append(tls)
    if tls.status is Status.FAIL:
        return checks + _skipped(("auth",), "no TLS session")
    return checks + [_auth(config, settings, environ, token_source)]


def _skipped(names: tuple[str, ...], why: str) -> list[Check]:
    return [Check(f"uplink {n}", Status.SKIP, f"not tried: {why}") for n in names]


def _dns(host: str, port: int) -> tuple[Check, list[Address]]:
    try:
        ipaddress.ip_address(host)
        literal = True
    except ValueError:
        literal = False
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        return Check("uplink dns", Status.FAIL, f"cannot resolve {host}: {reason}",
                     "check the host name in uplink.url, and this unit's DNS: "
                     "resolvectl status (or /etc/resolv.conf)"), []
    addresses: list[Address] = list(dict.fromkeys(
        (int(family), sockaddr) for family, _, _, _, sockaddr in infos))
    if literal:
        return Check("uplink dns", Status.PASS, f"{host} is an address: no lookup needed"), \
            addresses
    shown = ", ".join(str(a[1][0]) for a in addresses[:3])
    return Check("uplink dns", Status.PASS, f"{host} is {shown}"), addresses


def _tcp(host: str, port: int, addresses: list[Address],
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
            return Check("uplink tcp", Status.PASS, f"connected to {sockaddr[0]} port {port} "
                         f"in {took:.0f} ms"), sock
        sock.close()
    refused = any("refused" in e.lower() for e in errors)
    hint = (f"is the server running and listening on port {port}?" if refused else
            f"a firewall may drop port {port}, or the server is down; check the port in "
            "uplink.url")
    return Check("uplink tcp", Status.FAIL, f"cannot connect to {host} port {port}: "
                 + "; ".join(errors), hint), None


def _tls(sock: socket.socket, host: str, settings: UplinkConfig) -> Check:
    """A verified handshake, as the uplink's session does it (requests' CA bundle unless
    uplink.ca_file), and the certificate's expiry."""
    try:
        context = ssl.create_default_context(cafile=str(settings.ca_file or
                                                         DEFAULT_CA_BUNDLE_PATH))
        if settings.client_cert is not None:
            context.load_cert_chain(settings.client_cert, settings.client_key)
    except (OSError, ssl.SSLError) as exc:
        return Check("uplink tls", Status.FAIL, f"cannot load the CA or client certificate: "
                     f"{_ssl_reason(exc)}", "check uplink.ca_file, client_cert and client_key")
    try:
        with context.wrap_socket(sock, server_hostname=host) as tls:
            cert, version = tls.getpeercert() or {}, tls.version()
    except ssl.SSLCertVerificationError as exc:
        return Check("uplink tls", Status.FAIL, f"the server's certificate is not trusted: "
                     f"{exc.verify_message}", "set uplink.ca_file to the CA that signed it "
                     "(verification is never turned off)")
    except (OSError, ssl.SSLError) as exc:
        return Check("uplink tls", Status.FAIL, f"TLS handshake failed: {_ssl_reason(exc)}",
                     "is the port in uplink.url an https port?")
    expires = cert.get("notAfter")
    if not isinstance(expires, str):
        return Check("uplink tls", Status.PASS, f"{version}, certificate verified")
    days = (ssl.cert_time_to_seconds(expires) - time.time()) / 86400
    detail = f"{version}, certificate verified, valid until {expires}"
    if days < CERT_WARN_DAYS:
        return Check("uplink tls", Status.WARN, f"{detail} ({days:.0f} days left)",
                     "ask the server's administrator to renew its certificate")
    return Check("uplink tls", Status.PASS, detail)


def _ssl_reason(exc: OSError) -> str:
    """OpenSSL's reason in words (``WRONG_VERSION_NUMBER`` -> ``wrong version number``), or the
    file and what is wrong with it, never ``[SSL: ...] ... (_ssl.c:1006)``."""
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason).lower().replace("_", " ")
    return describe(exc)


def _auth(config: Config, settings: UplinkConfig, environ: Mapping[str, str],
          token_source: Path) -> Check:
    try:
        check_environment(environ)  # `envagent run` refuses to start with a token there
    except ConfigError as exc:
        return Check("uplink auth", Status.FAIL, exc.problems[0], None)
    path, origin = _token_source(settings, environ, token_source)
    token: Secret | None = None
    # a token pasted in place of the file's name is never repeated (credentials.read_token)
    named = None if path is None else (f"{origin}, whose value looks like a token (not repeated "
                                       "here)" if looks_like_token(path) else f"{path} ({origin})")
    if path is not None:
        if path.exists() and not os.access(path, os.R_OK):
            return Check("uplink auth", Status.WARN, f"cannot read the token file {named} as "
                         "this user: authentication not tested",
                         "run it as root: sudo envagent doctor")
        try:
            token = read_token(path)
        except CredentialError as exc:
            return Check("uplink auth", Status.FAIL, str(exc), None)
    reply = _probe(config, settings, token)
    return judge(reply, named)


def _token_source(settings: UplinkConfig, environ: Mapping[str, str],
                  token_source: Path) -> tuple[Path | None, str]:
    """The token file the agent would read, and where that name comes from."""
    path, origin = token_path(settings.token_file, environ), "uplink.token_file"
    if settings.token_file is None and path is not None:
        origin = "$CREDENTIALS_DIRECTORY"
    if path is None and token_source.exists():
        path, origin = token_source, "the service's LoadCredential= file"
    return path, origin


def check_token_file(path: Path, origin: str) -> Check | None:
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
        return Check("uplink token", Status.SKIP, f"not checked: cannot look at {path} "
                     f"({origin}): {exc.strerror or type(exc).__name__}")
    exposed = exposure(path, mode)
    if exposed is not None:
        return Check("uplink token", Status.WARN, f"{exposed} ({origin})",
                     f"sudo chmod 600 {path}: the service reads it as its owner (or through "
                     "LoadCredential=, as root)")
    return Check("uplink token", Status.PASS, f"{path} ({origin}) can be read by its owner "
                 f"only (mode {stat.S_IMODE(mode):04o})")


def _probe(config: Config, settings: UplinkConfig, token: Secret | None) -> Reply:
    sink = build_sink(config, settings)
    try:
        return sink.post(sink.encode([]), token)
    finally:
        sink.close()


def judge(reply: Reply, token: str | None) -> Check:
    """What the answer to the empty write says; ``token`` names where the token came from."""
    name, status, said = "uplink auth", reply.status, reply.describe()
    with_token = f"with the token from {token}" if token else "without a token"
    if status is None:
        hint = ("set uplink.ca_file to the CA that signed it" if reply.failure is
                Failure.TLS_VERIFY else "see the tcp and tls checks; is it the right URL?")
        return Check(name, Status.FAIL, f"the empty write got no answer: {said}", hint)
    if 200 <= status < 300 or (status == 400 and INFLUX2_EMPTY in reply.text):
        return Check(name, Status.PASS, f"an empty write {with_token} was accepted ({said}); "
                     "nothing was stored")
    if status in (401, 403):
        hint = ("put a valid token with write permission in that file; the agent re-reads "
                "it every uplink.auth_retry, no restart needed") if token else (
                "install the token: /etc/envagent/upload-token (the service's credential) "
                "or uplink.token_file")
        return Check(name, Status.FAIL, f"the server refused a write {with_token}: {said}",
                     hint)
    if status == 404:
        return Check(name, Status.FAIL, f"no such write endpoint, database or bucket: {said}",
                     "check the path and the db=, bucket= and org= of uplink.url")
    if 300 <= status < 400:
        return Check(name, Status.FAIL, f"the server redirects writes, which are never "
                     f"followed: {said}", "set uplink.url to the final address")
    if status >= 500 or status in (408, 429):
        return Check(name, Status.WARN, f"the server is in trouble: {said}",
                     "delivery retries by itself; if this lasts, check the server")
    return Check(name, Status.WARN, f"unexpected answer to an empty write: {said}",
                 "check uplink.url and uplink.format against the server's documentation")
