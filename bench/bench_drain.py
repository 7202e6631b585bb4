"""Backlog drain: a million-reading outbox delivered to a local VictoriaMetrics by the real Uplink.

The backlog is what a station leaves after ~10 days offline: ``--sensors`` BME280s (3
quantities each) sampled every 10 s, appended through ``Outbox.append`` in commit-sized batches
(``--commit-readings``, default one 10 s commit of the station), on the real disk under
/var/tmp. ``agent.uplink.worker.Uplink.flush`` then drains it (take -> line protocol -> gzip ->
POST ->
ack, ``batch_size`` readings per request) into victoria-metrics started on 127.0.0.1 with a
fresh storage directory (tests/victoriametrics.py's harness).

Beside it, in the same run, the naive client: one ``requests.post`` per reading (a new
connection each, plain body). It runs on a smaller sample (``--naive-readings``) and its
figures are per reading, extrapolated to the backlog -- it would take minutes otherwise. It reads
its readings from memory, not from a database, which flatters it.

Figures: readings/s is wall time of the whole drain; client CPU is ``time.process_time`` of this
process (every thread) over the drain; wire bytes are the request bodies as sent (gzip for the
uplink), counted by a transport adapter mounted on the uplink's own session, plus the request
line and headers separately; server CPU is victoria-metrics' utime+stime from /proc. At the end
the bench asks VictoriaMetrics how many points it holds (one ``count_over_time`` query), so the
figure counts only readings that really arrived.

Several upstreams: the outbox keeps a cursor per upstream. The one-upstream drain goes through
the cursor of "default"; then the same backlog, built again, is drained by two upstreams at
once (two workers, two threads, each to its own measurement in the same VictoriaMetrics), and
the bench prints each one's readings/s beside the single upstream's: the cost of a second
cursor, measured in the same run.

Run:  .venv/bin/python bench/bench_drain.py [--readings N] [--batch-size N] [--naive-readings N]
"""

from __future__ import annotations

import argparse
import math
import os
import random
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from _vm import SCRATCH, count_points, running
from requests.adapters import HTTPAdapter

from agent.config import UplinkConfig
from agent.core.reading import Reading
from agent.core.timebase import NS
from agent.store.outbox import Outbox, Subscriber
from agent.uplink.http import HttpSink
from agent.uplink.httpwire import make_session
from agent.uplink.lineprotocol import LineProtocolEncoder
from agent.uplink.worker import Uplink
from drivers.clock import SystemClock

UNIT, SITE = "demo-001", "Hanzhong wetland, east boardwalk"  # config/envagent.example.toml
SENSOR_NAMES = ("air", "canopy", "soil", "water", "roof", "mast", "shed", "pond")
QUANTITIES = (("temperature", "°C"), ("humidity", "%RH"), ("pressure", "hPa"))
INTERVAL_NS = 10_000_000_000  # the example's sensor interval
BOOT_ID = "6f1c2b9e-5a57-4e1b-9d2c-3b8e0f4a7c11"
MAX_BYTES = 1 << 30  # the backlog must not hit the byte bound
TARGET_RATE = 100_000  # readings/s (the issue)
TARGET_CPU_US = 5.0  # client CPU per reading (the issue)
DEFAULT_BATCH = UplinkConfig(url="http://127.0.0.1/").batch_size  # the config default


class CountingAdapter(HTTPAdapter):
    """Counts what goes on the wire, as prepared: bodies, and request lines plus headers."""

    def __init__(self) -> None:
        super().__init__()
        self.requests = self.body_bytes = self.head_bytes = 0

    def send(self, request: requests.PreparedRequest, stream: bool = False,
             timeout: Any = None, verify: bool | str = True, cert: Any = None,
             proxies: Any = None) -> requests.Response:
        body = request.body
        self.requests += 1
        self.body_bytes += len(body) if isinstance(body, bytes | str) else 0
        self.head_bytes += head_bytes(request)
        return super().send(request, stream=stream, timeout=timeout, verify=verify, cert=cert,
                            proxies=proxies)


def head_bytes(request: requests.PreparedRequest) -> int:
    """``METHOD /path HTTP/1.1`` and the headers, each line with its CRLF, and the blank line."""
    size = len(f"{request.method} {request.path_url} HTTP/1.1\r\n")
    for key, value in request.headers.items():
        size += len(key) + len(value) + len(": \r\n")
    return size + len("\r\n") + len("Host: 127.0.0.1:65535\r\n")  # urllib3 adds Host


def readings(count: int, sensors: int, start_ns: int, rng: random.Random) -> Iterator[Reading]:
    """A station's samples, oldest first: ``sensors`` BME280s, 3 readings each per 10 s.

    Values move like weather and look like the driver's output: temperature in the chip's
    1/5120 degC steps, humidity and pressure as full-precision floats.
    """
    base = [(15.0 + 3 * i, 60.0 - 4 * i, 1003.0 - 0.5 * i) for i in range(sensors)]
    for n in range(math.ceil(count / (sensors * 3))):
        time_ns = start_ns + n * INTERVAL_NS
        day = math.sin(2 * math.pi * (n % 8640) / 8640)
        for i in range(sensors):
            t, h, p = base[i]
            values = (int((t + 6 * day + rng.gauss(0, 0.05)) * 5120) / 5120,
                      h - 15 * day + rng.gauss(0, 0.3), p + rng.gauss(0, 0.02))
            for (quantity, unit), value in zip(QUANTITIES, values, strict=True):
                yield Reading(SENSOR_NAMES[i], quantity, value, unit, time_ns,
                              time_ns - start_ns + 30 * NS, BOOT_ID, True)
                count -= 1
                if count == 0:
                    return


