"""The HTTP client for the Chamelaion lip-sync API. It knows nothing of the database.

Each call returns an `Answer` (status, headers, a size-capped body) or raises an httpx transport
error; what either means is decided in errors.py.
"""

from __future__ import annotations

import ipaddress
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from dubrunner import __version__
from dubrunner.errors import ResponseTooLarge
from dubrunner.redact import register_secret

PRODUCTION_URL = "https://api.chamelaion.com/api/"
MAX_BODY = 1024 * 1024  # no API answer is anywhere near this


class ConfigError(Exception):
    """Missing or unsafe API configuration (credentials, base URL)."""


@dataclass(frozen=True, slots=True)
class Credentials:
    api_key: str | None
    bearer_token: str | None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Credentials:
        env = os.environ if env is None else env
        key = env.get("CHAMELAION_API_KEY", "").strip() or None
        token = env.get("CHAMELAION_BEARER_TOKEN", "").strip() or None
        return cls(key, token)

    def __bool__(self) -> bool:
        return bool(self.api_key or self.bearer_token)

    def __repr__(self) -> str:  # never show the values, not even in a traceback
        return f"Credentials(api_key={'set' if self.api_key else None}, " + (
            f"bearer_token={'set' if self.bearer_token else None})"
        )

    def headers(self) -> dict[str, str]:
        """As the vendor's SDK sends them; one credential alone goes both ways, since the server
        checks the Bearer header (see API.md)."""
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
    seconds: float


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
    parts = urlsplit(base_url)
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


class ApiClient:
    """One pooled connection set for the whole process; safe to share between threads."""

    def __init__(
        self,
        credentials: Credentials,
        base_url: str | None = None,
        *,
        max_connections: int = 8,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        allow_insecure_http: bool = False,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not credentials:
            raise ConfigError(
                "no API credentials: set CHAMELAION_API_KEY or CHAMELAION_BEARER_TOKEN"
            )
        register_secret(credentials.api_key)
        register_secret(credentials.bearer_token)
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
        self.max_connections = max_connections
        # httpx bounds each read, not the whole answer: a server trickling bytes would never end.
        self.total_timeout = connect_timeout + read_timeout
        # One small pool per thread: a shared pool of N connections is scanned, under one lock,
        # on every request, which costs more CPU than the request itself at N = 32.
        self._local = threading.local()
        self._clients: list[httpx.Client] = []
        self._lock = threading.Lock()

    @property
    def _client(self) -> httpx.Client:
        client: httpx.Client | None = getattr(self._local, "client", None)
        if client is None:
            limits = httpx.Limits(
                max_connections=2, max_keepalive_connections=2, keepalive_expiry=30.0
            )
            client = httpx.Client(limits=limits, **self._settings)
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

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
    ) -> Answer:
        headers = {"X-Stainless-Retry-Count": str(retry_count)}
        started = time.monotonic()
        deadline = started + self.total_timeout
        with self._client.stream(method, path, json=json, params=params, headers=headers) as resp:
            chunks: list[bytes] = []
            size = 0
            for chunk in resp.iter_bytes():
                size += len(chunk)
                if size > MAX_BODY:
                    raise ResponseTooLarge(f"the answer is over {MAX_BODY:,} bytes")
                if time.monotonic() > deadline:
                    raise httpx.ReadTimeout(
                        f"the answer took over {self.total_timeout:g} s to arrive"
                    )
                chunks.append(chunk)
            return Answer(
                resp.status_code, resp.headers, b"".join(chunks), time.monotonic() - started
            )

    def generate(
        self,
        video_url: str,
        audio_url: str,
        reference_id: str,
        disable_active_speaker_detection: bool = False,
        *,
        retry_count: int = 0,
    ) -> Answer:
        body = {
            "inputs": [{"type": "video", "url": video_url}, {"type": "audio", "url": audio_url}],
            "reference_id": reference_id,
            "disable_active_speaker_detection": disable_active_speaker_detection,
        }
        return self._request("POST", "v1/lipsync/generate", json=body, retry_count=retry_count)

    def find_by_reference(self, reference_id: str, *, retry_count: int = 0) -> Answer:
        """The list endpoint filtered by reference_id: an empty list is an unambiguous 'no'."""
        return self._request(
            "GET",
            "v1/lipsync/requests",
            params={"reference_id": reference_id, "limit": 10, "offset": 0},
            retry_count=retry_count,
        )

    def get_request(self, request_id: str, *, retry_count: int = 0) -> Answer:
        return self._request("GET", f"v1/lipsync/requests/{request_id}", retry_count=retry_count)

    def health(self) -> Answer:
        return self._request("GET", "health")

    def me(self) -> Answer:
        return self._request("GET", "v1/users/me")
