"""Durability under SIGKILL: the real agent, killed at random moments while it samples and
delivers, never loses a stored reading and never sends two versions of one.

The loop: start ``envagent run --simulate`` (always the same data directory), let it run a random
while, SIGKILL it, then look at what it left. Upstream is a recording loopback server taking the
JSON batch format; it keeps every reading by its stable id and, at seeded random, takes its time
before answering (so kills land while a batch is in flight), answers 500 or drops the connection
-- in both cases *after* keeping the batch, which forces replays.

After every kill: ``PRAGMA integrity_check`` says ok, the agent never thought its outbox damaged,
and every reading in the outbox is noted with its content. At the end a clean run and ``envagent
sync`` drain the outbox, and then:

- every reading seen in the outbox after any kill was accepted (2xx) upstream, with the content
  it had in the outbox -- zero stored readings lost;
- as many distinct readings were accepted as the outbox ever counted as added, and the outbox
  counts every one of them delivered (none dropped, none quarantined) -- so the readings committed
  and delivered between two looks are covered too;
- a reading received more than once came byte-identical each time (duplicates only as replays);
  upstream never saw two different contents for one id.

Kill moments (seeded): some during start-up (imports, opening and recovering the outbox, the
first delivery), most between 0.3 and 1.5 s after the agent said READY=1 (sd_notify, as systemd
hears it), some aimed at its first commit, one second after READY, and some within 50 ms of the
round's first request reaching upstream (while the batch is in flight or being acknowledged:
the window where a replay is born). ``ENVAGENT_SIGKILL_ROUNDS`` sets the number of kills (default
200, about 3.5 minutes on a 2-core machine), ``ENVAGENT_SIGKILL_SEED`` the seed (default: a new
one each run, printed first -- pytest shows it with any failure -- and named in the messages).
The seed fixes the kill moments and the server's answers, not the agent's own timing, so a rerun
with a seed is similar, not identical. ``pytest -s`` prints what the kills covered.

A second loop runs while a backlog grows: upstream refuses everything (503) for all but the
last rounds, and a larger station fills the outbox, so the -wal grows across the kills (a
killed agent never checkpoints; the next one appends to the same log) until SQLite checkpoints
and rewinds it -- writing the new generation over the start of the old one, whose later frames
stay in the file after it. A kill then leaves exactly the set that salvage once judged a "stale
-wal" and threw away with everything since the last checkpoint. The loop watches the -wal's
salt after each kill and counts the rewinds it saw. ``ENVAGENT_SIGKILL_BACKLOG_ROUNDS`` sets its
kills (default 120; the issue's full length, 300, by hand).
"""

from __future__ import annotations

import json
import os
import random
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from recording_server import DROP, Exchange, RecordingServer

from agent.core.credentials import CREDENTIALS_DIRECTORY, REFUSED_VARIABLES
from agent.core.reading import Reading
from agent.store.outbox import Outbox, OutboxStats
from agent.uplink.encoders import JSON_FORMAT, JsonEncoder, batch_id, reading_id

ROOT = Path(__file__).resolve().parents[1]
ROUNDS = int(os.environ.get("ENVAGENT_SIGKILL_ROUNDS", "200"))
BACKLOG_ROUNDS = int(os.environ.get("ENVAGENT_SIGKILL_BACKLOG_ROUNDS", "120"))
ONLINE_FOR_LAST = 10  # rounds of the backlog loop whose upstream answers again
UNIT = "kill-9"
SITE = "汉中 wetland, east"
DRIVERS = {"air": "bme280", "soil": "sht4x", "light": "bh1750", "dust": "pmsa003i"}
READY_TIMEOUT_S = 60.0  # start-up on a loaded machine; a hang is a failure, never a speed test
PROCESS_TIMEOUT_S = 120.0
FINAL_SYNC_ATTEMPTS = 40  # each `sync` stops at the first failure the server makes up
COMMIT_AFTER_READY_S = 1.0  # commit_interval: the writer's first commit, counted from READY=1

CONFIG = f"""\
[unit]
id = "{UNIT}"
site = "{SITE}"
[storage]
commit_interval = "1s"
[[sensor]]
id = "air"
driver = "bme280"
address = 0x76
interval = "1s"
[[sensor]]
id = "soil"
driver = "sht4x"
address = 0x44
interval = "1s"
{{more_sensors}}[uplink]
url = "{{url}}"
format = "json"
allow_insecure_http = true
token_file = "{{token_file}}"
flush_interval = "1s"
backoff_min = "100ms"
backoff_max = "1s"
connect_timeout = "2s"
read_timeout = "5s"
deadline = "10s"
"""


