"""Disk writes per stored reading: the outbox at realistic commit sizes beside one sqlite-utils
``insert()`` per reading.

The readings are the shipped example station's (config/envagent.example.toml): each configured
sensor is read once on the simulated world, and its quantities, units and values are repeated
every 10 s. The station's own commit size is what ``storage.commit_interval`` collects from all
its sensors; a few other batch sizes show how the cost falls with bigger commits. One more row
adds delivery at that size: each batch is also taken and acknowledged (deleted) in its own
transaction, as the uplink does when it keeps up -- the daemon's steady state.

Bytes are the kernel's: ``write_bytes`` minus ``cancelled_write_bytes`` from /proc/self/io --
page-cache pages this process dirtied, counted again each time a page cleaned by an fsync is
dirtied again, i.e. what would go to the SD card (not counted: the filesystem journal and
metadata, which come on top for both). ``wchar`` is what SQLite handed to write(). The files
live under /var/tmp, on the real disk: on tmpfs, write_bytes stays 0.

Not reproduced here: the -shm file is an mmap that nobody fsyncs, so its dirty page reaches
the disk once per writeback period (~30 s) in a daemon that commits every 10 s, but rarely in
this tight loop; bench/bench_daemon.py measures the daemon at its real pace.

Run:  .venv/bin/python bench/bench_storage.py [--batches 1,3,12,100,1000] [--naive-readings N]
"""

from __future__ import annotations

import argparse
import itertools
import math
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from sqlite_utils import Database

from agent.cli.context import example_config_path
from agent.cli.hardware import open_buses
from agent.config import Config, load_config
from agent.core.reading import Reading
from agent.core.timebase import NS
from agent.sampling.daemon import make_drivers
from agent.sampling.processing import Processed, Processor
from agent.store.outbox import Outbox
from drivers.registry import DRIVERS
from drivers.sim.clock import FakeClock

SCRATCH = Path("/var/tmp")  # the real disk (ext4 here)
BUDGET = 300  # bytes written per stored reading (DESIGN.md)
BOOT_ID = "6f1c2b9e-5a57-4e1b-9d2c-3b8e0f4a7c11"
T0 = 1_767_225_600 * NS


def proc_io() -> dict[str, int]:
    with open("/proc/self/io") as f:
        return {key: int(value) for key, value in (line.split(":") for line in f)}


def station(config: Config) -> tuple[list[tuple[str, Processed]], float]:
    """One sample of every sensor on the simulated world, and the readings one commit holds."""
    clock = FakeClock()
    sample: list[tuple[str, Processed]] = []
    per_commit = 0.0
    with open_buses(config, clock, simulate=True) as buses:
        for sensor, driver in zip(config.sensors, make_drivers(config, buses, clock, DRIVERS),
                                  strict=True):
            driver.setup()
            measurements = Processor.for_sensor(sensor).sample(driver.read)
            driver.close()
            sample += [(sensor.id, m) for m in measurements]
            per_commit += len(measurements) * config.storage.commit_interval / sensor.interval
    return sample, per_commit


def readings(sample: list[tuple[str, Processed]]) -> Iterator[Reading]:
    """The station's sample again and again, 10 s apart, values wandering a little."""
    for n in itertools.count():
        time_ns = T0 + n * 10 * NS
        wobble = 1 + 1e-4 * math.sin(n / 7)
        for sensor, m in sample:
            yield Reading(sensor, m.quantity, m.value * wobble, m.unit, time_ns,
                          n * 10 * NS, BOOT_ID, True, int(m.quality), m.calibration)


def measure_outbox(directory: Path, sample: list[tuple[str, Processed]], batch: int,
                   commits: int, max_bytes: int, *, deliver: bool = False) -> dict[str, float]:
    """``commits`` appends of ``batch`` readings; with ``deliver``, each batch is also taken and
    acknowledged after its append, as the uplink does when it keeps up (a second transaction)."""
    source = readings(sample)
    with Outbox(directory / "outbox.sqlite", max_bytes=max_bytes) as outbox:
        for _ in range(20):  # warm-up: schema, first pages, the id caches
            outbox.append(list(itertools.islice(source, batch)))
        if deliver:
            outbox.ack(s.id for s in outbox.take(20 * batch))
        io0, cpu0 = proc_io(), time.process_time()
        for _ in range(commits):
            outbox.append(list(itertools.islice(source, batch)))
            if deliver:
                outbox.ack(s.id for s in outbox.take(batch))
        cpu, io1 = time.process_time() - cpu0, proc_io()
    return figures(io0, io1, cpu, batch * commits, commits)


