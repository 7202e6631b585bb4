"""The whole daemon on the simulated station beside a naive pipeline, at the same pace.

envagent: ``envagent run --simulate`` with the shipped example configuration plus an
``[uplink]`` to a local VictoriaMetrics (started here on 127.0.0.1), its outbox under /var/tmp.
Naive: the Adafruit BME280 driver's defaults (forced mode: one measurement per property read)
over our busio adapter on a SimBus, one sqlite-utils ``insert()`` and one ``requests.post()`` per
reading, to the same VictoriaMetrics. Both sample every 10 s, in their own process, at the same
time.

Each process is measured over the same window, after a warm-up (start-up, sensor set-up, first
commits). CPU is the process's CPU time (``time.process_time``, every thread), and each live
thread's, read by the process itself when this script sends it SIGUSR1: /proc/<pid>/stat counts
in 10 ms ticks, too coarse for the ~100 ms a few minutes of a mostly idle daemon cost. The
whole-run figure (start-up and shutdown included) is utime + stime from wait4(). Disk bytes are
``write_bytes - cancelled_write_bytes`` from /proc/<pid>/io (files under /var/tmp, the real disk;
logs go to /dev/shm). Peak memory is VmHWM from /proc/<pid>/status (the whole run, start-up
included). The window is a whole number of commit intervals starting between two commits,
so it holds the same number of sampling, commit and delivery cycles whatever the phase.
Readings are those stored in the window: the outbox's ``added`` counter (health readings
included: one sample every [health] interval), the naive database's rows.

A third process gives the floor of this machine over the same window: it imports every library
module the agent has loaded (none of ours) and then only wakes a thread once a second, doing
nothing -- its peak RSS and its CPU per wake-up (``child_floor``). The wake-ups of each pipeline
are its voluntary context switches (``getrusage``), every thread included.

The simulated sensors (register models behind the SimBus) run inside each process and their CPU
counts against it. Each process times its SimBus transfers with ``time.thread_time`` (a hook
installed by this script before the agent's own code runs, costing ~1 µs per transfer) and the
figures show that share apart. The agent runs through ``agent.cli.main.main``, exactly as
``python -m agent run``.

Every budget of issue 16 is printed at the end of the same run, each beside its same-run
reference: CPU per reading against the naive pipeline's; wake-ups per reading, and the CPU
against the schedule's own floor (the wake-ups the schedule needs -- the scheduler's runner
wake-ups, slots and conversion waits, plus one per POST -- times the floor child's CPU per
do-nothing wake-up); peak RSS against the floor child's (byte-code compiled first, as
install.sh does); the bytes the *device* receives (journal and metadata included), with the
agent's data directory on a loop-mounted ext4 (``/sys/block/loopN/stat``, run as root), against
one fsync'd commit of the same number of readings on a second loop-mounted ext4, and per day;
then the drain of ``--drain`` readings (bench_drain.py's, in this process once the daemons are
stopped) against the naive ``requests.post`` per reading. Without root (no loop device) the
disk row says so and falls back to the process's ``write_bytes``, without a floor.

Run:  .venv/bin/python bench/bench_daemon.py [--seconds 180] [--warmup 20] [--config PATH]
      [--drain 1000000] [--naive-readings 5000]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import os
import random
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# The budgets of issue 16 (DESIGN.md), each a ratio to something measured in the same run.
CPU_RATIO = 0.05  # the whole daemon's CPU per reading / the naive pipeline's
WAKEUPS_PER_READING = 0.5
FLOOR_RATIO = 3.0  # CPU per reading / the schedule's floor (its wake-ups x a do-nothing one)
RSS_OVER_FLOOR_MIB = 3.0  # peak RSS - the interpreter and libraries' peak RSS
DISK_RATIO = 2.0  # device bytes / one fsync'd commit of the same readings
DRAIN_RATIO = 0.01  # client CPU per reading / the naive client's
DRAIN_1M_S = 10.0
LOOP_MIB = 256  # each loop-mounted ext4
PERIOD_S = 10.0  # the example's sensor interval: the naive pipeline samples at this pace
SCRATCH = Path("/var/tmp")  # the real disk: /proc/<pid>/io write_bytes is 0 on tmpfs
QUIET = Path("/dev/shm")  # tmpfs: the children's logs and model figures cost no disk bytes
MODEL_FILE_ENV = "ENVAGENT_BENCH_MODEL_FILE"
NAIVE_ADDRESS = 0x76
FLOOR_GAP_S = 1.0  # the floor child's wake-up period: a sensor thread's sleeps are 0.01-10 s
FLOOR_SETTLE_S = 5.0  # from the floor child's start to its first snapshot: its imports take ~1 s
OWN_PACKAGES = {"agent", "drivers", "__main__", "_vm", "victoriametrics", "bench_drain"}
EXTRA: dict[str, Any] = {}  # more for the child's report (the agent's schedule counters)


# --- inside the child processes ---------------------------------------------------------------


def time_models() -> None:
    """Count the CPU spent in SimBus transfers (the models); SIGUSR1 writes it to a file."""
    from drivers.sim.simbus import SimBus

    path = Path(os.environ[MODEL_FILE_ENV])
    totals = {"seconds": 0.0, "transfers": 0, "seq": 0}
    transfer = SimBus._transfer

    def timed(self: SimBus, *args: Any) -> bytes:
        started = time.thread_time()
        try:
            return transfer(self, *args)
        finally:
            totals["seconds"] += time.thread_time() - started
            totals["transfers"] += 1

    def report(signum: int, frame: FrameType | None) -> None:
        totals["seq"] += 1
        cpu = time.process_time()  # every thread, to the ns: /proc's ticks are 10 ms
        threads = {}
        for thread in threading.enumerate():
            with contextlib.suppress(OSError, TypeError):  # ended meanwhile
                clock = time.pthread_getcpuclockid(thread.ident)  # type: ignore[arg-type]
                # by name and id: the scheduler's two runners share a name
                threads[f"{thread.name}#{thread.ident}"] = time.clock_gettime(clock)
        extra = {key: value() for key, value in EXTRA.items()}
        write_report(path, {**totals, "cpu": cpu, "threads": threads, **extra})

    SimBus._transfer = timed  # type: ignore[method-assign, assignment]
    signal.signal(signal.SIGUSR1, report)


def write_report(path: Path, report: dict[str, Any]) -> None:
    """The child's side of a snapshot, plus what every child reports: its wake-ups (voluntary
    context switches of all its threads, ended ones included) and the modules it has loaded."""
    report["wakeups"] = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw
    report["modules"] = sorted(sys.modules)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report))
    tmp.replace(path)


def child_floor(modules_file: Path) -> int:
    """What the daemon costs before any of its own work, on this machine, in the same window.

    Imports every library module the agent had loaded (its ``sys.modules`` minus ``agent.*``,
    ``drivers.*`` and the bench's own), so its peak RSS is the floor that the interpreter and
    the libraries set; then one thread only wakes from ``Event.wait`` every ``FLOOR_GAP_S`` and
    does nothing, so its CPU per wake-up is what any wake-up costs here before any work."""
    path = Path(os.environ[MODEL_FILE_ENV])
    totals = {"seconds": 0.0, "transfers": 0, "seq": 0, "wakes": 0}

    def report(signum: int, frame: FrameType | None) -> None:
        totals["seq"] += 1
        write_report(path, {**totals, "cpu": time.process_time(), "threads": {}})

    signal.signal(signal.SIGUSR1, report)
    for name in json.loads(modules_file.read_text()):
        with contextlib.suppress(Exception):  # aliases (requests.packages.*), platform bits
            importlib.import_module(name)
    ticker = threading.Event()

    def tick() -> None:
        while True:
            ticker.wait(FLOOR_GAP_S)
            totals["wakes"] += 1

    threading.Thread(target=tick, name="ticker", daemon=True).start()
    threading.Event().wait()
    return 0


def count_schedule() -> None:
    """The agent's side of the schedule's floor: the scheduler's runner wake-ups (slots and
    conversion waits, ``Slots.wakeups``) and the POSTs delivery makes."""
    from agent.sampling.scheduler import Slots
    from agent.uplink.worker import Uplink

    slots: list[Slots] = []
    posts = [0]
    init, step = Slots.__init__, Uplink.step

    def keep(self: Slots, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        slots.append(self)

    def counted(self: Uplink) -> Any:
        done = step(self)
        if done.answer is not None:
            posts[0] += 1
        return done

    Slots.__init__ = keep  # type: ignore[method-assign]
    Uplink.step = counted  # type: ignore[method-assign]
    EXTRA["slot_wakeups"] = lambda: sum(s.wakeups for s in slots)
    EXTRA["posts"] = lambda: posts[0]


def child_agent(argv: list[str]) -> int:
    time_models()
    count_schedule()
    from agent.cli.main import main

    return main(argv)


def child_naive(url: str, db_path: Path, config_path: Path) -> int:
    """The naive pipeline: sample every 10 s, one insert() and one POST per reading."""
    time_models()
    import requests
    from adafruit_bme280.basic import Adafruit_BME280_I2C
    from sqlite_utils import Database

    from agent.config import load_config
    from drivers.busio_adapter import BusioI2C
    from drivers.clock import SystemClock
    from drivers.sim.environment import Environment
    from drivers.sim.world import Placement, build_world

    unit = load_config(config_path).unit
    environment = Environment(latitude=unit.latitude, longitude=unit.longitude,
                              elevation_m=unit.elevation_m or 0.0)
    clock = SystemClock()
    world = build_world([Placement(1, NAIVE_ADDRESS, "bme280", "air")], clock=clock,
                        environment=environment)
    bme = Adafruit_BME280_I2C(BusioI2C(world[1]), NAIVE_ADDRESS)
    table = Database(db_path).table("readings")
    while True:
        time.sleep(PERIOD_S - time.time() % PERIOD_S)
        time_ns = time.time_ns()
        sample = (("temperature", bme.temperature, "°C"), ("humidity", bme.humidity, "%RH"),
                  ("pressure", bme.pressure, "hPa"))
        for quantity, value, unit_name in sample:
            table.insert({"sensor": "air", "quantity": quantity, "value": value,
                          "unit": unit_name, "time_ns": time_ns})
            requests.post(f"{url}?precision=ns", timeout=10,
                          data=f"naive,sensor=air,unit={unit.id} {quantity}={value!r} {time_ns}")


# --- in the bench -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    cpu_s: float
    disk_bytes: int
    models_s: float
    transfers: int
    readings: int
    threads: dict[str, float]  # thread name -> CPU seconds, for the threads alive now
    wakeups: int  # voluntary context switches so far, all threads
    modules: list[str]
    slot_wakeups: int = 0  # the agent's scheduler: runner wake-ups so far
    posts: int = 0  # the agent's POSTs so far
    device_bytes: int = 0  # written to the loop device holding its data, so far


class Child:
    """A measured child process: this script in ``--child`` mode."""

    def __init__(self, name: str, args: list[str], quiet: Path, count: Any,
                 device: str | None = None) -> None:
        self.name = name
        self.device = device  # the loop device its data lives on, if any
        self.model_file = quiet / f"{name}-models.json"
        self.log = quiet / f"{name}.log"
        self.count = count  # (the child's report) -> readings stored so far
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
        env = {**os.environ, MODEL_FILE_ENV: str(self.model_file), "PYTHONPATH": path}
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--child", name, *args],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)

    def snapshot(self) -> Snapshot:
        seq = json.loads(self.model_file.read_text())["seq"] if self.model_file.exists() else 0
        self.process.send_signal(signal.SIGUSR1)
        pid = self.process.pid
        io = dict(line.split(":") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
        disk = int(io["write_bytes"]) - int(io["cancelled_write_bytes"])
        deadline = time.monotonic() + 5
        models: dict[str, Any] = {"seq": seq}
        while models["seq"] == seq and time.monotonic() < deadline:
            time.sleep(0.01)
            if self.model_file.exists():
                models = json.loads(self.model_file.read_text())
        if models["seq"] == seq:
            self.fail("did not report its model time")
        return Snapshot(models["cpu"], disk, models["seconds"], models["transfers"],
                        self.count(models), models["threads"], models["wakeups"],
                        models["modules"], models.get("slot_wakeups", 0),
                        models.get("posts", 0),
                        device_written(self.device) if self.device else 0)

    def peak_rss_mib(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmHWM")

    def alive(self) -> None:
        if self.process.poll() is not None:
            self.fail(f"exited early with {self.process.returncode}")

    def stop(self, sig: int = signal.SIGTERM) -> tuple[float, int]:
        """Stop it; return (whole-run CPU seconds, exit status) from wait4."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        _, status, usage = os.wait4(self.process.pid, 0)
        self.process.returncode = os.waitstatus_to_exitcode(status)
        return usage.ru_utime + usage.ru_stime, self.process.returncode

    def fail(self, why: str) -> None:
        tail = self.log.read_text(errors="replace")[-3000:]
        raise SystemExit(f"{self.name} {why}; its log ends:\n{tail}")


