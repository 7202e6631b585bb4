"""The HTTP transport: POST each encoded batch to one URL (InfluxDB 1.x ``/write``, 2.x
``/api/v2/write``, VictoriaMetrics, Telegraf's HTTP listener, a custom JSON backend) and turn what
came back into the worker's :class:`~agent.uplink.sink.Answer`.

Only this module knows HTTP's words; the delivery worker (agent.uplink.worker) never sees a
status code:

==========================================  ================================================
2xx                                         delivered: the worker acks the batch
408, 429, 5xx, timeouts, connection/DNS     retry, after ``Retry-After`` (delay-seconds or an
errors, the total deadline                  HTTP-date, parsed here and clamped) if it asks
400, 422                                    rejected: the worker bisects out the poison
413                                         too large: the worker halves the batch
401, 403                                    auth: the credentials were refused
3xx, other 4xx, TLS verification failure,   failed (misconfiguration), with a hint; redirects
an invalid URL, CA file or certificate      are never followed and TLS is never turned off
a stop cut the POST short                   stopped
==========================================  ================================================

Each POST runs within a total deadline and reads the answer with a bound (agent.uplink.httpwire).
Only the status and the headers decide what happens to the batch; the text, made fit to log
(agent.core.credentials.redact), is for people. A stop (:meth:`HttpSink.refuse`) lets the POST in
flight go on and refuses the next ones. The body goes gzipped with no time stamp in its header,
so a retry sends the very same bytes.

Doctor's probes for this transport (:func:`endpoint`, :func:`check_write`) are here too: the
write that stores nothing goes through this very sink -- same session, same Authorization header.
"""

from __future__ import annotations

import email.utils
import gzip
import re
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from agent.config import Config, UplinkConfig
from agent.core.credentials import Secret, authorization, redact
from agent.core.reading import Reading
from agent.core.timebase import ExternalTime
from agent.uplink.encoders import Encoder, make_encoder
from agent.uplink.httpwire import (
    RECHECK_S,
    REPLY_TEXT_CHARS,
    Deadlines,
    Failure,
    Reply,
    connections_of,
    explain,
    failure_of,
    inflate,
    make_session,
    read_bounded,
)
from agent.uplink.lineprotocol import Epochs, LineProtocolEncoder
from agent.uplink.sink import (
    ERROR_TEXT_CHARS,
    Answer,
    Endpoint,
    Outcome,
    Transport,
    Verdict,
)

if TYPE_CHECKING:  # loaded by make_session only: commands that never POST do not load it
    import requests

GZIP_LEVEL = 6  # zlib's default: most of level 9's ratio at a third of its CPU
DEFAULT_PORTS = {"http": 80, "https": 443}
RETRY_AFTER_CAP_S = 1e9  # what any Retry-After counts as at most (the worker caps it further)
# RFC 9110 10.2.3: delay-seconds = 1*DIGIT, and DIGIT is ASCII (str.isdigit() also takes "²").
DELAY_SECONDS = re.compile(r"[0-9]+", re.ASCII)
INFLUX2_EMPTY = "writing requires points"  # InfluxDB 2's answer to an empty write, after auth


