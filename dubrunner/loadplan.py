"""What loading a manifest would do, decided from the rows already in the table: which jobs are
new, which are unchanged, which may take changed values, and which conflicts refuse the whole
load. A pure function: the store reads the rows and writes the plan."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from dubrunner.records import JobSpec, LoadPlan
from dubrunner.states import AT_API, State

# States from which a job whose manifest entry changed may take the new values, provided it was
# never sent (or sent and refused) and nobody holds it.
CHANGEABLE = frozenset({State.PENDING, State.HALTED, State.FAILED, State.CANCELLED})


class LoadConflict(Exception):
    """The manifest contradicts what the database already holds; nothing was written."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(problems[0])


@dataclass(frozen=True, slots=True)
class Existing:
    """A job already in the table, as far as loading cares."""

    id: int
    batch: str
    video_url: str
    audio_url: str
    disable_active_speaker_detection: bool
    state: str
    request_id: str | None
    lookup_owed: bool
    owner: str | None

    @property
    def never_sent(self) -> bool:
        """The API holds no request for it and no worker is about to send it."""
        return (
            self.state in CHANGEABLE
            and self.owner is None
            and not self.request_id
            and not self.lookup_owed
        )


def plan_load(
    batch: str, specs: Sequence[JobSpec], existing: Mapping[str, Existing], source: str
) -> LoadPlan:
    """The plan for loading `specs` into `batch`. Raises LoadConflict with every problem."""
    plan = LoadPlan(batch=batch)
    conflicts: list[str] = []
    for spec in specs:
        found = existing.get(spec.reference_id)
        if found is None:
            plan.new.append(spec)
            continue
        where = f"{source}:{spec.line}"
        if found.batch != batch:
            conflicts.append(
                f"{where}: reference_id {spec.reference_id!r} already belongs to batch "
                f"{found.batch!r}; reference_ids are unique across the database"
            )
        elif (found.video_url, found.audio_url, found.disable_active_speaker_detection) == (
            spec.video_url,
            spec.audio_url,
            spec.disable_active_speaker_detection,
        ):
            plan.unchanged += 1
            if found.state in AT_API:
                plan.already_submitted += 1
            elif found.state in (State.PENDING, State.HALTED):
                plan.to_send += 1
        elif not found.never_sent:
            conflicts.append(
                f"{where}: reference_id {spec.reference_id!r} was already sent to the "
                f"API with other URLs or settings (state {found.state}); give the changed "
                "job a new reference_id"
            )
        else:
            plan.changed.append((found.id, spec))
    if conflicts:
        raise LoadConflict(conflicts)
    plan.to_send += len(plan.new) + len(plan.changed)
    return plan
