"""The report's benchmark rows: `dubrunner report --format html` on a 10,000-job history (the
numbers and the page, in process; the whole command; the file's size; opening it in headless
Chromium when there is one).

`make bench` runs these with the rest. Alone, `python -m tests.benchmarks.report_bench` prints them
and replaces (or adds) just these rows in BENCHMARKS.md, keeping every other row."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tests.conftest import clean_env
from tests.report_data import fill

ROOT = Path(__file__).resolve().parents[2]
N = 10_000

Add = Callable[..., None]


def measure(add: Add, work: Path) -> None:
    from dubrunner.db import Database
    from dubrunner.report import build
    from dubrunner.report_render import render_html

    path = work / "report.db"
    fill(path, N)
    db = Database(f"sqlite:///{path}")
    started = time.monotonic()
    page = render_html(build(db))
    made = time.monotonic() - started
    db.close()
    size = len(page.encode())
    add(f"report --format html on {N:,} jobs: numbers + page", f"{made:.2f} s", "< 2 s", made < 2)
    add(f"  the page's size ({N:,} jobs)", f"{size / 1e6:.2f} MB", "< 1 MB", size < 1_000_000)
    out = work / "report.html"
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "dubrunner", "report", "--format", "html", "--out", str(out)],
        cwd=work,
        env=clean_env(DUBRUNNER_DB=str(path)),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    add("  the whole command (start-up included)", f"{time.monotonic() - started:.2f} s")
    exe = shutil.which("chromium")
    if exe is None:
        add("  opened in headless Chromium", "no chromium")
        return
    from tests.browser import Browser

    browser = Browser(exe, work / "profile")
    try:
        started = time.monotonic()
        browser.open(out.resolve().as_uri())
        browser.evaluate("document.querySelectorAll('svg').length")
        shown = time.monotonic() - started
    finally:
        browser.close()
    add("  opened in headless Chromium (navigate to load)", f"{shown:.2f} s", "< 2 s", shown < 2)


def merge(rows: list[tuple[str, str, str, str]], path: Path = ROOT / "BENCHMARKS.md") -> None:
    """Put these rows into BENCHMARKS.md's table: each replaces the row of the same measure, or
    goes at the end of the table; no other row is touched."""
    if not path.exists():
        print(f"no {path.name}: `make bench` writes it whole")
        return
    lines = path.read_text().splitlines()
    for what, value, target, verdict in rows:
        row = f"| {what} | {value} | {target} | {verdict} |"
        same = [i for i, line in enumerate(lines) if line.startswith(f"| {what} |")]
        if same:
            lines[same[0]] = row
        else:
            last = max(i for i, line in enumerate(lines) if line.startswith("| "))
            lines.insert(last + 1, row)
    path.write_text("\n".join(lines) + "\n")
    print(f"\nupdated {len(rows)} row(s) of {path}")


def main() -> int:
    rows: list[tuple[str, str, str, str]] = []

    def add(what: str, value: str, target: str = "", ok: bool | None = None) -> None:
        verdict = "" if ok is None else ("met" if ok else "MISSED")
        rows.append((what, value, target, verdict))
        print(f"{what:58} {value:>22}  {target:>14}  {verdict}", flush=True)

    with tempfile.TemporaryDirectory(prefix="dubrunner-bench-report-") as tmp:
        measure(add, Path(tmp))
    merge(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
