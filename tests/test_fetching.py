"""Downloads as the API's outputs really are: signed URLs that expire (a fresh one is asked of
the API), connections cut mid-file (resumed from exactly the byte received), files on disk
trusted only when their size and SHA-256 match the row."""

from __future__ import annotations

import hashlib
import os
import re
import time
from pathlib import Path

import pytest

from dubrunner.api import ApiClient, Credentials
from dubrunner.constants import EXIT_INCOMPLETE, EXIT_OK
from dubrunner.emulator import Emulator, EmulatorConfig, output_content
from dubrunner.poller import output_url_of
from dubrunner.sessions import Polling, fetch, submit
from dubrunner.store import Store
from tests.conftest import (
    OPTIONS,
    TOKEN,
    Database,
    FakeUi,
    db_rows,
    manifest_of,
    run_cli,
    write_manifest,
)


def outputs(db: Database) -> dict[str, bytes]:
    rows = db_rows(db, "SELECT request_id, local_path, size_bytes FROM jobs ORDER BY id")
    return {local: output_content(rid, size) for rid, local, size in rows}


def test_an_expired_output_url_is_asked_for_afresh(
    emulator: Emulator, store: Store, api: ApiClient, db: Database, tmp_path: Path
) -> None:
    emulator.update(complete_after=0.0, output_ttl=0.2, output_bytes=5000)
    assert submit(store, api, manifest_of(tmp_path, 3), OPTIONS, FakeUi(), wait=True).code == 0
    kept = db_rows(db, "SELECT output_url FROM jobs ORDER BY id")
    time.sleep(0.4)
    out = tmp_path / "out"
    ending = fetch(store, None, out, 2, FakeUi(), api)
    assert ending.code == EXIT_OK, ending
    assert "3 downloaded" in ending.sentence and "3 fresh URL(s) from the API" in ending.sentence
    assert emulator.stats.expired_downloads == 3
    for local, content in outputs(db).items():
        assert Path(local).read_bytes() == content
    fresh = db_rows(db, "SELECT output_url FROM jobs ORDER BY id")
    assert all(new != old for new, old in zip(fresh, kept, strict=True))  # the URL used is kept
    assert db_rows(db, "SELECT DISTINCT state FROM jobs") == [("completed",)]


def test_without_the_api_an_expired_url_fails_the_download_not_the_job(
    emulator: Emulator, store: Store, api: ApiClient, db: Database, tmp_path: Path
) -> None:
    emulator.update(complete_after=0.0, output_ttl=3600, output_bytes=5000)
    assert submit(store, api, manifest_of(tmp_path, 2), OPTIONS, FakeUi(), wait=True).code == 0
    # The second job's URL expired long ago; the first one's is good (the host serves it: the
    # refusal is that job's own, not the storage failing as a whole).
    url = db_rows(db, "SELECT output_url FROM jobs WHERE reference_id = 'b-ep00001'")[0][0]
    expired = re.sub(r"expires=\d+", "expires=1000", url)
    db.rows("UPDATE jobs SET output_url = ? WHERE reference_id = 'b-ep00001'", expired)
    assert fetch(store, None, tmp_path / "out", 1, FakeUi()).code == EXIT_INCOMPLETE
    assert db_rows(db, "SELECT state, download_state, download_error FROM jobs") == [
        ("completed", "downloaded", None),
        ("completed", "failed", "HTTP 403 for the output URL"),
    ]
    # And the API that no longer has the request says so (it knows others asked of it: the
    # second job's own failure, not a wrong address).
    emulator.forget([db_rows(db, "SELECT request_id FROM jobs ORDER BY id")[1][0]])
    db.rows("UPDATE jobs SET polled_at = '2020-01-01 00:00:00', download_state = NULL")
    db.rows("UPDATE jobs SET sha256 = NULL, local_path = NULL WHERE reference_id = 'b-ep00000'")
    (tmp_path / "out" / "b" / "b-ep00000.mp4").unlink()
    assert fetch(store, None, tmp_path / "out", 1, FakeUi(), api).code == EXIT_INCOMPLETE
    assert db_rows(db, "SELECT state, download_state, download_error FROM jobs") == [
        ("completed", "downloaded", None),
        (
            "completed",
            "failed",
            "HTTP 404 for the output URL, and the API no longer knows this request",
        ),
    ]


