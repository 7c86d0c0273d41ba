"""The report shown: a table for the terminal, JSON, or one self-contained HTML file with charts.

The table and the HTML print the same sections (title, columns, rows of cells) made by one function,
so they carry the same numbers as each other and as the JSON. The charts are pygal's inline SVG
with its JavaScript left out: nothing in the file is fetched from anywhere."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import pygal
from pygal.style import DefaultStyle
from rich.console import Console
from rich.table import Table

from dubrunner.output import plain
from dubrunner.report import BatchReport, Report

NONE = "—"
_SCRIPT = re.compile(r"<script\b[^>]*>.*?</script>", re.DOTALL)
CHART_FAILURES = 15  # error groups drawn (the table lists them all)


@dataclass(frozen=True, slots=True)
class Section:
    title: str
    columns: tuple[str, ...]
    rows: Sequence[tuple[str, ...]]


def cell(value: Any) -> str:
    if value is None:
        return NONE
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".")
    return str(value)


def sections(b: BatchReport) -> list[Section]:
    """Every number of a batch's report, as the table and the HTML show it."""
    t, p = b.throughput, b.processing
    return [
        Section(
            "Jobs by state",
            ("state", "jobs"),
            [(s, cell(n)) for s, n in b.states.items()] + [("total", cell(b.jobs))],
        ),
        Section(
            "Jobs by remote status",
            ("remote status", "jobs"),
            [(s, cell(n)) for s, n in b.remote_statuses.items()],
        ),
        Section(
            "Throughput",
            ("measure", "value"),
            [
                ("first submitted (UTC)", cell(t.first_submitted)),
                ("last submitted (UTC)", cell(t.last_submitted)),
                ("last completed (UTC)", cell(t.last_completed)),
                ("submitted per minute", cell(t.submitted_per_min)),
                ("completed per minute", cell(t.completed_per_min)),
            ],
        ),
        Section(
            "Throttling and outages (answers)",
            ("kind", "answers"),
            [
                ("rate limited (429)", cell(b.throttling.rate_limited)),
                ("server errors (5xx, no answer)", cell(b.throttling.server_errors)),
                ("halts", cell(b.throttling.halts)),
            ],
        ),
        Section(
            "Throttled periods",
            ("from (UTC)", "until (UTC)", "429s", "server errors", "halts"),
            [
                (x.start, x.end, cell(x.rate_limited), cell(x.server_errors), cell(x.halts))
                for x in b.throttling.periods
            ],
        ),
        Section(
            f"Over time (every {b.bucket_seconds:,} s)",
            ("from (UTC)", "submitted", "completed", "429s", "server errors", "halts"),
            [
                (
                    x.start,
                    cell(x.submitted),
                    cell(x.completed),
                    cell(x.rate_limited),
                    cell(x.server_errors),
                    cell(x.halts),
                )
                for x in b.timeline
            ],
        ),
        Section(
            "Failures by error",
            ("jobs", "error", "examples"),
            [(cell(f.count), f.error, " ".join(f.examples)) for f in b.failures],
        ),
        Section(
            "Remote processing time (s)",
            ("measure", "value"),
            [
                ("jobs measured", cell(p.measured)),
                ("p50", cell(p.p50)),
                ("p90", cell(p.p90)),
                ("p99", cell(p.p99)),
            ],
        ),
        Section(
            "Processing-time histogram (s)",
            ("from", "to", "jobs"),
            [(cell(h.start), cell(h.end), cell(h.jobs)) for h in p.histogram],
        ),
        Section(
            "Downloads",
            ("measure", "value"),
            [
                ("downloaded", cell(b.downloads.downloaded)),
                ("bytes", cell(b.downloads.bytes)),
                ("failed", cell(b.downloads.failed)),
            ],
        ),
    ]


# -- table and JSON ----------


def print_table(report: Report, console: Console) -> None:
    for b in report.batches:
        console.print(plain(f"Batch {b.batch}: {b.jobs:,} jobs"), style="bold")
        for s in sections(b):
            if not s.rows:
                continue
            table = Table(title=plain(s.title), title_justify="left", min_width=len(s.title) + 2)
            for name in s.columns:
                table.add_column(name, overflow="fold")
            for row in s.rows:
                table.add_row(*map(plain, row))
            console.print(table)
        console.print(f"processing time: {b.processing.measures}")


def write_json(report: Report, out: TextIO) -> None:
    json.dump(report.as_dict(), out, indent=2)
    out.write("\n")


