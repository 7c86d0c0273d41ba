"""The program's entry point, `dubrunner` and `python -m dubrunner`.

It stays small and imports nothing heavy: the first thing it does is take over Ctrl-C, so that an
interrupt at any moment (during the imports too, which take most of a second) exits 130 with one
word instead of a traceback.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
from types import FrameType

EXIT_INTERRUPTED = 130


class QuietInterrupt:
    """The SIGINT handler whenever no command has its own: the first Ctrl-C raises
    KeyboardInterrupt (main says "interrupted" and exits 130), a second one exits at once."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        if self.count == 1:
            raise KeyboardInterrupt
        _exit_interrupted(signum, frame)


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
    try:
        main()
    finally:
        # The command is over. A Ctrl-C while the interpreter shuts down (joining threads) exits
        # 130 at once. Once the atexit handlers run it is ignored: the very end of the shutdown
        # puts back the default handler, which would kill the process by the signal.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, _exit_interrupted)
            atexit.register(signal.signal, sig, signal.SIG_IGN)


if __name__ == "__main__":
    run()