class HttpSink:
    """POSTs encoded batches to one URL, each within a total deadline; a
    :class:`~agent.uplink.sink.Sink`. ``name``: the upstream's (``[[uplink]] name``), in
    ``where``; ``wall``: the wall clock a ``Retry-After`` date is read against."""

    documents = True  # commissioning records go to the same URL (agent.uplink.metadata)

    def __init__(self, url: str, encoder: Encoder, session: requests.Session, *,
                 auth: str = "token", connect_timeout: float = 10.0, read_timeout: float = 30.0,
                 deadline: float = 60.0, name: str = "default",
                 wall: Callable[[], float] = time.time) -> None:
        self.url = influx_url(url) if isinstance(encoder, LineProtocolEncoder) else url
        parts = urlsplit(self.url)
        self.port = parts.port or DEFAULT_PORTS.get(parts.scheme.lower(), 80)
        host = parts.hostname or ""
        self.address = f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"
        host_port = parts.netloc.rpartition("@")[2]  # never a user name or password
        self.where = f"'{name}' at {urlunsplit((parts.scheme, host_port, parts.path, '', ''))}"
        self.encoder = encoder
        self.session = session
        self._connections = connections_of(session)
        self.auth = auth
        self.timeouts = (connect_timeout, read_timeout)
        self.deadline = deadline
        self._wall = wall
        self._lock = threading.Lock()
        self._attempts = 0
        self._in_flight: int | None = None  # the number of the attempt on the wire
        self._ended: Failure | None = None  # why the deadline or abort() ended it early
        self._closed = False
        self._deadlines = Deadlines(self._end, name=f"uplink-deadline-{name}")

    def encode(self, readings: Sequence[Reading]) -> bytes:
        return self.encoder.encode(readings)

    def set_epochs(self, epochs: Epochs) -> None:
        self.encoder.set_epochs(epochs)

    def idle(self, token: Secret | None) -> None:
        """HTTP opens a connection per request: nothing to keep open."""

    def send(self, body: bytes, token: Secret | None) -> Answer:
        """One POST, answered in the worker's words; never raises for anything the network or
        server does."""
        return answer_of(self.post(body, token), token, self._wall())

    def post(self, body: bytes, token: Secret | None) -> Reply:
        """One POST, answered in HTTP's words (the status, or why there was none)."""
        headers = {"Content-Type": self.encoder.content_type, "Content-Encoding": "gzip"}
        if token is not None:
            headers["Authorization"] = authorization(self.auth, token)
        data = gzip.compress(body, compresslevel=GZIP_LEVEL, mtime=0)
        with self._lock:
            if self._closed:
                return Reply(None, Failure.STOPPED)
            self._attempts += 1
            attempt = self._in_flight = self._attempts
            self._ended = None
        self._deadlines.arm(attempt, self.deadline, Failure.DEADLINE)
        import requests  # loaded already: make_session built self.session
        from urllib3.exceptions import HTTPError as TransportError  # requests' transport

        try:
            response = self.session.post(self.url, data=data, headers=headers,
                                         timeout=self.timeouts, allow_redirects=False,
                                         stream=True)  # the body is read below, bounded
        except requests.RequestException as exc:
            failure = self._finish(attempt) or failure_of(exc)
            return Reply(None, failure, redact(self._explain(failure, exc), token,
                                               limit=REPLY_TEXT_CHARS))
        except (ValueError, OSError) as exc:  # e.g. an unreadable ca_file or client_cert
            self._finish(attempt)
            return Reply(None, Failure.INVALID, redact(str(exc), token, limit=REPLY_TEXT_CHARS))
        try:
            content, cut = read_bounded(response.raw)
        except (TransportError, OSError) as exc:  # requests does not wrap these: raw read
            failure = self._finish(attempt) or failure_of(exc)
            return Reply(None, failure, redact(self._explain(failure, exc), token,
                                               limit=REPLY_TEXT_CHARS))
        finally:
            response.close()  # after a cut the connection is closed, never drained
        ended = self._finish(attempt)
        if ended is not None:  # the answer may be cut short (a 204's headers, say): not trusted
            return Reply(None, ended, f"HTTP {response.status_code} answer cut off")
        text, cut = inflate(content, response.headers.get("Content-Encoding"), cut=cut)
        location = response.headers.get("Location")
        return Reply(response.status_code, None,
                     redact(text, token, cut=cut, limit=REPLY_TEXT_CHARS),
                     response.headers.get("Retry-After"),
                     None if location is None else redact(location, token,
                                                          limit=REPLY_TEXT_CHARS))

    def _explain(self, failure: Failure, exc: BaseException) -> str:
        return explain(failure, exc, address=self.address, timeouts=self.timeouts,
                       deadline=self.deadline)

    def refuse(self) -> None:
        """Refuse every POST from now on (a stop begins); the one in flight goes on."""
        with self._lock:
            self._closed = True

    def abort(self) -> None:
        """End the POST in flight now (from another thread), e.g. to stop the agent."""
        with self._lock:
            attempt = self._in_flight
        if attempt is not None:
            self._end(attempt, Failure.STOPPED)

    def close(self) -> None:
        """Abort the POST in flight and refuse further ones."""
        self.refuse()
        self.abort()
        self._deadlines.close()
        self.session.close()

    def _finish(self, attempt: int) -> Failure | None:
        """Disarm the attempt; return why it was ended early, if it was."""
        self._deadlines.disarm(attempt)
        with self._lock:
            ended, self._ended, self._in_flight = self._ended, None, None
        return ended

    def _end(self, attempt: int, why: Failure) -> None:
        with self._lock:
            if attempt != self._in_flight:
                return  # finished meanwhile
            self._ended = self._ended or why
            if self._connections.shutdown() == 0:  # still resolving or connecting: look again
                self._deadlines.arm(attempt, RECHECK_S, why)


