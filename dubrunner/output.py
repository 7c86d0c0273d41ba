"""Printers (table, JSON, CSV) and the progress display. Media URLs are always shown redacted."""

from __future__ import annotations

import csv
import json
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from dubrunner.logs import route_logging_to
from dubrunner.queries import JobRow
from dubrunner.redact import inert, redact_url, scrub

# Every field of a job row that people and scripts see, in JobRow's order (the owner, the
# look-up flag and the remote timestamps stay inside).
ROW_FIELDS = tuple(
    f.name
    for f in fields(JobRow)
    if f.name not in ("owner", "lookup_owed", "remote_started_at", "remote_finished_at")
)
EXPORT_FIELDS = (
    "batch",
    "reference_id",
    "video_url",
    "audio_url",
    "request_id",
    "state",
    "remote_status",
    "output_url",
    "local_path",
    "size_bytes",
    "sha256",
    "error",
    "supersedes",  # the reference_id this job replaced (`dubrunner supersede`)
)


def _time(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") + "Z" if value else None


def row_dict(row: JobRow) -> dict[str, Any]:
    """A row as JSON/CSV shows it: times in ISO 8601 UTC, URLs redacted, errors scrubbed."""
    out: dict[str, Any] = {}
    for name in ROW_FIELDS:
        value = getattr(row, name)
        if isinstance(value, datetime):
            value = _time(value)
        elif name.endswith("_url") and value:
            value = redact_url(value)
        elif name == "error" and value:
            value = scrub(value)
        elif name == "disable_active_speaker_detection":
            value = bool(value)
        out[name] = value
    return out


def export_dict(row: JobRow) -> dict[str, Any]:
    d = row_dict(row)
    d["error"] = d["error"] or d["remote_error"] or d["download_error"]
    return {k: d[k] for k in EXPORT_FIELDS}


def write_export(rows: Iterable[JobRow], fmt: str, out: TextIO) -> int:
    """The deliverable's rows (EXPORT_FIELDS) in a machine format; returns how many."""
    return write_dicts(map(export_dict, rows), EXPORT_FIELDS, fmt, out)


def write_rows(rows: Iterable[JobRow], fmt: str, out: TextIO) -> int:
    """Every field of each row (ROW_FIELDS) in a machine format; returns how many."""
    return write_dicts(map(row_dict, rows), ROW_FIELDS, fmt, out)


def write_dicts(
    items: Iterable[dict[str, Any]], names: Sequence[str], fmt: str, out: TextIO
) -> int:
    """Dicts as a JSON array, JSON lines or CSV (a header of `names`), streamed: a million rows
    take no more memory than one. Returns how many."""
    n = 0
    if fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=names, lineterminator="\n")
        writer.writeheader()
        for item in items:
            writer.writerow(item)
            n += 1
        return n
    if fmt == "jsonl":
        for item in items:
            out.write(json.dumps(item) + "\n")
            n += 1
        return n
    out.write("[")
    for item in items:
        out.write(("\n " if n == 0 else ",\n ") + json.dumps(item))
        n += 1
    out.write("\n]\n" if n else "]\n")
    return n


def _short(text: str | None, width: int = 60) -> str:
    if not text:
        return ""
    return text if len(text) <= width else text[: width - 1] + "…"


def plain(value: object) -> Text:
    """Foreign text (from a server, a manifest, the database) as Rich must print it: never read as
    markup, where '[/]' would crash the table and '[link=...]' would become a link."""
    return Text("" if value is None else inert(str(value)))


def table_console() -> Console:
    """A terminal's own width; piped output gets room for whole ids instead of 80 columns."""
    console = Console(soft_wrap=False)
    return console if console.is_terminal else Console(soft_wrap=False, width=200)


