"""Spreadsheet manifests: CSV and JSON Lines, one job a row, read one row at a time into the
same job checks as YAML's jobs (manifest_core): the same rules, the same `file:line` problems.

CSV (`.csv`): the first row is the header, required. Columns: video, audio (required),
reference_id, disable_active_speaker_detection (true/false, yes/no, 1/0, or empty for false);
columns named x-… are notes, ignored. An empty cell is a value not given. The line of a problem
is the row's number in a spreadsheet (the header is 1; a quoted cell may span lines of the
file); blank rows are skipped.

JSON Lines (`.jsonl`, `.ndjson`): one JSON object a line, with the keys of a YAML job (video and
audio, or inputs; reference_id; disable_active_speaker_detection as true, false or null);
keys named x-… are ignored, empty lines skipped.

Neither has a `batch` column or key: a file is one batch, named by --batch or the file's stem."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator
from typing import Any

from dubrunner.localmedia import Digests
from dubrunner.manifest_core import (
    Manifest,
    ManifestError,
    Media,
    Problem,
    RawJob,
    did_you_mean,
    finish,
    parse_job,
)
from dubrunner.yamlstream import LineDict, LineList, show

COLUMNS = ("video", "audio", "reference_id", "disable_active_speaker_detection")
_FLAG = "disable_active_speaker_detection"
_FLAGS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
_NO_BATCH = (
    "a {kind} manifest has no batch {what}: the file is one batch, named by --batch or the "
    "file's name"
)
_CSV_MISSING = "the {key} cell is empty"
_JSON_MISSING = 'give "{key}": URL, or "inputs"'


def parse_csv(
    text: str, name: str, batch: str, max_jobs: int, media: Media, digests: Digests | None
) -> Manifest:
    """A CSV manifest's jobs; raises ManifestError listing every problem found."""
    problems: list[Problem] = []
    raws: list[RawJob] = []
    rows = _csv_rows(text, name)
    header = next((row for row in rows if any(cell.strip() for cell in row[1])), None)
    if header is None:
        raise ManifestError(name, [Problem(None, "the manifest is empty")])
    header_line, cells = header
    columns = _columns(cells, header_line, problems)
    if problems:
        raise ManifestError(name, problems)
    notes = [column for column in columns if column.startswith("x-")]
    index = 0
    for line, row in rows:
        if not "".join(row).strip():
            continue  # a blank row (no cell holds anything but white space)
        index += 1
        if index > max_jobs:
            raise ManifestError(
                name, [Problem(line, f"more than {max_jobs:,} jobs; the limit is {max_jobs:,}")]
            )
        entry = _csv_entry(row, columns, notes, line, index, problems)
        if entry is not None:
            job = parse_job(entry, index, line, problems, media, _CSV_MISSING)
            if job is not None:
                raws.append(job)
    if index == 0 and not problems:
        problems.append(Problem(header_line, "no rows under the header: no jobs"))
    return finish(name, batch, raws, False, problems, digests or Digests())


def _lines(text: str) -> Iterator[str]:
    """The text's lines, each with its line break, one at a time (io.StringIO would first copy
    the whole text, at up to four bytes a character)."""
    start, size = 0, len(text)
    while start < size:
        end = text.find("\n", start)
        if end < 0:
            yield text[start:]
            return
        yield text[start : end + 1]
        start = end + 1


def _csv_rows(text: str, name: str) -> Iterator[tuple[int, list[str]]]:
    """(the row's number, its cells), row by row; a CSV syntax error ends it all. Rows are
    numbered as a spreadsheet numbers them, the header 1 and blank rows counted: the line in a
    text editor too, unless a quoted cell spans lines."""
    reader = csv.reader(_lines(text), strict=True)
    number = 0  # of the last row read: an error is in the next
    try:
        for number, row in enumerate(reader, start=1):
            yield number, row
    except csv.Error as exc:
        raise ManifestError(
            name, [Problem(number + 1, f"CSV syntax error: {_csv_why(exc)}")]
        ) from None


def _csv_why(exc: csv.Error) -> str:
    """The csv module's complaint in the user's terms (it speaks to programmers of a lone CR)."""
    if "new-line character seen in unquoted field" in str(exc):
        return (
            "a line ends in a lone carriage return (CR, as in old Mac files); save the file "
            "with LF or CRLF line endings"
        )
    return str(exc)


def _columns(cells: list[str], line: int, problems: list[Problem]) -> list[str]:
    """The header's column names, stripped ("" for a nameless column)."""
    names = [cell.strip() for cell in cells]
    if not set(names) & set(COLUMNS):
        problems.append(
            Problem(
                line,
                f"the first row must be the header ({','.join(COLUMNS)}, in any order; "
                f"video and audio required), not {show(','.join(cells), 60)}",
            )
        )
        return []
    columns: list[str] = []
    for name in names:
        if name == "batch":
            problems.append(Problem(line, _NO_BATCH.format(kind="CSV", what="column")))
        elif name in columns:
            problems.append(Problem(line, f"the column {name!r} is given twice"))
        elif name and name not in COLUMNS and not name.startswith("x-"):
            problems.append(
                Problem(
                    line,
                    f"unknown column {show(name)}{did_you_mean(name, COLUMNS)} (expected "
                    f"{', '.join(COLUMNS)}; x-… columns are ignored)",
                )
            )
        columns.append(name)
    problems.extend(
        Problem(line, f"no {key!r} column") for key in ("video", "audio") if key not in columns
    )
    return columns


