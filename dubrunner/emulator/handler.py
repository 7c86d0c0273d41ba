"""The emulator's HTTP side: routing, the API's answers and error messages, and its faults."""

from __future__ import annotations

import contextlib
import email.utils
import json
import socket
import struct
import sys
import threading
import time
from dataclasses import asdict
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import parse_qs, urlsplit

from dubrunner.emulator.content import PREFIX, endpoint_of, output_content, signed
from dubrunner.emulator.multipart import BadBody, Part, boundary_of, read_parts

if TYPE_CHECKING:
    from dubrunner.emulator.model import Emulator


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256
    allow_reuse_address = True
    emulator: Emulator

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client killed mid-request is an everyday event here, not worth a traceback.
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


_AUTH_EXEMPT = {"health"}
MEDIA_ROUTE = "v1/lipsync/generate-with-media"
_SO_TIMESTAMPNS = 35  # Linux: a received packet's kernel timestamp (not in the socket module)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Server
    arrived: float | None = None

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with contextlib.suppress(OSError):  # not Linux: arrival is when a thread reads it
            self.connection.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)

    def handle_one_request(self) -> None:
        self.arrived = self._arrival() if self.server.emulator.config.rate else None
        super().handle_one_request()

    def _arrival(self) -> float | None:
        """When the next request reached this machine (Unix seconds): the kernel's receive time
        of its first bytes, so the rate limit judges the client's pacing, not how soon a thread
        of this Python process got a CPU on a busy machine. Waits for those bytes."""
        try:
            _, ancillary, _, _ = self.connection.recvmsg(1, socket.CMSG_SPACE(16), socket.MSG_PEEK)
        except OSError:
            return None
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS and len(data) >= 16:
                seconds, nanoseconds = struct.unpack("qq", data[:16])
                return float(seconds + nanoseconds / 1e9)
        return None

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return

    # -- plumbing ----------

    def _send(
        self,
        status: int,
        payload: Any,
        headers: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> None:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        lines = [
            f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
            f"Content-Type: {content_type}",
            f"Content-Length: {len(body)}",
            f"Date: {email.utils.formatdate(usegmt=True)}",
        ]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if self.close_connection:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if self.command == "HEAD":
            body = b""  # a HEAD answer has the headers of a GET's, and no body
        self.wfile.write(head + body)  # one write: no delayed-ACK stall
        emu = self.server.emulator
        with emu.lock:
            emu.stats.by_status[status] = emu.stats.by_status.get(status, 0) + 1

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        self._send(status, {"error": message}, headers)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _auth_error(self) -> str | None:
        tokens = self.server.emulator.config.tokens
        auth = self.headers.get("Authorization")
        key = self.headers.get("x-api-key")
        if auth is None:
            if key is None:
                return "missing authorization header"
            return None if key in tokens else "unauthorized"
        if auth.strip() == "Bearer":
            return "missing token"
        if not auth.startswith("Bearer "):
            return "invalid authorization format"
        token = auth[len("Bearer ") :].strip()
        if not token:
            return "missing token"
        return None if token in tokens else "invalid token"

    # -- routing ----------

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def do_HEAD(self) -> None:
        self._route("HEAD")

    def _route(self, method: str) -> None:
        emu = self.server.emulator
        parts = urlsplit(self.path)
        path = parts.path
        upload: list[Part] | str | None = None
        if method == "POST" and path.rstrip("/") == PREFIX + MEDIA_ROUTE:
            upload = self._upload()  # read as a stream, to its end, before anything else
            body = b""
        else:
            body = self._body() if method == "POST" else b""
        with emu.lock:
            emu.stats.requests += 1
            endpoint = endpoint_of(method, path)
            emu.stats.by_endpoint[endpoint] = emu.stats.by_endpoint.get(endpoint, 0) + 1
        if path.startswith("/outputs/") and method == "GET":
            return self._output(path, parse_qs(parts.query))
        if path.startswith("/media/"):
            return self._media(method, path)
        if path.startswith("/_emulator/"):
            return self._control(method, path, body)
        if not path.startswith(PREFIX):
            # What the API's Go router says outside its routes: a text page, not its JSON.
            return self._send(404, b"404 page not found", content_type="text/plain; charset=utf-8")
        route = path[len(PREFIX) :].rstrip("/")
        if emu.config.outage_from <= time.time() < emu.config.outage_until:
            with emu.lock:
                emu.stats.outage_answers += 1
            if emu.config.outage_status == 503:
                page = b"<html><body><h1>503 Service Temporarily Unavailable</h1></body></html>"
                return self._send(503, page, content_type="text/html")
            return self._error(emu.config.outage_status, "internal error")
        if route == "health" and method == "GET":
            return self._send(200, {"status": "ok"})
        auth_problem = self._auth_error()
        if auth_problem:
            return self._error(401, auth_problem)
        with emu.lock:
            wait = emu._take_token(self.arrived)
            if wait is not None:
                emu.stats.rate_limited += 1
        if wait is not None:
            return self._error(
                429,
                "rate limit exceeded",
                {"Retry-After": f"{wait:.3f}", "Retry-After-Ms": str(max(1, int(wait * 1000)))},
            )
        if emu.config.latency_ms:
            time.sleep(emu.config.latency_ms / 1000)
        query = parse_qs(parts.query)
        if route == "v1/lipsync/generate" and method == "POST":
            if emu.config.garbage:
                with emu.lock:
                    emu.stats.generate += 1
                return self._send(200, b"OK, job queued", content_type="text/plain")
            return self._generate(body)
        if route == MEDIA_ROUTE and method == "POST" and upload is not None:
            if emu.config.garbage:
                with emu.lock:
                    emu.stats.generate += 1
                return self._send(200, b"OK, job queued", content_type="text/plain")
            return self._generate_with_media(upload)
        if route == "v1/lipsync/requests" and method == "GET":
            return self._list(query)
        if route.startswith("v1/lipsync/requests/") and method == "GET":
            return self._get(route.rsplit("/", 1)[1])
        if route == "v1/users/me" and method == "GET":
            return self._send(200, {"name": "emulator user"})
        return self._error(404, "not found")

    def _generate(self, raw: bytes) -> None:
        emu = self.server.emulator
        with emu.lock:
            emu.stats.generate += 1
            now = time.time()
            emu.stats.first_generate_at = emu.stats.first_generate_at or now
            emu.stats.last_generate_at = now
        if not (self.headers.get("Content-Type") or "").startswith("application/json"):
            return self._error(400, "content-type must be application/json")
        try:
            data = json.loads(raw)
        except ValueError:
            return self._error(400, "invalid request body")
        inputs = data.get("inputs") if isinstance(data, dict) else None
        if not isinstance(inputs, list) or not all(
            isinstance(i, dict) and isinstance(i.get("url"), str) for i in inputs
        ):
            return self._error(400, "invalid request body")
        if any(i.get("type") not in ("video", "audio") for i in inputs):
            return self._error(400, 'input type must be "video" or "audio"')
        videos = [i["url"] for i in inputs if i["type"] == "video"]
        audios = [i["url"] for i in inputs if i["type"] == "audio"]
        if len(videos) != 1:
            return self._error(400, "expected exactly one video input")
        if len(audios) != 1:
            return self._error(400, "expected exactly one audio input")
        ref = data.get("reference_id")
        asd = bool(data.get("disable_active_speaker_detection", False))
        return self._accept(ref, videos[0], audios[0], asd)

    def _upload(self) -> list[Part] | str:
        """A generate-with-media body read to its end: its parts, or what is wrong with it."""
        emu = self.server.emulator
        length = int(self.headers.get("Content-Length") or 0)
        boundary = boundary_of(self.headers.get("Content-Type") or "")
        with emu.lock:
            emu.stats.uploading += 1
            emu.stats.peak_uploading = max(emu.stats.peak_uploading, emu.stats.uploading)
            cfg = emu.config
            reset = cfg.p_upload_reset > 0 and emu._random.random() < cfg.p_upload_reset
            if reset:
                emu.stats.upload_resets += 1
        try:
            if reset:  # half the body read, then the connection reset: nothing was created
                self._drain(length // 2)
                self.close_connection = True
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
                self.connection.close()
                raise ConnectionResetError("reset mid-upload (p_upload_reset)")
            if boundary is None:
                self._drain(length)
                return "invalid request body"
            found = read_parts(self.rfile, length, boundary, emu.config.upload_read_rate)
        except BadBody:
            return "invalid request body"
        finally:
            with emu.lock:
                emu.stats.uploading -= 1
        with emu.lock:
            emu.stats.uploads += 1
            emu.stats.upload_bytes += length
        return found

    def _drain(self, length: int) -> None:
        while length > 0:
            chunk = self.rfile.read(min(length, 1 << 16))
            if not chunk:
                raise ConnectionError("the body ended early")
            length -= len(chunk)

    def _generate_with_media(self, upload: list[Part] | str) -> None:
        emu = self.server.emulator
        with emu.lock:
            emu.stats.generate += 1
            now = time.time()
            emu.stats.first_generate_at = emu.stats.first_generate_at or now
            emu.stats.last_generate_at = now
        if isinstance(upload, str):
            return self._error(400, upload)
        videos = [p for p in upload if p.name == "video"]
        audios = [p for p in upload if p.name == "audio"]
        if len(videos) != 1:
            return self._error(400, "expected exactly one video input")
        if len(audios) != 1:
            return self._error(400, "expected exactly one audio input")
        fields = {p.name: p.value.decode("utf-8", "replace") for p in upload if p.filename is None}
        ref = fields.get("reference_id")
        asd = fields.get("disable_active_speaker_detection", "false").strip().lower() == "true"
        media = {p.name: (p.size, p.sha256) for p in (videos[0], audios[0])}
        video = f"upload:{videos[0].filename or 'video'}"
        audio = f"upload:{audios[0].filename or 'audio'}"
        return self._accept(ref, video, audio, asd, media)

    def _accept(
        self,
        ref: object,
        video: str,
        audio: str,
        asd: bool,
        media: dict[str, tuple[int, str]] | None = None,
    ) -> None:
        """A valid generate: the faults it may meet, else a request created and answered."""
        emu = self.server.emulator
        cfg = emu.config
        with emu.lock:
            if cfg.token_limit is not None and emu.stats.accepted >= cfg.token_limit:
                limited = True
            else:
                limited = False
                fail = cfg.p500 > 0 and emu._random.random() < cfg.p500
                late = not fail and cfg.p504_create > 0 and emu._random.random() < cfg.p504_create
                if fail:
                    emu.stats.errors_500 += 1
                elif late:
                    emu.stats.late_creates += 1
                else:
                    req = emu._create(
                        ref if isinstance(ref, str) else None, video, audio, asd, media
                    )
                    drop = (
                        cfg.drop_after_accept > 0 and emu._random.random() < cfg.drop_after_accept
                    )
                    if drop:
                        emu.stats.dropped += 1
        if limited:
            return self._error(cfg.token_limit_status, "token limit reached")
        if fail:
            return self._error(500, "internal error")
        if late:

            def create_late() -> None:
                with emu.lock:
                    emu._create(ref if isinstance(ref, str) else None, video, audio, asd, media)

            threading.Timer(cfg.create_delay, create_late).start()
            page = b"<html><body><h1>504 Gateway Time-out</h1></body></html>"
            return self._send(504, page, content_type="text/html")
        if drop:
            # The job exists, but the client never hears so: the case reference_id look-ups solve.
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return None
        answered = req.id.upper() if cfg.upper_case_ids else req.id
        return self._send(200, {"status": "success", "request_id": answered})

    def _views(self, ids: list[str], listed: bool = False) -> list[dict[str, Any]]:
        emu = self.server.emulator
        root = f"http://{self.headers.get('Host') or '127.0.0.1'}/"
        views = [emu.requests[i].view(emu.config, root) for i in ids]
        if listed and emu.config.list_hides_output:
            views = [{**view, "output_url": None} for view in views]
        return views

    def _list(self, query: dict[str, list[str]]) -> None:
        emu = self.server.emulator
        try:
            limit = max(1, min(100, int(query.get("limit", ["20"])[0])))
            offset = max(0, int(query.get("offset", ["0"])[0]))
        except ValueError:
            return self._error(400, "invalid request")
        ref = query.get("reference_id", [None])[0]
        with emu.lock:
            emu.stats.lookups += 1
            failing = ref is None and emu.config.list_failures > 0
            if failing:
                emu.config.list_failures -= 1
        if ref is None and emu.config.list_missing:
            return self._error(404, "not found")
        if failing:
            return self._error(500, "internal error")
        with emu.lock:
            ids = list(emu.by_reference.get(ref, [])) if ref is not None else list(emu.requests)
            ids = [i for i in reversed(ids) if i in emu.requests]  # newest first
            if ref is None and emu.config.list_ignores_offset:
                offset = 0
            page = self._views(ids[offset : offset + limit], listed=True)
        return self._send(
            200, {"data": page, "pagination": {"limit": limit, "offset": offset, "total": len(ids)}}
        )

    def _get(self, key: str) -> None:
        emu = self.server.emulator
        with emu.lock:
            emu.stats.polls += 1
            key = key.lower() if key.lower() in emu.requests else key
            failing = key in emu.config.get_failing
            known = [i for i in emu.by_reference.get(key, []) if i in emu.requests]
            ids = [key] if key in emu.requests else known[-1:]
            views = self._views(ids)
        if failing:
            return self._error(500, "internal error")
        if not views:
            return self._error(404, "not found")
        return self._send(200, views[0])

    def _output(self, path: str, query: dict[str, list[str]]) -> None:
        emu = self.server.emulator
        request_id = path.rsplit("/", 1)[1].removesuffix(".mp4")
        with emu.lock:
            known = request_id in emu.requests
            emu.stats.downloads += 1
        if not known:
            return self._error(404, "not found")
        cfg = emu.config
        refused = cfg.storage_refuses or request_id in cfg.refused_outputs
        if refused or (cfg.output_ttl is not None and not signed(request_id, query)):
            with emu.lock:
                emu.stats.expired_downloads += 1
            page = b"<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>"
            return self._send(403, page, content_type="application/xml")
        content = output_content(request_id, emu.config.output_bytes)
        start = 0
        status = 200
        extra: dict[str, str] = {"Accept-Ranges": "bytes"}
        ranged = self.headers.get("Range", "")
        if ranged.startswith("bytes=") and ranged.endswith("-"):
            with emu.lock:
                emu.stats.range_requests += 1
                emu.stats.ranges.append(ranged)
            try:
                start = int(ranged[len("bytes=") : -1])
            except ValueError:
                start = -1
            if not 0 <= start < len(content):
                return self._send(416, b"", {"Content-Range": f"bytes */{len(content)}"})
            status = 206
            extra["Content-Range"] = f"bytes {start}-{len(content) - 1}/{len(content)}"
        body = content[start:]
        rate = emu.config.output_rate
        cut = emu.config.cut_output_after
        if cut is not None and start == 0 and cut < len(body):
            # Promise the whole file, send the first `cut` bytes, close: a dropped connection.
            head = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", "Content-Type: video/mp4"]
            head += [f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in extra.items())]
            self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body[:cut])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return None
        if not rate:
            return self._send(status, body, extra, content_type="video/mp4")
        # Slowly, for tests that interrupt a download halfway.
        head = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", "Content-Type: video/mp4"]
        head += [f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in extra.items())]
        self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        step = max(1, int(rate / 20))
        for i in range(0, len(body), step):
            self.wfile.write(body[i : i + step])
            time.sleep(step / rate)
        return None

    # Stand-in media for preflight: /media/<kind>/<anything>, kind telling how it behaves.
    _MEDIA: ClassVar[dict[str, tuple[str, int]]] = {
        "video": ("video/mp4", 200_000),
        "audio": ("audio/wav", 100_000),
        "html": ("text/html; charset=utf-8", 2_000),
        "tiny": ("video/mp4", 10),
        "nohead": ("video/mp4", 200_000),
    }

    def _media(self, method: str, path: str) -> None:
        kind = path.split("/")[2] if path.count("/") >= 2 else ""
        if kind not in self._MEDIA:
            return self._error(404, "not found")
        if kind == "nohead" and method == "HEAD":
            return self._error(405, "method not allowed")
        content_type, size = self._MEDIA[kind]
        status, length, extra = 200, size, {"Accept-Ranges": "bytes"}
        if self.headers.get("Range") == "bytes=0-0":
            status, length = 206, 1
            extra["Content-Range"] = f"bytes 0-0/{size}"
        if method == "HEAD":
            head = [
                f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
                f"Content-Type: {content_type}",
            ]
            head += [f"Content-Length: {length}", *(f"{k}: {v}" for k, v in extra.items())]
            self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
            return None
        return self._send(status, b"\0" * length, extra, content_type=content_type)

    def _control(self, method: str, path: str, body: bytes) -> None:
        """Test hooks for an emulator running in another process."""
        emu = self.server.emulator
        if path == "/_emulator/ledger" and method == "GET":
            return self._send(200, emu.accepted())
        if path == "/_emulator/uploads" and method == "GET":
            return self._send(200, emu.uploads())
        if path == "/_emulator/stats" and method == "GET":
            # A copy taken under the lock, sent outside it: _send takes the lock too.
            with emu.lock:
                stats = asdict(emu.stats)
            return self._send(200, stats)
        if path == "/_emulator/arrivals" and method == "GET":
            with emu.lock:
                arrivals = list(emu.arrivals)
            return self._send(200, arrivals)
        if path == "/_emulator/config" and method == "POST":
            try:
                emu.update(**json.loads(body or b"{}"))
            except (ValueError, TypeError, AttributeError) as exc:
                return self._error(400, f"bad config: {exc}")
            return self._send(200, asdict(emu.config))
        if path == "/_emulator/forget" and method == "POST":
            try:
                ids = json.loads(body or b"null")
            except ValueError as exc:
                return self._error(400, f"bad list: {exc}")
            return self._send(200, {"forgotten": emu.forget(ids)})
        return self._error(404, "not found")
