"""The MQTT transport: each batch published to a broker as QoS 1 messages (agent.uplink.mqtt.
payload), a reading delivered only once the broker's PUBACK for the message carrying it came back.

The outbox stays the truth and MQTT is only the road: paho-mqtt keeps unacknowledged messages in
memory only, so what is not acknowledged when a connection ends is dropped with it -- every
connection is a paho client of its own -- and the worker sends those readings again from the
outbox. How the worker hears it (agent.uplink.sink):

=================================================  ============================================
every message acknowledged (PUBACK 0x00, or 0x10:  delivered
no subscriber yet: the broker took it)
the connection lost, refused, timed out; no        retry, with ``accepted`` = the leading
CONNACK or no PUBACK within read_timeout           readings of acknowledged messages
a refusal: CONNACK or PUBACK or the broker's       its reason code's outcome (agent.uplink.mqtt.
DISCONNECT with a reason code                      reasons): auth, too large, rejected, failed
a message above max_message_bytes or the           too large (before anything is sent): the
broker's Maximum Packet Size                       worker halves the batch
TLS verification failed, an unreadable CA file     failed, with a hint
or client certificate
a stop cut the exchange short                      stopped, with ``accepted`` as above
a packet from the broker above 16 KiB, a           retry, ``accepted`` as above: the
malformed CONNACK (agent.uplink.mqtt.bounds)       connection is closed before paho reads it
=================================================  ============================================

The session: MQTT 5 (reason codes per message, Maximum Packet Size both ways, Receive Maximum --
a 3.1.1 broker acknowledges a message it dropped as if it took it), Clean Start off and a
Session Expiry Interval (``session_expiry``), under one client id per unit and upstream, so a
broker keeps the session across reconnects. The in-flight window is ``max_inflight``, or the
broker's Receive Maximum when smaller. No reconnect of its own: a failed send is the worker's,
which waits its full-jitter backoff (agent.uplink.policy) before the next send connects again.

The status topic (``<status_prefix>/status``): the last will is ``offline``, retained, QoS 1 --
the broker publishes it when the unit vanishes (a power cut, a kill, a lost link past the keep
alive) -- and each connection publishes ``online``, retained. A clean stop disconnects with
reason 0x04 (with will), so the broker says ``offline`` then too. ThingsBoard has no last will;
its own device activity shows a dead unit.

The credentials: one line ``user:password`` (or ``user`` alone; for ThingsBoard the device's
access token, which is the user name), read by the worker like an upload token and given to
each send; never logged, never in an answer's text. paho-mqtt is imported by the first
connection only: a unit without an MQTT upstream never loads it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from agent.config import Config, UplinkConfig
from agent.config.mqtt import DEFAULT_PORTS, STATUS_LEVEL, MqttConfig
from agent.core.credentials import Secret, redact
from agent.core.reading import Reading
from agent.core.timebase import ExternalTime
from agent.uplink.lineprotocol import Epochs
from agent.uplink.mqtt import reasons
from agent.uplink.mqtt.bounds import MAX_PACKET_BYTES, BoundedSocket, install
from agent.uplink.mqtt.payload import Message, MessageEncoder, acknowledged_prefix, unpack
from agent.uplink.mqtt.topics import Topics, status_topic
from agent.uplink.sink import (
    ERROR_TEXT_CHARS,
    NOT_ACKNOWLEDGED,
    Answer,
    Endpoint,
    Outcome,
    Transport,
    Verdict,
)

if TYPE_CHECKING:  # imported by the first connection only (see the module docstring)
    import ssl

    from paho.mqtt.client import Client, ConnectFlags, DisconnectFlags
    from paho.mqtt.properties import Properties
    from paho.mqtt.reasoncodes import ReasonCode

log = logging.getLogger("envagent.uplink.mqtt")

ONLINE, OFFLINE = b"online", b"offline"
DISCONNECT_WITH_WILL = 0x04  # MQTT 5 3.14.2.1: the broker publishes the will
CLOSE_WAIT_S = 2.0  # a clean disconnect's DISCONNECT gets this long to leave
MAX_FILE_BYTES = 256 * 1024  # a CA bundle, certificate or key: read with this bound
# MQTT 5 2.1.4 and 3.3: fixed header (1 + up to 4), topic length (2), packet id (2) and an
# empty property length (1) around a PUBLISH's topic and payload.
PUBLISH_OVERHEAD = 10
TOPIC_ALLOWANCE = 256  # bytes kept for the topic when fitting messages to the broker's limit


class _Connection:
    """One MQTT connection -- one paho client, from CONNECT to its end -- and what its
    callbacks (on paho's network thread) heard, under ``cond``."""

    def __init__(self, client: Client, token: Secret | None) -> None:
        self.client, self.token = client, token
        self.cond = threading.Condition()
        self.connack: tuple[int, str] | None = None
        self.session_present = False
        self.receive_max: int | None = None
        self.max_packet: int | None = None
        self.ended: str | None = None  # why it ended, for people
        self.ended_code: tuple[int, str] | None = None  # the broker's DISCONNECT reason
        self.results: dict[int, tuple[int, str]] = {}  # mid -> PUBACK reason (code, name)
        self.progress = time.monotonic()  # the last answer from the broker
        self.bounded: BoundedSocket | None = None  # what paho reads the broker through
        self.malformed = False  # the broker sent what this agent does not read (bounds)

    @property
    def alive(self) -> bool:
        return self.connack is not None and self.connack[0] == 0 and self.ended is None

    def on_connect(self, client: Client, userdata: Any, flags: ConnectFlags,
                   reason: ReasonCode, properties: Properties | None) -> None:
        with self.cond:
            bounded = self.bounded
            if bounded is None or not bounded.packets.connack_checked \
                    or client.socket() is not bounded:  # read past the bounds: not taken
                self.ended = self.ended or ("paho-mqtt read a CONNACK that envagent did not "
                                            "check (an unsupported paho-mqtt?)")
                self.cond.notify_all()
                return
            self.connack = (reason.value, reason.getName())
            self.session_present = bool(flags.session_present)
            if properties is not None:
                self.receive_max = getattr(properties, "ReceiveMaximum", None)
                self.max_packet = getattr(properties, "MaximumPacketSize", None)
            self.progress = time.monotonic()
            self.cond.notify_all()

    def on_publish(self, client: Client, userdata: Any, mid: int, reason: ReasonCode,
                   properties: Properties | None) -> None:
        with self.cond:
            self.results[mid] = (reason.value, reason.getName())
            self.progress = time.monotonic()
            self.cond.notify_all()

    def on_disconnect(self, client: Client, userdata: Any, flags: DisconnectFlags,
                      reason: ReasonCode, properties: Properties | None) -> None:
        with self.cond:
            if flags.is_disconnect_packet_from_server:
                self.ended_code = (reason.value, reason.getName())
                self.ended = f"the broker disconnected: {reasons.words(*self.ended_code)}"
            else:
                self.ended = self.ended or "the connection was lost"
            self.cond.notify_all()

    def refused(self, what: str) -> None:
        """The broker sent ``what``, which this agent does not read (agent.uplink.mqtt.
        bounds); called on paho's thread as the connection ends."""
        with self.cond:
            self.malformed = True
            self.ended = self.ended or f"{NOT_ACKNOWLEDGED}: the broker sent {what}"
            self.cond.notify_all()

    def end(self, why: str) -> None:
        """Cut the connection now, from any thread; paho's thread ends with it."""
        with self.cond:
            self.ended = self.ended or why
            self.cond.notify_all()
        sock = self.client.socket()
        if isinstance(sock, BoundedSocket):
            sock.shutdown()
        elif isinstance(sock, socket.socket):  # an SSLSocket is one too
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def stop(self, *, will: bool) -> None:
        """Disconnect cleanly -- with the will published (``will``) or not -- if still
        connected, then stop paho's thread."""
        if self.alive:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.reasoncodes import ReasonCode

            code = ReasonCode(PacketTypes.DISCONNECT, identifier=DISCONNECT_WITH_WILL if will
                              else 0)
            with contextlib.suppress(OSError, ValueError):
                self.client.disconnect(reasoncode=code)
            with self.cond:
                self.cond.wait_for(lambda: self.ended is not None, CLOSE_WAIT_S)
        self.end("closed")
        self.client.loop_stop()


class MqttSink:
    """One broker's connection; a :class:`~agent.uplink.sink.Sink`."""

    documents = False  # commissioning records have no topic of their own (yet)

    def __init__(self, host: str, port: int, settings: MqttConfig, encoder: MessageEncoder, *,
                 tls: bool, client_id: str, status: str | None, name: str = "default",
                 ca_file: Path | None = None, client_cert: Path | None = None,
                 client_key: Path | None = None, connect_timeout: float = 10.0,
                 read_timeout: float = 30.0) -> None:
        self.host, self.port, self.settings, self.encoder = host, port, settings, encoder
        self.tls, self.client_id, self.status = tls, client_id, status
        self.where = f"'{name}' at {'mqtts' if tls else 'mqtt'}://{host}:{port}"
        self._files = (ca_file, client_cert, client_key)
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        self._lock = threading.Lock()
        self._conn: _Connection | None = None
        self._refused = False
        self._aborted = False
        self._sending = False  # a send is under way (abort() cuts its connection)
        self._last: tuple[bytes, int, list[Message]] | None = None  # the body last unpacked
        self._broker_max: int | None = None  # the broker's Maximum Packet Size, once known

    # --- the Sink protocol ------------------------------------------------------------------

    def encode(self, readings: Sequence[Reading]) -> bytes:
        return self.encoder.encode(readings)

    def set_epochs(self, epochs: Epochs) -> None:
        self.encoder.set_epochs(epochs)

    def idle(self, token: Secret | None) -> None:
        """A connection is opened by the next batch (and with it ``online``): nothing to do."""

    def send(self, body: bytes, token: Secret | None) -> Answer:
        """Every message of ``body``, each acknowledged (see the module docstring)."""
        if token is None and self.settings.payload == "thingsboard":
            return Answer(Outcome.AUTH, f"no ThingsBoard device access token for {self.where}",
                          reasons.AUTH_HINT)
        with self._lock:
            if self._refused:
                return Answer(Outcome.STOPPED, "stopping")
            self._aborted, self._sending = False, True
        try:
            count, messages = self._messages(body)
            if not messages:
                return Answer(Outcome.DELIVERED, "nothing to publish")
            conn, failed = self._connection(token)
            if conn is None:
                assert failed is not None
                return failed
            too_large = self._too_large(messages)  # the broker's limit is known once connected
            if too_large is not None:
                return too_large
            return self._publish(conn, count, messages, token)
        finally:
            with self._lock:
                self._sending = False

    def refuse(self) -> None:
        """No send starts from now on; the one in flight gets its acknowledgements."""
        with self._lock:
            self._refused = True

    def abort(self) -> None:
        """Cut the exchange in flight short (from another thread)."""
        with self._lock:
            self._aborted = True
            conn = self._conn if self._sending else None
        if conn is not None:
            conn.end("stopped")

    def close(self) -> None:
        """A clean stop: disconnect with the will (``offline``), or cut a send short."""
        self.refuse()
        with self._lock:
            self._aborted = True
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.stop(will=self.status is not None)

    # --- one send -----------------------------------------------------------------------------

    def _messages(self, body: bytes) -> tuple[int, list[Message]]:
        last = self._last
        if last is not None and last[0] is body:  # the worker resends the bytes it encoded
            return last[1], last[2]
        count, messages = unpack(body)
        self._last = (body, count, messages)
        return count, messages

    def _too_large(self, messages: Sequence[Message]) -> Answer | None:
        limit, broker = self.settings.max_message_bytes, self._broker_max
        for m in messages:
            packet = len(m.payload) + len(m.topic.encode("utf-8")) + PUBLISH_OVERHEAD
            if len(m.payload) > limit or (broker is not None and packet > broker):
                what = (f"max_message_bytes ({limit})" if len(m.payload) > limit else
                        f"the broker's Maximum Packet Size ({broker})")
                return Answer(Outcome.TOO_LARGE, f"a message of {len(m.payload)} bytes to "
                              f"{m.topic} is more than {what}", reasons.TOO_LARGE_HINT)
        return None

    def _publish(self, conn: _Connection, count: int, messages: list[Message],
                 token: Secret | None) -> Answer:
        """Publish ``messages`` keeping at most the window unacknowledged; wait for every
        PUBACK, the connection's end, a stop, or ``read_timeout`` without an answer."""
        window = self.settings.max_inflight
        if conn.receive_max is not None:  # the broker's own bound; "online" may be in flight
            window = max(1, min(window, conn.receive_max - (self.status is not None)))
        with conn.cond:
            conn.results.clear()
            conn.progress = time.monotonic()
        mids: dict[int, int] = {}  # mid -> index of its message
        pending: set[int] = set()
        codes: list[tuple[int, str] | None] = [None] * len(messages)
        sent = 0
        while True:
            # paho's locks are taken by publish() and held around its callbacks: never
            # publish while holding conn.cond, which the callbacks take
            while sent < len(messages) and len(pending) < window and not self._aborted:
                m = messages[sent]
                info = conn.client.publish(m.topic, m.payload, qos=1)
                if info.rc != 0:  # MQTT_ERR_NO_CONN: lost meanwhile
                    break
                mids[info.mid] = sent
                pending.add(info.mid)
                sent += 1
            with conn.cond:
                while True:
                    for mid in [mid for mid in pending if mid in conn.results]:
                        pending.discard(mid)
                        codes[mids[mid]] = conn.results.pop(mid)
                    stalled = time.monotonic() - conn.progress > self.read_timeout
                    stop = conn.ended is not None or self._aborted or stalled
                    finished = stop or (not pending and sent == len(messages))
                    if finished or (len(pending) < window and sent < len(messages)):
                        ended, ended_code = conn.ended, conn.ended_code
                        break  # done, or room in the window: publish more
                    conn.cond.wait(min(1.0, max(0.01, conn.progress + self.read_timeout
                                                - time.monotonic())))
            if finished:  # outside conn.cond: _answer may stop paho's thread
                return self._answer(conn, count, messages, codes, ended, ended_code, token)

    def _answer(self, conn: _Connection, count: int, messages: list[Message],
                codes: list[tuple[int, str] | None], ended: str | None,
                ended_code: tuple[int, str] | None, token: Secret | None) -> Answer:
        """The send's answer: ``codes`` are the PUBACKs' reasons (None: none came), ``ended``
        why the connection ended if it did, ``ended_code`` the broker's DISCONNECT reason."""
        ok = [c is not None and c[0] in reasons.ACCEPTED for c in codes]
        if all(ok):
            return Answer(Outcome.DELIVERED, f"{len(messages)} message(s) acknowledged")
        accepted = acknowledged_prefix(messages, ok, count) or None
        worst = min((i for i, good in enumerate(ok) if not good),
                    key=lambda i: messages[i].first)
        code = codes[worst]
        topic = messages[worst].topic
        if code is not None:  # the broker answered that message with a refusal
            outcome = reasons.outcome(code[0])
            detail = f"the broker refused a message to {topic}: {reasons.words(*code)}"
            if outcome is Outcome.RETRY:
                self._drop(conn, "a message refused for now")
            return self._said(outcome, detail, reasons.hint(code[0]), accepted, token)
        if self._aborted:
            self._drop(conn, "stopped")
            return Answer(Outcome.STOPPED, "stopping", accepted=accepted)
        self._drop(conn, "no acknowledgement")
        if ended_code is not None:
            outcome = reasons.outcome(ended_code[0])
            outcome = Outcome.RETRY if outcome is Outcome.DELIVERED else outcome
            return self._said(outcome, f"{ended} ({self.host}:{self.port})",
                              reasons.hint(ended_code[0]), accepted, token)
        if ended is not None:
            return self._said(Outcome.RETRY, f"{ended} ({self.host}:{self.port})",
                              reasons.MALFORMED_HINT if conn.malformed else reasons.RETRY_HINT,
                              accepted, token)
        return self._said(Outcome.RETRY, f"{NOT_ACKNOWLEDGED} (PUBACK) within "
                          f"{self.read_timeout:g} s "
                          f"({self.host}:{self.port})", reasons.RETRY_HINT, accepted, token)

    @staticmethod
    def _said(outcome: Outcome, detail: str, hint: str, accepted: int | None,
              token: Secret | None) -> Answer:
        return Answer(outcome, redact(detail, token, limit=ERROR_TEXT_CHARS), hint,
                      accepted=accepted)

    def _drop(self, conn: _Connection, why: str) -> None:
        with self._lock:
            if self._conn is conn:
                self._conn = None
        conn.end(why)
        conn.client.loop_stop()

    # --- connecting -----------------------------------------------------------------------------

    def _connection(self, token: Secret | None) -> tuple[_Connection | None, Answer | None]:
        """The live connection with these credentials, or a new one; or why there is none."""
        with self._lock:
            conn = self._conn
        if conn is not None and conn.alive and conn.token == token:
            return conn, None
        if conn is not None:  # lost, or the credentials file changed: offline until back
            with self._lock:
                self._conn = None
            conn.stop(will=self.status is not None)
        conn, answer = self.connect(token)
        if conn is None:
            return None, answer
        with self._lock:
            if self._aborted:
                conn.stop(will=False)
                return None, Answer(Outcome.STOPPED, "stopping")
            self._conn = conn
        self._online(conn)
        return conn, None

    def connect(self, token: Secret | None, *, probe: bool = False
                ) -> tuple[_Connection | None, Answer | None]:
        """One CONNECT and its CONNACK, within ``connect_timeout``. ``probe`` (doctor's check):
        a client id of its own, a clean start, a session that ends with it, no will -- so it
        neither takes the agent's session over nor says the unit went offline."""
        import ssl  # here, as paho: a unit without an MQTT upstream never loads either

        from paho.mqtt.client import CallbackAPIVersion, Client, MQTTv5
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        client_id = f"{self.client_id}-doctor" if probe else self.client_id
        client = Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTv5,
                        reconnect_on_failure=False)
        conn = _Connection(client, token)
        client.on_connect, client.on_publish = conn.on_connect, conn.on_publish
        client.on_disconnect = conn.on_disconnect
        client.connect_timeout = self.connect_timeout
        client.max_inflight_messages_set(0)  # paho queues nothing: the window is _publish's
        if token is not None:
            user, password = credentials(token, thingsboard=self.settings.payload ==
                                         "thingsboard")
            client.username_pw_set(user, password)
        if self.status is not None and not probe:
            client.will_set(self.status, OFFLINE, qos=1, retain=True)
        if self.tls:
            try:
                client.tls_set_context(tls_context(*self._files))
            except (OSError, ValueError) as exc:
                return None, self._said(Outcome.FAILED, f"cannot use the CA or client "
                                        f"certificate: {_reason(exc)}", "check uplink.ca_file, "
                                        "client_cert and client_key", None, token)
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = 0 if probe else self.settings.session_expiry
        properties.MaximumPacketSize = MAX_PACKET_BYTES  # a conforming broker sends no more
        try:
            client.connect(self.host, self.port, keepalive=self.settings.keepalive,
                           clean_start=probe, properties=properties)
        except ssl.SSLCertVerificationError as exc:
            return None, self._said(Outcome.FAILED, f"the broker's certificate is not trusted: "
                                    f"{exc.verify_message}", "set uplink.ca_file to the CA "
                                    "that signed it (verification is never turned off)",
                                    None, token)
        except (OSError, ValueError) as exc:
            return None, self._said(Outcome.RETRY, f"cannot connect to {self.host}:{self.port}:"
                                    f" {_reason(exc)}", reasons.RETRY_HINT, None, token)
        # paho reads nothing before loop_start(): every byte from the broker is bounded. No
        # socket: the connection is lost already (the CONNECT could not be written: a TLS
        # broker that refused the client after the handshake, say); nothing can be read.
        sock = client.socket()
        if sock is not None:
            conn.bounded = install(client, conn.refused)
            if conn.bounded is None:
                conn.end("not connected")
                with contextlib.suppress(OSError):
                    sock.close()
                return None, self._said(Outcome.FAILED, "this paho-mqtt cannot be made to "
                                        "bound what it reads from a broker, so envagent does "
                                        "not connect with it", "install the paho-mqtt 2.x that "
                                        "envagent's pyproject.toml names", None, token)
        client.loop_start()
        with conn.cond:
            conn.cond.wait_for(lambda: conn.connack is not None or conn.ended is not None
                               or self._aborted, self.connect_timeout)
            connack = conn.connack
        if connack is not None and connack[0] == 0:
            if conn.max_packet is not None and not probe:
                self._broker_max = conn.max_packet
                # the next batches are split to fit (topics are short: a template's 1,024
                # characters at most, a few escaped ids)
                fits = conn.max_packet - PUBLISH_OVERHEAD - TOPIC_ALLOWANCE
                self.encoder.max_bytes = max(1, min(self.settings.max_message_bytes, fits))
            log.debug("%s: connected (session present: %s)", self.where, conn.session_present)
            return conn, None
        conn.end("not connected")
        client.loop_stop()
        if connack is not None:
            outcome = reasons.outcome(connack[0])
            outcome = Outcome.RETRY if outcome is Outcome.DELIVERED else outcome
            return None, self._said(outcome, f"the broker refused the connection: "
                                    f"{reasons.words(*connack)}", reasons.hint(connack[0]),
                                    None, token)
        if self._aborted:
            return None, Answer(Outcome.STOPPED, "stopping")
        why = conn.ended or f"no CONNACK within {self.connect_timeout:g} s"
        return None, self._said(Outcome.RETRY, f"{why} ({self.host}:{self.port})",
                                reasons.MALFORMED_HINT if conn.malformed else
                                reasons.RETRY_HINT, None, token)

    def _online(self, conn: _Connection) -> None:
        """``online`` on the status topic, retained: the will's counterpart."""
        if self.status is not None:
            conn.client.publish(self.status, ONLINE, qos=1, retain=True)