def build_backlog(outbox: Outbox, total: int, sensors: int, commit: int, start_ns: int) -> None:
    batch: list[Reading] = []
    for reading in readings(total, sensors, start_ns, random.Random(1)):
        batch.append(reading)
        if len(batch) == commit:
            outbox.append(batch)
            batch = []
    outbox.append(batch)


def cpu_of(pid: int) -> float:
    """utime + stime of a process, in seconds (/proc/<pid>/stat fields 14 and 15)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Result:
    readings: int
    wall_s: float
    cpu_s: float
    server_cpu_s: float
    requests: int
    body_bytes: int
    head_bytes: int

    @property
    def rate(self) -> float:
        return self.readings / self.wall_s

    def per_reading(self, value: float, scale: float = 1.0) -> float:
        return value / self.readings * scale


def drain(outbox: Outbox, url: str, sensors: int, batch_size: int, server_pid: int,
          backlog: int, names: tuple[str, ...] = ("default",)) -> list[Result]:
    """Each upstream of ``names`` drains the whole backlog, all at once (one thread each), to
    its own measurement; one Result per upstream, CPU and server CPU shared among them."""
    adapters, uplinks, reports = [], [], {}
    for name in names:
        settings = UplinkConfig(url=url, name=name, allow_insecure=True, batch_size=batch_size,
                                measurement="envagent" if name == "default" else f"two_{name}")
        encoder = LineProtocolEncoder(unit=UNIT, site=SITE, measurement=settings.measurement,
                                      drivers={s: "bme280" for s in SENSOR_NAMES[:sensors]})
        session = make_session()
        adapters.append(CountingAdapter())
        session.mount("http://", adapters[-1])
        sink = HttpSink(url, encoder, session, deadline=60.0, name=name)
        uplinks.append(Uplink(outbox, sink, settings, clock=SystemClock(), token=lambda: None))

    def flush(uplink: Uplink) -> None:
        reports[uplink.name] = uplink.flush()

    threads = [threading.Thread(target=flush, args=(u,)) for u in uplinks]
    server0, cpu0, wall0 = cpu_of(server_pid), time.process_time(), time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    server = cpu_of(server_pid) - server0
    results = []
    for uplink, adapter in zip(uplinks, adapters, strict=True):
        uplink.sink.close()
        report = reports.get(uplink.name)
        if report is None or not report.ok or report.delivered != backlog:
            raise SystemExit(f"the drain to {uplink.name} failed: {report}")
        results.append(Result(report.delivered, wall, cpu / len(names), server / len(names),
                              adapter.requests, adapter.body_bytes, adapter.head_bytes))
    return results


def naive(url: str, sample: list[Reading], server_pid: int) -> Result:
    """One reading per ``requests.post`` (no session: a new connection each), plain body."""
    encoder = LineProtocolEncoder(unit=UNIT, site=SITE, drivers={r.sensor: "bme280"
                                                                 for r in sample},
                                  measurement="naive")
    write = f"{url}?precision=ns"
    body_bytes = head = 0
    server0, cpu0, wall0 = cpu_of(server_pid), time.process_time(), time.perf_counter()
    for reading in sample:
        body = encoder.encode([reading])
        response = requests.post(write, data=body, timeout=10)
        if response.status_code != 204:
            raise SystemExit(f"naive POST answered {response.status_code}: {response.text}")
        body_bytes += len(body)
        if not head:
            head = head_bytes(response.request)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    server = cpu_of(server_pid) - server0
    return Result(len(sample), wall, cpu, server, len(sample), body_bytes, head * len(sample))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readings", type=int, default=1_000_000, help="backlog size")
    parser.add_argument("--sensors", type=int, default=4, choices=range(1, 9), metavar="1..8")
    parser.add_argument("--commit-readings", type=int, default=0,
                        help="readings per append (default: one 10 s commit, sensors x 3)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH,
                        help="uplink.batch_size (default: the config default)")
    parser.add_argument("--naive-readings", type=int, default=5_000)
    args = parser.parse_args()
    commit = args.commit_readings or args.sensors * 3

    samples = math.ceil(args.readings / (args.sensors * 3))
    start_ns = (time.time_ns() // INTERVAL_NS - samples - 360) * INTERVAL_NS  # ends ~1 h ago
    with tempfile.TemporaryDirectory(prefix="envagent-bench-drain-", dir=SCRATCH) as tmp, \
            running() as server:
        outbox = Outbox(Path(tmp) / "outbox.sqlite", max_bytes=MAX_BYTES,
                        subscribers=[Subscriber("default")])
        built = time.perf_counter()
        build_backlog(outbox, args.readings, args.sensors, commit, start_ns)
        built = time.perf_counter() - built
        stats = outbox.stats()
        print(f"backlog: {stats.backlog:,} readings ({args.sensors} BME280 x 3 quantities, 10 s "
              f"apart, {commit} per commit) in {built:.1f} s; outbox "
              f"{stats.backlog_bytes / 2**20:.1f} MiB live under {SCRATCH}")

        (ours,) = drain(outbox, server.write_url, args.sensors, args.batch_size,
                        server.process.pid, stats.backlog)
        end_s = (start_ns + samples * INTERVAL_NS) / NS
        held = count_points(server, "envagent_.*", start_ns / NS, end_s)
        left = outbox.stats().backlog
        outbox.close()

        pair = ("a", "b")
        outbox = Outbox(Path(tmp) / "two.sqlite", max_bytes=MAX_BYTES,
                        subscribers=[Subscriber(name) for name in pair])
        build_backlog(outbox, args.readings, args.sensors, commit, start_ns)
        two = drain(outbox, server.write_url, args.sensors, args.batch_size,
                    server.process.pid, stats.backlog, pair)
        held_two = [count_points(server, f"two_{name}_.*", start_ns / NS, end_s)
                    for name in pair]
        left_two = outbox.stats().backlog
        outbox.close()

        sample = list(readings(args.naive_readings, args.sensors, start_ns, random.Random(2)))
        theirs = naive(server.write_url, sample, server.process.pid)
        held_naive = count_points(server, "naive_.*", start_ns / NS, end_s)

    # No figures unless every reading arrived: a short count would flatter every rate below.
    short = [f"{what}: {got:,} of {want:,}" for what, got, want in (
        ("envagent", held, ours.readings), ("naive", held_naive, theirs.readings),
        *((f"upstream {name}", got, stats.backlog) for name, got in zip(pair, held_two,
                                                                           strict=True)))
        if got != want]
    if short or left or left_two:
        raise SystemExit(f"VictoriaMetrics does not hold every reading ({'; '.join(short)}; "
                         f"left in the outboxes: {left}, {left_two}): no figures")
    print(f"\ndrain of {ours.readings:,} readings, uplink.batch_size {args.batch_size}; naive "
          f"measured on {theirs.readings:,} readings, extrapolated per reading")
    print(f"{'client':<22} {'readings/s':>11} {'1M in s':>8} {'CPU µs/rdg':>11} "
          f"{'body B/rdg':>11} {'head B/rdg':>11} {'requests':>9} {'VM CPU µs/rdg':>14}")
    for name, r in (("envagent Uplink", ours), ("naive requests.post", theirs)):
        print(f"{name:<22} {r.rate:>11,.0f} {1e6 / r.rate:>8.1f} "
              f"{r.per_reading(r.cpu_s, 1e6):>11.2f} {r.per_reading(r.body_bytes):>11.2f} "
              f"{r.per_reading(r.head_bytes):>11.2f} {r.requests:>9,} "
              f"{r.per_reading(r.server_cpu_s, 1e6):>14.2f}")
    cpu_ours, cpu_naive = ours.per_reading(ours.cpu_s), theirs.per_reading(theirs.cpu_s)
    body_ratio = ours.per_reading(ours.body_bytes) / theirs.per_reading(theirs.body_bytes)
    server_ratio = ours.per_reading(ours.server_cpu_s) / theirs.per_reading(theirs.server_cpu_s)
    print(f"ratio envagent/naive: readings/s {ours.rate / theirs.rate:.0f}x, CPU per reading "
          f"{cpu_ours / cpu_naive:.4f}, body bytes per reading {body_ratio:.3f}, server CPU per "
          f"reading {server_ratio:.3f}")
    print(f"VictoriaMetrics holds {held:,} envagent readings (expected {ours.readings:,}), "
          f"{held_naive:,} naive readings (expected {theirs.readings:,}); outbox backlog left: "
          f"{left}")
    print(f"\ntwo upstreams draining the same {stats.backlog:,} readings at once, each to its "
          "own measurement:")
    for name, r, got in zip(pair, two, held_two, strict=True):
        print(f"  upstream {name}: {r.rate:,.0f} readings/s ({r.rate / ours.rate:.2f}x the single "
              f"upstream's), {r.per_reading(r.cpu_s, 1e6):.2f} client CPU µs/reading; "
              f"VictoriaMetrics holds {got:,}")
    print(f"  together: {sum(r.readings for r in two) / two[0].wall_s:,.0f} readings/s; outbox "
          f"backlog left: {left_two}")
    rate_ok, cpu_ok = ours.rate >= TARGET_RATE, cpu_ours * 1e6 <= TARGET_CPU_US
    print(f"target readings/s >= {TARGET_RATE:,}: {'met' if rate_ok else 'MISSED'}; "
          f"client CPU <= {TARGET_CPU_US} µs/reading: {'met' if cpu_ok else 'MISSED'}")


if __name__ == "__main__":
    main()
