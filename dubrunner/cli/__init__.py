"""The command line: parse, make one library call, print. Exit codes: 0 every job submitted,
1 some failed or halted, 2 bad input or usage, 130 interrupted."""

from __future__ import annotations

import contextlib
import os
import sys

import click

# Importing the command modules registers their commands on the group.
from dubrunner.cli import admin, checks, jobs, manifests, reporting, results, submitting  # noqa: F401
from dubrunner.cli.common import cli
from dubrunner.cli.ending import StdoutError, guard_stdout
from dubrunner.constants import EXIT_INTERRUPTED, EXIT_USAGE
from dubrunner.redact import scrub

__all__ = ["cli", "main"]


def main() -> None:
    guard_stdout()
    try:
        code = _run()
    except KeyboardInterrupt:  # wherever it lands, even while another outcome is being reported
        click.echo("interrupted", err=True)
        code = EXIT_INTERRUPTED
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing more to say
            stream.flush()
    sys.exit(code)


def _run() -> int:
    """The command's exit code; every failure said in one line."""
    try:
        code = _command()
        sys.stdout.flush()  # here, not only in main: a failure to write the end is said too
    except StdoutError as exc:  # a full disk, an I/O error: the output is not whole
        click.echo(f"error: cannot write to stdout: {exc.strerror or exc}", err=True)
        return EXIT_USAGE
    except BrokenPipeError:
        return 0
    except Exception as exc:
        if os.environ.get("DUBRUNNER_DEBUG"):
            raise
        click.echo(
            f"internal error: {type(exc).__name__}: {scrub(_first_line(exc))} "
            "(set DUBRUNNER_DEBUG=1 for the traceback, and please report it)",
            err=True,
        )
        return 1
    return code


def _command() -> int:
    """The command's exit code, click's own endings (usage errors, Ctrl-C) said."""
    for arg in sys.argv[1:]:
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:  # bytes Python could not decode, held as lone surrogates
            shown = os.fsencode(arg).decode("utf-8", "backslashreplace")
            click.echo(
                f"error: the argument '{shown}' is not valid UTF-8: what dubrunner is given "
                "(names, files, references) it keeps as text",
                err=True,
            )
            return EXIT_USAGE
    try:
        # Without standalone mode click returns a command's exit code instead of raising it.
        code = cli.main(prog_name="dubrunner", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        return EXIT_INTERRUPTED
    return code if isinstance(code, int) else 0


def _first_line(exc: BaseException) -> str:
    """What may be shown of an unexpected error: the lines below the first (SQLAlchemy's SQL and
    parameters, a driver's DETAIL) can quote media URLs and their credentials."""
    sqlalchemy = sys.modules.get("sqlalchemy.exc")  # not imported: not one of its errors
    if (
        sqlalchemy is not None
        and isinstance(exc, sqlalchemy.SQLAlchemyError)
        and getattr(exc, "orig", None) is not None
    ):
        exc = exc.orig
    return str(exc).partition("\n")[0]
