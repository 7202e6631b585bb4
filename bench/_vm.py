"""A local VictoriaMetrics for the benches: the test harness's server (tests/victoriametrics.py),
reused as is -- same binary, flags and start-up wait -- plus a cheap point count.

The harness module imports pytest (for its fixture); that only costs the bench process a few
MiB, and no bench measures its own process's memory.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import victoriametrics as harness  # noqa: E402  (tests/ is not a package)

VictoriaMetrics = harness.VictoriaMetrics
START_ATTEMPTS = 3  # the free port may be taken between choosing and binding it
SCRATCH = Path("/var/tmp")  # a real disk (ext4 here): /proc/<pid>/io write_bytes is 0 on tmpfs


@contextmanager
def running(directory: Path | None = None) -> Iterator[harness.VictoriaMetrics]:
    """Start victoria-metrics on 127.0.0.1 with a fresh storage directory; stop it at the end."""
    binary = harness.find_binary()
    if binary is None:
        raise SystemExit(harness.MISSING)
    with tempfile.TemporaryDirectory(prefix="envagent-bench-vm-",
                                     dir=directory or SCRATCH) as tmp:
        for attempt in range(START_ATTEMPTS):
            try:
                server = harness.start(binary, Path(tmp))
                break
            except RuntimeError:
                if attempt == START_ATTEMPTS - 1:
                    raise
        try:
            yield server
        finally:
            harness.stop(server)


def count_points(server: harness.VictoriaMetrics, metric_regex: str, start_s: float,
                 end_s: float) -> int:
    """How many readings the server holds for metrics matching ``metric_regex`` in
    [start_s, end_s] (seconds): one ``count_over_time`` query, after a flush.

    One point per reading: a reading's quality (the ``<quantity>_q`` field, sent when not 0)
    is a metric of its own and left out of the count."""
    server.flush()
    window = max(1, int(end_s - start_s) + 1)
    selector = f'{{__name__=~"{metric_regex}",__name__!~".*_q"}}'
    query = f"sum(count_over_time({selector}[{window}s]))"
    response = requests.get(f"{server.url}/api/v1/query",
                            params={"query": query, "time": f"{end_s:.3f}"},
                            timeout=harness.HTTP_TIMEOUT_S * 6)
    response.raise_for_status()
    result = response.json()["data"]["result"]
    return int(float(result[0]["value"][1])) if result else 0
