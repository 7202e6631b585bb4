"""No symlink games: the files the agent writes -- often as root, for ``sudo envagent commission``
-- are never written through a symlink or a file planted at a name it uses. The atomic writer's
temporary file is created new (O_EXCL|O_NOFOLLOW) under a random name; the lock file is opened
with O_NOFOLLOW and must be a plain file of its own."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from agent.config import parse_config
from agent.core.atomic import atomic_file, write_json
from agent.store import commission, datadir
from agent.store.commission import FILE, Facts, history, make_record

ROOT = Path(__file__).resolve().parents[1]
STATION = ('[unit]\nid = "sym-001"\nsite = "roof"\n'
           '[[sensor]]\nid = "air"\ndriver = "bme280"\naddress = 0x76\ninterval = "10s"\n')
VICTIM = "someone else's file\n"


def envagent(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def record() -> dict[str, object]:
    config = parse_config(tomllib.loads(STATION), source="station.toml")
    return make_record(config, Facts(note="visit"), [], time_ns=1_767_225_600 * 10**9,
                       clock_synced=True, boot_id="boot-1", boot_ns=5 * 10**9)


def test_a_symlink_at_the_old_temporary_name_is_never_written_through(tmp_path: Path) -> None:
    """The writer used ``.NAME.PID.tmp``, opened with a plain ``open(..., "w")``: a symlink
    planted there made it overwrite the file it pointed to."""
    data, victim = tmp_path / "data", tmp_path / "victim"
    data.mkdir()
    victim.write_text(VICTIM)
    (data / f".{FILE}.{os.getpid()}.tmp").symlink_to(victim)
    commission.append(data, record())
    assert victim.read_text() == VICTIM
    assert [r["note"] for r in history(data)] == ["visit"]
    assert (data / f".{FILE}.{os.getpid()}.tmp").is_symlink()  # left as it was


def test_the_temporary_file_is_always_a_new_one(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "state.json"
    planted = tmp_path / f".state.json.{os.getpid()}.tmp"
    planted.write_text(VICTIM)
    write_json(target, {"a": 1})
    assert planted.read_text() == VICTIM and target.read_text() == '{"a":1}'
    # Each write takes a name nobody had: a collision is retried, never opened.
    names = iter(["aa" * 6, "aa" * 6, "bb" * 6])
    monkeypatch.setattr(os, "urandom", lambda n: bytes.fromhex(next(names)))
    (tmp_path / f".state.json.{'aa' * 6}.tmp").symlink_to(tmp_path / "victim")
    write_json(target, {"a": 2})
    assert target.read_text() == '{"a":2}' and not (tmp_path / "victim").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [planted.name, "state.json", f".state.json.{'aa' * 6}.tmp"])


def test_a_written_file_has_the_mode_a_plain_open_gives(tmp_path: Path) -> None:
    """Readable by ``envagent status`` run by another user, as before (0666 less the umask)."""
    umask = os.umask(0o022)
    try:
        with atomic_file(tmp_path / "x.csv") as file:
            file.write("a\n")
    finally:
        os.umask(umask)
    assert (tmp_path / "x.csv").stat().st_mode & 0o777 == 0o644


def test_a_symlink_at_the_target_is_replaced_not_followed(tmp_path: Path) -> None:
    victim, target = tmp_path / "victim", tmp_path / "export.csv"
    victim.write_text(VICTIM)
    target.symlink_to(victim)
    with atomic_file(target) as file:
        file.write("new\n")
    assert victim.read_text() == VICTIM
    assert not target.is_symlink() and target.read_text() == "new\n"


def test_commission_follows_no_symlink_planted_in_the_data_directory(tmp_path: Path) -> None:
    """The old commissioning lock was opened with O_CREAT: a symlink planted at its name made a
    root ``envagent commission`` create (or open) any file; the data directory's lock is opened
    with O_NOFOLLOW and a symlink there is refused."""
    config = tmp_path / "station.toml"
    config.write_text(STATION, encoding="utf-8")
    data = tmp_path / "data"
    data.mkdir()
    old_lock, new_lock = tmp_path / "created-through-old-lock", tmp_path / "created-through-lock"
    (data / ".commission.lock").symlink_to(old_lock)
    (data / datadir.LOCK_FILE).symlink_to(new_lock)
    refused = envagent("commission", "--simulate", "--config", config, "--data-dir", data,
                       cwd=tmp_path)
    assert refused.returncode == 1, refused.stderr
    assert f"{data / datadir.LOCK_FILE} is a symbolic link" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert not new_lock.exists() and not (data / FILE).exists()

    (data / datadir.LOCK_FILE).unlink()  # the technician removes it, as told
    done = envagent("commission", "--simulate", "--config", config, "--data-dir", data,
                    cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert not old_lock.exists() and not new_lock.exists()
    assert len(history(data)) == 1
