"""Links planted at the names of the agent's SQLite files are never written through.

The data directory is the service's user's: if that user is compromised it can put a symbolic
or hard link where the outbox, its -wal/-shm/-journal, a moved-aside damaged set or the HJ 212
archive will be, and ``sudo envagent sync`` (or ``run``) would then write through it as root.
Each test plants one pointing at a victim file and checks that the victim is left exactly as it
was -- its content and its mtime -- and that the refusal says what to do.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from agent.core import atomic
from agent.core.errors import StorageError
from agent.core.reading import Reading
from agent.store import salvage
from agent.store.outbox import Outbox
from agent.uplink.hj212.archive import Archive

BIG = 256 * 1024**2
T0 = 1_700_000_000_000_000_000
OLD = (1_000_000_000, 1_000_000_000)  # the victim's atime and mtime: 2001, so any write shows
ENDS = ("", "-wal", "-shm", "-journal")


def reading(i: int) -> Reading:
    return Reading("air", "temperature", 20.0 + i / 100, "°C", T0 + i * 10**9, i, "boot-0",
                   True, 0, None)


def victim_file(tmp_path: Path, content: bytes = b"precious\n" * 500) -> Path:
    """A file elsewhere that root can write and nobody may touch."""
    victim = tmp_path / "elsewhere" / "victim"
    victim.parent.mkdir(exist_ok=True)
    victim.write_bytes(content)
    os.utime(victim, OLD)
    return victim


def victim_database(tmp_path: Path) -> Path:
    """Another program's SQLite database in WAL mode (SQLite would write beside it)."""
    victim = tmp_path / "elsewhere" / "app.db"
    victim.parent.mkdir(exist_ok=True)
    conn = sqlite3.connect(victim)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    os.utime(victim, OLD)
    return victim


def snapshot(victim: Path) -> tuple[bytes, float, int, list[str]]:
    """What a write through a link would change: the content, the mtime, the ctime (which no
    one can set back), and the files beside it (SQLite creates its -wal and -shm there)."""
    found = victim.stat()
    return (victim.read_bytes(), found.st_mtime, found.st_ctime_ns,
            sorted(p.name for p in victim.parent.iterdir()))


def untouched(victim: Path, before: tuple[bytes, float, int, list[str]]) -> bool:
    after = snapshot(victim)
    return after == before and after[1] == OLD[1] and after[3] == [victim.name]


@pytest.mark.parametrize("end", ENDS)
def test_a_symlink_planted_in_the_outbox_set_is_refused(tmp_path: Path, end: str) -> None:
    victim = victim_file(tmp_path)
    content = snapshot(victim)
    state = tmp_path / "state"
    state.mkdir()
    if end:  # beside a real outbox
        with Outbox(state / "outbox.sqlite", max_bytes=BIG) as box:
            box.append([reading(1)])
    link = state / f"outbox.sqlite{end}"
    link.symlink_to(victim)
    with pytest.raises(StorageError, match=f"{link} is a symbolic link.*remove the link"):
        Outbox(state / "outbox.sqlite", max_bytes=BIG)
    assert untouched(victim, content)
    assert link.is_symlink()  # left for a human, not moved aside as damage


def test_a_symlink_outbox_to_another_database_is_refused(tmp_path: Path) -> None:
    victim = victim_database(tmp_path)
    content = snapshot(victim)
    link = tmp_path / "outbox.sqlite"
    link.symlink_to(victim)
    with pytest.raises(StorageError, match="symbolic link"):
        Outbox(link, max_bytes=BIG)
    assert untouched(victim, content)  # no -wal or -shm created beside it either


def test_a_hard_link_planted_as_the_outbox_is_refused(tmp_path: Path) -> None:
    victim = victim_file(tmp_path)
    state = tmp_path / "state"
    state.mkdir()
    os.link(victim, state / "outbox.sqlite")
    content = snapshot(victim)  # after the link, which changes its ctime
    with pytest.raises(StorageError, match="has 2 names \\(a hard link\\)"):
        Outbox(state / "outbox.sqlite", max_bytes=BIG)
    assert untouched(victim, content)


def test_a_fifo_planted_as_the_wal_is_refused(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "outbox.sqlite-wal")
    with pytest.raises(StorageError, match="not a regular file"):
        Outbox(tmp_path / "outbox.sqlite", max_bytes=BIG)


