"""`--on-done CMD` and `--on-done-timeout S`, declared once for the commands whose run can be
waited for to its end (`submit`, `poll`, `work`), and how a command hands its ending to the hook
(dubrunner/hooks.py runs it)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import click

from dubrunner.cli.params import HOUR, OptionGroup, Seconds

if TYPE_CHECKING:
    from dubrunner.hooks import OnDone
    from dubrunner.session_ui import Ending
    from dubrunner.store import Store

DEFAULT_TIMEOUT = 60.0  # seconds a hook may take


def _on_done(on_done: str | None, on_done_timeout: float) -> OnDone | None:
    if not on_done or not on_done.strip():  # '' (DUBRUNNER_SUBMIT_ON_DONE=) is no hook
        return None
    from dubrunner.hooks import OnDone

    return OnDone(on_done, on_done_timeout)


# The command receives `on_done: OnDone | None`.
ON_DONE = OptionGroup(
    click.option(
        "--on-done",
        metavar="CMD",
        help="Run CMD (by /bin/sh -c) once the run has ended, a halt or a stop included: the "
        "summary as JSON on its stdin, DUBRUNNER_BATCH and DUBRUNNER_EXIT set, the API's "
        "credentials not. Its output goes to stderr; its failure is said in one line, and the "
        "exit code stays the run's.",
    ),
    click.option(
        "--on-done-timeout",
        type=Seconds(0.01, 24 * HOUR),
        default=DEFAULT_TIMEOUT,
        show_default=True,
        help="Seconds CMD may take; then it (its whole process group) is killed.",
    ),
    gather=_on_done,
    into="on_done",
)


def hook_for(
    on_done: OnDone | None, store: Store, batch: str | None
) -> Callable[[Ending], list[str]] | None:
    """What `end` runs once the ending is shown: the hook for this command's run over `batch`
    (None: every batch), or nothing."""
    if on_done is None:
        return None
    from dubrunner.hooks import after_run

    hook = on_done
    command = click.get_current_context().info_name or "dubrunner"
    return lambda ending: after_run(hook, store, command, batch, ending)