# The jobs table's columns, in order: (header, whether it may be left out for room). Those that
# may not are what a row is about; the error takes what room is left, cut with an ellipsis.
JOB_COLUMNS = (
    ("reference_id", False),
    ("batch", True),
    ("state", False),
    ("request_id", True),
    ("tries", False),
    ("remote", False),
    ("on disk", True),
    ("updated (UTC)", True),
)
LEFT_OUT_FIRST = ("updated (UTC)", "on disk", "batch", "request_id")  # as room runs out
MIN_ERROR = 16  # columns the error keeps before another column is left out
SHORT_ID = 8  # characters of a request_id shown in the table (all with --wide)


def _job_cells(r: JobRow, wide: bool) -> dict[str, str]:
    d = row_dict(r)
    request_id = d["request_id"] or ""
    return {
        "reference_id": d["reference_id"],
        "batch": d["batch"],
        "state": d["state"],
        "request_id": request_id if wide else request_id[:SHORT_ID],
        "tries": str(d["attempts"]),
        "remote": d["remote_status"] or "",
        "on disk": "yes" if d["download_state"] == "downloaded" else d["download_state"] or "",
        "updated (UTC)": (d["updated_at"] or "")[:19].replace("T", " "),
        "error": _short(d["error"], 200),
    }


def _natural_widths(cells: list[dict[str, str]], names: Sequence[str]) -> dict[str, int]:
    return {c: max(len(c), *(len(row[c]) for row in cells)) for c in names}


def _fitting_columns(
    cells: list[dict[str, str]], shown: list[str], width: int
) -> tuple[list[str], int]:
    """The columns of `shown` that leave the error MIN_ERROR characters in `width` (leaving out
    optional ones in LEFT_OUT_FIRST's order), and the error's room."""
    natural = _natural_widths(cells, shown)
    for dropped in (None, *LEFT_OUT_FIRST):
        if dropped in shown:
            shown = [c for c in shown if c != dropped]
        # A column takes its text, one space each side and a border; the table one more border.
        room = width - sum(natural[c] + 3 for c in shown) - 3 - 1
        if room >= MIN_ERROR:
            break
    return shown, max(room, len("error"))


def print_status_table(
    summary: Sequence[tuple[str, str, int]],
    rows: Sequence[JobRow],
    total: int,
    console: Console,
    wide: bool = False,
) -> None:
    """The counts per batch and state, then the rows: one line each, in the console's width
    (optional columns left out as it narrows, the error cut short); `wide`: every column, whole
    request_ids and errors, however wide the lines."""
    table = Table(title="Jobs by batch and state", title_justify="left")
    table.add_column("batch")
    table.add_column("state")
    table.add_column("jobs", justify="right")
    for batch, state, n in summary:
        table.add_row(plain(batch), plain(state), f"{n:,}")
    console.print(table)
    if not rows:
        return
    cells = [_job_cells(r, wide) for r in rows]
    one_batch = len({b for b, _s, _n in summary}) == 1
    shown = [name for name, _ in JOB_COLUMNS if not (one_batch and name == "batch")]
    if wide:
        shown, error_room = shown, max(len(row["error"]) for row in cells)
    else:
        shown, error_room = _fitting_columns(cells, shown, console.width)
    jobs = Table(title=f"Jobs ({len(rows):,} of {total:,} shown)", title_justify="left")
    for name in shown:
        jobs.add_column(name, no_wrap=True, justify="right" if name == "tries" else "left")
    jobs.add_column("error", no_wrap=True, overflow="ellipsis", max_width=error_room)
    for row in cells:
        jobs.add_row(*(plain(row[name]) for name in (*shown, "error")))
    # --wide: as wide as the table is, whatever the terminal's width.
    natural = sum(w + 3 for w in _natural_widths(cells, [*shown, "error"]).values()) + 1
    width = console.width
    console.width = max(width, natural) if wide else width
    try:
        console.print(jobs)
    finally:
        console.width = width


def print_media_problems(problems: Sequence[Any], console: Console) -> None:
    table = Table(title=f"Media problems ({len(problems)})", title_justify="left")
    table.add_column("reference_id", no_wrap=True)
    table.add_column("input")
    table.add_column("problem", overflow="fold")
    table.add_column("url", overflow="fold")
    for p in problems:
        table.add_row(plain(p.reference_id), plain(p.which), plain(p.problem), plain(p.url))
    console.print(table)


