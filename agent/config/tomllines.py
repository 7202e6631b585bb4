"""Where the keys of a TOML file's ``[[name]]`` tables are, by line: tomllib keeps no positions.

A problem line that says ``sensor 'air' (line 14)`` sends a technician straight to the mistake.
The scan is deliberately small: headers and ``key =`` lines, skipping the inside of multi-line
strings and arrays. It is checked against what tomllib parsed, and where the two disagree (a
quoted key, a construct the scan does not follow) it gives no lines rather than wrong ones.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence

# Only bare keys (A-Z a-z 0-9 _ -) are followed; anything else makes the check below fail.
_NAME = r"[A-Za-z0-9_-]+(?:\s*\.\s*[A-Za-z0-9_-]+)*"
_ARRAY_HEADER = re.compile(rf"\s*\[\[\s*({_NAME})\s*\]\]\s*(?:#.*)?")
_TABLE_HEADER = re.compile(rf"\s*\[\s*({_NAME})\s*\]\s*(?:#.*)?")
_KEY = re.compile(rf"\s*({_NAME})\s*=")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'[^\']*\'')
_MULTILINE_QUOTES = ('"""', "'''")

TableLines = dict[str, int]  # dotted key inside the table ("" for its header) -> line number


def array_table_lines(
    text: str, name: str, tables: Sequence[object]
) -> list[TableLines] | None:
    """Per ``[[name]]`` table, its header's line and the line of each key in it (sub-tables
    such as ``[name.calibration.temperature]`` included: ``calibration.temperature.offset``).

    ``tables`` is what tomllib parsed for ``name``: None when the scan found another number of
    tables; a table whose keys the scan did not all find gets an empty mapping (no lines).
    """
    found = _scan(text, name)
    if len(found) != len(tables):
        return None
    for index, table in enumerate(tables):
        seen = {key.split(".")[0] for key in found[index] if key}
        if not isinstance(table, Mapping) or seen != set(table):
            found[index] = {}
    return found


def mixed_tables(text: str) -> tuple[str, int, int] | None:
    """The first name written both as a table ``[name]`` and as ``[[name]]`` tables, with the
    line of the first header of each kind: tomllib refuses such a file with a message that
    names neither (``Cannot overwrite a value``), so the config names them instead."""
    tables: dict[str, int] = {}
    arrays: dict[str, int] = {}
    for kind, dotted, number in _structure(text):
        if kind != "key" and "." not in dotted:
            (arrays if kind == "array" else tables).setdefault(dotted, number)
    both = [(max(tables[n], arrays[n]), n) for n in tables.keys() & arrays.keys()]
    if not both:
        return None
    _, name = min(both)
    return name, tables[name], arrays[name]


def _scan(text: str, name: str) -> list[TableLines]:
    found: list[TableLines] = []
    current: TableLines | None = None
    prefix = ""
    for kind, dotted, number in _structure(text):
        parts = dotted.split(".")
        if kind == "key":
            if current is not None:
                _record(current, ".".join(filter(None, [prefix, dotted])), number)
        elif kind == "array" and parts == [name]:
            current, prefix = {"": number}, ""
            found.append(current)
        elif current is not None and len(parts) > 1 and parts[0] == name:
            prefix = ".".join(parts[1:])
            _record(current, prefix, number)
        else:
            current = None
    return found


def _structure(text: str) -> Iterator[tuple[str, str, int]]:
    """The headers (``"array"``, ``"table"``) and ``key =`` lines (``"key"``) of ``text``, each
    with its dotted name (spaces around the dots removed) and its line number."""
    depth = 0  # brackets still open: the lines of a multi-line array
    quote: str | None = None  # the delimiter of a multi-line string still open
    for number, line in enumerate(text.split("\n"), 1):
        if quote is not None:
            if line.count(quote) % 2:
                quote = None
            continue
        if depth > 0:
            depth += _brackets(line)
            continue
        header = _ARRAY_HEADER.fullmatch(line) or _TABLE_HEADER.fullmatch(line)
        if header is not None:
            kind = "array" if header.re is _ARRAY_HEADER else "table"
            yield kind, ".".join(_parts(header[1])), number
            continue
        key = _KEY.match(line)
        if key is None:
            continue
        yield "key", ".".join(_parts(key[1])), number
        value = line[key.end():]
        quote = next((q for q in _MULTILINE_QUOTES if value.count(q) % 2), None)
        if quote is None:
            depth = max(0, _brackets(value))


def _parts(dotted: str) -> list[str]:
    return [part.strip() for part in dotted.split(".")]


def _record(lines: TableLines, key: str, number: int) -> None:
    """The key and each table above it (``a``, ``a.b`` for ``a.b.c``), where first seen."""
    parts = key.split(".")
    for end in range(1, len(parts) + 1):
        lines.setdefault(".".join(parts[:end]), number)


def _brackets(text: str) -> int:
    """Opened minus closed ``[``, outside strings and comments."""
    code = _STRING.sub("", text).split("#", 1)[0]
    return code.count("[") - code.count("]")
