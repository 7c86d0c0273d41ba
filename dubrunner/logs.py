"""The "dubrunner" logger: its level from -v/-q, its lines on stderr (or through the live
progress display's console), credentials scrubbed. No rich until a live display asks for it."""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING

from dubrunner.redact import shown

if TYPE_CHECKING:
    from rich.console import Console

_handler: logging.Handler | None = None


def setup_logging(verbose: int, quiet: bool) -> None:
    """-v: a line per HTTP attempt; default: warnings and per-job failures; -q: errors only."""
    logger = logging.getLogger("dubrunner")
    logger.setLevel(logging.ERROR if quiet else logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False
    route_logging_to(None)


class _ScrubbingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return shown(super().format(record))


def route_logging_to(console: Console | None) -> None:
    """Log through the live display's console so lines don't tear the progress bar."""
    global _handler
    logger = logging.getLogger("dubrunner")
    if _handler is not None:
        logger.removeHandler(_handler)
    if console is not None:
        from rich.logging import RichHandler

        _handler = RichHandler(console=console, show_path=False, show_level=False)
        _handler.setFormatter(_ScrubbingFormatter("%(message)s"))
    else:
        _handler = logging.StreamHandler(sys.stderr)
        _handler.setFormatter(_ScrubbingFormatter("%(asctime)s %(message)s", "%H:%M:%S"))
    logger.addHandler(_handler)