def test_an_output_url_had_long_ago_is_renewed_before_downloading(
    emulator: Emulator, store: Store, api: ApiClient, db: Database, tmp_path: Path
) -> None:
    emulator.update(complete_after=0.0, output_ttl=3600, output_bytes=5000)
    assert submit(store, api, manifest_of(tmp_path, 2), OPTIONS, FakeUi(), wait=True).code == 0
    db.rows("UPDATE jobs SET polled_at = '2020-01-01 00:00:00'")
    ending = fetch(store, None, tmp_path / "out", 2, FakeUi(), api)
    assert ending.code == EXIT_OK and "2 fresh URL(s)" in ending.sentence
    assert emulator.stats.expired_downloads == 0


def test_a_cut_download_resumes_from_the_exact_byte(
    emulator: Emulator, store: Store, api: ApiClient, db: Database, tmp_path: Path
) -> None:
    emulator.update(complete_after=0.0, output_bytes=2_000_000)
    assert submit(store, api, manifest_of(tmp_path, 1), OPTIONS, FakeUi(), wait=True).code == 0
    emulator.update(cut_output_after=100_000)
    ending = fetch(store, None, tmp_path / "out", 1, FakeUi(), api)
    assert ending.code == EXIT_OK, ending
    assert "1 downloaded (2.0 MB, 1 resumed)" in ending.sentence
    assert emulator.stats.ranges == ["bytes=100000-"]
    for local, content in outputs(db).items():
        assert Path(local).read_bytes() == content


def test_a_file_on_disk_is_trusted_only_when_its_sha256_matches(
    emulator: Emulator, store: Store, api: ApiClient, db: Database, tmp_path: Path
) -> None:
    emulator.update(complete_after=0.0, output_bytes=5000)
    assert submit(store, api, manifest_of(tmp_path, 2), OPTIONS, FakeUi(), wait=True).code == 0
    out = tmp_path / "out"
    assert fetch(store, None, out, 2, FakeUi(), api).code == EXIT_OK
    first = out / "b" / "b-ep00000.mp4"
    good = first.read_bytes()
    first.write_bytes(b"\0" * len(good))  # same size, other bytes
    ending = fetch(store, None, out, 2, FakeUi(), api)
    assert ending.code == EXIT_OK
    assert "1 downloaded" in ending.sentence and "1 already there" in ending.sentence
    assert first.read_bytes() == good
    assert db_rows(db, "SELECT sha256 FROM jobs WHERE reference_id = 'b-ep00000'") == [
        (hashlib.sha256(good).hexdigest(),)
    ]


