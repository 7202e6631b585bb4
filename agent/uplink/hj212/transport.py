"""The HJ 212 transport: real-time, minute, hourly and daily data to the platform over one TCP
connection kept open, each packet delivered only when its data acknowledgement has come back;
and the platform's requests answered on the same connection.

One batch from the worker, in order (HJ 212-2017 6.4 and appendix C):

1. its samples go into the upstream's archive (agent.uplink.hj212.archive), which closes the
   minute, hourly and daily intervals the batch proves complete and queues their aggregates;
2. the aggregates waiting go, oldest first (CN 2051, 2061, 2031);
3. the batch's real-time data go, one message per sample time (CN 2011,
   agent.uplink.hj212.realtime).

Every packet asks for an acknowledgement (Flag's A bit); the platform answers with CN 9014 and
the same QN. A packet with no such answer within ``overtime`` (default 10 s) is sent again,
byte-identical, ``recount`` times (default 3); then the connection is dropped and the worker
backs off with full jitter. Packets go one at a time (stop and wait) and at most
``max_packets_per_s``, so a backlog after an outage goes oldest first without flooding the
platform. The worker hears, in its words (agent.uplink.sink):

=================================================  ============================================
every packet acknowledged                          delivered
a packet unacknowledged after its resends, a       retry, with ``accepted`` = the readings of
connection refused, reset or timed out, a          the sample times acknowledged so far (the
platform that sends what is not HJ 212             worker acks those, keeps the rest)
no password (PW), or one the standard cannot       auth (the worker reads the file again every
carry                                              ``auth_retry``)
the archive cannot be written                      retry
a stop between packets                             stopped, with ``accepted`` as above
=================================================  ============================================

The platform's requests (answered with 9011 QnRtn, the data, 9012 ExeRtn, each with the
request's QN): history pulls of minute, hourly and daily data (CN 2051/2061/2031 with
BeginTime and EndTime, from the aggregates the archive holds: ``keep_days``), the unit's time
(1011), RtdInterval (1061, 1062), OverTime and ReCount (1000); what the platform sets is kept
in the archive across restarts. A time set (1012) is offered to the time keeping
(agent.core.timebase.ExternalTime): taken (ExeRtn 1) while NTP has not synchronised the clock,
so this boot's readings are re-stamped from it; refused (ExeRtn 3) otherwise, the difference
logged either way. The connection is opened and kept while there is nothing to send
(:meth:`Hj212Sink.idle`), so the platform can reach a unit whose readings all wait.

HJ 212 has no TLS and no authentication beyond the platform's acknowledgement: the PW travels
in clear, so networks carry it over a private APN or a VPN (README). The PW is never logged:
log lines name the upstream, host and MN only.
"""

from __future__ import annotations

import logging
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from agent.config import Config, UplinkConfig
from agent.config.hj212 import RTD_RANGE, Hj212Config
from agent.core.credentials import Secret
from agent.core.errors import ConfigError
from agent.core.reading import Reading, is_alert
from agent.core.timebase import ExternalTime
from agent.uplink.hj212.archive import (
    CN_DAY,
    CN_HOUR,
    CN_MINUTE,
    QN_MS,
    Archive,
    Kind,
    archive_path,
    data_time,
    parse_data_time,
)
from agent.uplink.hj212.codes import CodeTable
from agent.uplink.hj212.packet import (
    FLAG_A,
    FLAG_VERSION_2017,
    Segment,
    frame,
    message,
    pw_ok,
)
from agent.uplink.hj212.realtime import Realtime
from agent.uplink.hj212.session import Closed, Connection
from agent.uplink.lineprotocol import Epochs, quality_of
from agent.uplink.sink import (
    NOT_ACKNOWLEDGED,
    THIS_UNIT,
    Answer,
    Endpoint,
    Outcome,
    Transport,
    Verdict,
)

log = logging.getLogger("envagent.uplink.hj212")

