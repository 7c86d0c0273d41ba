"""The one classification table: what an answer (or a network failure) means for a job.

Message first, then the `x-should-retry` header, then the HTTP status. The API does not document
which status goes with which message, so the message decides whenever it is one we know.

Two questions are answered separately: *what to do next* (the `Action`) and *whether the request
may exist at the API* (`may_exist`). A header or a status can change the first; nothing but the
API's own answer can settle the second, so a POST that met a 5xx, a timeout or a reset always owes
a look-up by reference_id before it is ever sent again, whatever else is decided.
"""

from __future__ import annotations

import email.utils
import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

import httpx


class Action(StrEnum):
    ACCEPTED = "accepted"  # the API created the request: request_id known
    RETRY = "retry"  # definitely not created: send again after a wait
    AMBIGUOUS = "ambiguous"  # may have been created: look it up by reference_id before any resend
    FAIL_JOB = "fail_job"  # this job's own fault: retrying cannot help
    HALT_BATCH = "halt_batch"  # will fail for every job (auth, token limit): stop the batch


class Fault(StrEnum):
    """Whose fault an answer is: the job's, or the server's as a whole (see health.py)."""

    NONE = "none"  # the API answered as the API does
    JOB = "job"  # the API refused this job for its own reasons (a documented message)
    THROTTLE = "throttle"  # the API asked us to slow down
    ACCOUNT = "account"  # the credential or the account (auth, token limit): every job meets it
    SERVER = "server"  # a 5xx, a timeout, a reset: the server (or a proxy) failed
    GARBAGE = "garbage"  # a success status whose body is not the API's answer
    ADDRESS = (
        "address"  # not the API at all: a 404/405 for the generate path, a web page, a redirect
    )
    UNREACHABLE = "unreachable"  # no connection: refused, unresolvable, no answer to connect


@dataclass(frozen=True, slots=True)
class Outcome:
    action: Action
    message: str
    status: int | None = None
    request_id: str | None = None
    retry_after: float | None = None  # seconds the server asked us to wait
    # The POST may have created the request although the action is not ACCEPTED (a 5xx with
    # `x-should-retry: false`, a 200 carrying an error): keep a look-up owed.
    may_exist: bool = False
    fault: Fault = Fault.NONE

    @property
    def throttled(self) -> bool:
        """The server asked us to slow down: no fault of the job's, so no attempt spent."""
        return self.action is Action.RETRY and (
            self.status == 429 or self.message.strip().lower() == "rate limit exceeded"
        )

    @property
    def lookup_owed(self) -> bool:
        return self.may_exist or self.action is Action.AMBIGUOUS


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
}
# Answers to a POST after which the request may exist: the server (or a proxy in front of it)
# failed while handling it, or says it conflicts with something (perhaps our own earlier POST).
_MAY_EXIST_STATUSES = frozenset({409})

MAX_RETRY_AFTER = 600.0
MAX_ID_LENGTH = 200  # the request_id columns' width


class NotJson(ValueError):
    """A body that is not JSON, or JSON nested too deeply to be an API answer."""


def parse_json(body: bytes) -> Any:
    """The body as JSON. Raises NotJson for anything else, including nesting so deep that the
    parser would exhaust the stack (`[` × 300,000): that is garbage, not an internal error."""
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise NotJson("not JSON") from None


def _json_or_none(body: bytes) -> Any:
    try:
        return parse_json(body)
    except NotJson:
        return None


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
    # Every 5xx (a proxy's 502/503/504 may have forwarded the request) and oddities.
    return Action.RETRY if idempotent else Action.AMBIGUOUS


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait from Retry-After-Ms, else Retry-After (seconds or an HTTP date)."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            ms = float(raw_ms)
            if 0 <= ms < float("inf"):
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
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _error_field(data: object) -> str | None:
    if isinstance(data, dict) and isinstance(data.get("error"), str) and data["error"].strip():
        return str(data["error"]).strip()[:300]
    return None


