"""A unit upgraded in place: the files the release before several upstreams wrote keep working.

``tests/data/release-0.1`` holds what that release (commit e260b02) left in a data directory
after a rehearsal whose upstream was unreachable: its one-table ``[uplink]`` config
(``station.toml``, allow_insecure_http and all), the outbox (schema 2, 30 readings waiting), its
``uplink-state.json`` and ``station.json``. The new agent must take the config as one upstream
named ``default``, upgrade the outbox in place and deliver every one of those readings to it.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

from agent_process import envagent
from httpfaults import parse_line
from recording_server import RecordingServer

from agent.store.outbox import Outbox

RELEASE = Path(__file__).parent / "data" / "release-0.1"
OLD_URL = "http://127.0.0.1:9/write"


def old_readings(outbox: Path) -> set[tuple[str, str, int, float]]:
    """(sensor, quantity, time_ns, value) of every reading in an outbox of schema 2."""
    with sqlite3.connect(f"file:{outbox}?mode=ro", uri=True) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (2,)
        rows = conn.execute("SELECT s.sensor, s.quantity, r.time_ns, r.value FROM readings r "
                            "JOIN series s ON s.id = r.series").fetchall()
    return {(s, q, t, float(v)) for s, q, t, v in rows}


def test_the_previous_release_s_config_outbox_and_state_work_unchanged(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for name in ("outbox.sqlite", "uplink-state.json", "station.json"):
        shutil.copy(RELEASE / name, data / name)
    waiting = old_readings(data / "outbox.sqlite")
    assert len(waiting) == 30
    with RecordingServer(lambda exchange: 204) as server:
        config = tmp_path / "station.toml"
        # the same file; only the address of the server differs
        config.write_text((RELEASE / "station.toml").read_text().replace(OLD_URL, server.url()))
        checked = envagent("config", "check", "--config", config, cwd=tmp_path, timeout=60)
        assert checked.returncode == 0, checked.stderr
        ran = envagent("run", "--simulate", "--deliver", "--config", config, "--data-dir", data,
                       "--duration", "3", cwd=tmp_path, timeout=120)
        assert ran.returncode == 0, ran.stderr
        status = envagent("status", "--simulate", "--json", "--config", config, "--data-dir",
                          data, cwd=tmp_path, timeout=60)
        sent = [parse_line(line) for exchange in server.snapshot() if exchange.accepted
                for line in exchange.body.decode().splitlines()]
    got = {(tags["sensor"], quantity, stamp, float(value))
           for _, tags, fields, stamp in sent for quantity, value in fields.items()
           if not quantity.endswith("_q") and isinstance(value, float | int)}
    assert waiting <= got, sorted(waiting - got)[:5]
    with Outbox.open_readonly(data / "outbox.sqlite") as outbox:
        stats, cursors = outbox.stats(), outbox.upstreams()
    assert [c.name for c in cursors] == ["default"]
    assert stats.added >= 30 + 3  # ids go on above the old ones
    assert stats.delivered + stats.backlog == stats.added  # nothing dropped or lost
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert [u["name"] for u in report["uplinks"]] == ["default"]