CN_REQUEST_ANSWER = "9011"  # 请求应答: QnRtn
CN_RESULT = "9012"  # 执行结果: ExeRtn
CN_TIME_GET, CN_TIME_SET = "1011", "1012"
CN_RTD_GET, CN_RTD_SET = "1061", "1062"
CN_TIMEOUTS = "1000"  # OverTime and ReCount
ST_SYSTEM = "91"  # 6.6.1, table 6: 系统交互
QN_READY, QN_REFUSED, QN_BAD_PW, QN_BAD_MN, QN_BAD_CN = 1, 2, 3, 4, 8  # table 9: QnRtn
EXE_OK, EXE_BAD_REQUEST, EXE_NO_DATA = 1, 3, 100  # table 10: ExeRtn
NO_PW_HINT = ("put the platform's password (PW) in the file named by password_file, or in the "
              "systemd credential upload-token-<name>; it is read again every auth_retry")
KINDS = {"minute": CN_MINUTE, "hour": CN_HOUR, "day": CN_DAY}
PENDING_BATCH = 32  # aggregates read from the archive at a time
FLAG_PLAIN = FLAG_VERSION_2017  # a packet that asks for no acknowledgement


class Hj212Sink:
    """One platform's connection and archive; a :class:`~agent.uplink.sink.Sink`."""

    documents = False  # commissioning records have no place in HJ 212

    def __init__(self, host: str, port: int, settings: Hj212Config, archive: Archive, *,
                 name: str = "default", steps: Sequence[float] = (),
                 codes_of: Mapping[str, Sequence[str]] | None = None,
                 connect_timeout: float = 10.0,
                 connect: Callable[..., socket.socket] = socket.create_connection,
                 wall: Callable[[], float] = time.time,
                 external_time: ExternalTime | None = None) -> None:
        self.host, self.port, self.settings, self.archive = host, port, settings, archive
        self.name = name
        self.where = f"'{name}' at hj212://{host}:{port} (MN {settings.mn})"
        self.zone = ZoneInfo(settings.timezone)
        self.st = f"{settings.st:02d}"
        self.realtime = Realtime(st=settings.st, mn=settings.mn, zone=self.zone,
                                 table=CodeTable(settings.codes, settings.units),
                                 codes_of=codes_of)
        self.steps = tuple(steps)  # the sampling intervals RtdInterval must be a multiple of
        self.connect_timeout = connect_timeout
        self._connect, self._wall, self.external_time = connect, wall, external_time
        self._conn: Connection | None = None
        self._lock = threading.Lock()
        self._refused = False
        self._pw = ""
        self._last_packet = 0.0

    # --- what the platform may change ----------------------------------------------------

    @property
    def rtd_interval(self) -> int:
        return self.archive.mark("rtd_interval") or self.settings.realtime_interval

    @property
    def overtime(self) -> float:
        ms = self.archive.mark("overtime_ms")
        return self.settings.overtime if ms is None else ms / 1000

    @property
    def recount(self) -> int:
        count = self.archive.mark("recount")
        return self.settings.recount if count is None else count

    # --- the Sink protocol ---------------------------------------------------------------

    def encode(self, readings: Sequence[Reading]) -> bytes:
        """The batch as this transport's own lines, read back by :func:`decode`; a reading
        sent with an unsynchronised clock carries CLOCK_UNSYNCED (flag D)."""
        return "".join(f"{r.sensor}\t{r.quantity}\t{r.value!r}\t{r.unit}\t{r.time_ns}\t"
                       f"{quality_of(r)}\n" for r in readings).encode("utf-8")

    def set_epochs(self, epochs: Epochs) -> None:
        """HJ 212 carries no tags: the commissioning epochs change nothing."""

    def idle(self, token: Secret | None) -> None:
        """Keep the connection open while there is nothing to send, so the platform can reach
        the unit (a history pull, a time set -- which a unit whose readings all wait for the
        clock needs most)."""
        if token is None or self._refused or not pw_ok(token.reveal()):
            return
        self._pw = token.reveal()
        try:
            self._open()
        except OSError as exc:
            log.debug("%s: cannot connect while idle: %s", self.where, exc)

    def send(self, body: bytes, token: Secret | None) -> Answer:
        """The batch into the archive, then the aggregates waiting and its real-time data
        (see the module docstring)."""
        if token is None:
            return Answer(Outcome.AUTH, f"no password (PW) for {self.where}", NO_PW_HINT)
        pw = token.reveal()
        if not pw_ok(pw):
            return Answer(Outcome.AUTH, "the password (PW) file does not hold 1 to 6 visible "
                          "characters without ; & = , (HJ 212-2017 table 4)", NO_PW_HINT)
        self._pw = pw
        readings = decode(body)
        groups = list(self.realtime.groups(readings))
        try:
            # Alerts go ahead of a backlog: newer than readings still waiting, they prove
            # no interval complete.
            self.archive.add((s for g in groups for s in g.samples),
                             max((r.time_ns for r in readings
                                  if not is_alert(r.sensor, r.quantity)), default=0))
        except sqlite3.Error as exc:
            return Answer(Outcome.RETRY, f"{THIS_UNIT} cannot write its HJ 212 archive: {exc}",
                          "see the data directory's free space and permissions")
        with self._lock:
            if self._refused:
                return Answer(Outcome.STOPPED, "stopping")
        failure = self._send_aggregates()
        if failure is not None:
            return failure
        accepted = 0
        interval = self.rtd_interval
        send = "realtime" in self.settings.send
        for group in groups:
            if send and group.segments and not (interval and group.second % interval):
                failure = self._deliver(group.segments, accepted)
                if failure is not None:
                    return failure
            accepted += group.readings
        return Answer(Outcome.DELIVERED, f"{len(groups)} sample time(s) acknowledged")

    def _send_aggregates(self) -> Answer | None:
        while batch := self.archive.pending(PENDING_BATCH):
            for item in batch:
                segments = message(item.qn, self.st, item.cn, self.settings.mn,
                                   FLAG_VERSION_2017 | FLAG_A, *_split_cp(item.cp))
                failure = self._deliver(segments, 0)
                if failure is not None:
                    return failure
                self.archive.delivered(item.seq)
        return None

    def _deliver(self, segments: Sequence[Segment], accepted: int) -> Answer | None:
        """Send one message's packets; None when all were acknowledged."""
        for segment in segments:
            if self._refused:
                return self._answer(Outcome.STOPPED, "stopping", accepted)
            failure = self._exchange(frame(replace(segment, pw=self._pw).render()), segment.qn)
            if failure is not None:
                self._drop(failure)
                outcome = Outcome.STOPPED if self._refused else Outcome.RETRY
                return self._answer(outcome, failure, accepted)
        return None

    def _exchange(self, packet: bytes, qn: str) -> str | None:
        """Send ``packet`` until its acknowledgement comes: None, or why it did not."""
        attempts = 1 + self.recount
        for _ in range(attempts):
            self._pace()
            try:
                conn = self._open()
                conn.forget(qn)
                conn.send(packet)
                if conn.await_ack(qn, self.overtime):
                    return None
            except OSError as exc:
                return (str(exc) if isinstance(exc, Closed) else
                        f"{type(exc).__name__}: {exc.strerror or exc} ({self.host}:{self.port})")
        return (f"{NOT_ACKNOWLEDGED} (CN 9014) for QN={qn} within "
                f"{self.overtime:g} s, {attempts} time(s)")

    def _pace(self) -> None:
        gap = 1.0 / self.settings.max_packets_per_s - (time.monotonic() - self._last_packet)
        if gap > 0:
            time.sleep(gap)
        self._last_packet = time.monotonic()

    def _open(self) -> Connection:
        with self._lock:
            conn = self._conn
        if conn is not None and conn.closed is None:
            return conn
        sock = self._connect((self.host, self.port), timeout=self.connect_timeout)
        conn = Connection(sock, name=self.name, on_request=self._request,
                          heartbeat=self._heartbeat, heartbeat_s=self.settings.heartbeat)
        with self._lock:
            self._conn = conn
        log.debug("%s: connected", self.where)
        return conn

    def _drop(self, why: str) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close(why)

    @staticmethod
    def _answer(outcome: Outcome, detail: str, accepted: int) -> Answer:
        hint = "delivery retries by itself; if this lasts, check the link and the platform"
        return Answer(outcome, detail, hint if outcome is Outcome.RETRY else "",
                      accepted=accepted or None)

    def refuse(self) -> None:
        """No packet starts from now on; the one on the wire gets its answer."""
        with self._lock:
            self._refused = True

    def abort(self) -> None:
        """Cut the exchange in flight short (from another thread)."""
        self.refuse()
        with self._lock:
            conn = self._conn
        if conn is not None:
            conn.close("stopping")

    def close(self) -> None:
        self.abort()
        self._drop("stopping")
        self.archive.close()

    # --- the platform's requests ----------------------------------------------------------

    def _heartbeat(self) -> bytes | None:
        cn = self.settings.heartbeat_cn
        if not cn or not self._pw:
            return None
        return frame(Segment(self._qn_now(), self.st, cn, self._pw, self.settings.mn,
                             FLAG_PLAIN, "").render())

    def _qn_now(self) -> str:
        """Now, for the heartbeat: its number is now's hundredths of a second, so 000-099,
        never a real-time message's (100-999) nor an aggregate's (archive.QN_MS) of the same
        DataTime -- a platform that drops a repeated QN must not drop data for a heartbeat."""
        now = self._wall()
        number = f"{int(now * 100) % 100:03d}"
        if number in QN_MS.values():
            number = f"{int(number) + 1:03d}"  # 032, 052, 062: free
        return data_time(int(now), self.zone) + number

    def _request(self, request: Segment, conn: Connection) -> None:
        """Answer one request of the platform on ``conn``."""
        def reply(cn: str, cp: str, st: str = ST_SYSTEM) -> None:
            conn.send(frame(Segment(request.qn, st, cn, self._pw, self.settings.mn, FLAG_PLAIN,
                                    cp).render()))

        log.info("%s: the platform asks CN %s (QN %s)", self.where, request.cn, request.qn)
        if not self._pw:
            return  # no password yet: nothing can be answered
        if request.pw != self._pw:
            reply(CN_REQUEST_ANSWER, f"QnRtn={QN_BAD_PW}")
            return
        if request.mn != self.settings.mn:
            reply(CN_REQUEST_ANSWER, f"QnRtn={QN_BAD_MN}")
            return
        fields = _fields(request.cp)
        handler = {
            CN_TIME_GET: self._get_time, CN_TIME_SET: self._set_time,
            CN_RTD_GET: self._get_rtd, CN_RTD_SET: self._set_rtd,
            CN_TIMEOUTS: self._set_timeouts,
            CN_MINUTE: self._history, CN_HOUR: self._history, CN_DAY: self._history,
        }.get(request.cn)
        if handler is None:
            reply(CN_REQUEST_ANSWER, f"QnRtn={QN_BAD_CN}")
            return
        reply(CN_REQUEST_ANSWER, f"QnRtn={QN_READY}")
        result = handler(request, fields, conn)
        reply(CN_RESULT, f"ExeRtn={result}")

    def _get_time(self, request: Segment, fields: dict[str, str], conn: Connection) -> int:
        self._upload(conn, request, CN_TIME_GET,
                     f"SystemTime={data_time(int(self._wall()), self.zone)}")
        return EXE_OK

    def _set_time(self, request: Segment, fields: dict[str, str], conn: Connection) -> int:
        try:
            theirs = parse_data_time(fields.get("SystemTime", ""), self.zone)
        except ValueError:
            return EXE_BAD_REQUEST
        try:
            taken = self.external_time is not None and self.external_time.offer(
                theirs, f"the HJ 212 platform {self.where}")
        except ValueError as exc:
            log.warning("%s: the platform sets the time to %s; refused: %s", self.where,
                        fields["SystemTime"], exc)
            return EXE_BAD_REQUEST
        if taken:
            log.info("%s: the platform sets the time to %s, %+.0f s from this unit's clock, "
                     "which NTP has not synchronised: readings are stamped with it",
                     self.where, fields["SystemTime"], theirs - self._wall())
            return EXE_OK
        log.warning("%s: the platform sets the time to %s, %+.0f s from this unit's clock; "
                    "refused: this unit's clock is kept by NTP", self.where,
                    fields["SystemTime"], theirs - self._wall())
        return EXE_BAD_REQUEST

    def _get_rtd(self, request: Segment, fields: dict[str, str], conn: Connection) -> int:
        self._upload(conn, request, CN_RTD_GET, f"RtdInterval={self.rtd_interval}")
        return EXE_OK

    def _set_rtd(self, request: Segment, fields: dict[str, str], conn: Connection) -> int:
        value = fields.get("RtdInterval", "")
        if not value.isdigit() or not RTD_RANGE[0] <= int(value) <= RTD_RANGE[1]:
            return EXE_BAD_REQUEST
        if any(int(value) % step for step in self.steps if step == int(step)):
            log.warning("%s: the platform asks RtdInterval=%s s, which is not a multiple of "
                        "the sampling intervals %s; refused", self.where, value,
                        ", ".join(f"{s:g} s" for s in self.steps))
            return EXE_BAD_REQUEST
        self.archive.set_mark("rtd_interval", int(value))
        log.info("%s: the platform sets RtdInterval to %s s", self.where, value)
        return EXE_OK

    def _set_timeouts(self, request: Segment, fields: dict[str, str], conn: Connection) -> int:
        overtime, recount = fields.get("OverTime", ""), fields.get("ReCount", "")
        if not (overtime.isdigit() and recount.isdigit()
                and 1 <= int(overtime) <= 600 and 0 <= int(recount) <= 10):
            return EXE_BAD_REQUEST
        self.archive.set_mark("overtime_ms", int(overtime) * 1000)
        self.archive.set_mark("recount", int(recount))
        log.info("%s: the platform sets OverTime=%s s, ReCount=%s", self.where, overtime,
                 recount)
        return EXE_OK

    def _history(self, request: Segment, fields: dict[str, str], conn: Connection) -> int:
        try:
            begin = parse_data_time(fields.get("BeginTime", ""), self.zone)
            end = parse_data_time(fields.get("EndTime", ""), self.zone)
        except ValueError:
            return EXE_BAD_REQUEST
        rows = self.archive.history(request.cn, begin, end)
        for _, cp in rows:
            self._upload(conn, request, request.cn, cp, st=self.st)
        return EXE_OK if rows else EXE_NO_DATA

    def _upload(self, conn: Connection, request: Segment, cn: str, cp: str,
                st: str | None = None) -> None:
        """Data answering ``request`` (its QN, no acknowledgement asked), split as needed."""
        for segment in message(request.qn, st or self.st, cn, self.settings.mn, FLAG_PLAIN,
                               *_split_cp(cp)):
            conn.send(frame(replace(segment, pw=self._pw).render()))


