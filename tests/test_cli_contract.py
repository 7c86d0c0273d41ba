"""What scripts rely on: machine output is whole and on stdout alone, option names and their
environment variables agree, an unknown batch is a usage error. Through click's CliRunner."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from dubrunner.cli import cli
from dubrunner.emulator import Emulator
from tests.conftest import Database, clean_env, load_jobs, media_manifest, write_manifest


@pytest.fixture
def loaded(db: Database, tmp_path: Path) -> dict[str, str]:
    load_jobs(db, write_manifest(tmp_path / "m.yaml", 200)).close()
    return clean_env(DUBRUNNER_DB=db.url)


def invoke(args: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, args, env=env)
    return result.exit_code, result.stdout, result.stderr


def test_machine_output_is_whole_and_alone_on_stdout(loaded: dict[str, str]) -> None:
    # Failed before: `status --format json` silently returned the table's 50 rows.
    code, out, err = invoke(["status", "--format", "json"], loaded)
    assert code == 0 and len(json.loads(out)) == 200 and err == ""
    code, out, err = invoke(["status", "--format", "jsonl"], loaded)
    assert code == 0 and len([json.loads(line) for line in out.splitlines()]) == 200
    code, out, err = invoke(["status", "--format", "csv"], loaded)
    assert code == 0 and len(list(csv.DictReader(io.StringIO(out)))) == 200 and err == ""
    code, out, _ = invoke(["status", "--format", "json", "--limit", "7"], loaded)
    assert len(json.loads(out)) == 7
    code, out, _ = invoke(["status", "--format", "json", "--state", "failed"], loaded)
    assert json.loads(out) == []


def test_the_table_says_what_it_hid(loaded: dict[str, str]) -> None:
    code, out, err = invoke(["status"], loaded)
    assert code == 0
    assert "50 of 200 shown — `--limit 0` for all" in err
    code, out, err = invoke(["status", "--limit", "0"], loaded)
    assert "200 of 200 shown" in out and "shown —" not in err


def test_environment_variables_are_named_after_the_options(loaded: dict[str, str]) -> None:
    # Failed before: the option's Python name was `fmt`, so DUBRUNNER_STATUS_FORMAT was ignored.
    code, out, _ = invoke(["status"], {**loaded, "DUBRUNNER_STATUS_FORMAT": "json"})
    assert code == 0 and len(json.loads(out)) == 200


def test_an_unknown_batch_is_a_usage_error(loaded: dict[str, str]) -> None:
    # Failed before: "no jobs yet" and exit 0.
    code, out, err = invoke(["status", "--batch", "nope"], loaded)
    assert code == 2 and "no batch 'nope' in the database" in err and out == ""


def test_db_and_quiet_go_before_the_command_too(loaded: dict[str, str]) -> None:
    # Failed before: "No such option: --db" before the subcommand.
    env = {k: v for k, v in loaded.items() if k != "DUBRUNNER_DB"}
    code, out, err = invoke(["--db", loaded["DUBRUNNER_DB"], "status", "--format", "json"], env)
    assert code == 0, err
    assert len(json.loads(out)) == 200
    code, out, err = invoke(["-q", "--db", loaded["DUBRUNNER_DB"], "status"], env)
    assert code == 0 and err == ""  # -q: only errors, not even the hint


@pytest.mark.parametrize(
    ("command", "offers"),
    [
        (["validate"], {"-q"}),
        (["status"], {"--db", "-q"}),
        (["retry"], {"--db", "-q"}),
        (["cancel"], {"--db", "-q"}),
        (["load"], {"--db", "-q"}),
        (["db", "upgrade"], {"--db", "-q"}),
        (["submit"], {"--db", "-v", "-q"}),
        (["resume"], {"--db", "-v", "-q"}),
    ],
)
def test_options_are_offered_only_where_they_act(command: list[str], offers: set[str]) -> None:
    # Failed before: -v ("one line per HTTP attempt") was offered by commands that make none,
    # and validate offered --db.
    text = CliRunner().invoke(cli, [*command, "--help"], env=clean_env()).output
    for option in ("--db", "-v", "-q"):
        assert (f" {option}," in text or f" {option} " in text) == (option in offers), option


def _only_data(kind: str, out: str) -> None:
    """stdout holds nothing but the command's data, in its format."""
    if kind == "nothing":
        assert out == "", out
    elif kind == "csv":
        rows = list(csv.DictReader(io.StringIO(out)))
        assert rows and all(None not in r for r in rows), out  # no stray line of prose
    elif kind == "json":
        json.loads(out)
    elif kind == "jsonl":
        assert [json.loads(line) for line in out.splitlines()]
    else:  # a table: rich's box drawing from the first line to the last
        lines = out.splitlines()
        assert lines and all(line[:1] in "┏┃┡│└" or line[:1].isalpha() for line in lines), out
        assert not any(line.startswith(("error", "note", "batch ")) for line in lines), out


