"""A doctor check's result and how a list of them is told: PASS, SKIP, WARN or FAIL with one
hint each, for people (wrapped to a phone's width) or as JSON, and the exit code."""

from __future__ import annotations

import argparse
import enum
import json
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TextIO

HINT_ARROW = "->"
MAX_SAMPLES = 100  # doctor --samples


class Status(enum.StrEnum):
    PASS = "PASS"
    SKIP = "SKIP"  # not run: an earlier check failed, or it does not apply
    WARN = "WARN"
    FAIL = "FAIL"


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    status: Status
    detail: str
    hint: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status.value, "detail": self.detail,
                "hint": self.hint}


def worst(checks: Sequence[Check]) -> Status:
    statuses = {c.status for c in checks}
    for status in (Status.FAIL, Status.WARN):
        if status in statuses:
            return status
    return Status.PASS


class DiskUsage(NamedTuple):
    total: int
    used: int
    free: int


# --- output --------------------------------------------------------------------------------------


def exit_code(checks: Sequence[Check]) -> int:
    return 1 if worst(checks) is Status.FAIL else 0


def print_json(checks: Sequence[Check], out: TextIO) -> None:
    json.dump({"checks": [c.as_json() for c in checks], "worst": worst(checks).value}, out,
              indent=2, ensure_ascii=False)
    out.write("\n")


def print_human(checks: Sequence[Check], out: TextIO, width: int) -> None:
    """``STATUS name: detail`` and an indented hint, wrapped for a phone-sized terminal."""
    width = max(40, width)
    for c in checks:
        body = textwrap.wrap(f"{c.status.value} {c.name}: {c.detail}", width,
                             subsequent_indent="     ", break_on_hyphens=False)
        out.write("\n".join(body) + "\n")
        if c.hint and c.status in (Status.WARN, Status.FAIL):
            hint = textwrap.wrap(f"{HINT_ARROW} {c.hint}", width, initial_indent="     ",
                                 subsequent_indent="        ", break_on_hyphens=False)
            out.write("\n".join(hint) + "\n")
    counts = {s: sum(c.status is s for c in checks) for s in Status}
    summary = ", ".join(f"{n} {s.value}" for s, n in counts.items() if n)
    out.write("\n".join(textwrap.wrap(f"worst: {worst(checks).value} ({summary})", width,
                                      subsequent_indent="     ")) + "\n")


def human_age(seconds: float) -> str:
    """A duration for a check's detail: 45 s, 12 min, 3.5 h, 2.0 d."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def sample_count(text: str) -> int:
    """``--samples``: 1 to 100."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_SAMPLES:
        raise argparse.ArgumentTypeError(f"expected a whole number from 1 to {MAX_SAMPLES}, "
                                         f"got {text!r}")
    return value
