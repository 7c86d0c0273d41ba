"""The emulator's generate-with-media: a multipart body read as a stream, both parts required,
each part's size and SHA-256 recorded, and the faults of generate (fast tier)."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from dubrunner.emulator import Emulator
from dubrunner.emulator.multipart import CHUNK, BadBody, read_parts
from tests.conftest import TOKEN

ROUTE = "v1/lipsync/generate-with-media"
AUTH = {"x-api-key": TOKEN}


def _post(emu: Emulator, **kwargs: object) -> httpx.Response:
    with httpx.Client(base_url=emu.base_url, headers=AUTH, timeout=10) as client:
        return client.post(ROUTE, **kwargs)  # type: ignore[arg-type]


def test_both_parts_are_recorded_with_size_and_sha256(emulator: Emulator) -> None:
    video, audio = os.urandom(300_001), os.urandom(77_777)
    got = _post(
        emulator,
        files={"video": ("e1.mp4", video, "video/mp4"), "audio": ("e1.wav", audio, "audio/wav")},
        data={"reference_id": "ep-1", "disable_active_speaker_detection": "true"},
    )
    assert got.status_code == 200, got.text
    request_id = got.json()["request_id"]
    assert emulator.accepted() == {"ep-1": [request_id]}
    assert emulator.uploads()["ep-1"] == [
        {
            "video": (len(video), hashlib.sha256(video).hexdigest()),
            "audio": (len(audio), hashlib.sha256(audio).hexdigest()),
        }
    ]
    assert emulator.requests[request_id].disable_active_speaker_detection is True
    assert emulator.stats.uploads == 1


@pytest.mark.parametrize(
    ("files", "error"),
    [
        ({"audio": ("a.wav", b"RIFF", "audio/wav")}, "expected exactly one video input"),
        ({"video": ("v.mp4", b"....ftyp", "video/mp4")}, "expected exactly one audio input"),
    ],
)
def test_a_missing_part_is_the_apis_error(
    emulator: Emulator, files: dict[str, tuple[str, bytes, str]], error: str
) -> None:
    got = _post(emulator, files=files, data={"reference_id": "x"})
    assert (got.status_code, got.json()) == (400, {"error": error})
    assert emulator.accepted() == {}


def test_a_body_that_is_not_multipart_is_an_invalid_body(emulator: Emulator) -> None:
    got = _post(emulator, json={"inputs": []})
    assert (got.status_code, got.json()) == (400, {"error": "invalid request body"})
    cut = b'--b\r\nContent-Disposition: form-data; name="video"; filename="v"\r\n\r\nabc'
    got = _post(emulator, content=cut, headers={"content-type": "multipart/form-data; boundary=b"})
    assert (got.status_code, got.json()) == (400, {"error": "invalid request body"})


def test_a_refused_upload_leaves_the_connection_usable(emulator: Emulator) -> None:
    files = {"video": ("v.mp4", os.urandom(200_000)), "audio": ("a.wav", os.urandom(1000))}
    with httpx.Client(base_url=emulator.base_url, timeout=10) as client:
        first = client.post(ROUTE, files=files)  # no credentials
        assert (first.status_code, first.json()) == (401, {"error": "missing authorization header"})
        second = client.post(ROUTE, files=files, headers=AUTH, data={"reference_id": "r"})
        assert second.status_code == 200, second.text


def test_the_faults_of_generate_apply(emulator: Emulator) -> None:
    files = {"video": ("v.mp4", b"v" * 1000), "audio": ("a.wav", b"a" * 1000)}
    emulator.update(drop_after_accept=1.0)
    with pytest.raises(httpx.RemoteProtocolError):
        _post(emulator, files=files, data={"reference_id": "dropped"})
    assert list(emulator.accepted()) == ["dropped"]  # created, never answered
    emulator.update(drop_after_accept=0.0, p500=1.0)
    got = _post(emulator, files=files, data={"reference_id": "e500"})
    assert (got.status_code, got.json()) == (500, {"error": "internal error"})
    emulator.update(p500=0.0, token_limit=1)
    got = _post(emulator, files=files, data={"reference_id": "limited"})
    assert got.json() == {"error": "token limit reached"}
    assert list(emulator.accepted()) == ["dropped"]


def test_the_stream_parser_finds_delimiters_across_chunk_edges() -> None:
    boundary = b"edge-boundary"
    # File data holding near-misses of the delimiter, placed across the parser's chunk edges.
    near = b"\r\n--edge-bound"
    data = bytearray(os.urandom(3 * CHUNK))
    for at in (CHUNK - 5, 2 * CHUNK - len(near) + 1, 2 * CHUNK + 7):
        data[at : at + len(near)] = near
    body = (
        b"--edge-boundary\r\n"
        b'Content-Disposition: form-data; name="reference_id"\r\n\r\nref-9\r\n'
        b"--edge-boundary\r\n"
        b'Content-Disposition: form-data; name="video"; filename="v.mp4"\r\n'
        b"Content-Type: video/mp4\r\n\r\n" + bytes(data) + b"\r\n--edge-boundary--\r\n"
    )
    parts = read_parts(io.BytesIO(body), len(body), boundary)
    assert [(p.name, p.filename) for p in parts] == [("reference_id", None), ("video", "v.mp4")]
    assert parts[0].value == b"ref-9"
    assert (parts[1].size, parts[1].sha256) == (len(data), hashlib.sha256(data).hexdigest())
    with pytest.raises(BadBody):
        read_parts(io.BytesIO(body[:-4]), len(body) - 4, boundary)  # no closing delimiter
    with pytest.raises(ConnectionError):
        read_parts(io.BytesIO(body[:1000]), len(body), boundary)  # the client went away


def test_uploads_can_be_read_slowly(emulator: Emulator) -> None:
    emulator.update(upload_read_rate=1_000_000)
    files = {"video": ("v.mp4", b"v" * 400_000), "audio": ("a.wav", b"a" * 100_000)}
    started = time.monotonic()
    got = _post(emulator, files=files, data={"reference_id": "slow"})
    assert got.status_code == 200
    assert time.monotonic() - started >= 0.4  # half a second's worth at 1 MB/s, at least


def test_the_upload_fault_flags_reach_the_emulator(tmp_path: Path) -> None:
    """`dubrunner emulator --upload-read-rate B --p-upload-reset P`, run as the demo runs it:
    the knobs are set, and they act (a reset cuts an upload; a whole one is read slowly)."""
    port_file = tmp_path / "port"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dubrunner",
            "emulator",
            "--port",
            "0",
            "--port-file",
            str(port_file),
            "--token",
            TOKEN,
            "--seed",
            "3",
            "--upload-read-rate",
            "400000",
            "--p-upload-reset",
            "0.5",
        ],
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while not (port_file.exists() and port_file.read_text()):
            assert proc.poll() is None and time.monotonic() < deadline, "it did not start"
            time.sleep(0.05)
        root = f"http://127.0.0.1:{port_file.read_text()}/"
        config = httpx.post(root + "_emulator/config", json={}).json()
        assert (config["upload_read_rate"], config["p_upload_reset"]) == (400000.0, 0.5)
        files = {"video": ("v.mp4", b"v" * 200_000), "audio": ("a.wav", b"a" * 100)}
        outcomes = []
        for i in range(12):
            started = time.monotonic()
            try:
                got = httpx.post(
                    root + "api/" + ROUTE,
                    headers=AUTH,
                    files=files,
                    data={"reference_id": f"flag-{i}"},
                    timeout=10,
                )
                assert got.status_code == 200, got.text
                assert time.monotonic() - started >= 0.4  # 200 kB at 400 kB/s
                outcomes.append("read")
            except httpx.TransportError:
                outcomes.append("reset")
            if {"read", "reset"} <= set(outcomes):
                break
        assert {"read", "reset"} <= set(outcomes), outcomes
        stats = httpx.get(root + "_emulator/stats").json()
        assert stats["upload_resets"] == outcomes.count("reset")
    finally:
        proc.terminate()
        proc.wait(10)
