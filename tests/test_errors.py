"""The classification table, pinned message by message (unit tests of a pure function)."""

from __future__ import annotations

import json

import httpx
import pytest

from dubrunner.errors import (
    MESSAGE_RULES,
    Action,
    FilterIgnored,
    classify_answer,
    classify_direct_lookup,
    classify_exception,
    classify_lookup,
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
        (404, Action.FAIL_JOB),
        (422, Action.FAIL_JOB),
        (401, Action.HALT_BATCH),
        (402, Action.HALT_BATCH),
        (403, Action.HALT_BATCH),
        (408, Action.RETRY),
        (409, Action.RETRY),
        (429, Action.RETRY),
        (503, Action.RETRY),
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
    outcome = classify_answer(503, httpx.Headers({"content-type": "text/html"}), html)
    assert outcome.action is Action.RETRY


def test_x_should_retry_overrides_the_status_rule_but_not_the_message() -> None:
    yes = httpx.Headers({"x-should-retry": "true"})
    no = httpx.Headers({"x-should-retry": "false"})
    assert classify_answer(400, yes, err("odd")).action is Action.RETRY
    assert classify_answer(500, no, err("odd")).action is Action.FAIL_JOB
    assert classify_answer(429, yes, err("token limit reached")).action is Action.HALT_BATCH


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
    found, outcome = classify_lookup(200, H, page({"id": RID, "reference_id": "r"}), "r")
    assert (found, outcome.action) == (RID, Action.ACCEPTED)
    found, outcome = classify_lookup(200, H, page(), "r")
    assert (found, outcome.action) == (None, Action.ACCEPTED)
    found, outcome = classify_lookup(404, H, err("not found"), "r")
    assert (found, outcome.action) == (None, Action.RETRY)  # a failed look-up is no answer
    found, outcome = classify_lookup(401, H, err("invalid token"), "r")
    assert outcome.action is Action.HALT_BATCH
    found, outcome = classify_lookup(200, H, b"{}", "r")
    assert outcome.action is Action.RETRY
    with pytest.raises(FilterIgnored):
        classify_lookup(200, H, page({"id": RID, "reference_id": "other"}), "r")


def test_lookup_with_duplicates_takes_the_earliest() -> None:
    later = "00000000-0000-4000-8000-000000000002"
    body = page(
        {"id": later, "reference_id": "r", "created_at": "2026-01-02T00:00:00Z"},
        {"id": RID, "reference_id": "r", "created_at": "2026-01-01T00:00:00Z"},
    )
    found, outcome = classify_lookup(200, H, body, "r")
    assert found == RID
    assert "2 requests" in outcome.message


def test_direct_lookup() -> None:
    body = json.dumps({"id": RID, "reference_id": "r"}).encode()
    assert classify_direct_lookup(200, H, body, "r")[0] == RID
    assert classify_direct_lookup(404, H, err("not found"), "r")[0] is None
    assert classify_direct_lookup(404, H, err("not found"), "r")[1].action is Action.ACCEPTED
    assert classify_direct_lookup(500, H, err("internal error"), "r")[1].action is Action.RETRY
