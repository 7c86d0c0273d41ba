"""The HTTP client for the Chamelaion lip-sync API. It knows nothing of the database.

Each call returns an `Answer` (status, headers, a size-capped body) or raises an httpx transport
error; what either means is decided in errors.py.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

import httpx

from dubrunner import __version__
from dubrunner.constants import CREDENTIAL_VARIABLES
from dubrunner.errors import ResponseTooLarge
from dubrunner.redact import register_secret
from dubrunner.uploads import FilePart, MultipartBody, upload_timeout

PRODUCTION_URL = "https://api.chamelaion.com/api/"
MAX_BODY = 1024 * 1024  # no API answer is anywhere near this
LOOKUP_PAGE = 100  # requests of one reference_id asked for at once (a job has one or a few)


class ConfigError(Exception):
    """Missing or unsafe API configuration (credentials, base URL)."""


@dataclass(frozen=True, slots=True)
class Credentials:
    api_key: str | None
    bearer_token: str | None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Credentials:
        env = os.environ if env is None else env
        key, token = (env.get(name, "").strip() or None for name in CREDENTIAL_VARIABLES)
        return cls(key, token)

    def __bool__(self) -> bool:
        return bool(self.api_key or self.bearer_token)

    def problem(self) -> str | None:
        """Why these credentials cannot travel in an HTTP header, if they cannot (the value is
        never said: a pasted key with a stray line break or a typographic dash is still a key)."""
        for name, value in (
            ("CHAMELAION_API_KEY", self.api_key),
            ("CHAMELAION_BEARER_TOKEN", self.bearer_token),
        ):
            if value is not None and not (value.isascii() and value.isprintable()):
                return (
                    f"{name} holds characters an HTTP header cannot carry (a line break, a "
                    "control or a non-ASCII character, perhaps pasted with it); set it again"
                )
            if value is not None and any(c.isspace() for c in value):
                return f"{name} holds a space; set it again without it"
        return None

    def __repr__(self) -> str:  # never show the values, not even in a traceback
        return f"Credentials(api_key={'set' if self.api_key else None}, " + (
            f"bearer_token={'set' if self.bearer_token else None})"
        )

    def headers(self) -> dict[str, str]:
        """As the vendor's SDK sends them; one credential alone goes both ways, since the server
        checks the Bearer header (its documented errors are about that header)."""
        key = self.api_key or self.bearer_token
        token = self.bearer_token or self.api_key
        out: dict[str, str] = {}
        if key:
            out["x-api-key"] = key
        if token:
            out["Authorization"] = f"Bearer {token}"
        return out


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: httpx.Headers
    body: bytes


def base_url_from_env(env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    return env.get("CHAMELAION_BASE_URL", "").strip() or PRODUCTION_URL


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_base_url(base_url: str, allow_insecure_http: bool = False) -> str:
    try:
        parts = urlsplit(base_url)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError as exc:
        raise ConfigError(f"CHAMELAION_BASE_URL is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"CHAMELAION_BASE_URL must be an http(s) URL, got {base_url!r}")
    if parts.username or parts.password:
        raise ConfigError("CHAMELAION_BASE_URL must not carry a user or password")
    if parts.scheme == "http" and not allow_insecure_http and not _is_loopback(parts.hostname):
        raise ConfigError(
            f"refusing to send credentials over plain http to {parts.hostname}; use https, "
            "or pass --allow-insecure-http"
        )
    return base_url if base_url.endswith("/") else base_url + "/"


class SendWindowClosed(Exception):
    """The moment a request may leave has passed (the worker's claim on the job is no longer
    known to be good): nothing was sent."""


def boottime() -> float:
    """Seconds on a clock that keeps counting through a suspended machine (a closed laptop lid,
    a paused VM), unlike CLOCK_MONOTONIC on Linux; a send window measured on it stays honest."""
    try:
        return time.clock_gettime(time.CLOCK_BOOTTIME)
    except (AttributeError, OSError):  # not Linux
        return time.monotonic()


class _Watchdog:
    """One thread for the process that cuts exchanges outliving their deadline.

    httpx bounds each read, not a whole exchange: a server trickling header lines, one every
    second, would keep a request in flight (and its job's lease renewed) for ever. Shutting the
    socket down from here wakes the blocked read at once."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._watched: dict[int, tuple[float, Callable[[], None]]] = {}
        self._next = 0
        self._thread: threading.Thread | None = None
        self._wakes_at = float("inf")  # when the thread looks next, unless woken

    def watch(self, deadline: float, cut: Callable[[], None]) -> int:
        with self._cond:
            self._next += 1
            self._watched[self._next] = (deadline, cut)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="http-watchdog", daemon=True)
                self._thread.start()
            # Deadlines mostly come in order: wake the thread only for one sooner than its next
            # look (waking it on every request costs more than the request's own bookkeeping).
            if deadline < self._wakes_at:
                self._cond.notify()
            return self._next

    def release(self, token: int) -> None:
        with self._cond:
            self._watched.pop(token, None)

    def _run(self) -> None:
        while True:
            with self._cond:
                now = time.monotonic()
                due = [t for t, (at, _) in self._watched.items() if at <= now]
                cuts = [self._watched.pop(t)[1] for t in due]
                if not cuts:
                    soonest = min((at for at, _ in self._watched.values()), default=now + 60)
                    self._wakes_at = soonest
                    self._cond.wait(max(0.01, soonest - now))
                    self._wakes_at = float("inf")
                    continue
            for cut in cuts:
                cut()


