"""A hostile server on a raw socket: every broken answer ends in a defined job state, no hang."""

from __future__ import annotations

import json
import re
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import TOKEN, clean_env, db_rows, run_cli, write_manifest

pytestmark = pytest.mark.slow  # every case runs dubrunner as a process


class _Handler(socketserver.BaseRequestHandler):
    server: BrokenServer

    def handle(self) -> None:
        conn: socket.socket = self.request
        conn.settimeout(10)
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            length = next(
                (
                    int(v)
                    for k, _, v in (x.partition(": ") for x in lines[1:])
                    if k.lower() == "content-length"
                ),
                0,
            )
            while len(body) < length:
                body += conn.recv(65536)
            if method == "GET" and path.startswith("/api/v1/lipsync/requests/"):
                self.server.lookups += 1  # GET requests/{reference_id}: the API's own 404
                conn.sendall(_response(404, json.dumps({"error": "not found"}).encode()))
                return
            if method == "GET" and path.startswith("/api/v1/lipsync/requests"):
                self.server.lookups += 1
                payload = json.dumps({"data": [], "pagination": {"total": 0}}).encode()
                conn.sendall(_response(200, payload))
                return
            self.server.posts += 1
            self.server.behave(conn)
        except OSError:
            return


def _response(
    status: int, body: bytes, content_type: str = "application/json", extra: str = ""
) -> bytes:
    return (
        f"HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        f"Connection: close\r\n{extra}\r\n"
    ).encode() + body


class BrokenServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, behaviour: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.behaviour = behaviour
        self.posts = 0
        self.lookups = 0

    def behave(self, conn: socket.socket) -> None:
        b = self.behaviour
        if b == "not_json":
            conn.sendall(_response(200, b"OK, job queued"))
        elif b == "no_request_id":
            conn.sendall(_response(200, b'{"status": "success"}'))
        elif b == "bad_uuid":
            conn.sendall(_response(200, b'{"status": "success", "request_id": "job-42"}'))
        elif b == "html_5xx":
            conn.sendall(
                _response(503, b"<html><h1>503 Service Unavailable</h1></html>", "text/html")
            )
        elif b == "slow_body":
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n"
            )
            for _ in range(500):
                conn.sendall(b" ")
                time.sleep(0.05)
        elif b == "never_starts":
            time.sleep(8)
        elif b == "reset_mid_body":
            head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 200\r\n"
            conn.sendall(head + b'\r\n{"status"')
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()
        elif b == "redirect":
            conn.sendall(_response(307, b"", extra="Location: https://evil.example.net/api/\r\n"))
        elif b == "enormous":
            conn.sendall(_response(200, b'{"pad": "' + b"x" * (3 * 1024 * 1024) + b'"}'))
        else:  # pragma: no cover
            raise AssertionError(b)


@pytest.fixture
def broken(request: pytest.FixtureRequest) -> Iterator[BrokenServer]:
    server = BrokenServer(request.param)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


# behaviour, the job's final state, what its last error (or, for a job handed back, the closing
# sentence) must say (a regular expression, searched), whether it was looked up, the POSTs sent.
# A garbled answer before the API ever answered is not charged to the job (the address may be
# wrong, health.py): with --max-attempts 2, such a job is sent three times.
_GARBLED = r"does not answer like the API: .*"
CASES = [
    # Garbage for every POST while look-ups answer: three garbled POSTs (not charged) and the
    # batch halts as a wrong address, the job back to pending with its look-up owed.
    ("not_json", "pending", _GARBLED + r"HTTP 200 without a valid request_id", True, 3),
    ("no_request_id", "pending", _GARBLED + r"HTTP 200 without a valid request_id", True, 3),
    ("bad_uuid", "pending", _GARBLED + r"HTTP 200 without a valid request_id", True, 3),
    ("html_5xx", "failed", r"HTTP 503 with an HTML body", True, 2),
    ("slow_body", "failed", r"ReadTimeout", True, 2),
    ("never_starts", "failed", r"ReadTimeout", True, 2),
    # The errno's number differs between systems; its words do not.
    ("reset_mid_body", "failed", r"ReadError: .*Connection reset by peer", True, 2),
    # A redirect before anything else: a wrong address; the job goes back, the batch halts.
    (
        "redirect",
        "pending",
        r"does not lead to the API: .*redirected to evil\.example\.net",
        False,
        1,
    ),
    ("enormous", "pending", _GARBLED + r"ResponseTooLarge", True, 3),
]


@pytest.mark.parametrize(
    ("broken", "state", "error", "looked_up", "posts"),
    CASES,
    indirect=["broken"],
    ids=[c[0] for c in CASES],
)
def test_broken_answers_end_in_a_defined_state(
    broken: BrokenServer, state: str, error: str, looked_up: bool, posts: int, tmp_path: Path
) -> None:
    db = tmp_path / "jobs.db"
    env = clean_env(
        CHAMELAION_BASE_URL=f"http://127.0.0.1:{broken.server_address[1]}/api/",
        CHAMELAION_API_KEY=TOKEN,
        DUBRUNNER_DB=str(db),
        DUBRUNNER_RETRY_WAIT="0.01",
        DUBRUNNER_LOOKUP_GRACE="0.3",
    )
    manifest = write_manifest(tmp_path / "m.yaml", 1)
    started = time.monotonic()
    r = run_cli(
        ["submit", str(manifest), "--max-attempts", "2", "--request-timeout", "1"], env, timeout=60
    )
    assert time.monotonic() - started < 30, "bounded waits"
    assert r.code == 1, r.err
    assert "Traceback" not in r.err
    [(final, last_error, lookup_needed)] = db_rows(
        db, "SELECT state, last_error, lookup_needed FROM jobs"
    )
    assert final == state
    said = r.err.strip().splitlines()[-1] if state == "pending" else last_error or ""
    assert re.search(error, said), said
    # A maybe-created job is never resent blindly: it was looked up before the second POST,
    # and it stays marked for a look-up before any later send.
    assert (broken.lookups > 0) == looked_up
    assert bool(lookup_needed) == looked_up
    assert broken.posts == posts
