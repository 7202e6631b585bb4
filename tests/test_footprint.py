"""What ``envagent run`` keeps in memory: optional features stay out until configured.

Every module a daemon imports stays resident for months (issue #4: <= 35 MiB on the simulated
station, bench/bench_daemon.py). These tests run the real command in a subprocess and read its
``sys.modules`` at exit, so an eager import that sneaks back in is caught here rather than as a
few hundred KiB more in the next benchmark.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from agent.cli.context import example_config_path
from drivers.clock import SystemClock

# Runs the command exactly as ``python -m agent`` does, then lists every module it loaded.
_LIST_MODULES = (
    "import atexit, sys\n"
    "atexit.register(lambda: print(' '.join(sorted(sys.modules))))\n"
    "from agent.cli.main import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def loaded_by_run(tmp_path: Path, config_text: str, *extra: str) -> set[str]:
    config = tmp_path / "envagent.toml"
    config.write_text(config_text)
    result = subprocess.run(
        [sys.executable, "-c", _LIST_MODULES, "run", "--simulate", "--config", str(config),
         "--data-dir", str(tmp_path / "data"), "--duration", "1", *extra],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split())


def test_a_unit_without_led_or_power_switches_never_loads_gpiozero(tmp_path: Path) -> None:
    example = example_config_path().read_text()
    assert "\n[indicator]" not in example and "\npower_pin" not in example
    modules = loaded_by_run(tmp_path, example)
    assert "agent.sampling.sampler" in modules  # it did run
    # gpiozero (and the statistics and fractions it pulls in) only with an
    # [indicator] or a power_pin; subprocess only came with ctypes.util.find_library, which
    # SystemClock no longer needs; decimal only came with the config's durations and sizes.
    assert not {"gpiozero", "statistics", "subprocess", "ctypes.util", "decimal"} & modules


def test_a_configured_status_led_still_loads_gpiozero(tmp_path: Path) -> None:
    config = example_config_path().read_text() + "\n[indicator]\nled_pin = 17\n"
    assert "gpiozero" in loaded_by_run(tmp_path, config)


def test_the_system_clock_reads_the_kernel_sync_state_without_ctypes_util() -> None:
    # adjtimex from the C library the interpreter already loaded: True or False on Linux,
    # None only where there is no adjtimex to call.
    assert SystemClock().synchronized() in (True, False)


def test_requests_is_loaded_only_by_a_unit_that_delivers(tmp_path: Path) -> None:
    # An offline data logger (no [uplink]) never POSTs: requests, urllib3 and ssl are ~15 MiB.
    example = example_config_path().read_text()
    assert "\n[uplink]" not in example
    for place in ("offline", "online"):
        (tmp_path / place).mkdir()
    offline = loaded_by_run(tmp_path / "offline", example)
    assert "agent.sampling.sampler" in offline and "requests" not in offline
    uplink = '\n[uplink]\nurl = "http://127.0.0.1:9/write"\nallow_insecure_http = true\n'
    # a rehearsal delivers only when asked (agent.store.rehearsal)
    assert "requests" in loaded_by_run(tmp_path / "online", example + uplink, "--deliver")