# --- HTTP's words -> the worker's -------------------------------------------------------------


def classify(reply: Reply) -> Outcome:
    """What an attempt's answer means for the batch."""
    status = reply.status
    if status is None:
        if reply.failure is Failure.STOPPED:
            return Outcome.STOPPED
        failed = reply.failure in (Failure.TLS_VERIFY, Failure.INVALID)
        return Outcome.FAILED if failed else Outcome.RETRY
    if 200 <= status < 300:
        return Outcome.DELIVERED
    if status in (400, 422):
        return Outcome.REJECTED
    if status == 413:
        return Outcome.TOO_LARGE
    if status in (401, 403):
        return Outcome.AUTH
    if status in (408, 429) or status >= 500:
        return Outcome.RETRY
    return Outcome.FAILED  # 1xx, 3xx, other 4xx


_HINTS = {
    Failure.TLS_VERIFY: "the server's certificate is not trusted: set uplink.ca_file to the CA "
                        "that signed it (verification is never turned off)",
    Failure.INVALID: "check uplink.url, ca_file, client_cert and client_key",
}
_OUTCOME_HINTS = {
    Outcome.RETRY: "delivery retries by itself; if this lasts, check the network and the server",
    Outcome.AUTH: "put a valid token with write permission in the token file; it is read again "
                  "every uplink.auth_retry, no restart needed",
}


def hint(reply: Reply, outcome: Outcome) -> str:
    """What to do about an answer: for a misconfiguration, what to fix."""
    if outcome is not Outcome.FAILED:
        return _OUTCOME_HINTS.get(outcome, "")
    if reply.failure is not None and reply.failure in _HINTS:
        return _HINTS[reply.failure]
    if reply.status is not None and 300 <= reply.status < 400:
        return "the server redirects writes, which are never followed: set uplink.url to the " \
               "final address"
    return "check uplink.url and the server"


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """A ``Retry-After`` header as seconds from ``now`` (wall clock): delay-seconds or HTTP-date,
    at most ``RETRY_AFTER_CAP_S``; None for anything else, which RFC 9110 says to ignore. Never
    raises, whatever the server sent."""
    if value is None:
        return None
    value = value.strip()
    if DELAY_SECONDS.fullmatch(value):
        digits = value.lstrip("0") or "0"
        if len(digits) > len(str(int(RETRY_AFTER_CAP_S))):  # int() refuses 4,300+ digits
            return RETRY_AFTER_CAP_S
        return min(float(digits), RETRY_AFTER_CAP_S)
    try:
        when = email.utils.parsedate_to_datetime(value)
        if when.tzinfo is None:  # an HTTP-date is always GMT
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - now
    except (TypeError, ValueError, IndexError, OverflowError, OSError):  # not a date we can use
        return None
    return min(max(0.0, seconds), RETRY_AFTER_CAP_S)


def answer_of(reply: Reply, token: Secret | None, now: float) -> Answer:
    """An HTTP exchange as the worker's :class:`Answer`; ``now``: the wall clock, for a
    ``Retry-After`` date."""
    outcome = classify(reply)
    after = retry_after_seconds(reply.retry_after, now) if outcome is Outcome.RETRY else None
    return Answer(outcome, redact(reply.describe(), token, limit=ERROR_TEXT_CHARS),
                  hint(reply, outcome), retry_after=after)


def influx_url(url: str) -> str:
    """``url`` with ``precision=ns`` added unless it has it (config refuses any other precision)."""
    parts = urlsplit(url)
    params = parse_qsl(parts.query, keep_blank_values=True)
    if any(key == "precision" for key, _ in params):
        return url
    query = urlencode([*params, ("precision", "ns")])
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


# --- the registry's entry -----------------------------------------------------------------------