def credentials(token: Secret, *, thingsboard: bool) -> tuple[str, str | None]:
    """The MQTT user name and password in a credentials file: ``user:password`` or ``user``;
    for ThingsBoard the whole line is the device's access token, its user name."""
    value = token.reveal()
    if thingsboard:
        return value, None
    user, colon, password = value.partition(":")
    return user, password if colon else None


def tls_context(ca_file: Path | None, client_cert: Path | None,
                client_key: Path | None) -> ssl.SSLContext:
    """A verifying TLS context: the system's and certifi's CAs, or ``ca_file``; the client
    certificate when given. Each file is checked against a size bound first."""
    import ssl  # loaded by the first TLS connection only
    for path in (ca_file, client_cert, client_key):
        if path is not None and os.stat(path).st_size > MAX_FILE_BYTES:
            raise ValueError(f"{path} is larger than {MAX_FILE_BYTES // 1024} KiB: is it the "
                             "right file?")
    if ca_file is None:
        import certifi  # requests' CA bundle, as the HTTP transport and doctor use

        context = ssl.create_default_context(cafile=certifi.where())
    else:
        context = ssl.create_default_context(cafile=str(ca_file))
    if client_cert is not None:
        context.load_cert_chain(client_cert, client_key)
    return context


def _reason(exc: BaseException) -> str:
    import ssl  # loaded already: only a connection's errors come here

    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason).lower().replace("_", " ")
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror + (f": {exc.filename}" if exc.filename else "")
    return str(exc) or type(exc).__name__


