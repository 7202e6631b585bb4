"""Reading a TOML file (the config, the wiring file) with a size bound, as one problem line
for whatever makes it unreadable: missing, not UTF-8, not TOML."""

from __future__ import annotations

import codecs
import re
import tomllib
from pathlib import Path
from typing import Any

from agent.config.tomllines import mixed_tables
from agent.core.atomic import read_bounded
from agent.core.errors import ConfigError
from agent.core.units import one_line

# A station's file is a few KiB (the annotated example ~23 KiB): the bound only keeps a wrong
# file (a log, a disk image, /dev/zero) from costing the agent its memory.
MAX_CONFIG_BYTES = 1024 * 1024


def read_toml(path: Path, source: str, what: str) -> tuple[dict[str, Any], str]:
    """The parsed TOML document at ``path`` and its text; a ConfigError names what is wrong."""
    try:
        raw = read_bounded(path, MAX_CONFIG_BYTES)
    except (OSError, ValueError) as e:  # ValueError: a NUL byte in the path
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ConfigError([f"{source}: cannot read the {what}: {reason}"]) from None
    skip = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0  # some editors add one
    try:
        text = raw[skip:].decode("utf-8")
    except UnicodeDecodeError as e:
        at = skip + e.start
        line = raw.count(b"\n", 0, at) + 1
        bad = f"byte 0x{raw[at]:02x} on line {line}"
        raise ConfigError([f"{source}: not UTF-8 text ({bad}); save it as UTF-8"]) from None
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"{source}: invalid TOML: {_toml_problem(e, text)}"]) from None
    except RecursionError:
        raise ConfigError([f"{source}: invalid TOML: arrays nested too deeply"]) from None


def _toml_problem(error: tomllib.TOMLDecodeError, text: str) -> str:
    """tomllib's message, or what is really wrong where it fails on ``[uplink]`` after
    ``[[uplink]]`` (or the other way round): it says only ``Cannot overwrite a value``."""
    message = one_line(str(error))
    at = re.search(r"at line ([0-9]+)", message)
    mixed = mixed_tables(text)
    if at is None or mixed is None or int(at[1]) != max(mixed[1:]):
        return message
    name, table, array = mixed
    hint = ' with its own name = "..." (the [uplink] table was "default")' * (name == "uplink")
    return (f"[{name}] (line {table}) and [[{name}]] (line {array}) cannot be mixed in one "
            f"file; write each {name} as its own [[{name}]] table{hint}")
