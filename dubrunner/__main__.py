"""The program's entry point, `dubrunner` and `python -m dubrunner`.

It stays small and imports nothing heavy: the first thing it does is take over Ctrl-C, so that an
interrupt at any moment (during the imports too, which take most of a second) exits 130 with one
word instead of a traceback.
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType

EXIT_INTERRUPTED = 130


class QuietInterrupt:
    """The SIGINT handler whenever no command has its own: the first Ctrl-C raises
    KeyboardInterrupt (main says "interrupted" and exits 130), a second one exits at once.

    An exception raised inside a weakref callback or a `__del__` is printed as "Exception ignored
    in ..." and dropped, and the import system runs such a callback as it releases a module lock:
    a Ctrl-C landing there would be lost and leave a stack dump. There the raise waits a few
    milliseconds (SIGALRM) until the code has left that frame."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        if self.count > 1:
            _exit_interrupted(signum, frame)
        self._raise_when_safe(signum, frame)

    def _raise_when_safe(self, signum: int, frame: FrameType | None) -> None:
        if _swallows_exceptions(frame) and hasattr(signal, "setitimer"):
            signal.signal(signal.SIGALRM, lambda _s, f: self._raise_when_safe(signum, f))
            signal.setitimer(signal.ITIMER_REAL, 0.005)
            return
        handler = signal.getsignal(signal.SIGINT)
        if handler is self or not callable(handler):
            raise KeyboardInterrupt
        handler(signum, frame)  # a command took over Ctrl-C meanwhile: its way of stopping


def _swallows_exceptions(frame: FrameType | None) -> bool:
    """Whether an exception raised in `frame` would be dropped by a callback or finaliser above."""
    while frame is not None:
        code = frame.f_code
        if code.co_name == "__del__" or (code.co_name == "cb" and "importlib" in code.co_filename):
            return True
        frame = frame.f_back
    return False


def _exit_interrupted(signum: int, frame: FrameType | None) -> None:
    # Nothing is written here: the interrupted code may be in the middle of writing.
    os._exit(EXIT_INTERRUPTED)


def run() -> None:
    # SIGTERM (a supervisor, `kill`) is taken like Ctrl-C: a quiet exit 130 until a command that
    # has work in flight installs its own way of stopping.
    quiet = QuietInterrupt()
    signal.signal(signal.SIGINT, quiet)
    signal.signal(signal.SIGTERM, quiet)
    try:
        from dubrunner.cli import main
    except KeyboardInterrupt:
        # Half imported, nothing opened yet: nothing to clean up.
        sys.stderr.write("interrupted\n")
        sys.stderr.flush()
        os._exit(EXIT_INTERRUPTED)
    code: int = 1
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        # The command is over: from here a Ctrl-C exits 130 at once.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, _exit_interrupted)
    _end(code)


def _end(code: int) -> None:
    """What the interpreter's shutdown would do that matters here (wait for threads that are not
    daemons, flush the logs and the streams), then exit without it: its last steps put back the
    default SIGINT handler and may turn a Ctrl-C that came while the command ended into death by
    the signal (exit -2, seen in about 1 run in 30 of Ctrl-C twice at random moments)."""
    import contextlib
    import logging
    import threading

    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing more to say
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
