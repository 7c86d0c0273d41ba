"""Credentials never reach the database, the logs (-v included), errors or output."""

from __future__ import annotations

from pathlib import Path

import pytest

from dubrunner.api import Credentials
from dubrunner.emulator import Emulator
from dubrunner.redact import redact_url, register_secret, scrub
from tests.conftest import TOKEN, run_cli, write_manifest


@pytest.mark.slow
def test_no_credential_anywhere_after_full_and_failing_runs(
    emulator: Emulator, env: dict[str, str], db_path: Path, tmp_path: Path
) -> None:
    wrong = "wrong-credential-ZZ9-plural-Z-alpha"
    emulator.update(p500=0.2, drop_after_accept=0.1)
    manifest = write_manifest(tmp_path / "m.yaml", 60)
    outputs = []
    failing = run_cli(["submit", str(manifest), "-vv"], {**env, "CHAMELAION_API_KEY": wrong})
    assert failing.code == 1
    outputs.append(failing)
    bearer = {k: v for k, v in env.items() if k != "CHAMELAION_API_KEY"}
    bearer["CHAMELAION_BEARER_TOKEN"] = TOKEN
    outputs.append(run_cli(["resume", "-v"], bearer))
    assert outputs[-1].code == 0, outputs[-1].err
    for fmt in ("table", "json", "csv"):
        outputs.append(run_cli(["status", "--format", fmt, "--limit", "0"], env))
    outputs.append(run_cli(["status", "b-ep00001"], env))
    text = "".join(r.out + r.err for r in outputs)
    assert "POST" in text  # the -v lines were there to be searched
    # The database and its WAL and shared-memory files, if any; at least the database itself,
    # or the loop below would check nothing.
    files = [f for f in tmp_path.iterdir() if f.name.startswith("jobs.db")]
    assert db_path in files, files
    for secret in (TOKEN, wrong):
        assert secret not in text
        for f in files:
            assert secret.encode() not in f.read_bytes(), f


def test_credentials_repr_and_scrub() -> None:
    creds = Credentials("key-material-123", None)
    assert "key-material-123" not in repr(creds)
    assert creds.headers() == {
        "x-api-key": "key-material-123",
        "Authorization": "Bearer key-material-123",
    }
    register_secret("key-material-123")
    assert scrub("header was key-material-123!") == "header was ***!"


def test_url_redaction() -> None:
    assert redact_url("https://u:p@cdn.test/a.mp4") == "https://***@cdn.test/a.mp4"
    signed = "https://b.s3.test/a.wav?X-Amz-Credential=AK%2F1&X-Amz-Signature=f00&x-id=GetObject"
    shown = redact_url(signed)
    assert "f00" not in shown and "AK" not in shown and "x-id=GetObject" in shown
    assert redact_url("https://cdn.test/a.mp4?sig=abc&token=def&w=1") == (
        "https://cdn.test/a.mp4?sig=***&token=***&w=1"
    )
    assert redact_url("https://cdn.test/plain.mp4") == "https://cdn.test/plain.mp4"