# The backlog loop's larger station: more readings per commit, more pages of -wal per round.
MORE_SENSORS = """\
[[sensor]]
id = "light"
driver = "bh1750"
address = 0x23
interval = "1s"
[[sensor]]
id = "dust"
driver = "pmsa003i"
address = 0x12
interval = "1s"
"""


# --- upstream ----------------------------------------------------------------------------------


class FlakyUpstream:
    """The recording server's answers: mostly 204, sometimes slow, 500 or a dropped connection
    -- always after the batch was recorded."""

    def __init__(self, rng: random.Random) -> None:
        self._rng, self._lock = rng, threading.Lock()

    def __call__(self, exchange: Exchange) -> int | None:
        with self._lock:
            delay = self._rng.choice([0.0, 0.0, self._rng.uniform(0.02, 0.4)])
            answer = self._rng.choices([204, 500, DROP], weights=[70, 15, 15])[0]
        if delay:
            time.sleep(delay)
        return answer


class OfflineUpstream(FlakyUpstream):
    """Down (503, after recording the batch) until ``online`` is set; then as FlakyUpstream."""

    def __init__(self, rng: random.Random) -> None:
        super().__init__(rng)
        self.online = False

    def __call__(self, exchange: Exchange) -> int | None:
        return super().__call__(exchange) if self.online else 503


def encode_item(item: dict[str, object]) -> bytes:
    """One reading of a batch, as the agent's encoder writes it (compact, UTF-8)."""
    return json.dumps(item, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def items_of(exchange: Exchange) -> dict[str, bytes]:
    """id -> the exact bytes of each reading in a batch, after checking the batch's envelope."""
    doc = json.loads(exchange.body)
    # Re-encoding reproduces the body byte for byte, so the items below are the bytes on the wire.
    assert encode_item(doc) == exchange.body
    assert (doc["format"], doc["unit"], doc["site"]) == (JSON_FORMAT, UNIT, SITE)
    ids = [item["id"] for item in doc["readings"]]
    assert doc["count"] == len(ids) and doc["batch"] == batch_id(ids)
    return {item["id"]: encode_item(item) for item in doc["readings"]}


# --- the agent -----------------------------------------------------------------------------------


@dataclass
class Tally:
    """What the kills covered, printed at the end (pytest -s) and with any failure."""

    seed: int
    kills: Counter[str] = field(default_factory=Counter)
    rounds_with_backlog: int = 0  # the outbox held readings right after the kill
    rounds_with_commit: int = 0  # the outbox's added counter grew during the round
    in_flight_at_kill: int = 0  # a batch was on the wire or awaiting its answer at the kill
    before_ready: int = 0  # kills that landed before READY=1
    wal_rewinds: int = 0  # the -wal's salt changed since the last kill: SQLite rewound it
    rewound_with_stale_tail: int = 0  # ... and the kill left frames of the old generation

    def line(self) -> str:
        return (f"seed {self.seed}: {sum(self.kills.values())} kills {dict(self.kills)}; "
                f"{self.before_ready} before READY, {self.rounds_with_commit} round(s) committed, "
                f"{self.rounds_with_backlog} left a backlog, {self.in_flight_at_kill} killed a "
                f"batch in flight, {self.wal_rewinds} -wal rewind(s) seen, "
                f"{self.rewound_with_stale_tail} left with an old generation's frames after them")


class Station:
    """The agent's config, data directory and notify socket, and how to run it."""

    def __init__(self, tmp_path: Path, url: str, more_sensors: str = "") -> None:
        token_file = tmp_path / "upload-token"
        token_file.write_text("kill-9-token\n")
        token_file.chmod(0o600)
        self.config = tmp_path / "station.toml"
        self.config.write_text(CONFIG.format(url=url, token_file=token_file,
                                             more_sensors=more_sensors), encoding="utf-8")
        self.cwd, self.data = tmp_path, tmp_path / "data"
        self.log = tmp_path / "agent.log"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        name = f"envagent-sigkill-{os.getpid()}-{random.randrange(2**32):08x}"
        self.notify.bind(b"\0" + name.encode())
        dropped = {*REFUSED_VARIABLES, CREDENTIALS_DIRECTORY, "WATCHDOG_USEC", "WATCHDOG_PID"}
        self.env = {k: v for k, v in os.environ.items() if k not in dropped}
        self.env |= {"PYTHONPATH": str(ROOT), "NOTIFY_SOCKET": f"@{name}"}

    def close(self) -> None:
        self.notify.close()

    def start(self, round_no: int) -> subprocess.Popen[bytes]:
        self.said_ready()  # forget the last process's messages
        with self.log.open("ab") as log:
            log.write(f"--- round {round_no}\n".encode())
            return subprocess.Popen(
                [sys.executable, "-m", "agent", "run", "--simulate", "--deliver", "--config",
                 str(self.config), "--data-dir", str(self.data)],
                cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=log)

    def wait_ready(self, process: subprocess.Popen[bytes], tally: Tally) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        self.notify.settimeout(0.1)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"seed {tally.seed}: the agent exited by itself with code "
                            f"{process.returncode} before READY=1:\n{self.log_tail()}")
            try:
                if b"READY=1" in self.notify.recv(4096).split(b"\n"):
                    return
            except TimeoutError:
                continue
        pytest.fail(f"seed {tally.seed}: no READY=1 within {READY_TIMEOUT_S}s:\n{self.log_tail()}")

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in self.env.items() if k != "NOTIFY_SOCKET"}
        return subprocess.run(
            [sys.executable, "-m", "agent", *args, "--config", str(self.config),
             "--data-dir", str(self.data)],
            cwd=self.cwd, env=env, capture_output=True, text=True, timeout=PROCESS_TIMEOUT_S)

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")[-chars:]

    def said_ready(self) -> bool:
        """Whether READY=1 is among the notifications not read yet (all are read now)."""
        self.notify.setblocking(False)
        ready = False
        try:
            while True:
                ready |= b"READY=1" in self.notify.recv(4096).split(b"\n")
        except BlockingIOError:
            return ready