def _split_cp(cp: str) -> tuple[str, list[str]]:
    """A CP's head (its first item: DataTime, SystemTime, ...) and the rest, for splitting."""
    head, *items = cp.split(";")
    return head, items


def _fields(cp: str) -> dict[str, str]:
    """``key=value`` pairs of a request's CP (items separated by ; or ,)."""
    pairs = (item.partition("=") for item in cp.replace(",", ";").split(";"))
    return {key: value for key, eq, value in pairs if eq}


def decode(body: bytes) -> list[Reading]:
    """A body from :meth:`Hj212Sink.encode`."""
    readings = []
    for line in body.decode("utf-8").splitlines():
        sensor, quantity, value, unit, time_ns, quality = line.split("\t")
        readings.append(Reading(sensor, quantity, float(value), unit, int(time_ns), 0, "",
                                True, int(quality)))
    return readings


# --- the registry's entry -----------------------------------------------------------------------


def endpoint(url: str) -> Endpoint:
    """Where doctor's DNS and TCP probes go; HJ 212 has no TLS."""
    parts = urlsplit(url)
    return Endpoint(parts.hostname or "", parts.port or 0, tls=False)


def build(config: Config, settings: UplinkConfig, *, simulated: bool = False,
          wall: Callable[[], float] = time.time, data_dir: Path | None = None,
          external_time: ExternalTime | None = None) -> Hj212Sink:
    """The sink of an hj212:// ``[[uplink]]``, its archive in ``data_dir``. ``simulated``
    marks nothing: HJ 212 has no place for it (a rehearsal must not be pointed at a bureau's
    platform). A ConfigError when two sensors would report under one code."""
    if settings.hj212 is None or data_dir is None:
        raise ValueError(f"uplink '{settings.name}' needs its HJ 212 settings and a data "
                         "directory")
    hj = settings.hj212
    found = sources(config, settings)
    expected = {code: interval for code, (_, interval) in found.items()}
    codes_of: dict[str, list[str]] = {}
    for code, (sensor, _) in found.items():
        codes_of.setdefault(sensor, []).append(code)
    kinds = [Kind(cn, hj.minute_interval if cn == CN_MINUTE else 0)
             for kind, cn in KINDS.items() if kind in hj.send]
    archive = Archive(archive_path(data_dir, settings.name), zone=ZoneInfo(hj.timezone),
                      kinds=kinds, expected=expected, keep_days=hj.keep_days)
    where = endpoint(settings.url)
    return Hj212Sink(where.host, where.port, hj, archive, name=settings.name,
                     steps=sorted(set(expected.values())), codes_of=codes_of,
                     connect_timeout=settings.connect_timeout, wall=wall,
                     external_time=external_time)


