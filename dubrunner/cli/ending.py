"""How a command ends and what it shows meanwhile: the one printer of a session's ending (and its
exit code), the one-line usage error, routine lines, Ctrl-C / SIGTERM as a stop, the terminal's Ui.
Re-exported by cli/common, which the commands import."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

import click

from dubrunner.__main__ import QuietInterrupt
from dubrunner.constants import EXIT_INTERRUPTED, EXIT_USAGE
from dubrunner.redact import shown

if TYPE_CHECKING:
    from dubrunner.preflight import MediaProblem
    from dubrunner.sessions import Ending, Progress


def is_quiet() -> bool:
    """Whether -q was given; False outside a command (as when main shows a usage error)."""
    ctx = click.get_current_context(silent=True)
    return bool(ctx and ctx.meta.get("quiet"))


def show_ending(ending: Ending) -> None:
    """The one way an ending reaches the user: on stderr, "error: " before an error, a routine
    summary left out under -q; credentials scrubbed, wherever the sentence came from."""
    if ending.routine and not ending.is_error and is_quiet():
        return
    prefix = "error: " if ending.is_error else ""
    for line in (*ending.details, ending.sentence):
        click.echo(prefix + shown(line), err=True)


def end(ending: Ending, after: Callable[[Ending], list[str]] | None = None) -> NoReturn:
    """Show the ending and exit with its code; in between, `after` (an on-done hook), whose
    lines are shown and which changes nothing else."""
    show_ending(ending)
    if after is not None:
        for line in after(ending):
            click.echo(line, err=True)
    sys.stderr.flush()
    raise click.exceptions.Exit(ending.code)


class UserError(click.ClickException):
    """Bad input or usage: one line, exit 2."""

    exit_code = EXIT_USAGE

    def show(self, file: Any = None) -> None:
        click.echo("error: " + shown(self.format_message()), err=True)


class StdoutError(OSError):
    """Writing stdout failed (a full disk, an I/O error; not a closed pipe, which stays a
    BrokenPipeError and is quiet): main says so in one line."""


class _GuardedStdout(io.RawIOBase):
    """fd 1, its write failures told apart from every other OSError as StdoutError."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self.fd = fd

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self.fd

    def isatty(self) -> bool:
        return os.isatty(self.fd)

    def write(self, data: Any) -> int:
        try:
            return os.write(self.fd, data)
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise StdoutError(exc.errno, exc.strerror) from None

    def close(self) -> None:  # fd 1 stays open: only this wrapper is done
        super().close()


def guard_stdout() -> None:
    """Make sys.stdout raise StdoutError when a write fails (see main): encoding, errors and
    buffering (python -u's too) as they were."""
    out = sys.stdout
    if not isinstance(out, io.TextIOWrapper):
        return
    below = out.buffer
    if isinstance(getattr(below, "raw", below), _GuardedStdout):
        return
    try:
        fd = out.fileno()
        out.flush()
    except (OSError, ValueError):
        return
    raw = _GuardedStdout(fd)
    sys.stdout = io.TextIOWrapper(
        io.BufferedWriter(raw) if isinstance(below, io.BufferedWriter) else raw,
        encoding=out.encoding,
        errors=out.errors,
        line_buffering=out.line_buffering,
        write_through=out.write_through,
    )


@contextlib.contextmanager
def output_file(path: Path | None) -> Iterator[TextIO]:
    """The file given by --out (stdout for none or "-"), written as UTF-8; a file that cannot be
    opened or written is a one-line UserError."""
    if path is None or str(path) == "-":
        yield sys.stdout
        sys.stdout.flush()  # written before anything is said about it
        return
    try:
        with path.open("w", encoding="utf-8", newline="") as f:
            yield f
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None


def say(text: str) -> None:
    """A routine line on stderr (-q leaves it out)."""
    if not is_quiet():
        click.echo(text, err=True)


class stop_on_signals:
    """First Ctrl-C / SIGTERM: stop claiming, let in-flight requests finish. Second: quit now."""

    def __init__(self, request_stop: Callable[[], None]) -> None:
        self.request_stop = request_stop
        self.count = 0
        self.previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.count += 1
        if self.count == 1:
            self.request_stop()
            again = "press Ctrl-C again" if signum == signal.SIGINT else "send it again"
            click.echo(
                f"\nstopping: letting in-flight requests finish ({again} to quit now)", err=True
            )
        else:
            # Still safe: claimed jobs stay 'submitting' and are looked up before any resend.
            os._exit(EXIT_INTERRUPTED)

    def __enter__(self) -> stop_on_signals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            if handler is signal.default_int_handler:
                # Python's own would print a traceback on the next Ctrl-C: the quiet one instead.
                handler = QuietInterrupt()
            signal.signal(sig, handler)


class TerminalUi:
    """The sessions' Ui here: progress and lines on stderr, tables on stdout, Ctrl-C and SIGTERM
    as a stop."""

    @contextlib.contextmanager
    def progress(
        self, label: str, total: int | None, stop: Callable[[], None]
    ) -> Iterator[Progress]:
        from dubrunner.output import ProgressDisplay

        with ProgressDisplay(label, total, is_quiet()) as display, stop_on_signals(stop):
            yield display

    def say(self, line: str) -> None:
        say(line)

    def tell(self, ending: Ending) -> None:
        show_ending(ending)

    def media_problems(self, problems: Sequence[MediaProblem]) -> None:
        from dubrunner.output import print_media_problems, table_console

        print_media_problems(problems, table_console())