def _csv_entry(
    row: list[str],
    columns: list[str],
    notes: list[str],
    line: int,
    index: int,
    problems: list[Problem],
) -> LineDict | None:
    """A row as a job entry (its empty cells and the `notes` columns, x-…, left out), or None
    for a row wider than the header or with a value under a nameless column."""
    if len(row) > len(columns):
        problems.append(
            Problem(
                line,
                f"job {index}: {len(row)} cells, but the header has {len(columns)} columns",
            )
        )
        return None
    # All the cells at once (fast), then what is left out taken away. Column names are unique
    # (_columns), so no cell hides another; missing trailing cells are absent, as empty ones.
    entry = LineDict(zip(columns, map(str.strip, row), strict=False))
    entry.line = line
    entry.key_lines = {}
    if not all(entry.values()):
        for column in [column for column, value in entry.items() if not value]:
            del entry[column]
    for column in notes:
        entry.pop(column, None)
    if "" in entry:  # a value under the nameless column
        problems.append(
            Problem(
                line,
                f"job {index}: {show(entry[''])} in column {columns.index('') + 1}, which has no "
                "name in the header",
            )
        )
        return None
    flag = entry.get(_FLAG)
    if flag is not None:
        entry[_FLAG] = _FLAGS.get(flag.lower(), flag)
    return entry


def parse_jsonl(
    text: str, name: str, batch: str, max_jobs: int, media: Media, digests: Digests | None
) -> Manifest:
    """A JSON Lines manifest's jobs; raises ManifestError listing every problem found."""
    problems: list[Problem] = []
    raws: list[RawJob] = []
    # One decoder for every line, told each line's number (json.loads makes one a call).
    keyed = _Keyed(0)
    decode = json.JSONDecoder(object_pairs_hook=keyed, parse_int=_number).decode
    index = 0
    for line_no, line in enumerate(_lines(text), start=1):
        if not line.strip():
            continue
        index += 1
        if index > max_jobs:
            raise ManifestError(
                name,
                [Problem(line_no, f"more than {max_jobs:,} jobs; the limit is {max_jobs:,}")],
            )
        keyed.line = line_no
        try:
            # json.loads only adds its refusal of a line that starts with a BOM: kept, its words.
            value = decode(line) if not line.startswith("\ufeff") else json.loads(line)
        except _Refused as exc:
            problems.append(Problem(line_no, f"job {index}: {exc}"))
            continue
        except ValueError as exc:  # JSONDecodeError
            problems.append(Problem(line_no, f"job {index}: not valid JSON: {_why(exc)}"))
            continue
        except RecursionError:
            problems.append(Problem(line_no, f"job {index}: the JSON is nested too deeply"))
            continue
        # A JSON array is written with "[" (no escape makes one): without it, nothing to line.
        entry = _lined(value, line_no) if "[" in line else value
        if isinstance(entry, LineDict):
            if "batch" in entry:
                problems.append(
                    Problem(line_no, f"job {index}: " + _NO_BATCH.format(kind="JSONL", what="key"))
                )
                continue
            for key in [k for k in entry if k.startswith("x-")]:
                del entry[key]
        job = parse_job(entry, index, line_no, problems, media, _JSON_MISSING)
        if job is not None:
            raws.append(job)
    if index == 0:
        raise ManifestError(name, [Problem(None, "the manifest is empty")])
    return finish(name, batch, raws, False, problems, digests or Digests())


class _Refused(ValueError):
    """A JSON line refused with the reason given."""


class _Duplicate(_Refused):
    pass


def _number(text: str) -> int:
    """json's parse_int: Python refuses to read a number this long (its limit's message is
    about sys.set_int_max_str_digits, a programmer's term), and no value here could be one."""
    limit = sys.get_int_max_str_digits()
    if limit and len(text.lstrip("-")) > limit:
        raise _Refused(f"a number of {len(text.lstrip('-')):,} digits: too long to be a value")
    return int(text)


class _Keyed:
    """json's object_pairs_hook: an object as a LineDict on its line; a key given twice is an
    error, as in YAML (json alone keeps the last silently)."""

    def __init__(self, line: int) -> None:
        self.line = line

    def __call__(self, pairs: list[tuple[str, Any]]) -> LineDict:
        entry = LineDict(pairs)
        if len(entry) != len(pairs):
            seen: set[str] = set()
            for key, _ in pairs:
                if key in seen:
                    raise _Duplicate(f"the key {show(key)} is given twice")
                seen.add(key)
        entry.line = self.line
        entry.key_lines = {}
        return entry


def _lined(value: Any, line: int) -> Any:
    """JSON arrays as LineLists (the job checks know lists by their lines), all on `line`."""
    if isinstance(value, list):
        items = LineList(_lined(item, line) for item in value)
        items.line = line
        items.item_lines = [line] * len(items)
        return items
    if isinstance(value, LineDict):
        for key, item in value.items():
            if isinstance(item, list):
                value[key] = _lined(item, line)
    return value


def _why(exc: ValueError) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} (column {exc.pos + 1})"
    return str(exc)
