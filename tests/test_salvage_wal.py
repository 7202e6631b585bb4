"""The -wal as SQLite reads it: a healthy set is never called damaged for what SQLite ignores.

SQLite rewinds the WAL after a checkpoint and writes it again from the start, so frames of
earlier generations stay behind the new ones until they are overwritten. Their salts no longer
match the header's and their checksums do not continue the chain: SQLite's log ends at the last
valid commit frame of the current generation (https://sqlite.org/fileformat2.html, "WAL file
format"), and so must ours. These tests make such WALs with SQLite itself, in a child process that
is SIGKILLed, and open them through the outbox's normal start-up path.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
from pathlib import Path

from agent.core.reading import Reading
from agent.store import salvage
from agent.store.outbox import Outbox

BIG = 256 * 1024**2
T0 = 1_700_000_000_000_000_000
WAL_HEADER = struct.Struct(">8I")  # magic, version, page size, checkpoint, salt-1, salt-2, sums
FRAME_HEADER = struct.Struct(">6I")  # page, db size after commit, salt-1, salt-2, sums


def reading(i: int) -> Reading:
    return Reading("air", "temperature", 20.0 + i / 100, "°C", T0 + i * 10**9, i, "boot-0",
                   True, 0, "cal-1" if i % 3 == 0 else None)


def frames(wal: bytes) -> tuple[tuple[int, int], list[tuple[int, int, tuple[int, int]]]]:
    """The header's salts, and each whole frame's (page, db size after commit, salts)."""
    _, _, page_size, _, salt1, salt2, _, _ = WAL_HEADER.unpack_from(wal)
    size = FRAME_HEADER.size + page_size
    found = []
    for start in range(WAL_HEADER.size, len(wal) - size + 1, size):
        page, commit, s1, s2, _, _ = FRAME_HEADER.unpack_from(wal, start)
        found.append((page, commit, (s1, s2)))
    return (salt1, salt2), found


def db_pages(path: Path) -> int:
    """The main file's size in pages, from its header (offset 28)."""
    with path.open("rb") as f:
        header = f.read(100)
    return int(struct.unpack_from(">I", header, 28)[0])


def stale_commit_after_the_log(path: Path) -> bool:
    """Whether the frame right after the current generation's frames is a commit frame of an
    older generation that leaves fewer pages than the main file has: the trap of issue 11."""
    salts, found = frames(Path(f"{path}-wal").read_bytes())
    new = next((i for i, f in enumerate(found) if f[2] != salts), len(found))
    return (0 < new < len(found) and found[new][1] != 0
            and found[new][1] < db_pages(path))


# Appends until the WAL rewound after an automatic (PASSIVE) checkpoint; then, as ``mode`` says:
# "stale-commit": one reading per commit until the frame after the new ones is an old commit of a
# smaller database; "header-only": puts the frames of the old generation back behind the new
# header, as the file is between SQLite's writing (and syncing) the header of a rewound WAL and
# its first frame, the rewinding commit not done. Then dies by SIGKILL: no close, no
# checkpoint, the files as a killed agent leaves them. Prints how many readings it committed.
REWOUND_WRITER = """
import os, signal, struct, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from agent.store.outbox import Outbox
from test_salvage_wal import reading, stale_commit_after_the_log
path, mode = Path(sys.argv[1]), sys.argv[2]
wal = Path(f"{path}-wal")
box = Outbox(path, max_bytes=256 * 1024**2)

def checkpoints(data):
    return struct.unpack_from(">I", data, 12)[0] if len(data) >= 32 else None

def killed(committed):
    print(committed, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

n, first, before = 0, None, b""
while True:  # a long first generation: the database grows all along
    box.append([reading(i) for i in range(n, n + 50)])
    n += 50
    data = wal.read_bytes()
    if first is None:
        first = checkpoints(data)
    elif checkpoints(data) != first:
        break  # this commit went to the start of a rewound WAL
    before = data
if mode == "header-only":
    wal.write_bytes(data[:32] + before[32:])
    killed(n - 50)
for _ in range(1000):
    if stale_commit_after_the_log(path):
        killed(n)
    box.append([reading(n)])
    n += 1
sys.exit(3)
"""


def rewound_and_killed(path: Path, mode: str) -> int:
    """Leave a killed writer's outbox with a rewound WAL (see REWOUND_WRITER); return how
    many readings it committed."""
    script = REWOUND_WRITER.replace("{tests!r}", repr(str(Path(__file__).parent)))
    done = subprocess.run([sys.executable, "-c", script, str(path), mode], capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == -9, f"the writer did not set its trap: {done.stderr}"
    return int(done.stdout.split()[-1])


def opens_healthy_with_all(path: Path, total: int) -> None:
    """The store's normal start-up: nothing salvaged, every reading there with its id."""
    with Outbox(path, max_bytes=BIG) as box:
        assert box.recovery() is None
        assert box.stats().backlog == box.stats().added == total
        assert [(s.id, s.reading) for s in box.take(10**6)] == [
            (i + 1, reading(i)) for i in range(total)]
    assert list(path.parent.glob("*.damaged-*")) == []
    assert salvage.diagnose(path) is None


def test_a_rewound_wal_with_older_frames_after_the_log_is_healthy(tmp_path: Path) -> None:
    # issue 11: the old commit frame right after the log was taken for the log's end
    path = tmp_path / "outbox.sqlite"
    total = rewound_and_killed(path, "stale-commit")
    assert stale_commit_after_the_log(path)  # the trap is set
    wal = tmp_path / "wal-as-killed"
    shutil.copy(f"{path}-wal", wal)
    opens_healthy_with_all(path, total)

    salts, found = frames(wal.read_bytes())
    new = next(i for i, f in enumerate(found) if f[2] != salts)
    scan = salvage.scan_wal(wal, 1024)
    assert (scan.problem, scan.first_bad, scan.lost_commit()) == (None, new, None)
    assert scan.end == new and scan.pages == found[new - 1][1]  # the log: this generation
    assert [f.index for f in scan.committed()] == list(range(new))


def test_a_rewound_wal_header_before_its_first_frame_is_healthy(tmp_path: Path) -> None:
    # SQLite reads no frame of it (none has its salts): an empty log, and nothing is lost, as
    # SQLite rewinds only once every frame is in the database
    path = tmp_path / "outbox.sqlite"
    total = rewound_and_killed(path, "header-only")
    salts, found = frames(Path(f"{path}-wal").read_bytes())
    assert found and all(f[2][0] != salts[0] and f[2][1] != salts[1] for f in found)
    opens_healthy_with_all(path, total)