# --- loop-mounted ext4: the bytes the device receives -------------------------------------------


def device_written(device: str) -> int:
    """Bytes written to a block device so far: ``/sys/block/<dev>/stat`` field 7 counts
    512-byte sectors (Documentation/block/stat.rst), whatever the filesystem sent: data,
    journal and metadata alike."""
    fields = Path(f"/sys/block/{device}/stat").read_text().split()
    return int(fields[6]) * 512


@contextlib.contextmanager
def loop_ext4(scratch: Path, name: str) -> Iterator[tuple[Path, str] | None]:
    """A fresh ext4 on a loop device, mounted: (mount point, device name); None when this
    process cannot (not root, no losetup) -- the caller says so and falls back."""
    tools = [shutil.which(tool) for tool in ("losetup", "mkfs.ext4", "mount", "umount")]
    if os.geteuid() != 0 or not all(tools):
        yield None
        return
    image, mount = scratch / f"{name}.img", scratch / f"{name}-mnt"
    with image.open("wb") as f:
        f.truncate(LOOP_MIB << 20)
    # no lazy init: a background thread zeroing inode tables would count as our writes
    subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0",
                    str(image)], check=True)
    device = subprocess.run(["losetup", "--find", "--show", str(image)], check=True,
                            capture_output=True, text=True).stdout.strip()
    try:
        mount.mkdir()
        subprocess.run(["mount", "-t", "ext4", device, str(mount)], check=True)
        try:
            yield mount, Path(device).name
        finally:
            subprocess.run(["umount", str(mount)], check=False)
    finally:
        subprocess.run(["losetup", "-d", device], check=False)
        image.unlink(missing_ok=True)


