"""The emulator speaks the API as documented: lower-case statuses, list pages of at most 100,
newest first, signed output URLs that expire, requests it can forget; and it counts requests per
endpoint for the tests that measure dubrunner's."""

from __future__ import annotations

import time

import httpx
import pytest

from dubrunner.emulator import Emulator, output_content
from tests.conftest import TOKEN

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def generate(client: httpx.Client, ref: str, video: str = "https://m.test/v.mp4") -> str:
    body = {
        "inputs": [{"type": "video", "url": video}, {"type": "audio", "url": "https://m.test/a"}],
        "reference_id": ref,
    }
    answer = client.post("v1/lipsync/generate", json=body, headers=AUTH)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["request_id"])


@pytest.fixture
def client(emulator: Emulator) -> httpx.Client:
    return httpx.Client(base_url=emulator.base_url, timeout=10)


def test_statuses_are_lower_case_unless_asked_otherwise(
    emulator: Emulator, client: httpx.Client
) -> None:
    emulator.update(complete_after=0.0)
    done = generate(client, "ok")
    failed = generate(client, "bad", "https://m.test/FAIL.mp4")
    seen = {i: client.get(f"v1/lipsync/requests/{i}", headers=AUTH).json() for i in (done, failed)}
    assert (seen[done]["status"], seen[failed]["status"]) == ("completed", "failed")
    assert seen[failed]["error_message"] and seen[done]["output_url"]
    emulator.update(upper_case=True)
    assert client.get(f"v1/lipsync/requests/{done}", headers=AUTH).json()["status"] == "COMPLETED"
    emulator.update(upper_case=False, status_words={"completed": "queued_for_render"})
    got = client.get(f"v1/lipsync/requests/{done}", headers=AUTH).json()
    assert got["status"] == "queued_for_render"


def test_list_pages_are_newest_first_and_at_most_100(
    emulator: Emulator, client: httpx.Client
) -> None:
    ids = [generate(client, f"r{i}") for i in range(105)]
    page = client.get("v1/lipsync/requests", params={"limit": 500}, headers=AUTH).json()
    assert page["pagination"] == {"limit": 100, "offset": 0, "total": 105}
    assert [item["id"] for item in page["data"]] == ids[::-1][:100]
    rest = client.get("v1/lipsync/requests", params={"limit": 100, "offset": 100}, headers=AUTH)
    assert [item["id"] for item in rest.json()["data"]] == ids[4::-1]
    counted = emulator.stats.by_endpoint
    assert (counted["generate"], counted["list"]) == (105, 2)
    assert emulator.requests_endpoint_calls() == 2


def test_output_urls_expire_and_a_get_mints_a_fresh_one(
    emulator: Emulator, client: httpx.Client
) -> None:
    emulator.update(complete_after=0.0, output_ttl=0.3, output_bytes=1000)
    request_id = generate(client, "ttl")
    url = client.get(f"v1/lipsync/requests/{request_id}", headers=AUTH).json()["output_url"]
    assert "signature=" in url and "expires=" in url
    assert httpx.get(url).content == output_content(request_id, 1000)
    unsigned = url.split("?")[0]
    assert httpx.get(unsigned).status_code == 403
    time.sleep(0.4)
    assert httpx.get(url).status_code == 403
    fresh = client.get(f"v1/lipsync/requests/{request_id}", headers=AUTH).json()["output_url"]
    assert fresh != url and httpx.get(fresh).status_code == 200
    assert emulator.stats.expired_downloads == 2
    assert emulator.stats.by_endpoint["output"] == 4


def test_forgotten_requests_are_gone_but_stay_paid_for(
    emulator: Emulator, client: httpx.Client
) -> None:
    kept, gone = generate(client, "kept"), generate(client, "gone")
    assert emulator.forget([gone]) == 1
    assert client.get(f"v1/lipsync/requests/{gone}", headers=AUTH).status_code == 404
    assert client.get("v1/lipsync/requests/gone", headers=AUTH).json() == {"error": "not found"}
    listed = client.get("v1/lipsync/requests", headers=AUTH).json()["data"]
    assert [item["id"] for item in listed] == [kept]
    assert emulator.accepted() == {"kept": [kept], "gone": [gone]}
    assert emulator.requests_endpoint_calls() == 3


def test_a_download_can_be_cut_after_so_many_bytes(
    emulator: Emulator, client: httpx.Client
) -> None:
    emulator.update(complete_after=0.0, output_bytes=300_000, cut_output_after=100_000)
    request_id = generate(client, "cut")
    url = client.get(f"v1/lipsync/requests/{request_id}", headers=AUTH).json()["output_url"]
    got = bytearray()
    with pytest.raises(httpx.RemoteProtocolError), httpx.stream("GET", url) as resp:
        for chunk in resp.iter_bytes():
            got += chunk
    assert len(got) == 100_000
    rest = httpx.get(url, headers={"Range": "bytes=100000-"})
    assert rest.status_code == 206
    assert bytes(got) + rest.content == output_content(request_id, 300_000)
    assert emulator.stats.ranges == ["bytes=100000-"]
