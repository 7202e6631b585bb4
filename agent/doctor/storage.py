"""Doctor's storage checks: the data directory writable by the user the agent runs as and held
by no agent but the running one, room for the outbox to grow to its bound, the database's
integrity, how long the oldest undelivered reading has waited, and maintenance mode left on. All
read-only (the lock is only tried: see check_lock)."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import sqlite3
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.config import DEFAULT_STORAGE_PATH, Config
from agent.core.atomic import connect_readonly
from agent.core.errors import StorageError, describe
from agent.doctor.report import Check, DiskUsage, Status, human_age
from agent.store import datadir, maintenance
from agent.store.outbox import SCHEMA_VERSION, Outbox
from drivers.clock import Clock

OUTBOX_NAME = "outbox.sqlite"  # as agent.cli.context.OUTBOX_NAME
# Besides the outbox's own bound: its -wal between checkpoints, the state files, logs and
# package updates. Less free space than this beyond the bound is a WARN.
RESERVE_BYTES = 64 * 1024**2
BACKLOG_WARN_S = 3600.0
BACKLOG_FAIL_S = 24 * 3600.0
QUICK_CHECK_LINES = 3  # of quick_check's complaints, shown in the detail
TEST_TIMEOUT_S = 10.0  # one `test -w`, run as the service's user
AGENT_RUN = "envagent run"
MAX_CMDLINE_BYTES = 4096  # of /proc/PID/cmdline: enough for the command's name
MAX_COMMAND_CHARS = 80  # of another process's command line, in the detail
RESTART_HINT = ("sudo systemctl restart envagent: at start a damaged outbox is moved aside "
                "and what can be read is salvaged")


def check_maintenance(data_dir: Path, clock: Clock, boot_id: str | None) -> Check:
    """WARN while maintenance mode is on (agent.store.maintenance): every reading is flagged,
    and a technician may be about to leave it on by mistake."""
    window, damaged = maintenance.read_active(data_dir, clock, boot_id)
    if damaged is not None:
        return Check("maintenance", Status.WARN, damaged,
                     "envagent maintenance off removes it (or on, to start a window)")
    if window is None:
        return Check("maintenance", Status.PASS, "off: readings are not flagged")
    left = (window.ends_ns(clock, boot_id) / 1e9) - clock.time()
    note = f" ({window.note})" if window.note else ""
    return Check("maintenance", Status.WARN, f"maintenance mode is on{note}, for "
                 f"{human_age(left)} more: every reading is flagged maintenance (HJ 212: M)",
                 "when the work is done: envagent maintenance off (or hold the service button "
                 "10 s)")


def check_free_space(config: Config, data_dir: Path,
                     disk_usage: Callable[[Path], DiskUsage]) -> Check:
    """FAIL when the filesystem cannot hold what the outbox may still grow to."""
    max_bytes = config.storage.max_bytes
    outbox = data_dir / OUTBOX_NAME
    used = sum(_size(Path(f"{outbox}{end}")) for end in ("", "-wal", "-shm"))
    existing = data_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    existing = existing.resolve()
    free = disk_usage(existing).free
    growth = max(0, max_bytes - used)
    detail = (f"{human_bytes(free)} free on {existing}; the outbox uses {human_bytes(used)} of "
              f"storage.max_bytes {human_bytes(max_bytes)}")
    if free < growth:
        fits = max(0, used + free - RESERVE_BYTES) // 1024**2
        return Check("free space", Status.FAIL, f"{detail}: it cannot grow to its bound",
                     f'set storage.max_bytes = "{fits}MiB" or less, or free space on {existing}')
    if free < growth + RESERVE_BYTES:
        return Check("free space", Status.WARN, f"{detail}: little room beyond the bound",
                     f"free space on {existing} or lower storage.max_bytes")
    return Check("free space", Status.PASS, detail)


def check_database(data_dir: Path) -> Check:
    """``PRAGMA quick_check`` on a read-only connection (beside a running daemon too)."""
    path = data_dir / OUTBOX_NAME
    if not path.exists():
        return Check("database", Status.PASS, f"no outbox yet at {path}: the agent creates it "
                     "when it first runs")
    try:
        conn = connect_readonly(path)
    except sqlite3.Error as exc:
        return Check("database", Status.FAIL, f"cannot open {path}: {exc}", RESTART_HINT)
    try:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        rows = [r[0] for r in conn.execute("PRAGMA quick_check").fetchall()]
    except sqlite3.Error as exc:
        return Check("database", Status.FAIL, f"{path}: {exc}", RESTART_HINT)
    finally:
        conn.close()
    if rows != ["ok"]:
        shown = "; ".join(rows[:QUICK_CHECK_LINES])
        return Check("database", Status.FAIL, f"{path} is damaged ({len(rows)} problem(s)): "
                     f"{shown}", RESTART_HINT)
    if version != SCHEMA_VERSION:
        return Check("database", Status.WARN, f"{path} is intact but has outbox schema "
                     f"{version}, this agent writes {SCHEMA_VERSION}",
                     "the agent upgrades an older schema when it starts; a newer one needs "
                     "a newer agent")
    return Check("database", Status.PASS, f"{path}: intact ({human_bytes(_size(path))})")


def check_backlog(config: Config, data_dir: Path, clock: Clock) -> list[Check]:
    """How long the oldest undelivered reading has waited -- for each upstream, from its cursor
    in the outbox, so the one that is stuck is named; only a problem with an uplink."""
    path = data_dir / OUTBOX_NAME
    if not path.exists():
        return [Check("backlog", Status.PASS, "no outbox yet: nothing waiting")]
    try:
        with Outbox.open_readonly(path) as outbox:
            stats, cursors = outbox.stats(), {c.name: c for c in outbox.upstreams()}
    except StorageError as exc:
        return [Check("backlog", Status.SKIP, f"not read: {exc}")]
    if not config.uplinks:
        if stats.oldest_ns is None:
            return [Check("backlog", Status.PASS, "nothing waiting")]
        age = max(0.0, clock.time() - stats.oldest_ns / 1e9)
        return [Check("backlog", Status.PASS, f"{stats.backlog} reading(s) waiting, the oldest "
                      f"for {human_age(age)}; no uplink configured, so they are kept")]
    checks = []
    for uplink in config.uplinks:
        name = "backlog" if len(config.uplinks) == 1 else f"backlog {uplink.name}"
        cursor = cursors.get(uplink.name)
        backlog, oldest_ns = ((stats.backlog, stats.oldest_ns) if cursor is None
                              else (cursor.backlog, cursor.oldest_ns))
        checks.append(_backlog(name, backlog, oldest_ns, clock.time()))
    return checks


def _backlog(name: str, backlog: int, oldest_ns: int | None, now: float) -> Check:
    if oldest_ns is None or backlog == 0:
        return Check(name, Status.PASS, "nothing waiting")
    age = max(0.0, now - oldest_ns / 1e9)
    detail = f"{backlog} reading(s) waiting, the oldest for {human_age(age)}"
    hint = ("see the uplink checks below and `envagent status`; `envagent sync` delivers now "
            "and says why it cannot")
    if age > BACKLOG_FAIL_S:
        return Check(name, Status.FAIL, f"{detail}: delivery is stuck", hint)
    if age > BACKLOG_WARN_S:
        return Check(name, Status.WARN, f"{detail}: delivery is behind", hint)
    return Check(name, Status.PASS, detail)


def human_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0



# --- the data directory: the service's user may write it, no other agent holds it -------------


@dataclass(frozen=True)
class Account:
    """The user a check is made for, and why that one (said in the detail)."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    why: str = ""  # "" for the service's user; else why another user was checked


