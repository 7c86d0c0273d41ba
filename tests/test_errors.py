"""The classification table, pinned message by message (unit tests of a pure function)."""

from __future__ import annotations

import json

import httpx
import pytest

from dubrunner.errors import (
    MESSAGE_RULES,
    Action,
    Lookup,
    classify_answer,
    classify_direct_lookup,
    classify_exception,
    classify_lookup,
    parse_json,
    parse_retry_after,
)


def err(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


H = httpx.Headers({"content-type": "application/json"})

# Every documented message, with the outcome it must have for a POST, whatever the status.
DOCUMENTED = {
    "invalid request body": Action.FAIL_JOB,
    "content-type must be application/json": Action.HALT_BATCH,
    "expected exactly one video input": Action.FAIL_JOB,
    "expected exactly one audio input": Action.FAIL_JOB,
    'input type must be "video" or "audio"': Action.FAIL_JOB,
    "missing authorization header": Action.HALT_BATCH,
    "invalid authorization format": Action.HALT_BATCH,
    "missing token": Action.HALT_BATCH,
    "invalid token": Action.HALT_BATCH,
    "unauthorized": Action.HALT_BATCH,
    "token limit reached": Action.HALT_BATCH,
    "rate limit exceeded": Action.RETRY,
    "internal error": Action.AMBIGUOUS,
}


def test_every_documented_message_is_in_the_table() -> None:
    assert set(MESSAGE_RULES) == set(DOCUMENTED)


@pytest.mark.parametrize("message", sorted(DOCUMENTED))
@pytest.mark.parametrize("status", [400, 401, 402, 403, 422, 429, 500, 503])
def test_message_decides_whatever_the_status(message: str, status: int) -> None:
    outcome = classify_answer(status, H, err(message))
    assert outcome.action is DOCUMENTED[message]
    assert outcome.status == status


def test_token_limit_as_429_halts_and_is_never_a_rate_limit() -> None:
    headers = httpx.Headers({"retry-after": "1"})
    outcome = classify_answer(429, headers, err("token limit reached"))
    assert outcome.action is Action.HALT_BATCH
    assert outcome.message == "token limit reached"


def test_content_type_error_is_reported_as_our_bug() -> None:
    outcome = classify_answer(400, H, err("content-type must be application/json"))
    assert outcome.action is Action.HALT_BATCH
    assert "dubrunner bug" in outcome.message


def test_messages_match_case_and_decoration_insensitively() -> None:
    assert classify_answer(400, H, err("Token Limit Reached")).action is Action.HALT_BATCH
    assert (
        classify_answer(403, H, err("token limit reached for account 42")).action
        is Action.HALT_BATCH
    )


@pytest.mark.parametrize(
    ("status", "action"),
    [
        (400, Action.FAIL_JOB),
        (404, Action.RETRY),  # the generate path is not there: the address, not the job (health.py)
        (422, Action.FAIL_JOB),
        (401, Action.HALT_BATCH),
        (402, Action.HALT_BATCH),
        (403, Action.HALT_BATCH),
        (408, Action.RETRY),
        (409, Action.AMBIGUOUS),  # perhaps a conflict with our own earlier POST
        (429, Action.RETRY),
        (503, Action.AMBIGUOUS),
        (500, Action.AMBIGUOUS),
        (502, Action.AMBIGUOUS),
        (504, Action.AMBIGUOUS),
        (301, Action.HALT_BATCH),
    ],
)
def test_unknown_messages_fall_back_to_the_status(status: int, action: Action) -> None:
    assert classify_answer(status, H, err("something new")).action is action


def test_html_error_page_from_a_proxy() -> None:
    html = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
    outcome = classify_answer(502, httpx.Headers({"content-type": "text/html"}), html)
    assert outcome.action is Action.AMBIGUOUS  # the proxy may have forwarded it
    assert outcome.message == "HTTP 502 with an HTML body"
    # Every 5xx on a POST owes a look-up: a 503 from a proxy may come after the backend acted.
    outcome = classify_answer(503, httpx.Headers({"content-type": "text/html"}), html)
    assert outcome.action is Action.AMBIGUOUS


def test_x_should_retry_overrides_the_status_rule_but_not_the_message() -> None:
    yes = httpx.Headers({"x-should-retry": "true"})
    no = httpx.Headers({"x-should-retry": "false"})
    assert classify_answer(400, yes, err("odd")).action is Action.RETRY
    assert not classify_answer(400, yes, err("odd")).lookup_owed
    assert classify_answer(500, no, err("odd")).action is Action.FAIL_JOB
    assert classify_answer(429, yes, err("token limit reached")).action is Action.HALT_BATCH
    assert classify_answer(503, no, err("token limit reached")).action is Action.HALT_BATCH


@pytest.mark.parametrize("status", [500, 502, 503, 504, 599])
@pytest.mark.parametrize("header", ["true", "false"])
def test_x_should_retry_never_erases_that_a_5xx_post_may_have_landed(
    status: int, header: str
) -> None:
    # Failed before: a 5xx with `x-should-retry: false` failed the job with no look-up owed,
    # and `retry` then resent it blind.
    outcome = classify_answer(status, httpx.Headers({"x-should-retry": header}), err("odd"))
    assert outcome.action is (Action.AMBIGUOUS if header == "true" else Action.FAIL_JOB)
    assert outcome.lookup_owed
    assert classify_answer(status, H, b"<html>").lookup_owed


@pytest.mark.parametrize("status", [200, 201])
def test_a_success_status_carrying_an_error_message_obeys_the_message(status: int) -> None:
    # Failed before: a 200 with {"error": "token limit reached"} was retried up to
    # --max-attempts as "a 200 without a request_id" instead of halting the batch.
    outcome = classify_answer(status, H, err("token limit reached"))
    assert outcome.action is Action.HALT_BATCH
    assert outcome.lookup_owed  # a 2xx: it may exist all the same
    assert classify_answer(status, H, err("invalid request body")).action is Action.FAIL_JOB
    assert classify_answer(status, H, err("internal error")).action is Action.AMBIGUOUS
    assert classify_answer(status, H, err("something new")).action is Action.AMBIGUOUS


def test_deeply_nested_json_is_garbage_not_a_crash() -> None:
    # Failed before: `[` × 300,000 raised RecursionError and stopped the batch as an
    # "internal error".
    bomb = b"[" * 300_000
    with pytest.raises(ValueError):
        parse_json(bomb)
    assert classify_answer(200, H, bomb).action is Action.AMBIGUOUS
    assert classify_answer(500, H, bomb).message == "HTTP 500 with a non-JSON body"
    assert classify_answer(200, H, bomb, idempotent=True).action is Action.RETRY
    assert classify_lookup(200, H, bomb, "r").kind is Lookup.ERROR
    assert classify_direct_lookup(404, H, bomb, "r").kind is Lookup.ERROR


def test_success_needs_a_uuid_request_id() -> None:
    ok = json.dumps({"status": "success", "request_id": "6f82a2d8-a6d4-4e8a-a0fa-e8b09823a2d8"})
    outcome = classify_answer(200, H, ok.encode())
    assert outcome.action is Action.ACCEPTED
    assert outcome.request_id == "6f82a2d8-a6d4-4e8a-a0fa-e8b09823a2d8"
    for body in [b"not json", b"{}", b'{"request_id": "42"}', b'{"request_id": null}', b"[]"]:
        assert classify_answer(200, H, body).action is Action.AMBIGUOUS, body


def test_gets_are_idempotent_so_never_ambiguous() -> None:
    assert classify_answer(500, H, err("internal error"), idempotent=True).action is Action.RETRY
    assert classify_answer(502, H, b"<html>", idempotent=True).action is Action.RETRY


@pytest.mark.parametrize(
    ("exc", "action"),
    [
        (httpx.ConnectError("refused"), Action.RETRY),
        (httpx.ConnectTimeout("slow"), Action.RETRY),
        (httpx.PoolTimeout("busy"), Action.RETRY),
        (httpx.ReadTimeout("no answer"), Action.AMBIGUOUS),
        (httpx.ReadError("reset"), Action.AMBIGUOUS),
        (httpx.WriteError("broken pipe"), Action.AMBIGUOUS),
        (httpx.RemoteProtocolError("Server disconnected"), Action.AMBIGUOUS),
        (httpx.UnsupportedProtocol("ftp"), Action.HALT_BATCH),
    ],
)
def test_network_errors_by_kind(exc: Exception, action: Action) -> None:
    assert classify_exception(exc).action is action


def test_network_errors_on_gets_are_plain_retries() -> None:
    assert classify_exception(httpx.ReadTimeout("x"), idempotent=True).action is Action.RETRY


def test_retry_after_headers() -> None:
    assert parse_retry_after(httpx.Headers({"retry-after-ms": "250"})) == 0.25
    assert parse_retry_after(httpx.Headers({"retry-after": "1.5"})) == 1.5
    both = httpx.Headers({"retry-after-ms": "100", "retry-after": "9"})
    assert parse_retry_after(both) == 0.1
    date = httpx.Headers({"retry-after": "Wed, 25 Nov 2026 18:00:30 GMT"})
    assert parse_retry_after(date, now=1795629600.0) == pytest.approx(30.0)
    assert parse_retry_after(httpx.Headers({"retry-after": "soon"})) is None
    assert parse_retry_after(httpx.Headers({"retry-after": "99999"})) == 600.0
    assert parse_retry_after(httpx.Headers({})) is None
    outcome = classify_answer(429, httpx.Headers({"retry-after": "2"}), err("rate limit exceeded"))
    assert outcome.retry_after == 2.0


RID = "6f82a2d8-a6d4-4e8a-a0fa-e8b09823a2d8"


def page(*items: dict[str, object]) -> bytes:
    return json.dumps({"data": list(items), "pagination": {"total": len(items)}}).encode()


def test_lookup_found_not_found_and_errors() -> None:
    result = classify_lookup(200, H, page({"id": RID, "reference_id": "r"}), "r")
    assert (result.kind, result.request_id) == (Lookup.FOUND, RID)
    assert classify_lookup(200, H, page(), "r").kind is Lookup.NOT_FOUND
    result = classify_lookup(404, H, err("not found"), "r")
    assert result.kind is Lookup.ERROR  # a failed look-up is no answer
    assert result.outcome is not None and result.outcome.action is Action.RETRY
    result = classify_lookup(401, H, err("invalid token"), "r")
    assert result.outcome is not None and result.outcome.action is Action.HALT_BATCH
    assert classify_lookup(200, H, b"{}", "r").kind is Lookup.ERROR
    # Other jobs' requests: the filter is ignored, a value (not an exception) says so.
    result = classify_lookup(200, H, page({"id": RID, "reference_id": "other"}), "r")
    assert result.kind is Lookup.FILTER_IGNORED
    # A loose filter (prefix matching, found by an outside attack: the job failed unsent): our
    # own request among others is found.
    loose = page({"id": OLD, "reference_id": "r10"}, {"id": RID, "reference_id": "r"})
    result = classify_lookup(200, H, loose, "r")
    assert (result.kind, result.request_id) == (Lookup.FOUND, RID)


OLD = "00000000-0000-4000-8000-000000000001"
NEW = "00000000-0000-4000-8000-000000000002"


def test_lookup_takes_the_newest_request_not_known_to_have_ended() -> None:
    # Failed before: with two requests for one reference_id (an old one that failed at the API,
    # then the user's retry whose answer was lost) the look-up adopted the oldest, leaving the
    # new, paid request untracked.
    body = page(
        {"id": NEW, "reference_id": "r", "created_at": "2026-01-02T00:00:00Z"},
        {"id": OLD, "reference_id": "r", "created_at": "2026-01-01T00:00:00Z"},
    )
    result = classify_lookup(200, H, body, "r")
    assert result.request_id == NEW
    assert "2 unended requests" in result.note
    reversed_order = page(
        {"id": OLD, "reference_id": "r", "created_at": "2026-01-01T00:00:00+00:00"},
        {"id": NEW, "reference_id": "r", "created_at": "2026-01-02T00:00:00+00:00"},
    )
    assert classify_lookup(200, H, reversed_order, "r").request_id == NEW
    # The old one is known to have ended: the new one is taken without a warning.
    result = classify_lookup(200, H, body, "r", frozenset({OLD}))
    assert (result.request_id, result.note) == (NEW, "found")
    # Only ended requests: the job is not at the API.
    only_old = page({"id": OLD, "reference_id": "r"})
    assert classify_lookup(200, H, only_old, "r", frozenset({OLD})).kind is Lookup.NOT_FOUND


@pytest.mark.parametrize("odd_id", ["job-42", "42", 42, "a" * 200])
def test_an_item_with_our_reference_id_proves_the_job_whatever_its_id(odd_id: object) -> None:
    # Failed before: an id that is not a UUID was skipped, so "not found", so the job was paid
    # again, up to --max-attempts times.
    result = classify_lookup(200, H, page({"id": odd_id, "reference_id": "r"}), "r")
    assert (result.kind, result.request_id) == (Lookup.FOUND, str(odd_id))
    assert "not a UUID" in result.note
    # An id that cannot be kept is no answer (never "not found").
    for unusable in (None, "", "a" * 201, {"x": 1}):
        bad = classify_lookup(200, H, page({"id": unusable, "reference_id": "r"}), "r")
        assert bad.kind is Lookup.ERROR


def test_direct_lookup() -> None:
    body = json.dumps({"id": RID, "reference_id": "r"}).encode()
    assert classify_direct_lookup(200, H, body, "r").request_id == RID
    assert classify_direct_lookup(404, H, err("not found"), "r").kind is Lookup.NOT_FOUND
    result = classify_direct_lookup(500, H, err("internal error"), "r")
    assert result.outcome is not None and result.outcome.action is Action.RETRY
    other = json.dumps({"id": RID, "reference_id": "someone-else"}).encode()
    assert classify_direct_lookup(200, H, other, "r").kind is Lookup.ERROR


@pytest.mark.parametrize(
    ("body", "content_type"),
    [(b"404 page not found", "text/plain"), (b"<html>Not Found</html>", "text/html"), (b"", "")],
)
def test_a_404_that_is_not_the_apis_own_error_is_not_not_found(
    body: bytes, content_type: str
) -> None:
    # Failed before: any 404 of the fallback look-up meant "not found", so a router's page
    # (a wrong path, an unescaped reference_id) led to a resend.
    headers = httpx.Headers({"content-type": content_type})
    assert classify_direct_lookup(404, headers, body, "r").kind is Lookup.ERROR
