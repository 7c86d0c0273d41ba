"""The jobs table fits the terminal: at 80 columns what a row is about, whole; at 120 nothing
wraps; --wide shows every column and whole request_ids."""

from __future__ import annotations

import io
from datetime import datetime

from rich.console import Console

from dubrunner.output import print_status_table
from dubrunner.queries import JobRow

REQUEST_ID = "7f3c2a91-5b4e-4c1d-9e8f-0a1b2c3d4e5f"
ERROR = "HTTP 422: invalid request body: expected exactly one video input and one audio " * 2


def job(ref: str, state: str, tries: int, remote: str | None, error: str | None) -> JobRow:
    at = datetime(2026, 11, 26, 17, 3, 57)
    return JobRow(
        "season1-ja", ref, state, REQUEST_ID, error, None, tries,
        "https://v.test/v.mp4", "https://a.test/a.wav", False, "m.yaml:3", at, at, at,
        None, False, remote, None, None, None, None, "downloaded" if remote else None,
        None, None, None, None,
    )  # fmt: skip


ROWS = [
    job("season1-ja-e01", "submitted", 1, "COMPLETED", None),
    job("season1-ja-e02", "submitting", 3, "PROCESSING", ERROR),
    job("season1-ja-e03", "failed", 8, None, ERROR),
    job("season1-ja-e04", "pending", 0, None, None),
]


def render(width: int, wide: bool = False) -> list[str]:
    out = io.StringIO()
    console = Console(file=out, width=width, soft_wrap=False, color_system=None)
    print_status_table([("season1-ja", "pending", 4)], ROWS, 4, console, wide)
    lines = [line.rstrip() for line in out.getvalue().splitlines()]
    return lines[lines.index("Jobs (4 of 4 shown)") + 1 :]


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.split("│")[1:-1]]


def header(lines: list[str]) -> list[str]:
    return [c.strip() for c in lines[1].split("┃")[1:-1]]


def body(lines: list[str]) -> list[list[str]]:
    return [cells(line) for line in lines if line.startswith("│")]


def test_at_80_columns_each_row_keeps_what_it_is_about_whole() -> None:
    # Failed before: at 80 columns `tries` vanished, the state showed "sub…" and the 36
    # characters of the request_id took the room.
    lines = render(80)
    assert all(len(line) <= 80 for line in lines)
    names = header(lines)
    for name in ("reference_id", "state", "tries", "remote", "error"):
        assert name in names
    rows = body(lines)
    assert len(rows) == len(ROWS)  # one line a row: nothing wrapped
    for row, want in zip(rows, ROWS, strict=True):
        got = dict(zip(names, row, strict=True))
        assert got["reference_id"] == want.reference_id
        assert got["state"] == want.state
        assert got["tries"] == str(want.attempts)
        assert got["remote"] == (want.remote_status or "")
        if want.error:
            assert got["error"].endswith("…") and want.error.startswith(got["error"][:-1])
            assert len(got["error"]) >= 10
        if "request_id" in got:
            assert got["request_id"] == REQUEST_ID[:8]


def test_at_120_columns_nothing_wraps_and_more_is_shown() -> None:
    lines = render(120)
    assert all(len(line) <= 120 for line in lines)
    names = header(lines)
    assert names == [
        "reference_id", "state", "request_id", "tries", "remote", "on disk", "updated (UTC)",
        "error",
    ]  # fmt: skip
    rows = body(lines)
    assert len(rows) == len(ROWS)
    got = dict(zip(names, rows[0], strict=True))
    assert got["request_id"] == REQUEST_ID[:8]
    assert got["updated (UTC)"] == "2026-11-26 17:03:57"
    assert got["on disk"] == "yes"


def test_wide_shows_whole_request_ids_and_errors() -> None:
    lines = render(120, wide=True)
    text = "\n".join(lines)
    assert REQUEST_ID in text
    assert "".join(c for c in text if c not in "│ \n").count("expectedexactlyonevideo") == 4
