"""A real Mosquitto for the MQTT tests: Debian's ``mosquitto``, on loopback, with a password file,
a TLS listener whose certificate comes from a throwaway CA made here (the ``openssl`` command),
and a second TLS listener that takes client certificates instead of passwords.

:func:`start` writes the broker's configuration and files into a directory and starts it;
:meth:`Mosquitto.restart` stops it (SIGTERM: it saves its persistence file) and starts it again
on the same ports, as a broker restart in the field. Persistence is on and the per-client queue
unbounded (``max_queued_messages 0``), so a subscriber with a persistent session loses nothing
across a restart -- whatever the agent delivered is then the broker's to keep.

With ``CI=true`` a missing ``mosquitto`` or ``openssl`` fails the test (``.ci/run`` installs the
package); elsewhere it skips, as tests/victoriametrics.py does.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent_process import require

BINARY = "mosquitto"
BINARY_ENV = "ENVAGENT_MOSQUITTO"  # an explicit path to the binary, if not on PATH
PASSWD = "mosquitto_passwd"
MISSING = "mosquitto (or openssl) is not installed: .ci/run installs it"
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0
USER, PASSWORD = "envagent", "field-unit-7"
SUBSCRIBER, SUBSCRIBER_PASSWORD = "dashboard", "fleet-view-3"


def find_binary() -> str | None:
    explicit = os.environ.get(BINARY_ENV)
    found = shutil.which(explicit) if explicit else (shutil.which(BINARY)
                                                     or shutil.which(f"/usr/sbin/{BINARY}"))
    return found if found and shutil.which("openssl") else None


def require_binary() -> str:
    """The broker's path; skips the test locally without it, fails it in CI."""
    return require(find_binary(), MISSING, "mosquitto is not installed (apt-get install "
                   f"mosquitto, or set {BINARY_ENV})")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _openssl(*args: str | Path, cwd: Path) -> None:
    subprocess.run(["openssl", *map(str, args)], cwd=cwd, check=True, capture_output=True,
                   timeout=60)


def make_ca(directory: Path) -> None:
    """A throwaway CA (``ca.crt``), a server certificate for localhost and 127.0.0.1
    (``server.crt``, ``server.key``) and a client certificate (``client.crt``, ``client.key``,
    CN ``envagent-client``), all P-256, with the extensions strict verifiers ask for."""
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "60",
             "-subj", "/CN=envagent test CA", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)
    for name, cn, usage, san in (
            ("server", "localhost", "serverAuth", "subjectAltName=DNS:localhost,IP:127.0.0.1\n"),
            ("client", "envagent-client", "clientAuth", "")):
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={cn}", cwd=directory)
        (directory / f"{name}.ext").write_text(
            san + "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
            f"extendedKeyUsage={usage}\nauthorityKeyIdentifier=keyid\n"
            "subjectKeyIdentifier=hash\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.crt", "-days", "30", "-extfile",
                 f"{name}.ext", cwd=directory)
    for key in ("ca.key", "server.key", "client.key"):
        (directory / key).chmod(0o600)


