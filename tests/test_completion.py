"""Shell completion generated from the parser, and help a technician can read on a phone."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli.completion import EXAMPLES, bash_script, wrap_groups
from agent.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[1]
BASH = shutil.which("bash")
needs_bash = pytest.mark.skipif(BASH is None, reason="bash is not installed")


def envagent(*args: str, cwd: Path, columns: int = 80) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": str(columns)}
    return subprocess.run([sys.executable, "-m", "agent", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=60, env=env)


@pytest.fixture(scope="module")
def script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp("completion")
    result = envagent("completion", "bash", cwd=cwd)
    assert result.returncode == 0, result.stderr
    path = cwd / "envagent.bash"
    path.write_text(result.stdout)
    return path


def complete(script: Path, line: str, cwd: Path | None = None) -> list[str]:
    """COMPREPLY for the command line typed so far (a trailing space starts a new word)."""
    words = shlex.split(line) + ([""] if line.endswith(" ") else [])
    array = " ".join(shlex.quote(w) for w in words)
    program = (f"source {shlex.quote(str(script))}; COMP_WORDS=({array}); "
               f"COMP_CWORD={len(words) - 1}; _envagent; printf '%s\\n' \"${{COMPREPLY[@]}}\"")
    result = subprocess.run([BASH or "bash", "-c", program], capture_output=True, text=True,
                            check=True, cwd=cwd)
    return [w for w in result.stdout.splitlines() if w]


@needs_bash
def test_the_script_is_valid_bash(script: Path) -> None:
    subprocess.run([BASH or "bash", "-n", str(script)], check=True)


@needs_bash
@pytest.mark.parametrize(("line", "expected"), [
    ("envagent st", ["status"]),
    ("envagent d", ["doctor"]),
    ("envagent co", ["commission", "completion", "config"]),
    ("envagent config ", ["check", "--help", "-h"]),
    ("envagent completion ", ["bash", "--help", "-h"]),
    ("envagent doctor --sa", ["--samples"]),
    ("envagent status --data-dir /tmp --j", ["--json"]),  # the option's value is skipped
    ("envagent doctor --samples ", []),  # a number: nothing to offer
    ("envagent config check --s", ["--simulate"]),
    ("envagent status --watch --d", ["--data-dir"]),  # an optional value left out
    ("envagent status --watch 5 --d", ["--data-dir"]),  # ... or given
    ("envagent status --watch --data-dir /tmp --j", ["--json"]),
])
def test_completes_subcommands_and_options(script: Path, line: str, expected: list[str]) -> None:
    assert sorted(complete(script, line)) == sorted(expected)


@needs_bash
def test_every_subcommand_is_offered(script: Path) -> None:
    offered = complete(script, "envagent ")
    assert {"run", "sync", "read", "scan", "status", "doctor", "completion", "config"} <= set(
        offered)
    assert "--version" in offered


@needs_bash
def test_config_takes_a_file_name(script: Path, tmp_path: Path) -> None:
    (tmp_path / "station.toml").write_text("")
    (tmp_path / "data").mkdir()
    assert complete(script, "envagent doctor --config st", tmp_path) == ["station.toml"]
    assert complete(script, "envagent status --data-dir d", tmp_path) == ["data"]


def test_hidden_options_are_not_offered() -> None:
    assert "--token" not in bash_script(build_parser())


def subcommand_paths() -> list[list[str]]:
    paths = [[name] for name in EXAMPLES if "/" not in name]
    return paths + [name.split("/") for name in EXAMPLES if "/" in name]


@pytest.mark.parametrize("path", subcommand_paths(), ids="/".join)
def test_help_fits_a_phone_and_has_examples(path: list[str], tmp_path: Path) -> None:
    result = envagent(*path, "--help", cwd=tmp_path, columns=40)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert all(len(line) <= 40 for line in lines), "\n".join(x for x in lines if len(x) > 40)
    assert "examples" in result.stdout


def test_every_subcommand_has_examples_and_every_example_parses() -> None:
    parser = build_parser()
    names = set()
    for action in parser._actions:
        if hasattr(action, "choices") and isinstance(action.choices, dict):
            names |= set(action.choices)
    assert names <= set(EXAMPLES)
    for lines in EXAMPLES.values():
        text = "\n".join(lines).replace("\\\n", " ")
        for line in text.splitlines():
            words = shlex.split(line.strip().removeprefix("sudo "))
            if words[:1] == ["envagent"] and "|" not in words:
                parser.parse_args(words[1:])  # SystemExit (a test error) when stale


def test_top_level_help_fits_too(tmp_path: Path) -> None:
    result = envagent("--help", cwd=tmp_path, columns=40)
    assert all(len(line) <= 40 for line in result.stdout.splitlines()), result.stdout


def test_usage_wraps_at_option_boundaries() -> None:
    lines = wrap_groups("usage: envagent doctor [-h] [--config PATH] [--simulate]", 30)
    assert lines == ["usage: envagent doctor [-h]", "    [--config PATH]", "    [--simulate]"]
