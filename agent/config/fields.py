"""The machinery every section's parser shares: the problem list, named ``[[table]]``s and
table reading.

A parser never stops at a bad value: it adds a :class:`Problems` line and goes on, so a
technician gets the whole list at once. Each key of a table is a :class:`Field`: how to check
it, its default (or :data:`REQUIRED`) and how to show a bad value; :func:`read_table` reads a
table against its fields. Paths are TOML paths (``sensor[0].interval``) until a problem line
shows them: a path into a named ``[[table]]`` then reads ``sensor 'air' (line 14): interval``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, TypeVar

from agent.config.tomllines import TableLines, array_table_lines
from agent.core.units import toml_key, toml_value
from drivers.base import Driver

Registry = Mapping[str, type[Driver]]
T = TypeVar("T")

ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # used with fullmatch

NO_VALUE = object()
REQUIRED: Any = object()  # a Field default: the key must be present


class Bad(Exception):
    """A value is unusable; the message is what follows ``key = value:`` in the problem line."""


class Problems:
    """Collects problem lines: ``source: key = value: what is wrong; what is expected``.

    Paths are TOML paths (``sensor[0].interval``) everywhere; a path into a ``[[table]]`` with
    :class:`_Labels` is shown the technician's way (``sensor 'air' (line 14): interval``).
    """

    def __init__(self, source: str, drivers: Registry, text: str | None = None) -> None:
        self.source = source
        self.drivers = drivers
        self.text = text
        self.lines: list[str] = []
        # sensor id -> its driver and quantities (name -> unit), for [[alert]]; None: unknown
        self.sensors: dict[str, tuple[str, Mapping[str, str] | None]] = {}
        self.alerts: list[str] = []  # the ids of the [[alert]]s, for [[uplink]]
        self.labels: dict[str, _Labels] = {}  # "sensor" -> how its tables are named

    def add(
        self,
        path: str,
        message: str,
        value: object = NO_VALUE,
        show: Callable[[Any], str] = toml_value,
    ) -> None:
        where = self._where(path)
        where = where if value is NO_VALUE else f"{where} = {show(value)}"
        self.lines.append(f"{self.source}: {where}: {message}")

    def name(self, array: str, tables: Sequence[object], id_key: str | None = "id",
             pattern: re.Pattern[str] = ID_PATTERN) -> _Labels:
        """Name the ``[[array]]`` tables in problem lines from now on (by ``id_key``, where
        its value fully matches ``pattern``)."""
        lines = None if self.text is None else array_table_lines(self.text, array, tables)
        labels = self.labels[array] = _Labels(array, tables, lines, id_key, pattern)
        return labels

    def written(self, path: str) -> str | None:
        """The line of the file that holds ``path`` (a key of a named ``[[table]]``), as
        written; None where the text or the key's own line is not known."""
        match = _IN_ARRAY.fullmatch(path)
        labels = None if match is None else self.labels.get(match[1])
        if match is None or labels is None or labels.lines is None or self.text is None:
            return None
        index, key = int(match[2]), match[3] or ""
        line = labels.lines[index].get(key) if index < len(labels.lines) else None
        if line is None:
            return None
        lines = self.text.splitlines()
        return lines[line - 1] if 0 < line <= len(lines) else None

    def _where(self, path: str) -> str:
        match = _IN_ARRAY.fullmatch(path)
        labels = None if match is None else self.labels.get(match[1])
        if match is None or labels is None:
            return path
        key = match[3] or ""
        label = labels.label(int(match[2]), key)
        return f"{label}: {key}" if key else label


_IN_ARRAY = re.compile(r"([a-z]+)\[([0-9]+)\](?:\.(.+))?", re.DOTALL)  # sensor[0].key


class _Labels:
    """How problem lines name the n-th ``[[sensor]]`` (or ``[[device]]``): by its id where it
    has a usable one, else by its place, and with the line of the key at issue where the text
    is known: ``sensor 'air' (line 14)``, ``sensor[2] (line 30)``."""

    def __init__(self, array: str, tables: Sequence[object], lines: list[TableLines] | None,
                 id_key: str | None, pattern: re.Pattern[str] = ID_PATTERN) -> None:
        self.array = array
        self.lines = lines
        self.ids = [_usable_id(table, id_key, pattern) for table in tables]

    def line(self, index: int, key: str = "") -> int | None:
        """The line of ``key`` in the table, else of the nearest table above it, else none."""
        if self.lines is None or index >= len(self.lines):
            return None
        lines = self.lines[index]
        while key and key not in lines:
            key = key.rpartition(".")[0]
        return lines.get(key)

    def label(self, index: int, key: str = "") -> str:
        table_id = self.ids[index] if index < len(self.ids) else None
        label = f"{self.array}[{index}]" if table_id is None else f"{self.array} {table_id!r}"
        line = self.line(index, key)
        return label if line is None else f"{label} (line {line})"


def _usable_id(table: object, id_key: str | None, pattern: re.Pattern[str]) -> str | None:
    """The table's id if it can name the table in a problem line (a valid id prints plainly)."""
    if id_key is None or not isinstance(table, Mapping):
        return None
    value = table.get(id_key)
    return value if isinstance(value, str) and pattern.fullmatch(value) else None


class Field(NamedTuple):
    """One key of a table: how to check it, its default (or REQUIRED) and how to show it."""

    check: Callable[[object], Any]
    default: Any
    example: str  # shown when a required key is missing: 'id = "demo-001"'
    show: Callable[[Any], str] = toml_value


def read_table(
    problems: Problems,
    path: str,
    table: Mapping[str, Any],
    fields: Mapping[str, Field],
    valid: str = "",
) -> tuple[dict[str, Any], bool]:
    """The values of ``fields`` that are good, and whether the whole table was.

    ``valid`` overrides the list of valid keys named for an unknown key.
    """
    before = len(problems.lines)
    for key in table:
        if key not in fields:
            problems.add(toml_key(path, key), f"unknown key; {valid or valid_keys(fields)}")
    values: dict[str, Any] = {}
    for name, spec in fields.items():
        if name not in table:
            if spec.default is REQUIRED:
                problems.add(toml_key(path, name), f"missing; add it, such as {spec.example}")
            else:
                values[name] = spec.default
            continue
        try:
            values[name] = spec.check(table[name])
        except Bad as e:
            problems.add(toml_key(path, name), str(e), table[name], spec.show)
    return values, len(problems.lines) == before


def valid_keys(fields: Mapping[str, object]) -> str:
    return "valid keys are " + ", ".join(fields)


def table_section(
    name: str, fields: Mapping[str, Field], make: Callable[..., T]
) -> Callable[[Problems, object], T | None]:
    """The parser of a section that is one table of plain keys."""

    def parse(problems: Problems, value: object) -> T | None:
        if not isinstance(value, Mapping):
            problems.add(name, f"expected a table [{name}]", value)
            return None
        values, ok = read_table(problems, name, value, fields)
        return make(**values) if ok else None

    return parse


def registry(drivers: Registry | None) -> Registry:
    if drivers is None:
        from drivers.registry import DRIVERS  # late: the registry imports every driver module

        return DRIVERS
    return drivers