# --- the registry's entry -----------------------------------------------------------------------


def endpoint(url: str) -> Endpoint:
    """Where doctor's DNS, TCP and TLS probes go; TLS for mqtts."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return Endpoint(parts.hostname or "", parts.port or DEFAULT_PORTS.get(scheme, 1883),
                    tls=scheme == "mqtts")


def build(config: Config, settings: UplinkConfig, *, simulated: bool = False,
          wall: Callable[[], float] = time.time, data_dir: Path | None = None,
          external_time: ExternalTime | None = None) -> MqttSink:
    """The sink of an mqtt(s):// ``[[uplink]]``. ``simulated`` marks every message a
    rehearsal's, as the other transports do."""
    mqtt = settings.mqtt
    if mqtt is None:
        raise ValueError(f"uplink '{settings.name}' has no MQTT settings")
    unit, site = config.unit.id, config.unit.site
    topics: Topics | str = (mqtt.topic if mqtt.payload == "thingsboard" else
                            Topics(mqtt.topic, site=site, unit=unit))
    encoder = MessageEncoder(mqtt.payload, topics, unit=unit, site=site,
                             drivers={s.id: s.driver for s in config.sensors},
                             measurement=settings.measurement, simulated=simulated,
                             max_bytes=mqtt.max_message_bytes)
    status = (None if mqtt.status_prefix is None else
              status_topic(mqtt.status_prefix, STATUS_LEVEL, site=site, unit=unit))
    where = endpoint(settings.url)
    client_id = mqtt.client_id or client_id_of(unit, settings.name)
    return MqttSink(where.host, where.port, mqtt, encoder, tls=where.tls, client_id=client_id,
                    status=status, name=settings.name, ca_file=settings.ca_file,
                    client_cert=settings.client_cert, client_key=settings.client_key,
                    connect_timeout=settings.connect_timeout,
                    read_timeout=settings.read_timeout)


