"""Loading a manifest, as a session: the table's plan for it, or its conflicts as one Ending.
Apart from sessions.py so that `dubrunner load` imports no HTTP client (a quarter of a second of
its start-up on a slow machine); sessions.py takes it from here."""

from __future__ import annotations

from dataclasses import dataclass

from dubrunner.constants import EXIT_USAGE, MAX_SHOWN
from dubrunner.db import StoreError
from dubrunner.loading import LoadConflict
from dubrunner.manifest import Manifest
from dubrunner.records import LoadPlan
from dubrunner.session_ui import Ending
from dubrunner.store import Store


@dataclass(frozen=True)
class Loaded:
    batch: str
    plan: LoadPlan

    @property
    def summary(self) -> str:
        plan = self.plan
        return (
            f"batch {self.batch}: {len(plan.new)} new, {plan.unchanged} unchanged "
            f"({plan.already_submitted} already submitted), {len(plan.changed)} changed"
            + _superseded(plan)
        )


def _superseded(plan: LoadPlan) -> str:
    """ ", 1 superseded (ep1 by ep1~2)": the sent jobs `--supersede` replaced (or would)."""
    if not plan.superseded:
        return ""
    pairs = [f"{old} by {new}" for old, new in plan.supersessions[:MAX_SHOWN]]
    if not plan.supersessions:  # a dry run: nothing written, no new reference_id yet
        pairs = [old for old, _ in plan.superseded[:MAX_SHOWN]]
    more = len(plan.superseded) - len(pairs)
    listed = ", ".join(pairs) + (f", and {more} more" if more > 0 else "")
    return f", {len(plan.superseded)} superseded ({listed})"


def load(
    store: Store,
    manifest: Manifest,
    dry_run: bool = False,
    allow_same_media: bool = False,
    supersede: bool = False,
) -> Loaded | Ending:
    """The manifest's jobs into the table, all or (an Ending, exit 2) none of them."""
    try:
        plan = store.load(
            manifest.batch,
            manifest.jobs,
            manifest.path,
            dry_run=dry_run,
            allow_same_media=allow_same_media,
            supersede=supersede,
        )
    except LoadConflict as exc:
        return Ending(
            f"{len(exc.problems)} job(s) conflict with the database; nothing was loaded",
            EXIT_USAGE,
            is_error=True,
            details=tuple(exc.problems[:MAX_SHOWN]),
        )
    except StoreError as exc:  # locked past the wait, full, a role that may not write: rolled back
        return Ending(f"the database failed: {exc}; nothing was loaded", EXIT_USAGE, is_error=True)
    return Loaded(manifest.batch, plan)