def account(service_user: str | None) -> Account:
    """``service_user`` as the kernel sees it; this process's user when it is None (a simulated
    run is the technician's own) or does not exist here (a laptop without the service)."""
    if service_user is not None:
        try:
            entry = pwd.getpwnam(service_user)
        except KeyError:
            pass
        else:
            return Account(entry.pw_name, entry.pw_uid, entry.pw_gid,
                           tuple(os.getgrouplist(entry.pw_name, entry.pw_gid)))
    uid = os.geteuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = str(uid)
    why = ("with --simulate, the agent runs as you" if service_user is None else
           f"no user {service_user} on this machine, so checked for {name}")
    return Account(name, uid, os.getegid(), tuple(os.getgroups()), why)


def may_write(path: Path, who: Account) -> bool | None:
    """Whether ``who`` may create and change files in ``path`` (a directory) or change it (a
    file); None when this process cannot tell.

    Exact, as the kernel decides it (mode, ACLs, every directory on the way, a read-only mount):
    ``access(2)`` when this process is ``who``; as root, ``test -w`` run as ``who`` (the
    subprocess takes on their uid, gid and groups before it starts).
    """
    mode = os.W_OK | (os.X_OK if path.is_dir() else 0)
    if os.geteuid() == who.uid:
        return os.access(path, mode, effective_ids=os.access in os.supports_effective_ids)
    tester = shutil.which("test")
    if os.geteuid() != 0 or tester is None:
        return None
    tests = ["-w", "-x"] if mode & os.X_OK else ["-w"]
    return all(subprocess.run([tester, flag, str(path)], user=who.uid, group=who.gid,
                              extra_groups=list(who.groups), env={}, cwd="/",
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, timeout=TEST_TIMEOUT_S,
                              check=False).returncode == 0 for flag in tests)


