"""An outbox that cannot be opened (unwritable state directory) is waited for, not crashed on."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from agent.config import parse_config
from agent.sampling.daemon import Agent, make_drivers
from agent.store.outbox import Outbox
from agent.store.storage import ReopeningOutbox
from drivers.clock import SystemClock
from drivers.registry import DRIVERS
from drivers.sim.environment import Environment
from drivers.sim.world import build_world

ROOT = Path(__file__).resolve().parents[1]
CONFIG = parse_config({
    "unit": {"id": "st-1", "site": "roof"},
    "storage": {"commit_interval": "1s"},
    "sensor": [{"id": "air", "driver": "bme280", "address": 0x76, "interval": "1s"}],
}, source="st.toml")


def test_readings_wait_in_memory_until_the_directory_can_be_written(tmp_path: Path) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("a file where the state directory should be\n")
    path = blocker / "outbox.sqlite"
    clock = SystemClock()
    outbox = ReopeningOutbox(path, max_bytes=1 << 24, clock=clock, retry=0.5)
    assert outbox.error is not None
    world = build_world([(1, 0x76, "bme280", "air")], clock=clock, environment=Environment())
    agent = Agent(CONFIG, make_drivers(CONFIG, world, clock, DRIVERS), outbox=outbox,
                  clock=clock, boot_id="st")

    def fix_it_later() -> None:
        time.sleep(3.0)
        blocker.unlink()
        blocker.mkdir(exist_ok=True)  # the agent's next retry may have made it first

    fixer = threading.Thread(target=fix_it_later)
    fixer.start()
    agent.run(duration=6.0)
    fixer.join()
    outbox.close()
    assert not agent.storage_failing
    with Outbox.open_readonly(path) as stored:
        stats = stored.stats()
        first = min(s.reading.time_ns for s in stored.take(100))
    assert stats.backlog >= 12  # samples from while it could not be opened are there too
    assert stats.dropped == 0
    assert first < time.time_ns() - 4_000_000_000  # from before the directory was fixed


def test_run_does_not_exit_when_the_state_directory_is_unusable(tmp_path: Path) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("not a directory\n")
    config = tmp_path / "fast.toml"
    config.write_text('[unit]\nid = "st-1"\nsite = "roof"\n[storage]\ncommit_interval = "1s"\n'
                      '[[sensor]]\nid = "air"\ndriver = "bme280"\naddress = 0x76\n'
                      'interval = "1s"\n')
    result = subprocess.run(
        [sys.executable, "-m", "agent", "run", "--simulate", "--config", str(config),
         "--data-dir", str(blocker), "--duration", "3"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 1, result.stderr  # it ran to the end; exit 1: readings lost
    assert result.stderr.count("sampling goes on into memory") == 1
    assert "stopping unable to store" in result.stderr
