"""Two upstreams at once, against two real VictoriaMetrics servers (Debian's package).

The bureau's server is stopped for a while (``ENVAGENT_OUTAGE_S``, default 180 s) while the
agent runs: the network's server must go on receiving at the station's pace, nothing may leave
the outbox before both have it, and once the bureau's server is back it must receive the whole
backlog. At the end both hold exactly the readings the agent took -- 0 lost -- and the bureau's
server, which keeps every copy it is sent (no dedup flag), shows that any reading it got twice
came byte-identical (same series, time and value).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from agent_process import ROOT, SYSTEMD_VARIABLES, envagent
from victoriametrics import FLAGS, VictoriaMetrics, require_binary, start, stop

from agent.store.outbox import Outbox

OUTAGE_S = float(os.environ.get("ENVAGENT_OUTAGE_S", "180"))
UNIT = "two-1"
WAIT_S = 30.0  # for a server to show what the agent sent (a flush interval and a backoff)
DERIVED = ("_q", "_nonfinite")  # fields that go with a reading, not readings of their own


def station(tmp_path: Path, network: str, bureau: str) -> Path:
    config = tmp_path / "station.toml"
    config.write_text(
        f'[unit]\nid = "{UNIT}"\nsite = "lake"\n[storage]\ncommit_interval = "1s"\n'
        '[[sensor]]\nid = "air"\ndriver = "bme280"\naddress = 0x76\ninterval = "1s"\n'
        '[health]\ninterval = "30s"\n'
        + "".join(f'[[uplink]]\nname = "{name}"\nurl = "{url}/write"\nallow_insecure = true\n'
                  'flush_interval = "1s"\nbackoff_min = "0.5s"\nbackoff_max = "2s"\n'
                  for name, url in (("network", network), ("bureau", bureau))),
        encoding="utf-8")
    return config


def points(server: VictoriaMetrics) -> dict[tuple[Any, ...], list[float]]:
    """(metric, tags, ms) -> every value the server holds for it, for this unit's readings."""
    found: dict[tuple[Any, ...], list[float]] = defaultdict(list)
    for series in server.query_export(f'{{unit="{UNIT}"}}'):
        metric = dict(series["metric"])
        name = metric.pop("__name__")
        if name.endswith(DERIVED):
            continue
        key = (name, tuple(sorted(metric.items())))
        for ms, value in zip(series["timestamps"], series["values"], strict=True):
            found[(*key, ms)].append(value)
    return found


def wait_for(what: str, test: Any, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not test():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        time.sleep(0.5)


# No dedup on the bureau's server: it keeps every copy it gets, so a replay shows.
KEEP_COPIES = tuple(f for f in FLAGS if not f.startswith("-dedup"))


def test_one_upstream_down_holds_back_neither_the_other_nor_any_reading(
        tmp_path: Path) -> None:
    binary = require_binary()
    network_dir, bureau_dir = tmp_path / "network", tmp_path / "bureau"
    network_dir.mkdir()
    bureau_dir.mkdir()
    network = start(binary, network_dir)
    bureau: VictoriaMetrics | None = None
    try:
        bureau = start(binary, bureau_dir, flags=KEEP_COPIES)
        run_with_an_outage(tmp_path, binary, network, bureau, bureau_dir)
    finally:
        stop(network)
        if bureau is not None:
            stop(bureau)


def run_with_an_outage(tmp_path: Path, binary: str, network: VictoriaMetrics,
                       bureau: VictoriaMetrics, bureau_dir: Path) -> None:
    config, data = station(tmp_path, network.url, bureau.url), tmp_path / "data"
    outbox_path = data / "outbox.sqlite"
    duration = 15 + OUTAGE_S + 25
    env = {k: v for k, v in os.environ.items() if k not in SYSTEMD_VARIABLES}
    with (tmp_path / "agent.log").open("w") as log:
        agent = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--simulate", "--deliver", "--config",
             str(config), "--data-dir", str(data), "--duration", str(duration)],
            cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
            env={**env, "PYTHONPATH": str(ROOT)})
    restarted: VictoriaMetrics | None = None
    try:
        wait_for("both servers receive", lambda: points(network) and points(bureau))
        stop(bureau)
        outage_ends = time.monotonic() + OUTAGE_S
        time.sleep(max(0.0, OUTAGE_S - 10))
        with Outbox.open_readonly(outbox_path) as outbox:
            stats, cursors = outbox.stats(), {c.name: c for c in outbox.upstreams()}
        # The bureau's share grew all along; nothing it lacks has left the outbox.
        sampled_during = 3 * (OUTAGE_S - 15)  # the BME280's three quantities a second
        assert cursors["bureau"].backlog >= sampled_during, cursors
        assert stats.backlog >= cursors["bureau"].backlog
        # The network's server is current: what was stored then reaches it within seconds.
        assert cursors["network"].backlog < cursors["bureau"].backlog / 4, cursors
        stored = stats.added
        wait_for("the network's server keeps up while the bureau's is down",
                 lambda: len(points(network)) >= stored - 20)  # a health sample in flight
        time.sleep(max(0.0, outage_ends - time.monotonic()))
        restarted = start(binary, bureau_dir, port=int(bureau.url.rsplit(":", 1)[1]),
                          flags=KEEP_COPIES)
        assert agent.wait(duration + 60) == 0, (tmp_path / "agent.log").read_text()[-3000:]
        # What the last commit stored after the stop began goes with a sync.
        synced = envagent("sync", "--simulate", "--deliver", "--config", config, "--data-dir",
                          data, cwd=tmp_path, timeout=120)
        assert synced.returncode == 0, synced.stderr
        with Outbox.open_readonly(outbox_path) as outbox:
            final = outbox.stats()
        assert (final.backlog, final.dropped, final.rejected) == (0, 0, 0), final
        got_network, got_bureau = points(network), points(restarted)
        # 0 lost: both hold every reading the agent took, and nothing else.
        assert set(got_network) == set(got_bureau)
        assert len(got_bureau) == final.added, (len(got_bureau), final.added)
        # Replays only byte-identical: every copy the bureau got of a reading is the same.
        for key, values in got_bureau.items():
            assert all(v == values[0] or (math.isnan(v) and math.isnan(values[0]))
                       for v in values), (key, values)
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        if restarted is not None:
            stop(restarted)