def check_data_dir(data_dir: Path, service_user: str | None) -> Check:
    """FAIL when the user the agent runs as cannot write the data directory or the outbox in
    it: the agent would keep its readings in memory only (see agent.store.storage)."""
    who = account(service_user)
    said = f" ({who.why})" if who.why else ""
    cannot_tell = Check("data directory", Status.SKIP, f"not checked: as {_me()} this command "
                        f"cannot tell whether user {who.name} may write {data_dir}; sudo "
                        "envagent doctor checks it")
    try:
        if not data_dir.exists():
            return _missing_data_dir(data_dir, who, said)
    except OSError:  # a directory on the way this user may not enter
        return cannot_tell
    fix = (f"sudo chown -R {who.name}:{_group(who.gid)} {data_dir}, or choose another "
           "directory (storage.path, or --data-dir)")
    for path in [data_dir] + [data_dir / f"{OUTBOX_NAME}{end}" for end in ("", "-wal", "-shm")]:
        try:
            if path != data_dir and not path.exists():
                continue
        except OSError:
            return cannot_tell
        allowed = may_write(path, who)
        if allowed is None:
            return cannot_tell
        if not allowed:
            owner = _owner(path)
            return Check("data directory", Status.FAIL, f"user {who.name} cannot write {path}"
                         f"{owner}{said}: the agent could not store readings there", fix)
    return Check("data directory", Status.PASS, f"{data_dir} is writable by user {who.name}"
                 f"{said}")


def _missing_data_dir(data_dir: Path, who: Account, said: str) -> Check:
    """A directory that is not there yet: systemd creates the service's own; otherwise the
    agent does, in the nearest directory that exists."""
    if who.why == "" and data_dir.resolve() == Path(DEFAULT_STORAGE_PATH):
        return Check("data directory", Status.PASS, f"{data_dir} does not exist yet: systemd "
                     "creates it for the service when it starts (StateDirectory=envagent)")
    parent = data_dir.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return Check("data directory", Status.FAIL, f"{data_dir} cannot be created: {parent} "
                     "is not a directory", "choose another directory (storage.path, or "
                     "--data-dir)")
    allowed = may_write(parent, who)
    if allowed is None:
        return Check("data directory", Status.SKIP, f"not checked: {data_dir} does not exist, "
                     f"and as {_me()} this command cannot tell whether user {who.name} may "
                     f"create it; sudo envagent doctor checks it")
    if not allowed:
        return Check("data directory", Status.FAIL, f"{data_dir} does not exist, and user "
                     f"{who.name} cannot create it in {parent}{said}",
                     f"sudo install -d -o {who.name} -g {_group(who.gid)} -m 0700 {data_dir}")
    return Check("data directory", Status.PASS, f"{data_dir} does not exist yet; user {who.name} "
                 f"may create it in {parent}{said}")