def test_verify_hashes_even_files_that_look_untouched(
    emulator: Emulator, store: Store, api: ApiClient, db: Database, tmp_path: Path
) -> None:
    emulator.update(complete_after=0.0, output_bytes=5000)
    assert submit(store, api, manifest_of(tmp_path, 2), OPTIONS, FakeUi(), wait=True).code == 0
    out = tmp_path / "out"
    assert fetch(store, None, out, 2, FakeUi(), api).code == EXIT_OK
    first = out / "b" / "b-ep00000.mp4"
    good, stat = first.read_bytes(), first.stat()
    first.write_bytes(b"\0" * len(good))
    os.utime(first, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # as if never touched
    trusting = fetch(store, None, out, 2, FakeUi(), api)
    assert "0 downloaded" in trusting.sentence and "2 already there" in trusting.sentence
    verified = fetch(store, None, out, 2, FakeUi(), api, verify=True)
    assert verified.code == EXIT_OK
    assert "1 downloaded" in verified.sentence and "1 already there" in verified.sentence
    assert first.read_bytes() == good


@pytest.mark.slow
def test_fetch_after_the_output_urls_expired_gets_every_file(
    emulator: Emulator, env: dict[str, str], db: Database, tmp_path: Path
) -> None:
    """Output URLs valid 2 s; fetch 3 s after the poll: every file, byte for byte, exit 0."""
    emulator.update(complete_after=0.05, output_ttl=2.0, output_bytes=50_000)
    manifest = write_manifest(tmp_path / "m.yaml", 10)
    assert run_cli(["submit", str(manifest), "--wait", "--interval", "0.1"], env).code == 0
    time.sleep(3)
    r = run_cli(["fetch", "--out", str(tmp_path / "out")], env)
    assert r.code == 0, r.err
    assert "10 downloaded" in r.err and "10 fresh URL(s) from the API" in r.err
    for local, content in outputs(db).items():
        assert Path(local).read_bytes() == content


def test_a_relative_output_url_is_taken_from_the_apis_host(
    emulator: Emulator, store: Store, api: ApiClient, db: Database, tmp_path: Path
) -> None:
    # Failed before: "/outputs/<id>.mp4" was taken as no output_url; the jobs waited for one,
    # then failed after --output-grace.
    emulator.update(complete_after=0.0, output_bytes=3000, relative_output=True, output_ttl=0.3)
    polling = Polling(interval=0.05, timeout=30, output_grace=0.5)
    m = manifest_of(tmp_path, 2)
    assert submit(store, api, m, OPTIONS, FakeUi(), wait=True, polling=polling).code == EXIT_OK
    root = emulator.base_url.removesuffix("api/")
    kept = [row[0] for row in db_rows(db, "SELECT output_url FROM jobs ORDER BY id")]
    assert all(url.startswith(f"{root}outputs/") for url in kept), kept
    time.sleep(0.4)  # expired: the fresh URLs the fetch asks for are relative too
    ending = fetch(store, None, tmp_path / "out", 2, FakeUi(), api)
    assert ending.code == EXIT_OK, ending
    assert "2 fresh URL(s) from the API" in ending.sentence
    for local, content in outputs(db).items():
        assert Path(local).read_bytes() == content


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("/files/abc.mp4", "https://api.test/files/abc.mp4"),
        ("files/abc.mp4?sig=1", "https://api.test/api/files/abc.mp4?sig=1"),
        ("https://cdn.test/x.mp4", "https://cdn.test/x.mp4"),
        ("//cdn.test/x.mp4", "https://cdn.test/x.mp4"),
        ("file:///etc/passwd", None),
        ("javascript:alert(1)", None),
        ("", None),
        (None, None),
    ],
)
def test_what_an_output_url_resolves_to(given: str | None, kept: str | None) -> None:
    # The base URL's user:password never reaches a URL kept in the database.
    assert output_url_of(given, "https://user:secret@api.test/api/") == kept


def test_an_api_that_knows_none_of_the_requests_is_one_sentence_and_the_stored_urls_are_tried(
    emulator: Emulator, store: Store, api: ApiClient, db: Database, tmp_path: Path
) -> None:
    # Failed before: against an API that no longer knew the requests (restarted, or the wrong
    # CHAMELAION_BASE_URL) every download was marked failed, the stored URL never tried.
    emulator.update(complete_after=0.0, output_ttl=3600, output_bytes=5000)
    assert submit(store, api, manifest_of(tmp_path, 3), OPTIONS, FakeUi(), wait=True).code == 0
    db.rows("UPDATE jobs SET polled_at = '2020-01-01 00:00:00'")  # renewed before downloading
    urls = [row[0] for row in db_rows(db, "SELECT output_url FROM jobs ORDER BY id")]
    db.rows(
        "UPDATE jobs SET output_url = ? WHERE id = 3", re.sub(r"expires=\d+", "expires=1", urls[2])
    )
    other = Emulator(EmulatorConfig(tokens=(TOKEN,), seed=1)).start()  # knows none of ours
    try:
        with ApiClient(Credentials(TOKEN, None), other.base_url) as wrong:
            ending = fetch(store, None, tmp_path / "out", 1, FakeUi(), wrong)
    finally:
        other.stop()
    assert ending.code == EXIT_INCOMPLETE and ending.is_error
    assert ending.sentence.startswith(
        f"the API at {other.base_url} knows none of the 3 job(s) asked for a fresh output URL "
        "('not found' for each): check CHAMELAION_BASE_URL; 2 downloaded"
    ), ending.sentence
    assert "1 left to fetch — run `dubrunner fetch` again against the API" in ending.sentence
    assert db_rows(db, "SELECT download_state, download_error FROM jobs ORDER BY id") == [
        ("downloaded", None),
        ("downloaded", None),
        (None, None),  # its stored URL expired: not failed, fetched against the right API
    ]
    again = fetch(store, None, tmp_path / "out", 1, FakeUi(), api)
    assert again.code == EXIT_OK and again.sentence.startswith("1 downloaded"), again
    for local, content in outputs(db).items():
        assert Path(local).read_bytes() == content