def client_id_of(unit: str, upstream: str) -> str:
    """``envagent-<unit>-<upstream>``: one session per unit and upstream, stable across
    restarts (a unit id may hold ``.``; MQTT 5 3.1.3.1 allows any UTF-8, brokers like it
    plain; the config's patterns keep both to letters, digits, ``.``, ``_`` and ``-``)."""
    return f"envagent-{unit}-{upstream}"


def check_write(config: Config, settings: UplinkConfig, token: Secret | None,
                named: str | None) -> Verdict:
    """Doctor's probe: a CONNECT with the real credentials, judged by the CONNACK -- under a
    client id of its own with a clean start, so the running agent's session stays whole."""
    sink = build(config, settings)
    try:
        conn, failed = sink.connect(token, probe=True)
        if conn is not None:
            conn.stop(will=False)
    finally:
        sink.close()
    with_what = f"with the credentials from {named}" if named else "without credentials"
    if conn is not None:
        return Verdict("PASS", f"the broker accepted a connection {with_what} (CONNACK 0x00); "
                       "nothing was published")
    assert failed is not None
    if failed.outcome is Outcome.AUTH:
        fix = failed.hint if named else ("install the credentials: user:password in the file "
                                         "named by credentials_file, or the systemd "
                                         "credential upload-token-<name>")
        return Verdict("FAIL", f"{failed.detail} {with_what}", fix)
    return Verdict("FAIL", failed.detail, failed.hint or "see the tcp and tls checks")


TRANSPORT = Transport("MQTT", build, endpoint, check_write)