# --- looking at what a kill left -----------------------------------------------------------------


def look(data: Path, seed: int) -> tuple[list[Reading], OutboxStats | None]:
    """Check the outbox a kill left (read-only) and return the readings in it."""
    path = data / "outbox.sqlite"
    damaged = sorted(p.name for p in data.glob("outbox.sqlite.damaged-*"))
    assert not damaged, f"seed {seed}: a SIGKILL made the agent think its outbox damaged: {damaged}"
    if not path.exists():
        return [], None  # killed before it opened the outbox
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        integrity = conn.execute("PRAGMA integrity_check").fetchall()
        (tables,) = conn.execute(
            "SELECT count(*) FROM sqlite_master WHERE name = 'readings'").fetchone()
    finally:
        conn.close()
    assert integrity == [("ok",)], f"seed {seed}: integrity_check after a kill: {integrity}"
    if not tables:
        return [], None  # killed while the schema was being created: nothing stored yet
    with Outbox.open_readonly(path) as outbox:
        # a kill before the first start subscribed the upstream leaves an outbox without cursors
        upstream = "default" if outbox.upstreams() else None
        return [s.reading for s in outbox.take(10**6, upstream=upstream)], outbox.stats()


@dataclass(frozen=True)
class Moment:
    """When to kill: ``delay`` seconds after the start, after READY=1, or after the round's
    first request reached upstream."""

    kind: str
    after: str  # "start", "ready" or "request"
    delay: float


def kill_moment(rng: random.Random, backlog: bool, running_max: float = 1.5) -> Moment:
    """A seeded moment; "in flight" only when a backlog waits, since delivery starts with it."""
    kinds = ["start-up", "running", "first commit", "in flight"]
    kind = rng.choices(kinds, weights=[20, 40, 15, 25])[0]
    if kind == "start-up":
        return Moment(kind, "start", rng.uniform(0.02, 0.5))
    if kind == "in flight" and backlog:  # on the wire, awaiting the answer, or acknowledging it
        return Moment(kind, "request", rng.choice([rng.uniform(0, 0.005), rng.uniform(0, 0.05)]))
    if kind == "first commit":
        return Moment(kind, "ready", COMMIT_AFTER_READY_S + rng.uniform(-0.03, 0.06))
    return Moment("running", "ready", rng.uniform(0.3, running_max))


# --- the test -----------------------------------------------------------------------------------


