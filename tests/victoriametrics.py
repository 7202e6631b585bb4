"""A real VictoriaMetrics for the integration tests: the Debian package's binary, on loopback.

The session-scoped ``victoriametrics`` fixture starts one server for the whole run (a fresh data
directory, a free port) and stops it at the end. Tests share it, so each writes its own
measurement (or calls :meth:`VictoriaMetrics.delete_series` first).

Flags (checked against the bookworm package, 1.79.5):

- ``-retentionPeriod=100y``: test data carries old timestamps (2023); the default, one month,
  would silently drop them.
- ``-dedup.minScrapeInterval=1ms``: keeps one sample per series and millisecond, so a replayed
  batch collapses to one copy -- the at-least-once contract. Without it, ``/api/v1/export``
  returns both copies (checked with 1.79.5).
- ``-search.disableCache`` and ``-search.latencyOffset=0s``: a point is queryable as soon as it
  is flushed, not 30 s later, and no cached answer hides it.
- ``/internal/force_flush`` exists in 1.79.5 (an unknown path answers 400): :meth:`flush` makes
  buffered points searchable without waiting for the periodic flush.

Precision: VictoriaMetrics keeps timestamps in milliseconds. A nanosecond line-protocol
timestamp is truncated, not rounded (1700000001123999999 ns comes back as 1700000001123 ms), so
compare with ``time_ns // 1_000_000``. Values keep about 12 significant digits (VictoriaMetrics
lib/decimal: conversionPrecision 1e12), so compare them to a relative 1e-11.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from agent_process import require

BINARY = "victoria-metrics"  # /usr/bin/victoria-metrics in the Debian package
BINARY_ENV = "ENVAGENT_VICTORIA_METRICS"  # an explicit path to the binary, if not on PATH
MISSING = "victoria-metrics is not installed: .ci/run installs it"
START_TIMEOUT_S = 30.0  # a slow CI machine replays nothing (fresh directory) but may be loaded
STOP_TIMEOUT_S = 10.0
HTTP_TIMEOUT_S = 10.0
FLAGS = (
    "-retentionPeriod=100y",
    "-dedup.minScrapeInterval=1ms",
    "-search.disableCache",
    "-search.latencyOffset=0s",
    "-loggerLevel=WARN",
)


@dataclass
class VictoriaMetrics:
    """A running server. ``url`` is the base URL (``http://127.0.0.1:PORT``), no trailing slash;
    ``write_url`` is the InfluxDB line-protocol endpoint a sink posts to."""

    url: str
    log_path: Path
    process: subprocess.Popen[bytes]

    @property
    def write_url(self) -> str:
        return f"{self.url}/write"

    def write(self, lines: str | bytes) -> None:
        """POST line protocol (ns timestamps) to ``/write``; raise unless it is accepted."""
        body = lines.encode() if isinstance(lines, str) else lines
        response = requests.post(self.write_url, data=body, timeout=HTTP_TIMEOUT_S)
        if response.status_code != 204:
            raise AssertionError(f"/write answered {response.status_code}: {response.text}")

    def flush(self) -> None:
        """Make everything written so far searchable now."""
        requests.post(f"{self.url}/internal/force_flush",
                      timeout=HTTP_TIMEOUT_S).raise_for_status()

    def query_export(self, match: str) -> list[dict[str, Any]]:
        """Every series matching the selector ``match``, flushed first, in a stable order.

        One dict per series, as ``/api/v1/export`` gives it: ``metric`` (``__name__`` and tags),
        ``values`` (floats) and ``timestamps`` (ms since the epoch), oldest first.
        """
        self.flush()
        # Without ``end`` VictoriaMetrics 1.79 leaves out roughly the last second of points.
        end = int(time.time()) + 86_400
        response = requests.get(f"{self.url}/api/v1/export",
                                params={"match[]": match, "end": str(end)},
                                timeout=HTTP_TIMEOUT_S)
        response.raise_for_status()
        series = [json.loads(line) for line in response.text.splitlines() if line.strip()]
        return sorted(series, key=lambda s: sorted(s["metric"].items()))

    def delete_series(self, match: str) -> None:
        """Delete every series matching ``match`` (a test's clean slate)."""
        response = requests.post(f"{self.url}/api/v1/admin/tsdb/delete_series",
                                 params={"match[]": match}, timeout=HTTP_TIMEOUT_S)
        response.raise_for_status()


def find_binary() -> str | None:
    explicit = os.environ.get(BINARY_ENV)
    return shutil.which(explicit) if explicit else shutil.which(BINARY)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_healthy(server: VictoriaMetrics) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            break
        try:
            if requests.get(f"{server.url}/health", timeout=1).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.05)
    log = server.log_path.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"victoria-metrics did not become healthy at {server.url} "
                       f"(exit code {server.process.poll()}); its log ends:\n{log}")


def start(binary: str, directory: Path, *, port: int | None = None,
          flags: tuple[str, ...] = FLAGS) -> VictoriaMetrics:
    """Start a server with its data and log in ``directory``; wait until /health answers.

    ``port``: the same one again restarts a stopped server where its clients expect it."""
    port = _free_port() if port is None else port
    log_path = directory / "victoria-metrics.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [binary, f"-httpListenAddr=127.0.0.1:{port}",
             f"-storageDataPath={directory / 'data'}", *flags],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    server = VictoriaMetrics(f"http://127.0.0.1:{port}", log_path, process)
    try:
        _wait_healthy(server)
    except BaseException:
        stop(server)
        raise
    return server


def stop(server: VictoriaMetrics) -> None:
    server.process.terminate()
    try:
        server.process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


def require_binary() -> str:
    """The binary's path; skips the test locally without it, fails it in CI."""
    return require(find_binary(), MISSING, "victoria-metrics is not installed (apt-get install "
                   f"victoria-metrics, or set {BINARY_ENV})")


@pytest.fixture(scope="session")
def victoriametrics(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VictoriaMetrics]:
    """One VictoriaMetrics for the session; skipped locally without the binary, failed in CI."""
    binary = require_binary()
    directory = tmp_path_factory.mktemp("victoriametrics")
    for attempt in range(3):  # the free port may be taken between choosing and binding it
        try:
            server = start(binary, directory)
            break
        except RuntimeError:
            if attempt == 2:
                raise
    try:
        yield server
    finally:
        stop(server)
