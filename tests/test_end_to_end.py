"""Store and forward, end to end: the real ``envagent`` process, simulated sensors, a real
VictoriaMetrics -- every reading committed arrives exactly once, value for value, at its time.

What is compared with what:

- Offline first: the agent runs without ``[uplink]``, so every reading it committed is still in
  the outbox; the test reads them (read-only) as the truth, then ``envagent sync`` delivers them
  and VictoriaMetrics' ``/api/v1/export`` must hold exactly those points -- per series, timestamp
  for timestamp (ms, truncated), value for value (to the ~12 significant digits VictoriaMetrics
  keeps), the unicode ``site`` label intact. The runs are rehearsals (``--simulate``), so they
  deliver with ``--deliver`` and every series carries the label ``simulated="true"``.
- Replays: the outbox copied before the sync is put back and synced again (the agent was told 2xx
  but died before its ack committed), and that batch is also POSTed once more by the test: the
  agent's second body is byte-identical to the first and the store still holds one point each
  (``-dedup.minScrapeInterval=1ms``, see tests/victoriametrics.py).
- Live: the agent samples and delivers at once for a few seconds, through a recording proxy that
  forwards every request to VictoriaMetrics and answers the first one 503 *after* forwarding it
  (stored upstream, failed for the agent). The proxy sees every byte that reached the store, and
  the outbox counters say how many readings were committed: the distinct readings sent must be
  exactly that many, all acknowledged, and the store must hold each once.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import requests
from httpfaults import parse_line
from recording_server import Exchange, RecordingServer, Respond
from victoriametrics import VictoriaMetrics

from agent.core.credentials import CREDENTIALS_DIRECTORY, REFUSED_VARIABLES
from agent.core.reading import Reading
from agent.store.outbox import Outbox, OutboxStats
from drivers.base import Quality

ROOT = Path(__file__).resolve().parents[1]
SITE = "汉中 wetland, east"
# sensor id -> (driver, address, the quantities one sample of it holds)
SENSORS = {
    "air": ("bme280", 0x76, {"temperature", "humidity", "pressure"}),
    "soil": ("sht4x", 0x44, {"temperature", "humidity"}),
}
DRIVERS = {sensor: driver for sensor, (driver, _, _) in SENSORS.items()}
NS_PER_MS = 1_000_000
# VictoriaMetrics stores a value as a decimal mantissa and exponent with about 12 significant
# digits (lib/decimal/decimal.go: conversionPrecision = 1e12): 6.190203707942324 comes back as
# 6.190203707942. Timestamps are compared exactly; values to this relative precision.
VM_REL_PRECISION = 1e-11
HTTP_TIMEOUT_S = 10.0
EXPORT_AHEAD_S = 86_400.0  # the export's end, ahead of now: see exported()
PROCESS_TIMEOUT_S = 120.0  # generous: a loaded 2-core machine; never a speed assertion

Labels = tuple[tuple[str, str], ...]  # a series' labels, __name__ included, sorted
Series = dict[Labels, list[tuple[int, float]]]  # labels -> [(timestamp ms, value)], oldest first
ReadingKey = tuple[str, str, int]  # sensor, quantity, time_ns


# --- helpers -------------------------------------------------------------------------------------


def envagent(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The real command, as a separate process, with no token or systemd in its environment."""
    dropped = {*REFUSED_VARIABLES, CREDENTIALS_DIRECTORY, "NOTIFY_SOCKET", "WATCHDOG_USEC",
               "WATCHDOG_PID"}
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    return subprocess.run([sys.executable, "-m", "agent", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=PROCESS_TIMEOUT_S,
                          env={**env, "PYTHONPATH": str(ROOT)})


def station(path: Path, *, unit: str, measurement: str, url: str | None = None) -> Path:
    """A station config: the sensors at 1 s, commits every 1 s, optionally an [uplink]."""
    text = f'[unit]\nid = "{unit}"\nsite = "{SITE}"\n[storage]\ncommit_interval = "1s"\n'
    for sensor, (driver, address, _) in SENSORS.items():
        text += (f'[[sensor]]\nid = "{sensor}"\ndriver = "{driver}"\naddress = 0x{address:02x}\n'
                 'interval = "1s"\n')
    if url is not None:
        token_file = path.with_name("upload-token")
        token_file.write_text("any-token-victoriametrics-ignores\n")
        token_file.chmod(0o600)
        text += (f'[uplink]\nurl = "{url}"\nallow_insecure_http = true\n'
                 f'token_file = "{token_file}"\nmeasurement = "{measurement}"\n'
                 'flush_interval = "1s"\nbackoff_min = "100ms"\nbackoff_max = "1s"\n')
    path.write_text(text, encoding="utf-8")
    return path


def outbox_contents(data: Path) -> tuple[list[Reading], OutboxStats]:
    with Outbox.open_readonly(data / "outbox.sqlite") as outbox:
        # a kill before the first start subscribed the upstream leaves an outbox without cursors
        upstream = "default" if outbox.upstreams() else None
        return [s.reading for s in outbox.take(10**6, upstream=upstream)], outbox.stats()


def forward_to(vm: VictoriaMetrics, *, fail: Iterable[int] = ()) -> Respond:
    """A proxy's answer: forward the body to VictoriaMetrics as it came, answer with its status
    -- except for the requests numbered in ``fail`` (0 is the first), answered 503 after the
    store has them."""
    failing, count = set(fail), iter(range(10**9))

    def respond(exchange: Exchange) -> int:
        response = requests.post(
            f"{vm.url}{exchange.path}", data=exchange.raw, timeout=HTTP_TIMEOUT_S,
            headers={"Content-Encoding": exchange.headers.get("content-encoding", "identity"),
                     "Content-Type": exchange.headers.get("content-type", "text/plain")})
        return 503 if next(count) in failing else response.status_code

    return respond


def labels(measurement: str, field: str, unit: str, sensor: str,
           uplink: str | None = None) -> Labels:
    """A series' labels: the tags of its line (no ``driver`` for a sensor id the configuration
    does not name, such as the unit's own health readings; ``uplink`` on the agent's readings
    about one upstream) plus the metric name."""
    metric = {"__name__": f"{measurement}_{field}", "unit": unit, "sensor": sensor, "site": SITE,
              "simulated": "true"}  # a rehearsal's (agent.store.rehearsal)
    if sensor in DRIVERS:
        metric["driver"] = DRIVERS[sensor]
    if uplink is not None:
        metric["uplink"] = uplink
    return tuple(sorted(metric.items()))


def expected_from_readings(readings: list[Reading], *, measurement: str, unit: str) -> Series:
    """What the store must hold for these readings, by the documented line-protocol mapping:
    ``<measurement>_<quantity>`` per value, ``<quantity>_q`` with the quality bits when they are
    not 0 (CLOCK_UNSYNCED added when the clock was not synchronised); tags as labels."""
    series: Series = {}
    for r in readings:
        ms = r.time_ns // NS_PER_MS
        series.setdefault(labels(measurement, r.quantity, unit, r.sensor), []).append(
            (ms, r.value))
        quality = r.quality | (Quality.CLOCK_UNSYNCED if r.synced is False else 0)
        if quality:
            series.setdefault(labels(measurement, f"{r.quantity}_q", unit, r.sensor), []).append(
                (ms, float(quality)))
    return {k: sorted(v) for k, v in series.items()}


def exported(vm: VictoriaMetrics, measurement: str) -> Series:
    """Every point of the measurement's series, from ``/api/v1/export``.

    Not ``VictoriaMetrics.query_export``: without an ``end`` the export of 1.79.5 leaves out the
    points of roughly the last second (its default end lags the clock), and these points are that
    fresh. An explicit end a day ahead returns them all; the harness' old-timestamp tests never
    notice.
    """
    vm.flush()
    params = {"match[]": f'{{__name__=~"{measurement}_.*"}}',
              "end": f"{time.time() + EXPORT_AHEAD_S:.3f}"}
    response = requests.get(f"{vm.url}/api/v1/export", params=params, timeout=HTTP_TIMEOUT_S)
    response.raise_for_status()
    series: Series = {}
    for line in response.text.splitlines():
        s = json.loads(line)
        key = tuple(sorted(s["metric"].items()))
        assert key not in series, f"export returned the series {key} twice"
        series[key] = list(zip(s["timestamps"], s["values"], strict=True))
    return series


def assert_same_series(got: Series, want: Series) -> None:
    """The same series, the same points (timestamps exact, values to VictoriaMetrics' precision),
    with a message that names the first difference rather than two long dicts."""
    for key, points in got.items():
        stamps = [t for t, _ in points]
        assert len(stamps) == len(set(stamps)), f"{key}: duplicate points {points}"
    assert set(got) == set(want), (sorted(set(got) - set(want)), sorted(set(want) - set(got)))
    for key in want:
        same = [t for t, _ in got[key]] == [t for t, _ in want[key]] and all(
            math.isclose(g, w, rel_tol=VM_REL_PRECISION)
            for (_, g), (_, w) in zip(got[key], want[key], strict=True))
        assert same, f"{key}:\n got  {got[key]}\n want {want[key]}"


def assert_samples_complete(readings: Iterable[ReadingKey], *, at_least: int) -> None:
    """Every sensor sampled ``at_least`` times, each sample with all its driver's quantities
    (other readings, such as the agent's health, are left aside)."""
    by_sample: dict[tuple[str, int], set[str]] = {}
    for sensor, quantity, time_ns in readings:
        if sensor in SENSORS and quantity in SENSORS[sensor][2]:
            by_sample.setdefault((sensor, time_ns), set()).add(quantity)
    for sensor, (_, _, quantities) in SENSORS.items():
        samples = [q for (s, _), q in by_sample.items() if s == sensor]
        assert len(samples) >= at_least, f"{sensor}: {len(samples)} sample(s)"
        assert all(q == quantities for q in samples), (sensor, samples)


# --- offline, then sync -------------------------------------------------------------------------


def test_an_offline_backlog_synced_later_lands_exactly_once(victoriametrics: VictoriaMetrics,
                                                            tmp_path: Path) -> None:
    vm, unit, measurement = victoriametrics, "e2e-offline", "e2e_offline"
    vm.delete_series(f'{{__name__=~"{measurement}_.*"}}')
    data = tmp_path / "data"
    offline = station(tmp_path / "offline.toml", unit=unit, measurement=measurement)
    ran = envagent("run", "--simulate", "--config", offline, "--data-dir", data,
                   "--duration", "4", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr

    stored, stats = outbox_contents(data)
    assert len(stored) == stats.backlog == stats.added  # nothing delivered, nothing dropped
    assert_samples_complete(((r.sensor, r.quantity, r.time_ns) for r in stored), at_least=2)
    assert all(math.isfinite(r.value) for r in stored)  # the simulated world reads finite values
    want = expected_from_readings(stored, measurement=measurement, unit=unit)
    assert not (data / "outbox.sqlite-wal").exists()  # a clean stop leaves one file to copy
    shutil.copy2(data / "outbox.sqlite", tmp_path / "outbox-before-sync.sqlite")

    with RecordingServer(forward_to(vm)) as proxy:
        online = station(tmp_path / "online.toml", unit=unit, measurement=measurement,
                         url=proxy.url())
        synced = envagent("sync", "--simulate", "--deliver", "--config", online, "--data-dir",
                          data, "--json", cwd=tmp_path)
        assert synced.returncode == 0, synced.stderr
        report = json.loads(synced.stdout)
        assert (report["ok"], report["delivered"], report["backlog"]) == (True, len(stored), 0)
        assert_same_series(exported(vm, measurement), want)
        site_labels = {dict(key)["site"] for key in want}
        assert site_labels == {SITE}

        # The replay the contract allows: upstream stored the batch, the ack never committed.
        for end in ("-wal", "-shm"):
            Path(f"{data / 'outbox.sqlite'}{end}").unlink(missing_ok=True)
        shutil.copy2(tmp_path / "outbox-before-sync.sqlite", data / "outbox.sqlite")
        again = envagent("sync", "--simulate", "--deliver", "--config", online, "--data-dir",
                         data, "--json", cwd=tmp_path)
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["delivered"] == len(stored)
        first, second = proxy.snapshot()
        assert first.accepted and second.accepted
        assert second.raw == first.raw  # the very same bytes, gzip included
        assert_same_series(exported(vm, measurement), want)

    # And the same body once more, straight from the test.
    response = requests.post(f"{vm.url}{first.path}", data=first.raw, timeout=HTTP_TIMEOUT_S,
                             headers={"Content-Encoding": "gzip"})
    assert response.status_code == 204, response.text
    assert_same_series(exported(vm, measurement), want)


# --- sampling and delivering at once ------------------------------------------------------------


def points_in(bodies: Iterable[bytes], *, measurement: str, unit: str) -> Series:
    """Every point the bodies carry, as the store should show it; a point carried by several
    bodies must carry the same value in each."""
    points: dict[tuple[Labels, int], float] = {}
    for body in bodies:
        for line in body.decode("utf-8").splitlines():
            name, tags, fields, stamp = parse_line(line)
            assert name == measurement
            for field, value in fields.items():
                assert isinstance(value, int | float), (field, value)  # no non-finite strings
                point = (labels(measurement, field, unit, tags["sensor"], tags.get("uplink")),
                         stamp // NS_PER_MS)
                assert points.setdefault(point, float(value)) == float(value), (point, value)
                assert tags.get("driver") == DRIVERS.get(tags["sensor"]), tags
                assert tags["site"] == SITE and tags["unit"] == unit, tags
                assert tags["simulated"] == "true", tags  # a rehearsal's, marked as such
    series: Series = {}
    for (key, ms), value in sorted(points.items()):
        series.setdefault(key, []).append((ms, value))
    return series


def readings_in(bodies: Iterable[bytes]) -> set[ReadingKey]:
    """(sensor, quantity, time_ns) of every reading the bodies carry."""
    found = set()
    for body in bodies:
        for line in body.decode("utf-8").splitlines():
            _, tags, fields, stamp = parse_line(line)
            # the agent's readings about one upstream are stored as sensor envagent@<name>
            sensor = tags["sensor"] + (f"@{tags['uplink']}" if "uplink" in tags else "")
            found |= {(sensor, field, stamp) for field in fields if not field.endswith("_q")}
    return found


def test_sampling_while_delivering_lands_every_committed_reading_once(
        victoriametrics: VictoriaMetrics, tmp_path: Path) -> None:
    vm, unit, measurement = victoriametrics, "e2e-live", "e2e_live"
    vm.delete_series(f'{{__name__=~"{measurement}_.*"}}')
    data = tmp_path / "data"
    with RecordingServer(forward_to(vm, fail=[0])) as proxy:
        config = station(tmp_path / "live.toml", unit=unit, measurement=measurement,
                         url=proxy.url())
        ran = envagent("run", "--simulate", "--deliver", "--config", config, "--data-dir", data,
                       "--duration", "6", cwd=tmp_path)
        run_ended = time.monotonic()
        assert ran.returncode == 0, ran.stderr
        during_run = proxy.snapshot()
        synced = envagent("sync", "--simulate", "--deliver", "--config", config, "--data-dir",
                          data, "--json", cwd=tmp_path)
        assert synced.returncode == 0, synced.stderr
        exchanges = proxy.snapshot()

    # Delivery went on while the agent sampled; the refused first batch came back unchanged.
    assert any(e.accepted and e.answered is not None and e.answered < run_ended
               for e in during_run), [(e.status, len(e.body)) for e in during_run]
    assert exchanges[0].status == 503 and exchanges[1].raw == exchanges[0].raw
    assert all(e.complete for e in exchanges)

    # What was sent is what was committed: as many distinct readings as the outbox counted,
    # every one of them in an acknowledged body.
    _, stats = outbox_contents(data)
    assert (stats.backlog, stats.dropped, stats.rejected) == (0, 0, 0)
    sent = readings_in(e.body for e in exchanges)
    assert readings_in(e.body for e in exchanges if e.accepted) == sent
    assert len(sent) == stats.added == stats.delivered
    assert_samples_complete(sent, at_least=3)

    # And the store holds each point exactly once: everything that reached it, nothing more.
    want = points_in((e.body for e in exchanges), measurement=measurement, unit=unit)
    assert_same_series(exported(vm, measurement), want)