def wal_salt(data: Path) -> bytes | None:
    """The -wal header's salt-1 (sqlite.org/fileformat2.html, WAL format: offset 16): SQLite
    draws a new one each time it rewinds the log after a checkpoint."""
    try:
        with (data / "outbox.sqlite-wal").open("rb") as wal:
            header = wal.read(32)
    except FileNotFoundError:
        return None
    return header[16:20] if len(header) == 32 else None


def wal_has_stale_tail(data: Path) -> bool:
    """Whether frames of an older generation follow the current one (their salt differs)."""
    try:
        wal = (data / "outbox.sqlite-wal").read_bytes()
    except FileNotFoundError:
        return False
    if len(wal) < 32:
        return False
    page_size, salt = int.from_bytes(wal[8:12], "big"), wal[16:24]
    frames = range(32, len(wal) - 24 - page_size + 1, 24 + page_size)
    kinds = [wal[at + 8:at + 16] == salt for at in frames]
    return False in kinds and kinds.index(False) > 0


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_no_stored_reading(tmp_path: Path) -> None:
    seed = int(os.environ.get("ENVAGENT_SIGKILL_SEED", random.randrange(2**32)))
    kill_loop(tmp_path, seed, ROUNDS, FlakyUpstream(random.Random(seed + 1)))


# Frames SQLite lets the -wal reach before it checkpoints (wal_autocheckpoint, SQLite's
# default 1000): the backlog loop starts a little below it.
AUTOCHECKPOINT_FRAMES = 1000
PREFILL_FRAMES = AUTOCHECKPOINT_FRAMES - 40


def prefill(data: Path) -> None:
    """An outbox whose -wal holds PREFILL_FRAMES frames, as a unit offline for a while leaves
    it after a crash: a child process appends small commits and exits without closing (a
    clean close would checkpoint and delete the log)."""
    data.mkdir()
    code = f"""
import os, sys
from pathlib import Path
from agent.store.outbox import Outbox
from agent.core.reading import Reading
path, ns = Path({str(data / "outbox.sqlite")!r}), 1_000_000_000
outbox = Outbox(path, max_bytes=1 << 28)
outbox.mark_simulated(True)  # the runs below are rehearsals (agent.store.rehearsal)
for i in range(100_000):
    outbox.append([Reading("air", q, 20.0 + i / 100, u, (1_767_225_600 + i) * ns, (5 + i) * ns,
                           "boot-before", True) for q, u in (("temperature", "°C"),
                                                             ("humidity", "%RH"))])
    size = os.path.getsize(str(path) + "-wal")
    if (size - 32) // (24 + 1024) >= {PREFILL_FRAMES}:
        os._exit(0)
sys.exit("the -wal never grew")
"""
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=PROCESS_TIMEOUT_S)
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
def test_sigkill_while_a_backlog_grows_and_the_wal_rewinds_loses_nothing(tmp_path: Path) -> None:
    seed = int(os.environ.get("ENVAGENT_SIGKILL_SEED", random.randrange(2**32)))
    upstream = OfflineUpstream(random.Random(seed + 1))
    prefill(tmp_path / "data")
    tally = kill_loop(tmp_path, seed, BACKLOG_ROUNDS, upstream, more_sensors=MORE_SENSORS,
                      running_max=3.0)
    # The loop must have met what it is for: SQLite rewound the log, and a kill left the old
    # generation's frames behind the new ones (salvage once called that set damaged).
    assert tally.wal_rewinds and tally.rewound_with_stale_tail, tally.line()