def build(config: Config, settings: UplinkConfig, *, simulated: bool = False,
          wall: Callable[[], float] = time.time, data_dir: Path | None = None,
          external_time: ExternalTime | None = None) -> HttpSink:
    """The HTTP sink ``[[uplink]]`` describes: its format, session (CA, client certificate) and
    time limits -- for delivery, and for doctor's probe. ``simulated``: every batch is marked a
    rehearsal's (agent.store.rehearsal)."""
    encoder = make_encoder(settings.format, unit=config.unit.id, site=config.unit.site,
                           drivers={s.id: s.driver for s in config.sensors},
                           measurement=settings.measurement, simulated=simulated)
    session = make_session(ca_file=settings.ca_file, client_cert=settings.client_cert,
                           client_key=settings.client_key)
    return HttpSink(settings.url, encoder, session, auth=settings.auth,
                    connect_timeout=settings.connect_timeout, read_timeout=settings.read_timeout,
                    deadline=settings.deadline, name=settings.name, wall=wall)


def endpoint(url: str) -> Endpoint:
    """Where doctor's DNS, TCP and TLS probes go: the URL's host and port; TLS for https."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return Endpoint(parts.hostname or "", parts.port or DEFAULT_PORTS.get(scheme, 80),
                    tls=scheme == "https")


def check_write(config: Config, settings: UplinkConfig, token: Secret | None,
                named: str | None) -> Verdict:
    """Doctor's auth probe: a real write that stores nothing -- the encoder's encoding of zero
    readings (an empty body for line protocol, a ``count: 0`` batch for JSON) -- judged by what
    the servers answer to it (read in their sources, and VictoriaMetrics tried):

    - VictoriaMetrics ``/write`` and ``/api/v2/write``: 204; 401 with ``-httpAuth.*`` or vmauth
      and a wrong or missing token.
    - InfluxDB 1.x ``/write``: 204 (nothing parsed, nothing written) after the database lookup
      (404 "database not found") and the authorisation (401 bad credentials, 403 no or
      unauthorised user).
    - InfluxDB 2.x ``/api/v2/write``: 400 ``{"code":"invalid","message":"writing requires
      points"}``, but only after the token (401), the org and bucket (404) and the write
      permission (403) were checked -- so that 400 is a PASS.
    - Telegraf ``http_listener_v2`` / ``influxdb_listener``: 204 (no metrics), 401 with basic
      auth.
    """
    sink = build(config, settings)
    try:
        reply = sink.post(sink.encode([]), token)
    finally:
        sink.close()
    return judge(reply, named)


def judge(reply: Reply, named: str | None) -> Verdict:
    """What the answer to the empty write says; ``named`` says where the token came from."""
    status, said = reply.status, reply.describe()
    with_token = f"with the token from {named}" if named else "without a token"
    if status is None:
        fix = ("set uplink.ca_file to the CA that signed it" if reply.failure is
               Failure.TLS_VERIFY else "see the tcp and tls checks; is it the right URL?")
        return Verdict("FAIL", f"the empty write got no answer: {said}", fix)
    if 200 <= status < 300 or (status == 400 and INFLUX2_EMPTY in reply.text):
        return Verdict("PASS", f"an empty write {with_token} was accepted ({said}); nothing "
                       "was stored")
    if status in (401, 403):
        fix = ("put a valid token with write permission in that file; the agent re-reads "
               "it every uplink.auth_retry, no restart needed") if named else (
               "install the token: /etc/envagent/upload-token (the service's credential) "
               "or uplink.token_file")
        return Verdict("FAIL", f"the server refused a write {with_token}: {said}", fix)
    if status == 404:
        return Verdict("FAIL", f"no such write endpoint, database or bucket: {said}",
                       "check the path and the db=, bucket= and org= of uplink.url")
    if 300 <= status < 400:
        return Verdict("FAIL", f"the server redirects writes, which are never followed: {said}",
                       "set uplink.url to the final address")
    if status >= 500 or status in (408, 429):
        return Verdict("WARN", f"the server is in trouble: {said}",
                       "delivery retries by itself; if this lasts, check the server")
    return Verdict("WARN", f"unexpected answer to an empty write: {said}",
                   "check uplink.url and uplink.format against the server's documentation")


TRANSPORT = Transport("HTTP", build, endpoint, check_write)