_WATCHDOG = _Watchdog()


class Pacer(Protocol):
    """What keeps the rate where requests leave (the Governor)."""

    def leaving(self) -> float:
        """Right before a request's first byte: wait for its moment; returns that moment."""

    def left(self, due: float) -> None:
        """Its head has been sent; it was due to leave at `due`."""


class _Exchange:
    """What one thread's client needs to bound its exchanges: the sockets it opened."""

    def __init__(self) -> None:
        self.sockets: list[socket.socket] = []
        self.cut_at_deadline = False
        self.guard: Callable[[], None] | None = None
        self.pacer: Pacer | None = None
        self._due = 0.0

    def trace(self, event: str, info: Mapping[str, Any]) -> None:
        if event in ("connection.connect_tcp.complete", "connection.start_tls.complete"):
            stream = info.get("return_value")
            sock = stream.get_extra_info("socket") if stream is not None else None
            if isinstance(sock, socket.socket):
                self.sockets = [s for s in self.sockets if s.fileno() != -1]
                self.sockets.append(sock)
        elif event.endswith(".send_request_headers.started"):
            # The last moment before the first byte of the request leaves this machine: the
            # rate is kept here, where a new connection's set-up is behind us, then the guard.
            if self.pacer is not None:
                self._due = self.pacer.leaving()
            if self.guard is not None:
                self.guard()
        elif event.endswith(".send_request_headers.complete") and self.pacer is not None:
            self.pacer.left(self._due)

    def cut(self) -> None:
        self.cut_at_deadline = True
        for sock in list(self.sockets):
            with contextlib.suppress(OSError):  # already closed
                sock.shutdown(socket.SHUT_RDWR)