def check_lock(data_dir: Path, daemon_pid: Callable[[], int | None]) -> Check:
    """Whether an agent holds the data directory (agent.store.datadir), and which.

    The running agent holding it is as it should be: PASS. Anything else holding it (a
    ``sync`` or ``commission`` by hand, which end by themselves; an unknown process) keeps the
    service from starting or restarting on it for as long as it holds it: WARN, naming it.
    When the lock is free it is taken and let go at once, as ``sync`` would; no lock file is
    created where there is none (then no agent has ever held the directory).
    """
    lock = data_dir / datadir.LOCK_FILE
    try:
        lock.lstat()
    except FileNotFoundError:
        return Check("lock", Status.PASS, f"no agent holds {data_dir}")
    except OSError as exc:
        return _lock_unknown(data_dir, exc)
    try:
        with datadir.hold(data_dir):
            pass
    except datadir.DataDirBusy as busy:
        return _held(data_dir, busy.pid, daemon_pid())
    except datadir.DataDirError as exc:
        return _lock_unknown(data_dir, exc)
    return Check("lock", Status.PASS, f"no agent holds {data_dir}")


def _held(data_dir: Path, pid: int | None, agent: int | None) -> Check:
    if pid is None and agent is not None:  # a lock file left by root: its holder's pid is not in it
        return Check("lock", Status.PASS, f"{data_dir} is in use, most likely by the running "
                     f"envagent run (pid {agent})")
    if pid is None:
        return Check("lock", Status.WARN, f"{data_dir} is in use by a process that did not "
                     "record its pid: the service cannot start on it while that runs",
                     f"sudo fuser -v {data_dir / datadir.LOCK_FILE} names it")
    command = _command(pid)
    if pid == agent or command.startswith(AGENT_RUN):
        return Check("lock", Status.PASS, f"{data_dir} is in use by the running "
                     f"{AGENT_RUN} (pid {pid}), as it should be")
    what = command or "its command line cannot be read"
    return Check("lock", Status.WARN, f"{data_dir} is in use by pid {pid} ({what}): the "
                 "service cannot start on it while that runs", "a sync or commission ends by "
                 "itself; otherwise stop that process, then: sudo systemctl restart envagent")


def _lock_unknown(data_dir: Path, exc: OSError) -> Check:
    return Check("lock", Status.SKIP, f"not checked: as {_me()} this command cannot open the "
                 f"lock of {data_dir} ({describe(exc)}); sudo envagent doctor checks it")


def command_words(cmdline: Path) -> list[str]:
    """The words of a process's command line (``/proc/PID/cmdline``), from its first
    MAX_CMDLINE_BYTES: a command line can be megabytes, and only its first words tell what runs.
    OSError when it cannot be read (O_NONBLOCK: anything but the kernel's file must not hang
    doctor)."""
    fd = os.open(cmdline, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        argv = os.read(fd, MAX_CMDLINE_BYTES).split(b"\0")
    finally:
        os.close(fd)
    return [w.decode("utf-8", "replace") for w in argv if w]


def _command(pid: int) -> str:
    """``envagent run`` or ``envagent sync`` for an agent's pid, else its command line; "" when
    it cannot be read."""
    try:
        words = command_words(Path(f"/proc/{pid}/cmdline"))
    except OSError:
        return ""
    # envagent ARGS, python .../envagent ARGS (the console script), python -m agent ARGS
    start = next((i + 1 for i, w in enumerate(words[:2]) if Path(w).name == "envagent"),
                 3 if words[1:3] == ["-m", "agent"] else None)
    command = next((w for w in words[start:] if not w.startswith("-")), None) if start else None
    if command is not None:
        return f"envagent {command}"
    return " ".join(" ".join(words).split())[:MAX_COMMAND_CHARS]


def _owner(path: Path) -> str:
    try:
        uid = path.stat().st_uid
        return f" (owned by {pwd.getpwuid(uid).pw_name})"
    except (OSError, KeyError):
        return ""


def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _me() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())
