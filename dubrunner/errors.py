"""The one classification table: what an answer (or a network failure) means for a job.

Message first, then the `x-should-retry` header, then the HTTP status. The API does not document
which status goes with which message, so the message decides whenever it is one we know.
"""

from __future__ import annotations

import email.utils
import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlsplit

import httpx


class Action(StrEnum):
    ACCEPTED = "accepted"  # the API created the request: request_id known
    RETRY = "retry"  # definitely not created: send again after a wait
    AMBIGUOUS = "ambiguous"  # may have been created: look it up by reference_id before any resend
    FAIL_JOB = "fail_job"  # this job's own fault: retrying cannot help
    HALT_BATCH = "halt_batch"  # will fail for every job (auth, token limit): stop the batch


RETRYABLE = frozenset({Action.RETRY, Action.AMBIGUOUS})


@dataclass(frozen=True, slots=True)
class Outcome:
    action: Action
    message: str
    status: int | None = None
    request_id: str | None = None
    retry_after: float | None = None  # seconds the server asked us to wait

    @property
    def throttled(self) -> bool:
        """The server asked us to slow down: no fault of the job's, so no attempt spent."""
        return self.action is Action.RETRY and (
            self.status == 429 or self.message.strip().lower() == "rate limit exceeded"
        )


# Every documented error message. Keys are lower case; matching ignores case and surrounding space.
MESSAGE_RULES: dict[str, Action] = {
    "rate limit exceeded": Action.RETRY,
    # The server failed while handling the request: it may have stored the job first.
    "internal error": Action.AMBIGUOUS,
    "invalid request body": Action.FAIL_JOB,
    "expected exactly one video input": Action.FAIL_JOB,
    "expected exactly one audio input": Action.FAIL_JOB,
    'input type must be "video" or "audio"': Action.FAIL_JOB,
    # dubrunner always sends JSON: this answer means a bug here, not in the job. Stop loudly.
    "content-type must be application/json": Action.HALT_BATCH,
    "missing authorization header": Action.HALT_BATCH,
    "invalid authorization format": Action.HALT_BATCH,
    "missing token": Action.HALT_BATCH,
    "invalid token": Action.HALT_BATCH,
    "unauthorized": Action.HALT_BATCH,
    "token limit reached": Action.HALT_BATCH,
}

BUG_MESSAGES = frozenset({"content-type must be application/json"})

# Status rules for answers whose message we do not know.
_STATUS_RULES: dict[int, Action] = {
    401: Action.HALT_BATCH,  # credentials refused
    402: Action.HALT_BATCH,  # payment required: out of credit
    403: Action.HALT_BATCH,  # credential lacks the right
    408: Action.RETRY,
    409: Action.RETRY,
    425: Action.RETRY,
    429: Action.RETRY,
    503: Action.RETRY,  # unavailable: nothing was forwarded
}

MAX_RETRY_AFTER = 600.0


def _message_action(message: str) -> Action | None:
    key = message.strip().lower()
    if key in MESSAGE_RULES:
        return MESSAGE_RULES[key]
    # Tolerate decorated variants ("token limit reached for account X"), longest rule first.
    for rule in sorted(MESSAGE_RULES, key=len, reverse=True):
        if rule in key:
            return MESSAGE_RULES[rule]
    return None