def test_a_link_swapped_in_after_the_check_is_refused(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # the race: the link appears between the check and SQLite's open; SQLite says which file
    # it opened, and that one is checked before anything is written
    victim = victim_database(tmp_path)
    content = snapshot(victim)
    link = tmp_path / "outbox.sqlite"
    link.symlink_to(victim)
    monkeypatch.setattr(atomic, "refuse_links", lambda *_: None)
    with pytest.raises(StorageError, match="replaced by a link"):
        atomic.connect_writable(link)
    assert untouched(victim, content)


def test_a_dangling_link_swapped_in_after_the_check_creates_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # SQLite creates a missing database through a link: an empty file, as root, anywhere
    target = tmp_path / "elsewhere" / "nologin"
    target.parent.mkdir()
    link = tmp_path / "hj212-bureau.sqlite"
    link.symlink_to(target)
    monkeypatch.setattr(atomic, "refuse_links", lambda *_: None)
    with pytest.raises(sqlite3.Error):
        atomic.connect_writable(link)
    assert not target.exists()


def test_a_pending_salvage_of_a_set_replaced_by_a_link_is_given_up_and_said(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # the set was moved aside by one start; before the next one salvages it (a kill midway, or
    # a salvage that failed), the service's user replaces it with a link
    victim = victim_file(tmp_path)
    content = snapshot(victim)
    path = tmp_path / "outbox.sqlite"
    aside = damaged_aside(tmp_path)
    with Outbox(path, max_bytes=BIG) as box, box._lock, box._transaction() as conn:
        salvage.mark_pending(conn, salvage.Damage("test", False), aside)
    aside.unlink()
    aside.symlink_to(victim)
    with Outbox(path, max_bytes=BIG) as box:  # sampling goes on
        box.append([reading(1)])
    assert untouched(victim, content)
    (said,) = [r for r in caplog.records if "not salvaging" in r.getMessage()]
    assert "symbolic link" in said.getMessage() and said.exc_info is None  # no traceback


def test_an_outbox_in_a_linked_directory_still_opens(tmp_path: Path) -> None:
    # storage.path may well be a symlink (to a USB stick): only the files' own names count
    (tmp_path / "real").mkdir()
    (tmp_path / "state").symlink_to(tmp_path / "real")
    with Outbox(tmp_path / "state" / "outbox.sqlite", max_bytes=BIG) as box:
        box.append([reading(1)])
    with Outbox(tmp_path / "state" / "outbox.sqlite", max_bytes=BIG) as box:
        assert box.stats().backlog == 1


@pytest.mark.parametrize("end", ENDS)
def test_a_symlink_planted_at_the_hj212_archive_is_refused(tmp_path: Path, end: str) -> None:
    victim = victim_file(tmp_path)
    content = snapshot(victim)
    path = tmp_path / "hj212-bureau.sqlite"
    link = Path(f"{path}{end}")
    link.symlink_to(victim)
    with pytest.raises(StorageError, match="symbolic link"):
        Archive(path, zone=ZoneInfo("Asia/Shanghai"), kinds=[], expected={})
    assert untouched(victim, content)


def test_a_reader_creates_nothing_beside_a_linked_outbox(tmp_path: Path) -> None:
    # envagent status (as root) with the agent's -wal and -shm beside a planted link: SQLite
    # would open them beside the link's target, creating them there
    victim = victim_database(tmp_path)
    content = snapshot(victim)
    link = tmp_path / "outbox.sqlite"
    link.symlink_to(victim)
    for end in ("-wal", "-shm"):
        Path(f"{link}{end}").write_bytes(b"")
    atomic.connect_readonly(link).execute("SELECT * FROM t").fetchall()
    assert untouched(victim, content)


# --- the moved-aside set: a salvage may run as root, long after the set was moved -----------


def damaged_aside(tmp_path: Path) -> Path:
    aside = tmp_path / "outbox.sqlite.damaged-20261206T120000Z"
    with Outbox(aside, max_bytes=BIG) as box:
        box.append([reading(i) for i in range(50)])
    with aside.open("r+b") as f:
        f.write(bytes(100))
    return aside


def test_the_damaged_header_is_never_rebuilt_through_a_planted_link(tmp_path: Path) -> None:
    victim = victim_file(tmp_path)
    content = snapshot(victim)
    aside = damaged_aside(tmp_path)
    aside.unlink()
    aside.symlink_to(victim)
    assert not salvage._rebuild_header(aside)
    salvage._split_partial_page(aside)
    salvage._restore_header(aside)
    assert untouched(victim, content)


def test_a_partial_page_is_never_cut_from_a_planted_link(tmp_path: Path) -> None:
    victim = tmp_path / "elsewhere" / "victim.db"
    victim.parent.mkdir()
    with Outbox(tmp_path / "other.sqlite", max_bytes=BIG) as box:
        box.append([reading(1)])
    partial = (tmp_path / "other.sqlite").read_bytes() + b"partial page"
    victim.write_bytes(partial)  # a database whose last page is partial: salvage cuts it off
    os.utime(victim, OLD)
    content = snapshot(victim)
    aside = tmp_path / "outbox.sqlite.damaged-20261206T130000Z"
    aside.symlink_to(victim)
    salvage._split_partial_page(aside)
    assert untouched(victim, content)


def test_a_salvage_refuses_a_set_replaced_by_links(tmp_path: Path) -> None:
    victim = victim_file(tmp_path)
    content = snapshot(victim)
    aside = damaged_aside(tmp_path)
    aside.unlink()
    aside.symlink_to(victim)
    conn = sqlite3.connect(":memory:")
    with pytest.raises(StorageError, match="symbolic link"):
        salvage.salvage_into(conn, salvage.Damage("test", False), aside)
    conn.close()
    assert untouched(victim, content)


def test_a_saved_header_larger_than_a_header_is_never_written_back(tmp_path: Path) -> None:
    # <aside>-header holds the 100 bytes a salvage replaced; anything larger is not ours (a
    # planted file): never read whole, never written over the evidence
    aside = damaged_aside(tmp_path)
    before = aside.read_bytes()
    Path(f"{aside}-header").write_bytes(b"planted" * 1_000_000)
    salvage._restore_header(aside)
    assert aside.read_bytes() == before
    assert not salvage._rebuild_header(aside)
    assert aside.read_bytes() == before
