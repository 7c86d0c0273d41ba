"""What a session shows and how it ends, without click or a terminal: the `Ui` it is watched
through (the command line's is in cli/common) and the one `Ending` it returns."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from dubrunner.constants import EXIT_OK

if TYPE_CHECKING:
    from dubrunner.preflight import MediaProblem


@dataclass(frozen=True)
class Ending:
    """How a session ended: one sentence and the process's exit code.

    An error is shown as "error: ...". A routine summary is left out under -q, whatever the code
    (`poll --wait` that saw jobs fail remotely exits 1 with its ordinary summary); any other ending
    is always shown. `details` come before the sentence, one line each, shown the same way."""

    sentence: str
    code: int = EXIT_OK
    is_error: bool = False
    routine: bool = False
    details: tuple[str, ...] = ()


class Progress(Protocol):
    def update(self, completed: int, detail: str, left: int | None = None) -> None:
        """`completed` of the session's total so far (never counting failures), a short line
        about how it goes, and (`left`) what remains to be done, when not the total less
        `completed`."""


class Ui(Protocol):
    """What a session needs from whoever watches it."""

    def progress(
        self, label: str, total: int | None, stop: Callable[[], None]
    ) -> AbstractContextManager[Progress]:
        """Show progress while the block runs; a stop asked for meanwhile (Ctrl-C, SIGTERM) calls
        `stop`, which only sets a flag: the session then ends on its own, soon and safely."""
        ...

    def say(self, line: str) -> None:
        """A routine line (-q leaves it out)."""

    def tell(self, ending: Ending) -> None:
        """How one step of a longer session ended, shown as a session's own ending is."""

    def media_problems(self, problems: Sequence[MediaProblem]) -> None:
        """The table of media URLs that failed the check."""
