"""A clean stop replays nothing (issue 11, point 4).

At a clean stop no new POST starts, and the one in flight gets a bounded grace
(``uplink.STOP_GRACE_S``) to be answered and acknowledged; only a crash or a power cut replays.
Before, a stop cut the POST in flight -- a POST the last commit's nudge had often just started
-- so the server kept a batch the outbox did not forget, and the next start sent it again.

- Deterministic, on the worker: a slow server (it answers after a second) gets its POST
  finished and acknowledged through a stop, and no second POST follows; a server that never
  answers still lets the stop end within the grace and a little.
- The daemon's order: the writer asks delivery to stop before its final commit, so that commit
  starts nothing.
- End to end, in-process: the real Service samples the simulated world for a few seconds and
  delivers through a slow recording proxy to a real VictoriaMetrics started WITHOUT
  ``-dedup.minScrapeInterval`` (so a replay shows as a second sample); it stops while a POST is
  in flight; a ``sync`` then delivers the rest. ``/api/v1/export`` must hold every reading once.
  The clock is the machine's, with its synchronised fact injected (DESIGN: Time), so the
  readings are not held back on a machine booted minutes ago.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import subprocess
import threading
import time
import tomllib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from httpfaults import parse_line
from recording_server import Exchange, RecordingServer
from test_uplink import make_uplink, samples
from victoriametrics import VictoriaMetrics, find_binary
from victoriametrics import stop as stop_victoriametrics

from agent.cli.hardware import open_buses
from agent.config import parse_config
from agent.core.reading import Reading
from agent.runtime.notify import Notifier
from agent.runtime.service import Service
from agent.sampling.daemon import Agent, make_drivers
from agent.store.outbox import Outbox, Subscriber
from agent.store.storage import ReopeningOutbox
from agent.uplink.worker import STOP_GRACE_S, Outcome, build_uplink
from drivers.clock import SystemClock
from drivers.registry import DRIVERS
from drivers.sim.clock import SimulatedClock

ONE = [Subscriber("default")]  # the one upstream of these tests


SLOW_ANSWER_S = 1.0  # the deterministic tests' server answers after this long
PROXY_DELAY_S = 2.5  # end to end: each POST stays in flight this long, well inside the grace
RUN_S = 5.0
STOP_SLACK_S = 1.0  # what a stop may take beyond the grace: ack, state file, joins
MEASUREMENT = "cleanstop"
HTTP_TIMEOUT_S = 10.0
VM_FLAGS = (  # tests/victoriametrics.py's, less -dedup.minScrapeInterval: replays must show
    "-retentionPeriod=100y", "-search.disableCache", "-search.latencyOffset=0s",
    "-loggerLevel=WARN",
)


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    with Outbox(tmp_path / "outbox.sqlite", max_bytes=64 * 1024**2, subscribers=ONE) as box:
        yield box


def answering_after(seconds: float) -> Any:
    def respond(exchange: Exchange) -> int:
        time.sleep(seconds)
        return 204

    return respond


# --- the worker ----------------------------------------------------------------------------------


def test_a_post_in_flight_at_a_stop_finishes_is_acked_and_none_follows(
        outbox: Outbox, tmp_path: Path) -> None:
    outbox.append(samples(300))  # 900 readings: two batches of up to 500
    with RecordingServer(answering_after(SLOW_ANSWER_S)) as server:
        uplink = make_uplink(server.url(), outbox, tmp_path, clock=SystemClock(),
                             flush_interval=3600.0, read_timeout=10.0, deadline=20.0)
        uplink.start()
        assert server.wait_for_request(0, 30.0)
        asked = time.monotonic()
        uplink.stop()
        took = time.monotonic() - asked
        time.sleep(0.3)  # a second POST, if one were started, would have arrived by now
        exchanges = server.snapshot()
    assert len(exchanges) == 1, "a new POST started after the stop was asked"
    (first,) = exchanges
    assert first.status == 204 and first.finished is not None  # answered, not cut
    assert outbox.stats().backlog == 400 and outbox.stats().delivered == 500  # acked
    assert took < SLOW_ANSWER_S + STOP_SLACK_S


def test_a_server_that_never_answers_holds_a_stop_for_the_grace_only(
        outbox: Outbox, tmp_path: Path) -> None:
    outbox.append(samples(10))
    release = threading.Event()

    def never(exchange: Exchange) -> int:
        release.wait(120)
        return 204

    with RecordingServer(never) as server:
        uplink = make_uplink(server.url(), outbox, tmp_path, clock=SystemClock(),
                             deadline=60.0, read_timeout=60.0)
        uplink.start()
        assert server.wait_for_request(0, 30.0)
        asked = time.monotonic()
        uplink.stop()
        took = time.monotonic() - asked
        release.set()
    assert STOP_GRACE_S - 0.1 <= took < STOP_GRACE_S + STOP_SLACK_S, took
    assert outbox.stats().backlog == 30  # cut after the grace: the batch stays
    assert len(server.snapshot()) == 1


def test_no_post_starts_once_the_stop_was_asked(outbox: Outbox, tmp_path: Path) -> None:
    """``request_stop`` (the writer's ``on_stop``) refuses new POSTs at once, without waiting;
    the worker then ends by itself, nothing sent."""
    with RecordingServer() as server:
        uplink = make_uplink(server.url(), outbox, tmp_path, clock=SystemClock(),
                             flush_interval=3600.0)
        uplink.start()
        uplink.request_stop()
        outbox.append(samples(5))
        uplink.nudge()  # the final commit's nudge, racing the stop
        uplink.stop()
        assert not server.snapshot()
        assert uplink.sink.send(b"x", None).outcome is Outcome.STOPPED
    assert outbox.stats().backlog == 15


def test_the_writer_asks_delivery_to_stop_before_its_final_commit(tmp_path: Path) -> None:
    config = parse_config(tomllib.loads('[unit]\nid = "u"\nsite = "s"\n'), drivers={})
    calls: list[str] = []
    with Outbox(tmp_path / "outbox.sqlite", max_bytes=1 << 20, subscribers=ONE) as box:
        # The real clock: on a FakeClock the runner's wait for the commit jumps the shared
        # time 30 s ahead, and the commit job may run before the 0.5 s have "passed".
        agent = Agent(config, [], outbox=box, clock=SystemClock(), boot_id="b")
        agent.on_stop = lambda: calls.append("stop")
        agent.on_commit = lambda urgent: calls.append("commit")
        agent.submit(samples(1))
        agent.run(duration=0.5)  # shorter than the commit interval: only the final commit
        assert box.stats().backlog == 3
    assert calls[:1] == ["stop"]  # delivery stops taking batches before the final commit


# --- end to end: the Service, a slow proxy, VictoriaMetrics without dedup -------------------------


@pytest.fixture(scope="module")
def vm_without_dedup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VictoriaMetrics]:
    binary = find_binary()
    if binary is None:
        pytest.skip("victoria-metrics is not installed (apt-get install victoria-metrics)")
    directory = tmp_path_factory.mktemp("vm-nodedup")
    server = None
    for _ in range(3):  # the free port may be taken between choosing and binding it
        server = _start_vm(binary, directory)
        if server is not None:
            break
    assert server is not None, (directory / "victoria-metrics.log").read_text(errors="replace")
    try:
        yield server
    finally:
        stop_victoriametrics(server)


def _start_vm(binary: str, directory: Path) -> VictoriaMetrics | None:
    """tests/victoriametrics.py's start, with VM_FLAGS; None when it did not come up."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log_path = directory / "victoria-metrics.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(  # noqa: S603 - the packaged binary
            [binary, f"-httpListenAddr=127.0.0.1:{port}",
             f"-storageDataPath={directory / 'data'}", *VM_FLAGS],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    server = VictoriaMetrics(f"http://127.0.0.1:{port}", log_path, process)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if requests.get(f"{server.url}/health", timeout=1).status_code == 200:
                return server
        except requests.ConnectionError:
            pass
        time.sleep(0.05)
    stop_victoriametrics(server)
    return None


def slow_proxy(vm: VictoriaMetrics, delay: float) -> Any:
    """Store the batch upstream at once, answer ``delay`` later: a stop cutting the answer
    leaves a batch the store has and the outbox still holds."""

    def respond(exchange: Exchange) -> int:
        response = requests.post(
            f"{vm.url}{exchange.path}", data=exchange.raw, timeout=HTTP_TIMEOUT_S,
            headers={"Content-Encoding": exchange.headers.get("content-encoding", "identity"),
                     "Content-Type": exchange.headers.get("content-type", "text/plain")})
        time.sleep(delay)
        return response.status_code

    return respond


def station_config(data: Path, url: str) -> Any:
    text = (f'[unit]\nid = "stop-001"\nsite = "roof"\n[storage]\npath = "{data}"\n'
            'commit_interval = "1s"\n'
            '[[sensor]]\nid = "air"\ndriver = "bme280"\naddress = 0x76\ninterval = "1s"\n'
            f'[uplink]\nurl = "{url}"\nallow_insecure_http = true\n'
            f'measurement = "{MEASUREMENT}"\nflush_interval = "1s"\n')
    return parse_config(tomllib.loads(text), source="stop.toml")


def run_service(config: Any, data: Path, clock: SystemClock, seconds: float,
                asked: list[float]) -> None:
    """``envagent run --simulate --duration`` in this process, with ``clock``; ``asked``
    gets the time delivery was asked to stop."""
    with (open_buses(config, clock, simulate=True) as buses,
          ReopeningOutbox(data / "outbox.sqlite", max_bytes=config.storage.max_bytes,
                          clock=clock, subscribers=ONE) as box):
        agent = Agent(config, make_drivers(config, buses, clock, DRIVERS), outbox=box,
                      clock=clock, boot_id="boot-of-the-clean-stop", commission_dir=data)
        uplink = build_uplink(config, config.uplinks[0], box, clock, data,
                              held_boot=agent.timekeeper.held_boot)
        request_stop = uplink.request_stop

        def noting() -> None:
            request_stop()
            if not asked:  # the writer's on_stop; Uplink.stop asks again
                asked.append(time.monotonic())

        uplink.request_stop = noting  # type: ignore[method-assign]
        Service(config, agent, box, [uplink], clock=clock,
                notifier=Notifier({})).run(duration=seconds)


def sync(config: Any, data: Path, url: str, clock: SystemClock) -> None:
    """``envagent sync``, straight to the store."""
    direct = dataclasses.replace(config.uplinks[0], url=url)
    with Outbox(data / "outbox.sqlite", max_bytes=config.storage.max_bytes, subscribers=ONE) as box:
        uplink = build_uplink(config, direct, box, clock, data)
        try:
            report = uplink.flush()
        finally:
            uplink.sink.close()
        assert report.ok and box.stats().backlog == 0, report


def exported(vm: VictoriaMetrics) -> list[dict[str, Any]]:
    vm.flush()
    response = requests.get(f"{vm.url}/api/v1/export",
                            params={"match[]": f'{{__name__=~"{MEASUREMENT}_.*"}}',
                                    "end": str(int(time.time()) + 86_400)},
                            timeout=HTTP_TIMEOUT_S)
    response.raise_for_status()
    return [json.loads(line) for line in response.text.splitlines() if line.strip()]


def test_this_victoriametrics_keeps_a_replay_as_a_second_sample(
        vm_without_dedup: VictoriaMetrics) -> None:
    """Else the end-to-end test below could not see a replay."""
    line = "cleanstop_probe,unit=t value=1 1767225600000000000\n"
    vm_without_dedup.write(line)
    vm_without_dedup.write(line)
    (probe,) = [s for s in exported(vm_without_dedup)
                if s["metric"]["__name__"] == "cleanstop_probe_value"]
    assert len(probe["timestamps"]) == 2
    vm_without_dedup.delete_series('{__name__=~"cleanstop_probe.*"}')


def test_a_clean_stop_then_sync_puts_every_point_in_once(
        vm_without_dedup: VictoriaMetrics, tmp_path: Path) -> None:
    vm = vm_without_dedup
    vm.delete_series(f'{{__name__=~"{MEASUREMENT}_.*"}}')
    data, clock, asked = tmp_path / "data", SimulatedClock(synced=True), list[float]()
    with RecordingServer(slow_proxy(vm, PROXY_DELAY_S)) as proxy:
        config = station_config(data, proxy.url())
        run_service(config, data, clock, RUN_S, asked)
        stopped = time.monotonic()
        exchanges = proxy.snapshot()
    assert len(asked) == 1
    in_flight = [e for e in exchanges if e.received <= asked[0] and
                 (e.answered is None or e.answered >= asked[0])]
    assert in_flight, "no POST was in flight at the stop: the test proved nothing"
    assert all(e.status == 204 for e in exchanges), [e.status for e in exchanges]
    assert not [e for e in exchanges if e.received > asked[0] + STOP_SLACK_S]
    assert stopped - asked[0] < STOP_GRACE_S + 2 * STOP_SLACK_S + 2.0  # + sensor joins

    with Outbox(data / "outbox.sqlite", max_bytes=1 << 26, subscribers=ONE) as box:
        sent = {(r.sensor, r.quantity, r.time_ns) for r in _lines(exchanges)}
        assert box.stats().delivered == len(sent)  # every batch the proxy saw was acked
    sync(config, data, vm.write_url, clock)

    series = exported(vm)
    assert series, "nothing reached VictoriaMetrics"
    twice = {s["metric"]["__name__"]: [t for t, n in Counter(s["timestamps"]).items() if n > 1]
             for s in series}
    assert not {name: ts for name, ts in twice.items() if ts}, "replayed points"
    with Outbox(data / "outbox.sqlite", max_bytes=1 << 26, subscribers=ONE) as box:
        stats = box.stats()
    assert stats.delivered == stats.added and stats.backlog == 0


def _lines(exchanges: list[Exchange]) -> list[Reading]:
    """The readings in the line-protocol bodies the proxy saw (value, unit and boot unused)."""
    found = []
    for exchange in exchanges:
        for line in exchange.body.decode("utf-8").splitlines():
            _, tags, fields, stamp = parse_line(line)
            for name in fields:
                if not name.endswith("_q"):
                    found.append(Reading(tags["sensor"], name.removesuffix("_nonfinite"), 0.0,
                                         "", stamp, 0, "", True))
    return found
