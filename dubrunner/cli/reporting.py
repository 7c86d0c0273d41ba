"""`dubrunner report`: a batch's numbers as a table, JSON or one self-contained HTML page."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import click

from dubrunner.cli.common import (
    BATCH,
    LOCAL_OPTIONS,
    UserError,
    check_batch,
    cli,
    open_store,
    output_file,
    say,
)

if TYPE_CHECKING:  # imported when the command runs: --help and TAB stay light
    from rich.console import Console

    from dubrunner import report


@cli.command("report")
@BATCH
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "html"]),
    default="table",
    show_default=True,
    help="A table for people, JSON for scripts, or one HTML page with charts (needs --out "
    "or a redirect).",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="Write to this file [default: stdout].",
)
@LOCAL_OPTIONS
def report_command(batch: str | None, fmt: str, out: Path | None) -> None:
    """How far along, what broke and why, how long the API takes: counts per state, submitted and
    completed over time, throttling, failures by error, processing times, downloads."""
    from rich.console import Console

    from dubrunner import report
    from dubrunner.output import table_console

    if fmt == "html" and out is None and sys.stdout.isatty():
        raise UserError("--format html writes a page: give --out FILE (or redirect stdout)")
    store = open_store(must_exist=True)
    check_batch(store, batch)
    numbers = report.build(store.db, batch)
    if not numbers.batches and fmt == "table":
        click.echo("no jobs yet: `dubrunner submit MANIFEST` loads some", err=True)
        return
    if out is None:
        _write(numbers, fmt, sys.stdout, table_console())
        return
    with output_file(out) as f:
        _write(numbers, fmt, f, Console(file=f, width=200, soft_wrap=False, no_color=True))
    say(f"report written to {out}")


def _write(numbers: report.Report, fmt: str, stream: TextIO, console: Console) -> None:
    from dubrunner.report_render import print_table, render_html, write_json

    if fmt == "json":
        write_json(numbers, stream)
    elif fmt == "html":
        stream.write(render_html(numbers))
    else:
        print_table(numbers, console)