def error_message(status: int, body: bytes, content_type: str) -> str:
    """The API's `error` field, or a short description of a body that is not the API's JSON."""
    message = _error_field(_json_or_none(body))
    if message:
        return message
    if not body.strip():
        kind = "an empty"
    elif "html" in content_type.lower() or body.lstrip()[:1] == b"<":
        kind = "an HTML"
    else:
        kind = "a non-JSON"
    return f"HTTP {status} with {kind} body"


def valid_request_id(value: object) -> str | None:
    """A request_id as the generate endpoint documents it: a UUID."""
    if not isinstance(value, str):
        return None
    try:
        uuid.UUID(value)
    except ValueError:
        return None
    return value


def request_key(request_id: str) -> str:
    """A request id as ids are compared: a UUID's case means nothing (the generate answer and
    the list were seen to differ), any other id is matched exactly. Ids are kept as the API
    gave them; every comparison goes through this."""
    return request_id.lower() if valid_request_id(request_id) is not None else request_id


def any_request_id(value: object) -> str | None:
    """An id as a look-up may return it: whatever its shape, as long as it can be stored and
    sent back in a path. An item carrying our reference_id proves the job exists."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None
    text = str(value).strip()
    if not text or len(text) > MAX_ID_LENGTH or not text.isprintable():
        return None
    return text


def classify_answer(
    status: int, headers: Mapping[str, str], body: bytes, *, idempotent: bool = False
) -> Outcome:
    """What an HTTP answer to generate (idempotent=False) or to a GET (idempotent=True) means,
    and whose fault it is."""
    outcome = _classify_answer(status, headers, body, idempotent)
    fault = _answer_fault(outcome, status, body, idempotent)
    if fault is Fault.ADDRESS and outcome.action is Action.FAIL_JOB:
        # Not the API talking: never this job's fault (health.py judges the address).
        return replace(outcome, action=Action.RETRY, fault=fault)
    return replace(outcome, fault=fault)


def _answer_fault(outcome: Outcome, status: int, body: bytes, idempotent: bool) -> Fault:
    if outcome.action is Action.ACCEPTED:
        return Fault.NONE
    if 300 <= status < 400:
        return Fault.ADDRESS
    if outcome.action is Action.HALT_BATCH:
        return Fault.ACCOUNT
    if outcome.throttled:
        return Fault.THROTTLE
    from_the_api = _error_field(_json_or_none(body)) is not None
    if 200 <= status < 300:
        return Fault.JOB if outcome.action is Action.FAIL_JOB else Fault.GARBAGE
    if 400 <= status < 500 and not from_the_api:
        return Fault.ADDRESS  # a web page, a router's "404 page not found": not the API talking
    if status in (404, 405) and not idempotent:
        return Fault.ADDRESS  # the generate path itself does not exist there
    if status >= 500 or status in (408, 409, 425):
        return Fault.SERVER
    return Fault.JOB


def _classify_answer(
    status: int, headers: Mapping[str, str], body: bytes, idempotent: bool
) -> Outcome:
    retry_after = parse_retry_after(headers)
    data = _json_or_none(body)
    if 200 <= status < 300:
        if idempotent:
            if isinstance(data, dict):
                return Outcome(Action.ACCEPTED, "ok", status)
            return Outcome(Action.RETRY, f"HTTP {status} with a body that is not JSON", status)
        request_id = valid_request_id(data.get("request_id")) if isinstance(data, dict) else None
        if request_id:
            return Outcome(Action.ACCEPTED, "accepted", status, request_id=request_id)
        # A success status carrying one of the API's error messages: the message decides (a
        # "token limit reached" halts whatever the status), and the job may exist all the same.
        message = _error_field(data)
        action = _message_action(message) if message else None
        if message and action in (Action.HALT_BATCH, Action.FAIL_JOB):
            assert action is not None
            return _finish(Outcome(action, message, status, None, retry_after, may_exist=True))
        # The job may well exist: never resend without looking it up.
        return Outcome(Action.AMBIGUOUS, f"HTTP {status} without a valid request_id", status)

    message = error_message(status, body, headers.get("content-type", ""))
    action = _message_action(message)
    may_exist = False
    if action is None:
        may_exist = not idempotent and (status >= 500 or status in _MAY_EXIST_STATUSES)
        should_retry = headers.get("x-should-retry", "").strip().lower()
        # The header decides whether to try again; it never erases "the request may exist".
        if should_retry == "true":
            action = Action.RETRY
        elif should_retry == "false":
            action = Action.FAIL_JOB
        else:
            action = _status_action(status, idempotent)
        if action is Action.RETRY and may_exist:
            action = Action.AMBIGUOUS
    if action is Action.AMBIGUOUS and idempotent:
        action = Action.RETRY
    if 300 <= status < 400:
        where = urlsplit(headers.get("location", "")).netloc or "elsewhere"
        message = f"the API redirected to {where} (HTTP {status}): check CHAMELAION_BASE_URL"
    return _finish(Outcome(action, message, status, None, retry_after, may_exist=may_exist))


def _finish(outcome: Outcome) -> Outcome:
    if outcome.message.strip().lower() in BUG_MESSAGES:
        message = f"dubrunner bug: the API answered {outcome.message!r}; please report it"
        return replace(outcome, message=message)
    return outcome


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
        return Outcome(Action.HALT_BATCH, f"cannot reach the API: {message}", fault=Fault.ADDRESS)
    if isinstance(exc, httpx.LocalProtocolError):
        # Refused before anything left (a header dubrunner was given cannot be sent): every
        # request would meet it. Its text quotes the header, so it is not repeated here.
        return Outcome(
            Action.HALT_BATCH, "dubrunner could not form a valid HTTP request", fault=Fault.ACCOUNT
        )
    if isinstance(exc, _NOT_SENT):
        return Outcome(Action.RETRY, message, fault=Fault.UNREACHABLE)
    if isinstance(exc, ResponseTooLarge):
        return Outcome(
            Action.RETRY if idempotent else Action.AMBIGUOUS, message, fault=Fault.GARBAGE
        )
    if isinstance(exc, (httpx.TransportError, httpx.StreamError)):
        return Outcome(
            Action.RETRY if idempotent else Action.AMBIGUOUS, message, fault=Fault.SERVER
        )
    raise exc


class ResponseTooLarge(Exception):
    """The server sent more than dubrunner accepts for an API answer."""


# -- look-ups by reference_id ----------


class Lookup(StrEnum):
    FOUND = "found"  # a request carrying our reference_id exists: its id is known
    NOT_FOUND = "not_found"  # the API says no request of ours carries it (none not yet ended)
    # The list answered with other jobs' requests: its reference_id filter is not trustworthy,
    # so an empty page would prove nothing; ask for the request by reference_id instead.
    FILTER_IGNORED = "filter_ignored"
    ERROR = "error"  # no usable answer: `outcome` says whether to retry or halt


@dataclass(frozen=True, slots=True)
class LookupResult:
    kind: Lookup
    request_id: str | None = None
    note: str = ""  # what a person should know: several requests, an id of an odd shape...
    outcome: Outcome | None = None  # for ERROR

    @property
    def message(self) -> str:
        if self.outcome is not None:
            return self.outcome.message
        return self.note or self.kind.value


def _lookup_error(status: int, headers: Mapping[str, str], body: bytes) -> LookupResult | None:
    """A look-up's answer as a GET: None when it is a usable 2xx; its failure is never the
    job's fault, so never FAIL_JOB."""
    outcome = classify_answer(status, headers, body, idempotent=True)
    if outcome.action is Action.ACCEPTED:
        return None
    if outcome.action is Action.FAIL_JOB:
        outcome = replace(
            outcome, action=Action.RETRY, message=f"look-up failed: {outcome.message}"
        )
    return LookupResult(Lookup.ERROR, outcome=outcome)


