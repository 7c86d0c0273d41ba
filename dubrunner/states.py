"""A job's states and which ones count as what.

    load ──▶ pending ──claim──▶ submitting ──POST answered with a request_id──▶ submitted
               ▲  ▲                 │   │                                        │ poll
      retry /  │  └── look-up: ─────┘   └──▶ failed (its own fault, or retries   ▼
      resume   │      not there              run out)                  processing ─▶ completed
               │                                                                 └──▶ failed
             halted ◀── auth error, "token limit reached": the whole batch stops

`submitting` is the recovery point: committed, with an owner and a lease, before the POST. A job
found there with its lease expired may have reached the API, so it is looked up by reference_id
before anything else.
"""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    # Loaded from a manifest, or put back by retry/resume; nothing of it is at the API.
    PENDING = "pending"
    # Claimed by one worker (owner + lease) and about to be, or being, POSTed. The recovery point:
    # whoever finds it with an expired lease must look it up by reference_id before sending again.
    SUBMITTING = "submitting"
    # The API accepted it: request_id recorded.
    SUBMITTED = "submitted"
    # Polled: the API is working on it.
    PROCESSING = "processing"
    # Polled: the API finished it (output_url known).
    COMPLETED = "completed"
    # Rejected by the API for its own fault, retries exhausted, or failed remotely.
    FAILED = "failed"
    # The job that met a batch-wide stop (auth, token limit); fix the cause, then resume.
    HALTED = "halted"
    # Taken out of the batch by `dubrunner cancel` before it was ever sent.
    CANCELLED = "cancelled"


# States in which the API holds a request for the job (it was paid for).
AT_API = frozenset({State.SUBMITTED, State.PROCESSING, State.COMPLETED})
# States `dubrunner retry` may put back to pending.
RETRY_FROM = frozenset({State.FAILED, State.HALTED})

# Remote statuses. The API names one, `failed`; the rest are words vendors of this kind use.
# Matching ignores case; anything not listed is taken as "still going", kept verbatim and named at
# the end of a poll. A finished word ends a job only together with an output_url. `success` is the
# generate answer's word for "created", not for "finished".
REMOTE_DONE = frozenset({"completed", "complete", "succeeded", "done", "finished"})
REMOTE_FAILED = frozenset(
    {
        "failed",
        "failure",
        "error",
        "rejected",
        "canceled",
        "cancelled",
        "timed_out",
        "timeout",
        "expired",
    }
)
REMOTE_RUNNING = frozenset(
    {
        "pending",
        "queued",
        "created",
        "submitted",
        "accepted",
        "success",
        "waiting",
        "starting",
        "started",
        "running",
        "processing",
        "in_progress",
    }
)
# States whose remote request is still to be polled.
POLLABLE = frozenset({State.SUBMITTED, State.PROCESSING})
NOT_FOUND = "not found"  # remote_status of a request the API answered 404 for


def _key(status: str | None) -> str:
    return (status or "").strip().lower().replace("-", "_").replace(" ", "_")


def is_known_remote(status: str | None) -> bool:
    """Whether dubrunner knows what this remote status word means."""
    key = _key(status)
    return key in REMOTE_DONE or key in REMOTE_FAILED or key in REMOTE_RUNNING


def state_for_remote(status: str | None) -> State:
    """dubrunner's state for a remote status: an end only when it clearly says so."""
    key = _key(status)
    if key in REMOTE_DONE:
        return State.COMPLETED
    if key in REMOTE_FAILED:
        return State.FAILED
    return State.PROCESSING