class ApiClient:
    """One pooled connection set for the whole process; safe to share between threads."""

    def __init__(
        self,
        credentials: Credentials,
        base_url: str | None = None,
        *,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        allow_insecure_http: bool = False,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        register_secret(credentials.api_key)
        register_secret(credentials.bearer_token)
        if not credentials:
            raise ConfigError(
                "no API credentials: set CHAMELAION_API_KEY or CHAMELAION_BEARER_TOKEN"
            )
        problem = credentials.problem()
        if problem:
            raise ConfigError(problem)
        self.base_url = check_base_url(base_url or base_url_from_env(), allow_insecure_http)
        self._settings: dict[str, Any] = {
            "base_url": self.base_url,
            "headers": {**credentials.headers(), "user-agent": f"dubrunner/{__version__}"},
            "timeout": httpx.Timeout(
                connect=connect_timeout,
                read=read_timeout,
                write=read_timeout,
                pool=max(connect_timeout, read_timeout),
            ),
            "follow_redirects": False,  # a redirect would carry credentials somewhere unknown
            "transport": transport,
        }
        # The whole exchange, from connect to the last byte of the answer.
        self.total_timeout = connect_timeout + read_timeout
        self.read_timeout = read_timeout
        # One small pool per thread: a shared pool of N connections is scanned, under one lock,
        # on every request, which costs more CPU than the request itself at N = 32. Each thread
        # has one request in flight at a time, so two connections are plenty.
        self._local = threading.local()
        self._clients: list[httpx.Client] = []
        self._lock = threading.Lock()
        # Told when every request leaves (the Governor: its rate is kept there).
        self.pacer: Pacer | None = None

    def _thread_client(self) -> tuple[httpx.Client, _Exchange]:
        client: httpx.Client | None = getattr(self._local, "client", None)
        if client is None:
            limits = httpx.Limits(
                max_connections=2, max_keepalive_connections=2, keepalive_expiry=30.0
            )
            client = httpx.Client(limits=limits, **self._settings)
            self._local.client = client
            self._local.exchange = _Exchange()
            with self._lock:
                self._clients.append(client)
        return client, self._local.exchange

    def close(self) -> None:
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            client.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        retry_count: int = 0,
        guard: Callable[[], None] | None = None,
        content: Iterable[bytes] | None = None,
        extra_headers: Mapping[str, str] | None = None,
        total_timeout: float | None = None,
    ) -> Answer:
        client, exchange = self._thread_client()
        headers = {"X-Stainless-Retry-Count": str(retry_count), **(extra_headers or {})}
        deadline = time.monotonic() + (total_timeout or self.total_timeout)
        if guard is not None:
            guard()  # also checked again right before the first byte (see _Exchange.trace)
        exchange.guard = guard
        exchange.pacer = self.pacer
        exchange.cut_at_deadline = False
        token = _WATCHDOG.watch(deadline, exchange.cut)
        try:
            with client.stream(
                method,
                path,
                json=json,
                params=params,
                content=content,
                headers=headers,
                extensions={"trace": exchange.trace},
            ) as resp:
                chunks: list[bytes] = []
                size = 0
                for chunk in resp.iter_bytes():
                    size += len(chunk)
                    if size > MAX_BODY:
                        raise ResponseTooLarge(f"the answer is over {MAX_BODY:,} bytes")
                    if time.monotonic() > deadline:
                        raise self._too_slow(total_timeout)
                    chunks.append(chunk)
                return Answer(resp.status_code, resp.headers, b"".join(chunks))
        except (httpx.TransportError, httpx.StreamError):
            if exchange.cut_at_deadline:
                raise self._too_slow(total_timeout) from None
            raise
        except httpx.DecodingError as exc:
            # A body that its Content-Encoding does not fit (a proxy's "gzip" that is not): a
            # garbled answer like any other, whose request may have been acted on.
            raise httpx.RemoteProtocolError(f"the answer's body cannot be decoded: {exc}") from None
        finally:
            _WATCHDOG.release(token)
            exchange.guard = None

    def _too_slow(self, total_timeout: float | None = None) -> httpx.ReadTimeout:
        return httpx.ReadTimeout(
            f"the exchange took over {total_timeout or self.total_timeout:g} s"
        )

    def generate(
        self,
        video_url: str,
        audio_url: str,
        reference_id: str,
        disable_active_speaker_detection: bool = False,
        *,
        retry_count: int = 0,
        guard: Callable[[], None] | None = None,
    ) -> Answer:
        """POST generate. `guard` is called right before the request leaves; raising there
        (SendWindowClosed) means nothing was sent."""
        body = {
            "inputs": [{"type": "video", "url": video_url}, {"type": "audio", "url": audio_url}],
            "reference_id": reference_id,
            "disable_active_speaker_detection": disable_active_speaker_detection,
        }
        return self._request(
            "POST", "v1/lipsync/generate", json=body, retry_count=retry_count, guard=guard
        )

    def generate_with_media(
        self,
        video: FilePart,
        audio: FilePart,
        reference_id: str,
        disable_active_speaker_detection: bool = False,
        *,
        retry_count: int = 0,
        guard: Callable[[], None] | None = None,
        hold: Callable[[], None] | None = None,
        sent: Callable[[int], None] | None = None,
    ) -> Answer:
        """POST generate-with-media: the two files as multipart parts, streamed from disk.
        `guard` as for generate; `hold` is called before each chunk of a file and may stop the
        body (UploadInterrupted); `sent` is told each chunk's size. The whole exchange may take
        longer than a request's: see uploads.upload_timeout."""
        fields = [
            ("reference_id", reference_id),
            (
                "disable_active_speaker_detection",
                "true" if disable_active_speaker_detection else "false",
            ),
        ]
        body = MultipartBody(fields, [video, audio], check=hold, sent=sent)
        timeout = self.total_timeout - self.read_timeout
        return self._request(
            "POST",
            "v1/lipsync/generate-with-media",
            content=body,
            extra_headers=body.headers(),
            total_timeout=timeout + upload_timeout(body.length, self.read_timeout),
            retry_count=retry_count,
            guard=guard,
        )

    def find_by_reference(self, reference_id: str, *, retry_count: int = 0) -> Answer:
        """The list endpoint filtered by reference_id: an empty list is an unambiguous 'no'."""
        return self._request(
            "GET",
            "v1/lipsync/requests",
            params={"reference_id": reference_id, "limit": LOOKUP_PAGE, "offset": 0},
            retry_count=retry_count,
        )

    def list_requests(self, limit: int, offset: int, *, retry_count: int = 0) -> Answer:
        """A page of the account's requests, unfiltered (full request objects under `data`)."""
        return self._request(
            "GET",
            "v1/lipsync/requests",
            params={"limit": limit, "offset": offset},
            retry_count=retry_count,
        )

    def get_request(self, request_id: str, *, retry_count: int = 0) -> Answer:
        """One request by its id or reference_id, escaped: `x/e01` must not become two segments."""
        path = "v1/lipsync/requests/" + quote(request_id, safe="")
        return self._request("GET", path, retry_count=retry_count)

    def health(self) -> Answer:
        return self._request("GET", "health")

    def me(self) -> Answer:
        return self._request("GET", "v1/users/me")