# -- HTML ----------

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1000px; color: #222; }
h1 { font-size: 1.5em; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
caption { text-align: left; font-weight: bold; padding: 0.3em 0; }
th, td { border: 1px solid #ddd; padding: 0.2em 0.6em; text-align: left; vertical-align: top; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
.chart { margin: 1em 0; } .chart svg { width: 100%; height: auto; }
.note { color: #666; font-size: 0.9em; }
"""


def _chart(kind: type[Any], title: str, height: int = 360, **options: Any) -> Any:
    # js=[]: pygal would otherwise load its tooltip script from the network.
    return kind(
        js=[],
        title=title,
        width=960,
        height=height,
        style=DefaultStyle,
        truncate_legend=40,
        legend_at_bottom=True,
        **options,
    )


def _svg(chart: Any) -> str:
    svg: str = chart.render(is_unicode=True, disable_xml_declaration=True)
    # The configuration pygal writes for its tooltip script, which is left out: the page runs
    # no script at all.
    svg = _SCRIPT.sub("", svg)
    return f'<div class="chart">{svg}</div>'


def _states_chart(report: Report) -> str:
    chart = _chart(pygal.StackedBar, "Jobs by state, per batch", 300)
    chart.x_labels = [b.batch for b in report.batches]
    states = sorted({s for b in report.batches for s in b.states})
    for state in states:
        chart.add(state, [b.states.get(state, 0) for b in report.batches])
    return _svg(chart)


def _time_chart(b: BatchReport) -> str:
    chart = _chart(
        pygal.Line,
        f"Submitted and completed (cumulative), every {b.bucket_seconds:,} s; throttling marked",
        x_label_rotation=30,
        show_minor_x_labels=False,
        x_labels_major_count=12,
    )
    # Times of day; dates too when the buckets are long enough for the batch to span days.
    cut = slice(5, 16) if b.bucket_seconds >= 600 else slice(11, 19)
    chart.x_labels = [x.start[cut].replace("T", " ") for x in b.timeline]
    chart.add("submitted", [x.submitted for x in b.timeline])
    chart.add("completed", [x.completed for x in b.timeline])
    marks = {
        "429s": [x.rate_limited for x in b.timeline],
        "server errors": [x.server_errors for x in b.timeline],
        "halts": [x.halts for x in b.timeline],
    }
    # Trouble on the right-hand axis, one dot per bucket that had any, on one scale for all.
    chart.secondary_range = (0, max(max(v) for v in marks.values()) or 1)
    for name, values in marks.items():
        if any(values):
            chart.add(name, [v or None for v in values], secondary=True, stroke=False, dots_size=5)
    return _svg(chart)


def _failures_chart(b: BatchReport) -> str:
    shown = b.failures[:CHART_FAILURES]
    height = 120 + 36 * len(shown)
    chart = _chart(pygal.HorizontalBar, "Failed jobs by error", height, show_legend=False)
    chart.x_labels = [f.error[:60] for f in shown]
    chart.add("jobs", [f.count for f in shown])
    return _svg(chart)


def _histogram_chart(b: BatchReport) -> str:
    chart = _chart(pygal.Histogram, "Remote processing time (s), jobs per bin", show_legend=False)
    chart.add("jobs", [(h.jobs, h.start, h.end) for h in b.processing.histogram])
    return _svg(chart)


def _html_table(s: Section) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in s.columns)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="n">{html.escape(v)}</td>' if _numeric(v) else f"<td>{html.escape(v)}</td>"
            for v in row
        )
        + "</tr>"
        for row in s.rows
    )
    return (
        f"<table><caption>{html.escape(s.title)}</caption>"
        f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    )


def _numeric(value: str) -> bool:
    return value.replace(",", "").replace(".", "", 1).isdigit()


def render_html(report: Report) -> str:
    """One self-contained page: no script, no stylesheet or image from elsewhere."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>dubrunner report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>dubrunner report</h1>",
        f'<p class="note">Generated {html.escape(report.generated_at)} (UTC). '
        f"{len(report.batches):,} batch(es).</p>",
    ]
    if report.batches:
        parts.append(_states_chart(report))
    for b in report.batches:
        parts.append(
            f'<section class="batch"><h2>Batch {html.escape(b.batch)}: {b.jobs:,} jobs</h2>'
        )
        if b.timeline:
            parts.append(_time_chart(b))
        if b.failures:
            parts.append(_failures_chart(b))
        if b.processing.histogram:
            parts.append(_histogram_chart(b))
        parts.extend(_html_table(s) for s in sections(b) if s.rows)
        parts.append(
            f'<p class="note">Processing time: {html.escape(b.processing.measures)}.</p></section>'
        )
    parts.append("</body></html>\n")
    return "\n".join(parts)