def measure_naive(directory: Path, sample: list[tuple[str, Processed]],
                  count: int) -> dict[str, float]:
    """sqlite-utils defaults: rollback journal, one transaction (and fsyncs) per insert()."""
    db = Database(directory / "naive.db")
    table = db.table("readings")
    source = readings(sample)
    table.insert(next(source)._asdict())  # creates the table
    io0, cpu0 = proc_io(), time.process_time()
    for reading in itertools.islice(source, count):
        table.insert(reading._asdict())
    cpu, io1 = time.process_time() - cpu0, proc_io()
    db.close()
    return figures(io0, io1, cpu, count, count)


def figures(io0: dict[str, int], io1: dict[str, int], cpu: float, stored: int,
            commits: int) -> dict[str, float]:
    written = (io1["write_bytes"] - io0["write_bytes"]) - (
        io1["cancelled_write_bytes"] - io0["cancelled_write_bytes"])
    return {"readings": stored, "commits": commits, "disk": written / stored,
            "wchar": (io1["wchar"] - io0["wchar"]) / stored, "per_commit": written / commits,
            "cpu_us": cpu / stored * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=example_config_path())
    parser.add_argument("--batches", default="1,3,12,100,1000",
                        help="further readings-per-commit sizes, comma-separated")
    parser.add_argument("--min-commits", type=int, default=1500)
    parser.add_argument("--min-readings", type=int, default=30_000)
    parser.add_argument("--naive-readings", type=int, default=2_000)
    args = parser.parse_args()
    config = load_config(args.config)
    sample, per_commit = station(config)
    own = max(1, round(per_commit))
    sizes = sorted({own, *(int(b) for b in args.batches.split(","))})
    print(f"station: {args.config.name}, {len(config.sensors)} sensor(s), {len(sample)} quantities "
          f"per sample; commit_interval {config.storage.commit_interval:g} s -> {per_commit:g} "
          f"readings per commit (health readings, every [health] interval, come on top)")
    print(f"files under {SCRATCH} (ext4; write_bytes is 0 on tmpfs)\n")

    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="envagent-bench-storage-", dir=SCRATCH) as tmp:
        for size in sizes:
            directory = Path(tmp) / f"outbox-{size}"
            commits = max(args.min_commits, math.ceil(args.min_readings / size))
            label = f"outbox, {size}/commit" + (" (station)" if size == own else "")
            results[label] = measure_outbox(directory, sample, size, commits,
                                            config.storage.max_bytes)
            if size == own:
                results[f"outbox, {size}/commit + ack"] = measure_outbox(
                    Path(tmp) / "delivered", sample, size, commits, config.storage.max_bytes,
                    deliver=True)
        results["naive: insert() each"] = measure_naive(Path(tmp), sample, args.naive_readings)

    naive = results["naive: insert() each"]
    print(f"{'storage':<28} {'readings':>9} {'commits':>8} {'disk B/rdg':>11} "
          f"{'wchar B/rdg':>12} {'disk B/commit':>14} {'CPU µs/rdg':>11} {'vs naive':>9}  budget")
    for name, r in results.items():
        verdict = "" if name.startswith("naive") else (
            f"{'met' if r['disk'] <= BUDGET else 'MISSED'} (<= {BUDGET})")
        print(f"{name:<28} {r['readings']:>9,.0f} {r['commits']:>8,.0f} {r['disk']:>11,.0f} "
              f"{r['wchar']:>12,.0f} {r['per_commit']:>14,.0f} {r['cpu_us']:>11.1f} "
              f"{r['disk'] / naive['disk']:>9.4f}  {verdict}")


if __name__ == "__main__":
    main()