def _status_action(status: int, idempotent: bool) -> Action:
    if status in _STATUS_RULES:
        return _STATUS_RULES[status]
    if 300 <= status < 400:
        # A redirect on an API call means a wrong base URL: every job would meet it.
        return Action.HALT_BATCH
    if 400 <= status < 500:
        return Action.FAIL_JOB
    # 500, 502 (a proxy that may have forwarded the request), 504, other 5xx and oddities.
    return Action.RETRY if idempotent else Action.AMBIGUOUS


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait from Retry-After-Ms, else Retry-After (seconds or an HTTP date)."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            ms = float(raw_ms)
            if ms >= 0:
                return min(ms / 1000.0, MAX_RETRY_AFTER)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def error_message(status: int, body: bytes, content_type: str) -> str:
    """The API's `error` field, or a short description of a body that is not the API's JSON."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        data = None
    if isinstance(data, dict) and isinstance(data.get("error"), str) and data["error"].strip():
        return str(data["error"]).strip()[:300]
    if not body.strip():
        kind = "an empty"
    elif "html" in content_type.lower() or body.lstrip()[:1] == b"<":
        kind = "an HTML"
    else:
        kind = "a non-JSON"
    return f"HTTP {status} with {kind} body"


def valid_request_id(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        uuid.UUID(value)
    except ValueError:
        return None
    return value


def classify_answer(
    status: int, headers: Mapping[str, str], body: bytes, *, idempotent: bool = False
) -> Outcome:
    """What an HTTP answer to generate (idempotent=False) or to a GET (idempotent=True) means."""
    retry_after = parse_retry_after(headers)
    if 200 <= status < 300:
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            data = None
        if idempotent:
            if isinstance(data, dict):
                return Outcome(Action.ACCEPTED, "ok", status)
            return Outcome(Action.RETRY, f"HTTP {status} with a body that is not JSON", status)
        request_id = valid_request_id(data.get("request_id")) if isinstance(data, dict) else None
        if request_id:
            return Outcome(Action.ACCEPTED, "accepted", status, request_id=request_id)
        # The job may well exist: never resend without looking it up.
        return Outcome(Action.AMBIGUOUS, f"HTTP {status} without a valid request_id", status)

    message = error_message(status, body, headers.get("content-type", ""))
    action = _message_action(message)
    if action is None:
        should_retry = headers.get("x-should-retry", "").strip().lower()
        if should_retry == "true":
            action = Action.RETRY if idempotent or status < 500 else Action.AMBIGUOUS
        elif should_retry == "false":
            action = Action.FAIL_JOB
        else:
            action = _status_action(status, idempotent)
    if action is Action.AMBIGUOUS and idempotent:
        action = Action.RETRY
    if 300 <= status < 400:
        where = urlsplit(headers.get("location", "")).netloc or "elsewhere"
        message = f"the API redirected to {where} (HTTP {status}): check CHAMELAION_BASE_URL"
    if message.strip().lower() in BUG_MESSAGES:
        message = f"dubrunner bug: the API answered {message!r}; please report it"
    return Outcome(action, message, status, retry_after=retry_after)


# Transport failures. Before these, the request never left this machine.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# A configuration mistake that every job would meet.
_CONFIG = (httpx.UnsupportedProtocol, httpx.InvalidURL)


def classify_exception(exc: BaseException, *, idempotent: bool = False) -> Outcome:
    """What a failed HTTP exchange means. Anything after the bytes may have left is ambiguous."""
    name = type(exc).__name__
    detail = str(exc).strip()
    message = f"{name}: {detail}"[:300] if detail else name
    if isinstance(exc, _CONFIG):
        return Outcome(Action.HALT_BATCH, f"cannot reach the API: {message}")
    if isinstance(exc, _NOT_SENT):
        return Outcome(Action.RETRY, message)
    if isinstance(exc, (httpx.TransportError, httpx.StreamError, ResponseTooLarge)):
        return Outcome(Action.RETRY if idempotent else Action.AMBIGUOUS, message)
    raise exc


class ResponseTooLarge(Exception):
    """The server sent more than dubrunner accepts for an API answer."""


class FilterIgnored(Exception):
    """The list endpoint answered with other jobs' requests: its reference_id filter is not
    trustworthy, so an empty page would not prove that the job is absent."""


def _lookup_answer(status: int, headers: Mapping[str, str], body: bytes) -> Outcome:
    """A look-up's answer as a GET; its failure is never the job's fault, so never FAIL_JOB."""
    outcome = classify_answer(status, headers, body, idempotent=True)
    if outcome.action is Action.FAIL_JOB:
        return Outcome(Action.RETRY, f"look-up failed: {outcome.message}", status)
    return outcome


def classify_lookup(
    status: int, headers: Mapping[str, str], body: bytes, reference_id: str
) -> tuple[str | None, Outcome]:
    """Interpret `GET v1/lipsync/requests?reference_id=`: (request_id or None, outcome).

    ACCEPTED with a request_id: the job exists. ACCEPTED with None: it provably does not.
    Anything else is an error; a lookup error is never the job's fault, so never FAIL_JOB.
    """
    outcome = _lookup_answer(status, headers, body)
    if outcome.action is not Action.ACCEPTED:
        return None, outcome
    data = json.loads(body)
    items = data.get("data") if isinstance(data, dict) else None
    if not isinstance(items, list):
        return None, Outcome(Action.RETRY, "look-up answer without a 'data' list", status)
    found: list[tuple[str, str]] = []
    for item in items:
        if not isinstance(item, dict):
            continue
        if item.get("reference_id") != reference_id:
            raise FilterIgnored(reference_id)
        request_id = valid_request_id(item.get("id"))
        if request_id:
            found.append((str(item.get("created_at") or ""), request_id))
    if not found:
        return None, Outcome(Action.ACCEPTED, "not found", status)
    found.sort()
    note = f"found ({len(found)} requests carry this reference_id)" if len(found) > 1 else "found"
    return found[0][1], Outcome(Action.ACCEPTED, note, status, request_id=found[0][1])


def classify_direct_lookup(
    status: int, headers: Mapping[str, str], body: bytes, reference_id: str
) -> tuple[str | None, Outcome]:
    """Interpret `GET v1/lipsync/requests/{reference_id}` (the fallback look-up)."""
    if status == 404:
        return None, Outcome(Action.ACCEPTED, "not found", status)
    outcome = _lookup_answer(status, headers, body)
    if outcome.action is not Action.ACCEPTED:
        return None, outcome
    data = json.loads(body)
    request_id = valid_request_id(data.get("id")) if isinstance(data, dict) else None
    ref = data.get("reference_id") if isinstance(data, dict) else None
    if request_id and ref in (None, reference_id):
        return request_id, Outcome(Action.ACCEPTED, "found", status, request_id=request_id)
    return None, Outcome(Action.RETRY, "look-up answer without a valid request id", status)