def test_local_commands_write_only_data_on_stdout(db: Database, tmp_path: Path) -> None:
    # Failed before: validate, load, retry, cancel and db upgrade printed their summaries on
    # stdout; export to stdout said "... exported to <stdout>".
    manifest = str(write_manifest(tmp_path / "m.yaml", 5))
    env = clean_env(DUBRUNNER_DB=db.url)
    for args, kind, says in [
        (["validate", manifest], "nothing", "ok — batch b, 5 jobs"),
        (["load", manifest, "--dry-run"], "nothing", "5 job(s) would be loaded"),
        (["submit", manifest, "--dry-run"], "nothing", "a run would send 5 job(s)"),
        (["load", manifest], "nothing", "5 job(s) to send"),
        (["db", "upgrade"], "nothing", "database at revision"),
        (["retry"], "nothing", "0 job(s) put back"),
        (["cancel", "--ref", "b-ep00004"], "nothing", "1 pending job(s) cancelled"),
        (["status"], "table", ""),
        (["status", "--format", "json", "--summary"], "json", ""),
        (["export"], "csv", "5 job(s) exported"),
        (["export", "--format", "json"], "json", "5 job(s) exported"),
        (["export", "--format", "jsonl"], "jsonl", "5 job(s) exported"),
    ]:
        code, out, err = invoke(args, env)
        assert code == 0, (args, err)
        _only_data(kind, out)
        assert says in err, (args, err)
        assert "<stdout>" not in out + err


@pytest.mark.slow
def test_commands_that_talk_to_the_api_write_only_data_on_stdout(
    emulator: Emulator, env: dict[str, str], tmp_path: Path
) -> None:
    manifest = str(write_manifest(tmp_path / "m.yaml", 4))
    media = str(media_manifest(tmp_path / "media.yaml", emulator))
    env = {**env, "DUBRUNNER_POLL_INTERVAL": "0.1"}
    for args, kind in [
        (["submit", manifest], "nothing"),
        (["resume"], "nothing"),
        (["work"], "nothing"),
        (["poll", "--wait"], "nothing"),
        (["fetch", "--out", str(tmp_path / "out")], "nothing"),
        (["check", media], "table"),  # a table of the bad media
        (["doctor"], "table"),
    ]:
        code, out, err = invoke(args, env)
        assert code in (0, 1), (args, err)
        _only_data(kind, out)


def test_status_summary_counts_per_batch_and_state(loaded: dict[str, str]) -> None:
    code, out, _ = invoke(["status", "--format", "json", "--summary"], loaded)
    assert code == 0 and json.loads(out) == [{"batch": "b", "state": "pending", "jobs": 200}]
    code, out, _ = invoke(["status", "--format", "csv", "--summary"], loaded)
    assert out.splitlines() == ["batch,state,jobs", "b,pending,200"]
    code, out, _ = invoke(["status", "--summary", "--state", "failed", "--format", "json"], loaded)
    assert json.loads(out) == []


def test_export_takes_the_format_names_of_status_and_its_variable(
    loaded: dict[str, str],
) -> None:
    # Failed before: export refused json, and read DUBRUNNER_EXPORT_FMT.
    code, out, _err = invoke(["export"], {**loaded, "DUBRUNNER_EXPORT_FORMAT": "json"})
    assert code == 0 and len(json.loads(out)) == 200
    code, out, _ = invoke(["export", "--format", "jsonl"], loaded)
    assert code == 0 and len(out.splitlines()) == 200


READ_ONLY = [
    ["status"],
    ["status", "--format", "json"],
    ["export"],
    ["poll"],
    ["fetch", "--out", "dubs"],
    ["retry"],
    ["cancel", "--all-pending"],
    ["resume"],
    ["work"],
]


@pytest.mark.parametrize("args", READ_ONLY, ids=" ".join)
def test_commands_on_loaded_jobs_never_create_a_database(
    args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Failed before: `status` in an empty folder created ./dubrunner.db and said "no jobs yet".
    monkeypatch.chdir(tmp_path)
    env = clean_env(CHAMELAION_API_KEY="k", CHAMELAION_BASE_URL="http://127.0.0.1:9/api/")
    code, out, err = invoke(args, env)
    assert (code, out) == (2, "")
    assert err == "error: no database at ./dubrunner.db — load a manifest first\n"
    code, out, err = invoke([*args, "--db", "elsewhere.db"], env)
    assert err == "error: no database at elsewhere.db — load a manifest first\n"
    assert list(tmp_path.iterdir()) == []


def test_check_of_neither_a_file_nor_a_batch_creates_no_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = invoke(["check", "nope.yaml"], clean_env())
    assert code == 2 and "'nope.yaml' is neither a manifest file nor a batch" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "args",
    [
        ["status"],
        ["export"],
        ["poll"],
        ["fetch", "--out", "dubs"],
        ["retry"],
        ["cancel"],
        ["resume"],
        ["work"],
    ],
    ids=" ".join,
)
def test_an_unknown_batch_is_one_sentence_and_exit_2_everywhere(
    args: list[str], loaded: dict[str, str]
) -> None:
    # Failed before for retry and cancel: "0 job(s) put back", exit 0.
    env = {**loaded, "CHAMELAION_API_KEY": "k", "CHAMELAION_BASE_URL": "http://127.0.0.1:9/api/"}
    code, out, err = invoke([*args, "--batch", "nope"], env)
    assert (code, out, err) == (2, "", "error: no batch 'nope' in the database\n")