def sources(config: Config, settings: UplinkConfig) -> dict[str, tuple[str, float]]:
    """Per pollutant code, the one sensor that reports it to this upstream and its sampling
    interval; a ConfigError naming both when two would."""
    from drivers.registry import DRIVERS  # the drivers are loaded by the run building this

    assert settings.hj212 is not None
    table = CodeTable(settings.hj212.codes, settings.hj212.units)
    found: dict[str, tuple[str, float]] = {}
    for sensor in config.sensors:
        driver = DRIVERS.get(sensor.driver)
        quantities = () if driver is None else driver.configured_quantities(sensor.options)
        for quantity in quantities:
            if not settings.takes(sensor.id, quantity):
                continue
            code = table.lookup(Reading(sensor.id, quantity, 0.0, "", 0, 0, "", True))
            if code is None:
                continue
            other = found.setdefault(code.code, (sensor.id, sensor.interval))
            if other[0] != sensor.id:
                raise ConfigError([
                    f"uplink '{settings.name}': {code.code} ({quantity}) would come from "
                    f"sensors '{other[0]}' and '{sensor.id}'; give the upstream sensors = "
                    f"[...] or map \"{sensor.id}.{quantity}\" to a code of its own in codes"])
    return found


def check_write(config: Config, settings: UplinkConfig, token: Secret | None,
                named: str | None) -> Verdict:
    """Doctor's probe: a TCP connection to the platform, opened and closed. HJ 212 has no way
    to check the password without sending data: the platform's data acknowledgement is the
    only word on it."""
    if token is None:
        return Verdict("FAIL", "no password (PW) for the platform", NO_PW_HINT)
    where = endpoint(settings.url)
    try:
        with socket.create_connection((where.host, where.port),
                                      timeout=settings.connect_timeout):
            pass
    except OSError as exc:
        return Verdict("FAIL", f"cannot connect to {where.host}:{where.port}: "
                       f"{exc.strerror or exc}", "see the dns and tcp checks")
    return Verdict("PASS", f"the platform takes TCP connections; a password from {named} is "
                   "ready. HJ 212 has no TLS and no authentication check beyond the platform's "
                   "data acknowledgement (CN 9014): the first delivery says whether PW and MN "
                   "are right", None)


TRANSPORT = Transport("HJ 212", build, endpoint, check_write)
