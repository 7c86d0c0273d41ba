"""The emulator's state: its configuration (every fault a knob), the requests it created (its
ledger of what was paid for: more than one request for a reference_id is a duplicate), its
counters, and the server's life.

It speaks the Chamelaion API as dubrunner knows it (generate, requests by id or reference_id,
the filtered list, health, users/me) with the documented error messages. Each response is sent
in one write, so the emulator is never the bottleneck of a measurement.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from dubrunner.emulator.content import PREFIX, signature
from dubrunner.emulator.handler import Server


@dataclass
class EmulatorConfig:
    tokens: tuple[str, ...] = ("test-token",)
    rate: float | None = None  # API requests per second before 429
    # The token bucket's capacity: requests that may arrive at once after a quiet spell. None is
    # one second's worth (a lenient limiter); 1 is the strictest: any request arriving less than
    # 1/rate after the last one it let through is refused.
    burst: int | None = None
    p500: float = 0.0  # chance that a generate answers 500 "internal error"
    latency_ms: float = 0.0  # added to every API answer
    token_limit: int | None = None  # accepted generates before "token limit reached"
    token_limit_status: int = 429
    drop_after_accept: float = 0.0  # chance of closing the connection after accepting a job
    # Chance that a generate is answered 504 by "a proxy" while the backend goes on and creates
    # the request `create_delay` seconds later (the case a look-up's grace period is for).
    p504_create: float = 0.0
    create_delay: float = 3.0
    complete_after: float = 1.0  # seconds from accepted to COMPLETED/FAILED
    fail_marker: str = "FAIL"  # a video URL containing it fails remotely
    output_bytes: int = 64 * 1024  # size of the generated output file
    output_rate: float | None = None  # bytes per second when serving outputs (None: at once)
    seed: int | None = None
    # The server as a whole going wrong:
    # An outage: every API request fails between these wall times.
    outage_from: float = 0.0
    outage_until: float = 0.0
    outage_status: int = 500  # how it fails: 500 (the API's "internal error") or 503 (a proxy)
    garbage: bool = False  # every generate answered 200 with a body that is not the API's JSON
    # Statuses as the API documents its one named value (lower case: `failed`); True speaks
    # PENDING/PROCESSING/COMPLETED/FAILED instead, to check that case never matters.
    upper_case: bool = False
    # e.g. {"processing": "queued"}; None: the status is null
    status_words: dict[str, str | None] = field(default_factory=dict)
    # Output URLs signed and valid this many seconds from the GET that showed them (None: plain
    # URLs that never expire). An expired or unsigned URL is answered 403, as storage hosts do.
    output_ttl: float | None = None
    # The storage failing: every output (storage_refuses), or these requests' outputs, answered
    # 403 whatever the URL's signature; or the output URLs name this host:port (where nothing
    # may listen: a storage host refusing connections) instead of the emulator's own.
    storage_refuses: bool = False
    refused_outputs: list[str] = field(default_factory=list)
    output_host: str | None = None
    # A download from byte 0 is cut (connection closed) after this many bytes of the body.
    cut_output_after: int | None = None
    # Completed requests shown without their output_url (the API saying "done" too early).
    hide_output: bool = False
    list_hides_output: bool = False  # ... in the list only: a GET of one request shows it
    # The unfiltered list (a poll's, not a look-up's): the next N requests for it answer 500
    # "internal error"; or it answers the API's JSON 404 (GET by id still works).
    list_failures: int = 0
    list_missing: bool = False
    list_ignores_offset: bool = False  # every page of the list is its first
    get_failing: list[str] = field(default_factory=list)  # request ids whose GET answers 500
    # The generate answer gives the request's UUID in upper case (the list and GETs show it in
    # lower case; a GET by either finds it, as a UUID column would).
    upper_case_ids: bool = False
    # Output URLs given relative to the API's host ("/outputs/<id>.mp4"), not absolute.
    relative_output: bool = False
    # generate-with-media: read uploads at most this fast (bytes per second; None: at once)
    upload_read_rate: float | None = None
    p_upload_reset: float = 0.0  # chance of resetting the connection halfway through an upload


@dataclass
class RemoteRequest:
    id: str
    reference_id: str | None
    video_url: str
    audio_url: str
    disable_active_speaker_detection: bool
    created: float
    index: int
    # generate-with-media: each file part's (size, SHA-256) as received
    media: dict[str, tuple[int, str]] | None = None

    def view(self, cfg: EmulatorConfig, base: str) -> dict[str, Any]:
        age = time.time() - self.created
        status = "pending"
        data: dict[str, Any] = {
            "id": self.id,
            "created_at": _iso(self.created),
            "reference_id": self.reference_id,
            "started_at": None,
            "finished_at": None,
            "output_url": None,
            "error_message": None,
        }
        if age >= cfg.complete_after / 3:
            status = "processing"
            data["started_at"] = _iso(self.created + cfg.complete_after / 3)
        if age >= cfg.complete_after:
            data["finished_at"] = _iso(self.created + cfg.complete_after)
            if cfg.fail_marker and cfg.fail_marker in self.video_url:
                status = "failed"
                data["error_message"] = "no face found in the video"
            else:
                status = "completed"
                if not cfg.hide_output:
                    url = output_url(cfg, base, self.id)
                    data["output_url"] = url[len(base) - 1 :] if cfg.relative_output else url
        word = cfg.status_words.get(status, status)
        data["status"] = word.upper() if cfg.upper_case and word is not None else word
        return data


def output_url(cfg: EmulatorConfig, base: str, request_id: str) -> str:
    """Where the output is served: signed and time-limited when the emulator has a TTL."""
    if cfg.output_host:
        base = f"http://{cfg.output_host}/"
    url = f"{base}outputs/{request_id}.mp4"
    if cfg.output_ttl is None:
        return url
    expires = int((time.time() + cfg.output_ttl) * 1000)  # Unix milliseconds
    return f"{url}?expires={expires}&signature={signature(request_id, expires)}"


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


@dataclass
class Stats:
    requests: int = 0
    generate: int = 0
    accepted: int = 0
    rate_limited: int = 0
    errors_500: int = 0
    dropped: int = 0
    late_creates: int = 0
    outage_answers: int = 0  # API requests answered with the outage's error
    lookups: int = 0  # list requests (filtered or not)
    polls: int = 0  # GETs of one request
    downloads: int = 0
    range_requests: int = 0
    ranges: list[str] = field(default_factory=list)  # the Range header of every ranged download
    expired_downloads: int = 0  # downloads refused for an expired or unsigned URL
    by_endpoint: dict[str, int] = field(default_factory=dict)  # generate, list, get, output...
    uploads: int = 0  # generate-with-media requests whose body was read to its end
    upload_bytes: int = 0
    upload_resets: int = 0
    uploading: int = 0  # bodies being read right now, and the most at once
    peak_uploading: int = 0
    first_generate_at: float | None = None  # wall clock of the first and last generate
    last_generate_at: float | None = None
    by_status: dict[int, int] = field(default_factory=dict)


class Emulator:
    """Start with `.start()`; `.base_url` is what CHAMELAION_BASE_URL should be."""

    def __init__(
        self, config: EmulatorConfig | None = None, host: str = "127.0.0.1", port: int = 0
    ):
        self.config = config or EmulatorConfig()
        self.stats = Stats()
        self.lock = threading.Lock()
        self.requests: dict[str, RemoteRequest] = {}
        self.by_reference: dict[str, list[str]] = {}
        self._random = random.Random(self.config.seed)
        self._bucket = 0.0
        self._bucket_at = time.monotonic()
        # While a rate is set: when each API request met the bucket (Unix seconds) and whether
        # it was let through, for tests and the bench to measure a client's pacing.
        self.arrivals: list[tuple[float, bool]] = []
        self._server = Server((host, port))
        self._server.emulator = self
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{PREFIX}"

    def start(self) -> Emulator:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._server.serve_forever(poll_interval=0.2)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what tests check ----------

    def accepted(self) -> dict[str, list[str]]:
        """reference_id → the request_ids accepted for it (more than one is a duplicate)."""
        with self.lock:
            return {ref: list(ids) for ref, ids in self.by_reference.items()}

    def uploads(self) -> dict[str, list[dict[str, tuple[int, str]]]]:
        """reference_id → the files of each request accepted through generate-with-media."""
        with self.lock:
            return {
                ref: [self.requests[i].media or {} for i in ids]
                for ref, ids in self.by_reference.items()
            }

    def duplicates(self) -> dict[str, list[str]]:
        return {ref: ids for ref, ids in self.accepted().items() if len(ids) > 1}

    def requests_endpoint_calls(self) -> int:
        """Requests to `v1/lipsync/requests` and `v1/lipsync/requests/{id}`."""
        with self.lock:
            return self.stats.by_endpoint.get("list", 0) + self.stats.by_endpoint.get("get", 0)

    def forget(self, request_ids: list[str] | None = None) -> int:
        """The API purging requests (all of them by default): they are no longer found, listed
        or served. The ledger of what was paid for (`accepted`) keeps them."""
        with self.lock:
            ids = list(self.requests) if request_ids is None else request_ids
            return len([self.requests.pop(i) for i in ids if i in self.requests])

    def update(self, **changes: Any) -> None:
        with self.lock:
            for key, value in changes.items():
                if not hasattr(self.config, key):
                    raise AttributeError(key)
                setattr(self.config, key, tuple(value) if key == "tokens" else value)

    # -- the server's logic ----------

    def _take_token(self, arrived: float | None = None) -> float | None:
        """None when a request that arrived at `arrived` (Unix seconds; None: now) may go; else
        the seconds until it could."""
        rate = self.config.rate
        if not rate:
            return None
        wall = time.time()
        arrived = min(wall, arrived or wall)
        # The bucket's clock never runs back (two requests read out of order count as one time).
        now = max(self._bucket_at, time.monotonic() - (wall - arrived))
        capacity = float(self.config.burst) if self.config.burst else max(1.0, rate)
        self._bucket = min(capacity, self._bucket + (now - self._bucket_at) * rate)
        self._bucket_at = now
        taken = self._bucket >= 1.0
        self.arrivals.append((arrived, taken))
        if taken:
            self._bucket -= 1.0
            return None
        return (1.0 - self._bucket) / rate

    def _create(
        self,
        ref: str | None,
        video: str,
        audio: str,
        asd: bool,
        media: dict[str, tuple[int, str]] | None = None,
    ) -> RemoteRequest:
        req = RemoteRequest(
            str(uuid.uuid4()), ref, video, audio, asd, time.time(), len(self.requests), media
        )
        self.requests[req.id] = req
        if ref is not None:
            self.by_reference.setdefault(ref, []).append(req.id)
        self.stats.accepted += 1
        return req
