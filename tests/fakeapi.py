"""An in-process fake of the Chamelaion API for unit tests and the model check: it keeps every
request it ever created (its ledger of what was paid for) and can lose answers, show requests
late in its list, fail with or without creating, ignore its list filter, give odd ids."""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import httpx

from dubrunner.api import ApiClient, Credentials

LATE = 0.15  # how long a 504's request stays out of the list


MODES = (
    "ok",
    "lost",  # created, the answer never arrives
    "500_created",
    "500_not_created",
    "500_created_no_retry",  # created, 500 with x-should-retry: false
    "500_not_created_no_retry",
    "504_late",  # a proxy's 504; the request appears in the list a little later
    "odd_id",  # created with an id that is not a UUID, answered with it
    "429",
    "token_limit",
    "200_token_limit_created",
    "gzip_garbage",  # created, answered "Content-Encoding: gzip" with a body that is not gzip
    "kill_before_send",
    "kill_after_create",
)


class Killed(BaseException):
    """The worker process dies here (kill -9): nothing after this line runs."""


@dataclass
class FakeRequest:
    id: str
    reference_id: str
    seq: int
    visible_at: float
    failed: bool = False


@dataclass
class FakeApi:
    requests: list[FakeRequest] = field(default_factory=list)
    modes: deque[str] = field(default_factory=deque)
    filter_ignored: bool = False
    list_missing: bool = False  # the list route answers the API's own JSON 404
    list_blind: bool = False  # the filtered list shows nothing (a lagging index); GET does
    lock: threading.Lock = field(default_factory=threading.Lock)
    hold_after_create: threading.Event | None = None  # a paused worker's POST: created, held
    reached: threading.Event = field(default_factory=threading.Event)
    counter: Iterator[int] = field(default_factory=itertools.count)

    def created(self, ref: str) -> list[FakeRequest]:
        with self.lock:
            return [r for r in self.requests if r.reference_id == ref]

    def _create(self, ref: str, request_id: str | None = None, late: float = 0.0) -> FakeRequest:
        with self.lock:
            req = FakeRequest(
                request_id or str(uuid.uuid4()), ref, next(self.counter), time.time() + late
            )
            self.requests.append(req)
            return req

    def _visible(self, ref: str) -> list[FakeRequest]:
        now = time.time()
        with self.lock:
            return [r for r in self.requests if r.reference_id == ref and r.visible_at <= now]

    def handle(self, request: httpx.Request) -> httpx.Response:
        # The raw path: an escaped `/` inside an id must stay inside it.
        path = request.url.raw_path.decode().split("?")[0].removeprefix("/api/")
        if request.method == "POST" and path == "v1/lipsync/generate":
            return self._generate(json.loads(request.content))
        if request.method == "GET" and path == "v1/lipsync/requests" and self.list_missing:
            return httpx.Response(404, json={"error": "not found"})
        if request.method == "GET" and path == "v1/lipsync/requests":
            ref = request.url.params.get("reference_id")
            if ref is None:  # every request, newest first, a page of them
                limit = int(request.url.params.get("limit", "20"))
                offset = int(request.url.params.get("offset", "0"))
                now = time.time()
                with self.lock:
                    shown = [self._view(r) for r in self.requests if r.visible_at <= now][::-1]
                page = shown[offset : offset + min(limit, 100)]
                return httpx.Response(200, json={"data": page, "pagination": {"total": len(shown)}})
            items = [] if self.list_blind else [self._view(r) for r in self._visible(ref)]
            if self.filter_ignored:
                items.append({"id": str(uuid.uuid4()), "reference_id": "someone-else"})
            return httpx.Response(200, json={"data": items, "pagination": {"total": len(items)}})
        if request.method == "GET" and path.startswith("v1/lipsync/requests/"):
            key = unquote(path.rsplit("/", 1)[1])
            with self.lock:
                by_id = [r for r in self.requests if r.id == key]
            found = by_id or self._visible(key)[-1:]
            if not found:
                return httpx.Response(404, json={"error": "not found"})
            return httpx.Response(200, json=self._view(found[0]))
        return httpx.Response(404, json={"error": "not found"})

    @staticmethod
    def _view(r: FakeRequest) -> dict[str, Any]:
        return {
            "id": r.id,
            "reference_id": r.reference_id,
            "created_at": f"2026-01-01T00:00:{r.seq % 60:02d}.{r.seq:06d}Z",
            "status": "failed" if r.failed else "processing",
            "error_message": "no face found" if r.failed else None,
        }

    def _generate(self, body: dict[str, Any]) -> httpx.Response:
        ref = body["reference_id"]
        with self.lock:
            mode = self.modes.popleft() if self.modes else "ok"
        error = {"error": "internal error"}
        odd = {"error": "odd"}
        no_retry = {"x-should-retry": "false"}
        if mode == "kill_before_send":
            raise Killed
        if mode in ("500_not_created", "500_not_created_no_retry"):
            headers = no_retry if mode.endswith("no_retry") else {}
            return httpx.Response(500, json=odd if headers else error, headers=headers)
        if mode == "429":
            return httpx.Response(
                429, json={"error": "rate limit exceeded"}, headers={"retry-after-ms": "1"}
            )
        if mode == "token_limit":
            return httpx.Response(402, json={"error": "token limit reached"})
        req = self._create(
            ref,
            request_id=f"job-{next(self.counter)}" if mode == "odd_id" else None,
            late=LATE if mode == "504_late" else 0.0,
        )
        hold = self.hold_after_create
        if hold is not None:  # a pause after the server acted, before the answer
            self.hold_after_create = None
            self.reached.set()
            hold.wait(10)
        if mode == "kill_after_create":
            raise Killed
        if mode == "lost":
            raise httpx.ReadError("connection reset")
        if mode == "500_created":
            return httpx.Response(500, json=error)
        if mode == "500_created_no_retry":
            return httpx.Response(500, json=odd, headers=no_retry)
        if mode == "504_late":
            return httpx.Response(504, text="<html>504 Gateway Time-out</html>")
        if mode == "gzip_garbage":
            return httpx.Response(
                200, content=b"not gzip at all", headers={"content-encoding": "gzip"}
            )
        if mode == "200_token_limit_created":
            return httpx.Response(200, json={"error": "token limit reached"})
        return httpx.Response(200, json={"status": "success", "request_id": req.id})


def client_for(fake: FakeApi, read_timeout: float = 5.0) -> ApiClient:
    """An API client whose every request goes to `fake`, in process."""
    return ApiClient(
        Credentials("fake-key", None),
        "http://127.0.0.1:9/api/",
        transport=httpx.MockTransport(fake.handle),
        read_timeout=read_timeout,
    )