def print_job_detail(row: JobRow, attempts: Sequence[dict[str, Any]], console: Console) -> None:
    d = row_dict(row)
    table = Table(show_header=False, title=plain(f"Job {row.reference_id}"), title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for key, value in d.items():
        table.add_row(key, plain(value))
    console.print(table)
    if row.superseded_by:
        console.print(
            plain(
                f"superseded by {row.superseded_by}: kept for audit, out of batch "
                f"{row.batch}'s counts and exports; its request is never sent again"
            )
        )
    if row.supersedes:
        console.print(plain(f"supersedes {row.supersedes}"))
    history = Table(title="Attempts", title_justify="left")
    for name in ("at", "kind", "outcome", "status", "ms", "request_id / error"):
        history.add_column(name, overflow="fold")
    for a in attempts:
        history.add_row(
            _time(a["at"]) or "",
            plain(a["kind"]),
            plain(a["outcome"]),
            str(a["http_status"] or ""),
            str(a["duration_ms"] or ""),
            plain(a["request_id"] or scrub(a["error"] or "")),
        )
    console.print(history if attempts else "no HTTP attempts yet")


PIPED_AT_MOST = 5.0  # seconds: piped, a line no more often than this, and only on a change
PIPED_AT_LEAST = 60.0  # seconds: and one this often whatever happens (still alive)


class ProgressDisplay:
    """A live bar on a terminal; nothing when quiet; otherwise (piped, a log file) a plain line
    with the UTC time and an ETA, when something changed (at most every PIPED_AT_MOST seconds)
    and at least every PIPED_AT_LEAST."""

    def __init__(
        self,
        label: str,
        total: int | None,
        quiet: bool,
        stream: TextIO | None = None,
        clock: Any = time.monotonic,
    ) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.total = total
        self.quiet = quiet
        self.console = Console(file=self.stream)
        self.live = not quiet and self.console.is_terminal
        self.clock = clock
        # Plain lines from PIPED_AT_MOST seconds on: a short run prints only its end.
        self._started = self._last_line = clock()
        self._first: int | None = None  # what was completed at the first update
        self._last_said: tuple[int, str] | None = None
        self._progress: Progress | None = None
        self._task: Any = None

    def __enter__(self) -> ProgressDisplay:
        if self.live:
            self._progress = Progress(
                TextColumn(f"[bold]{self.label}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[detail]}"),
                TimeRemainingColumn(),
                console=self.console,
            )
            self._progress.start()
            self._task = self._progress.add_task(self.label, total=self.total, detail="")
            route_logging_to(self.console)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()
            route_logging_to(None)

    def update(self, completed: int, detail: str, left: int | None = None) -> None:
        """`completed` of the total; `left`: what remains to be done [default: the total less
        `completed`], for the ETA."""
        if self.quiet:
            return
        if self._progress is not None:
            self._progress.update(self._task, completed=completed, detail=detail)
            return
        now = self.clock()
        if self._first is None:
            self._first = completed
        since = now - self._last_line
        changed = (completed, detail) != self._last_said
        if since >= PIPED_AT_LEAST or (changed and since >= PIPED_AT_MOST):
            self._last_line, self._last_said = now, (completed, detail)
            print(self._line(now, completed, detail, left), file=self.stream, flush=True)

    def _line(self, now: float, completed: int, detail: str, left: int | None) -> str:
        at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        of = f"/{self.total}" if self.total is not None else ""
        line = f"{at} {self.label} {completed}{of} · {detail}"
        if left is None and self.total is not None:
            left = max(self.total - completed, 0)
        if left is None:
            return line
        rate = (completed - (self._first or 0)) / max(now - self._started, 1e-6)
        if rate > 0:
            line += f" · {rate:.1f}/s" if rate >= 1 else f" · {rate * 60:.1f}/min"
        if left == 0:
            return line
        if rate <= 0:
            return line + " · ETA unknown"
        return line + f" · ETA {timedelta(seconds=round(left / rate))}"