@dataclass
class Mosquitto:
    """A running broker: ``port`` plain (password), ``tls_port`` TLS (password), ``mtls_port``
    TLS with a client certificate (its CN is the user name)."""

    binary: str
    directory: Path
    port: int
    tls_port: int
    mtls_port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def tls_url(self) -> str:
        return f"mqtts://localhost:{self.tls_port}"

    @property
    def ca(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def log_path(self) -> Path:
        return self.directory / "mosquitto.log"

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [self.binary, "-c", str(self.directory / "mosquitto.conf")],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            if all(_listening(p) for p in (self.port, self.tls_port, self.mtls_port)):
                return
            time.sleep(0.05)
        tail = self.log_path.read_text(errors="replace")[-2000:]
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on {self.port} (exit code "
                           f"{self.process.poll()}); its log ends:\n{tail}")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def start(binary: str, directory: Path, *, acl: str | None = None,
          max_packet_size: int = 0) -> Mosquitto:
    """Write the broker's files into ``directory`` and start it; ``acl``: the text of an ACL
    file (every user may do anything without one); ``max_packet_size``: the largest packet it
    takes, announced in CONNACK (0: no limit). (Mosquitto 2.0.11 closes the connection of a v5
    client over a message above ``message_size_limit`` or a retained status topic its ACL
    denies, without a reason code: a client can only retry.)"""
    directory.mkdir(parents=True, exist_ok=True)
    make_ca(directory)
    passwords = directory / "passwords"
    passwords.write_text("")
    for user, password in ((USER, PASSWORD), (SUBSCRIBER, SUBSCRIBER_PASSWORD)):
        subprocess.run([shutil.which(PASSWD) or PASSWD, "-b", str(passwords), user, password],
                       check=True, capture_output=True, timeout=30)
    passwords.chmod(0o600)
    acl_file = None
    if acl is not None:
        acl_file = directory / "acl"
        acl_file.write_text(acl)
    broker = Mosquitto(binary, directory, free_port(), free_port(), free_port())
    for attempt in range(3):  # a free port may be taken between choosing and binding it
        _write_config(broker, passwords, acl_file, max_packet_size)
        try:
            broker.start()
            return broker
        except RuntimeError:
            if attempt == 2:
                raise
            broker.port, broker.tls_port, broker.mtls_port = free_port(), free_port(), free_port()
    raise AssertionError("unreachable")


def _write_config(broker: Mosquitto, passwords: Path, acl_file: Path | None,
                  max_packet_size: int) -> None:
    directory = broker.directory
    lines = [
        "per_listener_settings true",
        f"persistence true\npersistence_location {directory}/\nautosave_interval 1",
        "max_queued_messages 0\nmax_inflight_messages 20",
        f"log_dest file {broker.log_path}\nlog_type error\nlog_type warning\nlog_type notice",
        f"max_packet_size {max_packet_size}" if max_packet_size else "",
        "user root" if os.geteuid() == 0 else "",
    ]
    for port, tls, mtls in ((broker.port, False, False), (broker.tls_port, True, False),
                            (broker.mtls_port, True, True)):
        lines.append(f"listener {port} 127.0.0.1")
        if tls:
            lines.append(f"certfile {directory}/server.crt\nkeyfile {directory}/server.key\n"
                         f"cafile {directory}/ca.crt")
        if mtls:
            lines.append("require_certificate true\nuse_identity_as_username true\n"
                         "allow_anonymous false")
        else:
            lines.append(f"allow_anonymous false\npassword_file {passwords}")
        if acl_file is not None:
            lines.append(f"acl_file {acl_file}")
    (directory / "mosquitto.conf").write_text("\n".join(lines) + "\n")


# --- a subscriber ------------------------------------------------------------------------------


@dataclass
class Received:
    """What a subscriber got: every JSON batch's readings by id (each id's distinct bodies),
    every message's topic, the status topic's values in order."""

    readings: dict[str, set[bytes]] = field(default_factory=dict)
    topics: list[str] = field(default_factory=list)
    statuses: list[tuple[str, bytes, bool]] = field(default_factory=list)
    payloads: list[tuple[str, bytes]] = field(default_factory=list)
    messages: int = 0


class Subscriber:
    """A dashboard's client: MQTT 5, QoS 1, a persistent session (so the broker keeps what
    arrives while it is away, restarts included), reconnecting by itself."""

    def __init__(self, broker: Mosquitto, topic: str = "#", *,
                 client_id: str = "test-dashboard") -> None:
        from paho.mqtt.client import CallbackAPIVersion, Client, MQTTv5

        self.received = Received()
        self.lock = threading.Lock()
        self.connected = threading.Event()
        self._topic = topic
        self.client = Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=MQTTv5)
        self.client.username_pw_set(SUBSCRIBER, SUBSCRIBER_PASSWORD)
        self.client.reconnect_delay_set(1, 1)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_disconnect = lambda *args: self.connected.clear()
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = 3600
        self.client.connect("127.0.0.1", broker.port, keepalive=10, clean_start=False,
                            properties=properties)
        self.client.loop_start()
        if not self.connected.wait(10):
            raise RuntimeError(f"the subscriber could not connect:\n{broker.log_tail()}")

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        if reason.value == 0:
            client.subscribe(self._topic, qos=1)
            self.connected.set()

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        topic, payload = message.topic, bytes(message.payload)
        with self.lock:
            got = self.received
            got.messages += 1
            got.topics.append(topic)
            if topic.endswith("/status"):
                got.statuses.append((topic, payload, bool(message.retain)))
                return
            got.payloads.append((topic, payload))
            with contextlib.suppress(ValueError, KeyError, TypeError):
                document = json.loads(payload)
                for item in document["readings"]:
                    body = json.dumps(item, ensure_ascii=False, separators=(",", ":")).encode()
                    got.readings.setdefault(item["id"], set()).add(body)

    def ids(self) -> set[str]:
        with self.lock:
            return set(self.received.readings)

    def wait_for(self, what: str, test: Callable[[Received], bool],
                 timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                if test(self.received):
                    return
            if time.monotonic() > deadline:
                raise AssertionError(f"not within {timeout:g} s: {what}")
            time.sleep(0.1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@contextlib.contextmanager
def subscribed(broker: Mosquitto, topic: str = "#", **kwargs: Any) -> Iterator[Subscriber]:
    subscriber = Subscriber(broker, topic, **kwargs)
    try:
        yield subscriber
    finally:
        subscriber.close()