def _error(message: str, status: int) -> LookupResult:
    return LookupResult(Lookup.ERROR, outcome=Outcome(Action.RETRY, message, status))


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def created_at(item: Mapping[str, Any]) -> datetime | None:
    raw = item.get("created_at")
    if not isinstance(raw, str):
        return None
    try:
        when = datetime.fromisoformat(raw.strip())
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def choose_request(
    items: list[Mapping[str, Any]], reference_id: str, ended: frozenset[str]
) -> LookupResult:
    """Among the requests carrying our reference_id: the newest that is not known to have ended.

    Earlier requests of this job that ended (failed at the API, then retried by the user) are
    history; a new, unanswered POST is what we are looking for."""
    found: list[tuple[int, datetime | None, str]] = []
    odd: list[str] = []
    ended = frozenset(request_key(e) for e in ended)
    for index, item in enumerate(items):
        request_id = any_request_id(item.get("id"))
        if request_id is None:
            raw = str(item.get("id"))[:40]
            return _error(f"a request carries this reference_id but an unusable id {raw!r}", 200)
        if valid_request_id(request_id) is None:
            odd.append(request_id)
        if request_key(request_id) not in ended:
            found.append((index, created_at(item), request_id))
    if not found:
        note = f"not found ({len(items)} ended request(s) only)" if items else "not found"
        return LookupResult(Lookup.NOT_FOUND, note=note)
    # Newest by created_at; those without a readable time count as older; ties by list order.
    found.sort(key=lambda f: (f[1] is not None, f[1] or _EPOCH, f[0]))
    request_id = found[-1][2]
    notes = []
    if len(found) > 1:
        notes.append(f"{len(found)} unended requests carry this reference_id; took the newest")
    if request_id in odd:
        notes.append(f"the API's id {request_id!r} is not a UUID")
    return LookupResult(Lookup.FOUND, request_id, "; ".join(["found", *notes]))


