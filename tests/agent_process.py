"""The real ``envagent`` as a separate process, for the tests that drive the CLI.

Without systemd's notify variables in its environment (a test running under a service manager
must not have its child talk to it), with this checkout first on the import path.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SYSTEMD_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def environment() -> dict[str, str]:
    """The environment of an ``envagent`` child: this one's, without systemd's variables, with
    this checkout first on the import path."""
    env = {k: v for k, v in os.environ.items() if k not in SYSTEMD_VARIABLES}
    return {**env, "PYTHONPATH": str(ROOT)}


def envagent(*args: str | Path, cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    """``python -m agent ARGS`` in ``cwd``; its exit code, stdout and stderr as text."""
    return subprocess.run([sys.executable, "-m", "agent", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env=environment())


def require(found: str | None, missing: str, skip: str) -> str:
    """A server binary the integration tests need: its path; without it a test fails in CI
    (``CI=true``, where .ci/run installs it) with ``missing``, and elsewhere skips, saying
    ``skip``."""
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail(missing, pytrace=False)
        pytest.skip(f"{skip}; with CI=true this fails")
    return found