def commit_floor(scratch: Path, count: int) -> int | None:
    """Device bytes of ONE fsync'd commit of ``count`` readings like the station's, into a
    fresh outbox (created and synced first, so only the commit counts) on its own ext4."""
    from bench_drain import readings

    from agent.store.outbox import Outbox

    with loop_ext4(scratch, "floor") as mounted:
        if mounted is None:
            return None
        mount, device = mounted
        batch = list(readings(count, 3, time.time_ns() // 10**10 * 10**10, random.Random(3)))
        with Outbox(mount / "outbox.sqlite", max_bytes=1 << 28) as outbox:
            outbox.append([])  # the schema, the WAL
            os.sync()
            before = device_written(device)
            outbox.append(batch)
            os.sync()  # what the kernel still held back (metadata, the journal's checkpoint)
            return device_written(device) - before


# --- the drain (bench_drain.py's, in this process) -----------------------------------------------


@dataclass(frozen=True)
class Drain:
    readings: int
    seconds: float
    cpu_us: float  # client CPU per reading
    naive_cpu_us: float


def drain_budget(server: Any, count: int, naive_count: int, scratch: Path) -> Drain:
    """``count`` readings drained by the real Uplink into ``server``; the naive client on
    ``naive_count``. No figures unless VictoriaMetrics holds every one."""
    from bench_drain import (
        DEFAULT_BATCH,
        INTERVAL_NS,
        MAX_BYTES,
        build_backlog,
        drain,
        naive,
        readings,
    )

    from agent.store.outbox import Outbox, Subscriber

    sensors = 4
    samples = math.ceil(count / (sensors * 3))
    start_ns = (time.time_ns() // INTERVAL_NS - samples - 360) * INTERVAL_NS
    end_s = (start_ns + samples * INTERVAL_NS) / 1e9
    with tempfile.TemporaryDirectory(prefix="envagent-bench-drain-", dir=scratch) as tmp, \
            Outbox(Path(tmp) / "outbox.sqlite", max_bytes=MAX_BYTES,
                   subscribers=[Subscriber("default")]) as outbox:
        build_backlog(outbox, count, sensors, sensors * 3, start_ns)
        (ours,) = drain(outbox, server.write_url, sensors, DEFAULT_BATCH,
                        server.process.pid, outbox.stats().backlog)
        left = outbox.stats().backlog
    sample = list(readings(naive_count, sensors, start_ns, random.Random(2)))
    theirs = naive(server.write_url, sample, server.process.pid)
    from _vm import count_points

    held = count_points(server, "envagent_.*", start_ns / 1e9, end_s)
    held_naive = count_points(server, "naive_.*", start_ns / 1e9, end_s)
    if held != count or held_naive != naive_count or left:
        sys.exit(f"bench_daemon: no figures from this run: the drain left {left}, "
                 f"VictoriaMetrics holds {held:,} of {count:,} drained and {held_naive:,} of "
                 f"{naive_count:,} naive readings")
    return Drain(count, ours.wall_s, ours.per_reading(ours.cpu_s, 1e6),
                 theirs.per_reading(theirs.cpu_s, 1e6))


def library_modules(snapshot: Snapshot) -> list[str]:
    """The modules a child had loaded that are not ours (nor the bench's)."""
    return [name for name in snapshot.modules if name.split(".")[0] not in OWN_PACKAGES]


def by_thread(a: Snapshot, b: Snapshot, readings: int) -> str:
    """CPU per reading of each kind of thread over the window, biggest first."""
    groups: dict[str, float] = {}
    for name, cpu in b.threads.items():
        if name in a.threads:
            kind = name.rsplit("#", 1)[0]
            kind = "sensor threads" if kind.startswith("sensor ") else kind
            groups[kind] = groups.get(kind, 0.0) + cpu - a.threads[name]
    groups["threads started or ended in the window"] = (
        b.cpu_s - a.cpu_s - sum(groups.values()))
    return ", ".join(f"{kind} {cpu / readings * 1e6:.0f}"
                     for kind, cpu in sorted(groups.items(), key=lambda kv: -kv[1]))


def count_rows(path: Path, query: str) -> int:
    """One value from a database another process is writing, opened read-only."""
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
    try:
        return int(conn.execute(query).fetchone()[0])
    finally:
        conn.close()


def station_config(example: Path, url: str, directory: Path) -> Path:
    """The example configuration, plus an [uplink] to the local VictoriaMetrics."""
    path = directory / "station.toml"
    path.write_text(example.read_text(encoding="utf-8")
                    + f'\n[uplink]\nurl = "{url}"\nallow_insecure_http = true\n',
                    encoding="utf-8")
    return path


def start_between_commits(outbox: Path, period: float, timeout: float) -> None:
    """Return mid-way between two commits of the agent: its ``added`` counter just moved."""
    deadline = time.monotonic() + timeout
    query = "SELECT added FROM counters"
    before = count_rows(outbox, query) if outbox.exists() else -1
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = count_rows(outbox, query) if outbox.exists() else -1
        if now != before and before != -1:
            time.sleep(period / 2)
            return
        before = now
    raise SystemExit(f"the agent did not commit within {timeout:g} s")


def main() -> None:
    if sys.argv[1:3] == ["--child", "agent"]:  # the rest is the agent's command line
        sys.exit(child_agent(sys.argv[3:]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=180.0,
                        help="measured window, rounded up to whole commit intervals "
                        "(default 180)")
    parser.add_argument("--warmup", type=float, default=20.0,
                        help="seconds before the window: start-up, set-up, first commits")
    parser.add_argument("--config", type=Path, default=None,
                        help="station configuration (default: the shipped example)")
    parser.add_argument("--drain", type=int, default=1_000_000,
                        help="readings drained after the window (default 1,000,000)")
    parser.add_argument("--naive-readings", type=int, default=5_000,
                        help="readings the naive client POSTs one by one (default 5,000)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--db", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--modules", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "naive":
        sys.exit(child_naive(args.url, args.db, args.config))
    if args.child == "floor":
        sys.exit(child_floor(args.modules))

    from _vm import count_points, running

    from agent.cli.context import example_config_path
    from agent.config import load_config

    # Byte-code compiled first, as install.sh does: no start compiles (+2.5 MiB when one does).
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "agent"),
                    str(ROOT / "drivers"), str(ROOT / "bench")], check=True)
    example = args.config or example_config_path()
    station = load_config(example)
    commit_s = station.storage.commit_interval
    periods = max(1, math.ceil(args.seconds / commit_s))
    with tempfile.TemporaryDirectory(prefix="envagent-bench-daemon-", dir=SCRATCH) as tmp, \
            tempfile.TemporaryDirectory(prefix="envagent-bench-daemon-",
                                        dir=QUIET if QUIET.is_dir() else None) as quiet, \
            running() as server, \
            loop_ext4(Path(tmp), "agent") as mounted:
        config = station_config(example, server.write_url, Path(tmp))
        data, naive_db = (Path(tmp) if mounted is None else mounted[0]) / "data", \
            Path(tmp) / "naive.db"
        outbox = data / "outbox.sqlite"
        ours = Child("agent", ["run", "--simulate", "--deliver", "--config", str(config),
                               "--data-dir", str(data)], Path(quiet),
                     lambda report: count_rows(outbox, "SELECT added FROM counters"),
                     device=None if mounted is None else mounted[1])
        naive = Child("naive", ["--url", server.write_url, "--db", str(naive_db),
                                "--config", str(config)], Path(quiet),
                      lambda report: count_rows(naive_db, "SELECT count(*) FROM readings")
                      if naive_db.exists() else 0)
        floor: Child | None = None
        try:
            started = time.time()
            time.sleep(args.warmup)
            try:
                start_between_commits(outbox, commit_s, timeout=3 * commit_s)
            except SystemExit as exc:
                ours.fail(str(exc))
            for child in (ours, naive):
                child.alive()
            first = {c.name: c.snapshot() for c in (ours, naive)}
            window_start = time.time()
            modules = Path(quiet) / "agent-modules.json"
            modules.write_text(json.dumps(library_modules(first[ours.name])))
            floor = Child("floor", ["--modules", str(modules)], Path(quiet),
                          lambda report: report["wakes"])
            time.sleep(FLOOR_SETTLE_S)  # its imports done, its ticker running
            floor.alive()
            first[floor.name] = floor.snapshot()
            time.sleep(periods * commit_s - FLOOR_SETTLE_S)
            last = {c.name: c.snapshot() for c in (ours, naive, floor)}
            window = time.time() - window_start
            peaks = {c.name: c.peak_rss_mib() for c in (ours, naive, floor)}
            floor.stop(signal.SIGKILL)
            whole = {ours.name: ours.stop(), naive.name: naive.stop(signal.SIGKILL)}
            total_added = count_rows(outbox, "SELECT added FROM counters")
            left = count_rows(outbox, "SELECT added - delivered - dropped - rejected "
                                      "FROM counters")
            total_naive = count_rows(naive_db, "SELECT count(*) FROM readings")
            end = time.time()
            held = count_points(server, "envagent_.*", started - 60, end)
            held_naive = count_points(server, "naive_.*", started - 60, end)
        finally:
            for child in (c for c in (ours, naive, floor) if c is not None):
                if child.process.poll() is None:
                    child.process.kill()
                    child.process.wait()
        if whole[ours.name][1] != 0:
            ours.fail(f"exited with {whole[ours.name][1]} after SIGTERM")
        # delivery posts once per flush_interval: the commits since the last post and the
        # stop's own commit may be left at a clean stop, nothing more
        unsent = math.ceil(load_config(config).uplinks[0].flush_interval / commit_s) + 1
        refuse_short_counts(held, total_added, left, per_commit=(
            last[ours.name].readings - first[ours.name].readings) / periods, commits=unsent)
        window_readings = last[ours.name].readings - first[ours.name].readings
        disk_floor = commit_floor(Path(tmp), window_readings)
        drained = drain_budget(server, args.drain, args.naive_readings, Path(tmp))

    print(f"station: {example.name} + [uplink] to VictoriaMetrics on 127.0.0.1; window "
          f"{window:.0f} s ({periods} commits x {commit_s:g} s) after {args.warmup:g} s warm-up; "
          f"naive: one BME280 (3 readings / {PERIOD_S:g} s)")
    print(f"{'pipeline':<34} {'readings':>8} {'CPU µs/rdg':>11} {'models µs/rdg':>14} "
          f"{'rest µs/rdg':>12} {'wake-ups/rdg':>13} {'disk B/rdg':>11} {'peak RSS MiB':>13} "
          f"{'whole-run µs/rdg':>17}")
    rows = {}
    for name, label, total in ((ours.name, "envagent run --simulate", total_added),
                               (naive.name, "naive Adafruit+insert()+post()", total_naive)):
        a, b = first[name], last[name]
        n = b.readings - a.readings
        cpu, models = (b.cpu_s - a.cpu_s) / n * 1e6, (b.models_s - a.models_s) / n * 1e6
        disk = (b.disk_bytes - a.disk_bytes) / n
        wakeups = (b.wakeups - a.wakeups) / n
        rows[name] = (cpu, models, disk, peaks[name], wakeups)
        print(f"{label:<34} {n:>8,} {cpu:>11.1f} {models:>14.1f} {cpu - models:>12.1f} "
              f"{wakeups:>13.2f} {disk:>11,.0f} {peaks[name]:>13.1f} "
              f"{whole[name][0] / total * 1e6:>17.1f}")
    a, b = first[ours.name], last[ours.name]
    n = b.readings - a.readings
    print(f"envagent CPU µs/reading by thread: {by_thread(a, b, n)}")
    (cpu, models, disk, rss, wakeups), (ncpu, nmodels, ndisk, nrss, _) = (
        rows[ours.name], rows[naive.name])
    print(f"ratio envagent/naive: CPU per reading {cpu / ncpu:.3f} (without the models "
          f"{(cpu - models) / (ncpu - nmodels):.3f}), disk bytes per reading {disk / ndisk:.4f}, "
          f"peak RSS {rss / nrss:.2f}")
    print(f"VictoriaMetrics holds {held:,} envagent readings (expected {total_added - left:,}: "
          f"{total_added:,} stored, {left} left in the outbox at the stop), {held_naive:,} "
          f"naive readings (expected {total_naive:,})")
    f0, f1 = first[floor.name], last[floor.name]
    per_wake = (f1.cpu_s - f0.cpu_s) / (f1.readings - f0.readings) * 1e6
    rss_floor = peaks[floor.name]
    # The schedule's floor: the wake-ups it needs (the runners' -- one per slot, one per
    # conversion round -- and delivery's, one per POST) x a do-nothing wake-up, same window.
    needed = (b.slot_wakeups - a.slot_wakeups) + (b.posts - a.posts)
    floor_us = needed * per_wake / n
    print(f"floor, same window: a do-nothing wake-up costs {per_wake:.0f} µs of CPU; the "
          f"schedule needs {needed} wake-ups ({b.slot_wakeups - a.slot_wakeups} of the "
          f"scheduler: slots and conversion waits; {b.posts - a.posts} POSTs), "
          f"{needed / n:.3f} per reading: {floor_us:.1f} µs/reading before any work. The "
          f"interpreter with the libraries the daemon loads "
          f"({len(library_modules(first[ours.name])):,} modules, none of ours): "
          f"{rss_floor:.1f} MiB peak RSS")

    if ours.device is not None:
        device = (b.device_bytes - a.device_bytes) / n
        per_day = (b.device_bytes - a.device_bytes) / window * 86400 / 2**20
        disk_row = (f"disk, device B/reading (loop ext4, {ours.device})", device,
                    f"one fsync'd commit of {n} readings", None if disk_floor is None
                    else disk_floor / n, DISK_RATIO)
        print(f"device bytes: {b.device_bytes - a.device_bytes:,} in the window "
              f"({device:,.0f} B/reading, {per_day:.1f} MiB/day at the example station); one "
              f"fsync'd commit of the same {n} readings: "
              f"{'n/a' if disk_floor is None else f'{disk_floor:,}'} B")
    else:
        print("disk: not root (or no losetup): no loop-mounted ext4; the process's write_bytes "
              "instead, no device figure and no floor")
        disk_row = ("disk, process write_bytes B/reading (no device)", disk, "n/a", None,
                    DISK_RATIO)

    table: list[tuple[str, float, str, float | None, float, str]] = [
        ("CPU µs/reading", cpu, "naive pipeline", ncpu, CPU_RATIO, "ratio"),
        ("wake-ups/reading", wakeups, "(absolute)", None, WAKEUPS_PER_READING, "abs"),
        ("CPU µs/reading", cpu, "schedule's floor", floor_us, FLOOR_RATIO, "ratio"),
        ("peak RSS MiB", rss, "interpreter + libraries", rss_floor, RSS_OVER_FLOOR_MIB,
         "over"),
        (*disk_row, "ratio"),
        ("drain client CPU µs/reading", drained.cpu_us, "naive requests.post",
         drained.naive_cpu_us, DRAIN_RATIO, "ratio"),
        (f"drain seconds for {drained.readings:,}", drained.seconds, "(absolute)", None,
         DRAIN_1M_S * drained.readings / 1e6, "abs"),
    ]
    print(f"\nbudgets, this run ({window:.0f} s window; drain of {drained.readings:,}):")
    print(f"{'figure':<44} {'ours':>10} {'same-run reference':<34} {'ref':>10} {'ratio':>8} "
          f"{'budget':>10}  verdict")
    for what, value, ref_name, ref, goal, kind in table:
        if kind == "abs" or ref is None:
            ratio, ok = None, value <= goal if kind == "abs" else False
            budget = f"<= {goal:g}" if kind == "abs" else f"<= {goal:g}x"
        elif kind == "over":
            ratio, ok, budget = value - ref, value - ref <= goal, f"+{goal:g} MiB"
        else:
            ratio, ok, budget = value / ref, value / ref <= goal, f"<= {goal:g}x"
        ref_text = "" if ref is None else f"{ref:,.1f}"
        ratio_text = "" if ratio is None else (f"+{ratio:.1f}" if kind == "over"
                                                else f"{ratio:.3f}")
        verdict = "met" if ok else ("no floor" if ref is None and kind != "abs" else "MISSED")
        print(f"{what:<44} {value:>10,.2f} {ref_name:<34} {ref_text:>10} {ratio_text:>8} "
              f"{budget:>10}  {verdict}")


def refuse_short_counts(held: int, added: int, left: int, *, per_commit: float,
                        commits: int = 2) -> None:
    """No figures from a run whose delivery did not happen: per-reading costs of a daemon that
    held every reading back (an unsynchronised clock) or lost some would be wrong, not slow."""
    problems = []
    if held != added - left:
        problems.append(f"VictoriaMetrics holds {held:,} envagent readings, the outbox counts "
                        f"{added - left:,} delivered")
    if left > commits * per_commit * 1.2:  # a clean stop leaves its last commits, no more
        problems.append(f"{left:,} of {added:,} readings were never delivered (a commit holds "
                        f"~{per_commit:.0f}, {commits} may be left): delivery was held back")
    if problems:
        sys.exit("bench_daemon: no figures from this run: " + "; ".join(problems))


if __name__ == "__main__":
    main()