def kill_loop(tmp_path: Path, seed: int, rounds: int, upstream_answers: FlakyUpstream, *,
              more_sensors: str = "", running_max: float = 1.5) -> Tally:
    """Kill the agent ``rounds`` times, check each outbox left, drain, check upstream."""
    print(f"ENVAGENT_SIGKILL_SEED={seed}, {rounds} rounds")
    rng = random.Random(seed)
    tally = Tally(seed)
    encoder = JsonEncoder(unit=UNIT, site=SITE, drivers=DRIVERS)
    seen: dict[str, bytes] = {}  # id -> content, of every reading in the outbox after a kill
    added, stored = 0, list[Reading]()
    salt = None
    with RecordingServer(upstream_answers) as upstream:
        station = Station(tmp_path, upstream.url("/batches"), more_sensors)
        try:
            for round_no in range(rounds):
                if isinstance(upstream_answers, OfflineUpstream):
                    upstream_answers.online = round_no >= rounds - ONLINE_FOR_LAST
                moment = kill_moment(rng, bool(stored), running_max)
                started, requests = time.monotonic(), len(upstream.snapshot())
                process = station.start(round_no)
                if moment.after == "ready":
                    station.wait_ready(process, tally)
                elif moment.after == "request" and not upstream.wait_for_request(
                        requests, READY_TIMEOUT_S):
                    pytest.fail(f"seed {seed}: a backlog waits but no request came within "
                                f"{READY_TIMEOUT_S}s:\n{station.log_tail()}")
                time.sleep(moment.delay)
                if process.poll() is not None:
                    pytest.fail(f"seed {seed}: the agent exited by itself with code "
                                f"{process.returncode}:\n{station.log_tail()}")
                process.kill()
                killed = time.monotonic()
                process.wait()
                tally.kills[moment.kind] += 1
                tally.before_ready += moment.after != "ready" and not station.said_ready()

                now_salt = wal_salt(station.data)
                if salt is not None and now_salt is not None and now_salt != salt:
                    tally.wal_rewinds += 1
                    tally.rewound_with_stale_tail += wal_has_stale_tail(station.data)
                salt = now_salt or salt
                stored, stats = look(station.data, seed)
                for r in stored:
                    content = encode_item(encoder.document([r])["readings"][0])
                    rid = reading_id(UNIT, r)
                    assert seen.setdefault(rid, content) == content, (
                        f"seed {seed}: reading {rid} changed in the outbox: {seen[rid]!r} -> "
                        f"{content!r}")
                tally.rounds_with_backlog += bool(stored)
                if stats is not None:
                    tally.rounds_with_commit += stats.added > added
                    added = stats.added
                tally.in_flight_at_kill += any(
                    started < e.received < killed and (e.finished is None or e.finished > killed)
                    for e in upstream.snapshot()[-3:])

            # One clean run after all that, then deliver whatever is left.
            if isinstance(upstream_answers, OfflineUpstream):
                upstream_answers.online = True
            clean = station.run("run", "--simulate", "--deliver", "--duration", "2")
            assert clean.returncode == 0, f"seed {seed}: {clean.stderr}"
            for _ in range(FINAL_SYNC_ATTEMPTS):
                synced = station.run("sync", "--simulate", "--deliver", "--json")
                if synced.returncode == 0 and json.loads(synced.stdout)["backlog"] == 0:
                    break
            else:
                pytest.fail(f"seed {seed}: not drained after {FINAL_SYNC_ATTEMPTS} syncs: "
                            f"{synced.stdout} {synced.stderr}")
        finally:
            station.close()
        exchanges = upstream.snapshot()

    final, stats = look(station.data, seed)
    assert stats is not None and not final
    with Outbox.open_readonly(station.data / "outbox.sqlite") as outbox:
        quarantined = outbox.quarantined(10)

    received: dict[str, set[bytes]] = {}  # id -> every content it arrived with
    accepted: dict[str, bytes] = {}
    times = Counter[str]()
    for exchange in exchanges:
        if not exchange.complete:
            continue  # killed mid-upload: the server could not have kept anything of it
        for rid, content in items_of(exchange).items():
            received.setdefault(rid, set()).add(content)
            times[rid] += 1
            if exchange.accepted:
                accepted[rid] = content
    replayed = sum(1 for n in times.values() if n > 1)
    incomplete = sum(not e.complete for e in exchanges)
    print(f"{tally.line()}; {stats.added} reading(s) committed, {len(seen)} seen in the outbox "
          f"after a kill, {len(exchanges)} request(s) ({incomplete} cut off mid-body), "
          f"{replayed} reading(s) received more than once")

    assert (stats.backlog, stats.dropped, stats.rejected, quarantined) == (0, 0, 0, []), stats
    conflicting = {rid: c for rid, c in received.items() if len(c) > 1}
    assert not conflicting, f"seed {seed}: ids received with different contents: {conflicting}"
    lost = set(seen) - set(accepted)
    assert not lost, f"seed {seed}: {len(lost)} stored reading(s) never accepted upstream"
    assert all(accepted[rid] == content for rid, content in seen.items()), f"seed {seed}"
    # Every reading the outbox ever counted reached upstream, and nothing else did.
    assert len(accepted) == stats.added == stats.delivered, (seed, len(accepted), stats)
    assert "Traceback" not in station.log.read_text(encoding="utf-8", errors="replace"), (
        f"seed {seed}: {station.log_tail()}")
    return tally