def classify_lookup(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    reference_id: str,
    ended: frozenset[str] = frozenset(),
) -> LookupResult:
    """Interpret `GET v1/lipsync/requests?reference_id=`."""
    error = _lookup_error(status, headers, body)
    if error is not None:
        return error
    data = _json_or_none(body)
    items = data.get("data") if isinstance(data, dict) else None
    if not isinstance(items, list):
        return _error("look-up answer without a 'data' list", status)
    mine: list[Mapping[str, Any]] = [
        i for i in items if isinstance(i, dict) and i.get("reference_id") == reference_id
    ]
    others = any(isinstance(i, dict) and i.get("reference_id") != reference_id for i in items)
    if others and not mine:
        # The filter was not applied (or only loosely): this list proves nothing either way.
        return LookupResult(Lookup.FILTER_IGNORED)
    # A loose filter (a prefix match, found by an outside attack) still shows our own requests:
    # those with exactly our reference_id are evidence, whatever else came with them.
    return choose_request(mine, reference_id, ended)


def is_not_found(status: int, body: bytes) -> bool:
    """The API's own answer that it knows no such request: a 404 with its JSON error. A proxy's
    or a router's page (a wrong base URL) proves nothing."""
    message = _error_field(_json_or_none(body)) if status == 404 else None
    return bool(message and "not found" in message.lower())


def classify_direct_lookup(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    reference_id: str,
    ended: frozenset[str] = frozenset(),
) -> LookupResult:
    """Interpret `GET v1/lipsync/requests/{reference_id}` (the fallback look-up)."""
    if status == 404:
        if is_not_found(status, body):
            return LookupResult(Lookup.NOT_FOUND, note="not found")
        what = error_message(status, body, headers.get("content-type", ""))
        return _error(f"look-up failed: {what}", status)
    error = _lookup_error(status, headers, body)
    if error is not None:
        return error
    data = _json_or_none(body)
    assert isinstance(data, dict)
    ref = data.get("reference_id")
    if ref not in (None, reference_id):
        return _error("look-up answered with another job's request", status)
    return choose_request([data], reference_id, ended)
