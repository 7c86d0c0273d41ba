"""`dubrunner doctor`: the configuration checked end to end, each finding in plain words."""

from __future__ import annotations

import email.utils
import json
import time
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any

import httpx

from dubrunner.api import Answer, ApiClient, ConfigError, Credentials, base_url_from_env
from dubrunner.constants import sqlite_path
from dubrunner.db import known_revisions, migration_head
from dubrunner.dbfile import SqliteFile
from dubrunner.errors import ResponseTooLarge, error_message
from dubrunner.store import Store

CLOCK_SKEW_LIMIT = 30.0  # seconds; leases compare wall clocks across hosts


@dataclass(frozen=True, slots=True)
class Finding:
    check: str
    ok: bool
    detail: str


def diagnose(db: str | None, allow_insecure_http: bool = False) -> list[Finding]:
    findings: list[Finding] = []
    creds = Credentials.from_env()
    which = [
        n
        for n, v in (
            ("CHAMELAION_API_KEY", creds.api_key),
            ("CHAMELAION_BEARER_TOKEN", creds.bearer_token),
        )
        if v
    ]
    problem = creds.problem()
    findings.append(
        Finding(
            "credentials",
            bool(creds) and problem is None,
            problem
            or (
                f"{' and '.join(which)} set"
                if which
                else "neither CHAMELAION_API_KEY nor CHAMELAION_BEARER_TOKEN is set"
            ),
        )
    )
    base = base_url_from_env()
    api: ApiClient | None = None
    if creds and problem is None:
        try:
            api = ApiClient(creds, base, read_timeout=15, allow_insecure_http=allow_insecure_http)
        except ConfigError as exc:
            findings.append(Finding("API address", False, str(exc)))
    if api is not None:
        with api:
            findings.extend(_api_findings(api))
    findings.append(_database_finding(db))
    return findings


def _api_findings(api: ApiClient) -> list[Finding]:
    out: list[Finding] = []
    try:
        health = api.health()
    except (httpx.HTTPError, ResponseTooLarge) as exc:
        return [Finding("API reachable", False, f"{api.base_url}: {_failure(exc)}")]
    out.append(
        Finding(
            "API reachable",
            200 <= health.status < 300,
            f"{api.base_url} health: HTTP {health.status}",
        )
    )
    try:
        me = api.me()
    except (httpx.HTTPError, ResponseTooLarge) as exc:
        out.append(Finding("credentials accepted", False, _failure(exc)))
    else:
        out.append(_credentials_finding(me))
    out.append(_clock_finding(health.headers.get("date")))
    return out


def _failure(exc: Exception) -> str:
    if isinstance(exc, ResponseTooLarge):
        return f"{exc}: is CHAMELAION_BASE_URL the API?"
    return f"{type(exc).__name__}: {exc}"


def _json(body: bytes) -> Any:
    """The parsed body, or None when it is not JSON. json raises RecursionError on deep nesting
    ('[' x 300000): that is not JSON either."""
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None


def _credentials_finding(me: Answer) -> Finding:
    data = _json(me.body)
    if me.status == 200 and isinstance(data, dict):
        name = str(data.get("name", "?"))[:80]
        return Finding("credentials accepted", True, f"the API knows them as {name!r}")
    if me.status == 200:
        why = "users/me answered HTTP 200 but not with the API's JSON"
        return Finding("credentials accepted", False, f"{why}: is CHAMELAION_BASE_URL the API?")
    try:
        why = error_message(me.status, me.body, me.headers.get("content-type", ""))
    except RecursionError:  # deeply nested JSON: not the API's
        why = f"HTTP {me.status} with a non-JSON body"
    if not why.startswith("HTTP "):
        why = f"HTTP {me.status}: {why}"
    return Finding("credentials accepted", False, why)


def _clock_finding(server_date: str | None) -> Finding:
    if not server_date:
        return Finding("clock", True, "the API sent no Date header to compare with")
    try:
        when = email.utils.parsedate_to_datetime(server_date)
        if when.tzinfo is None:  # "-0000": UTC, with no promise about the zone of its source
            when = when.replace(tzinfo=UTC)
        skew = abs(when.timestamp() - time.time())
    except (TypeError, ValueError, OverflowError, OSError):
        return Finding("clock", False, f"the API's Date header is not a date: {server_date[:60]!r}")
    ok = skew < CLOCK_SKEW_LIMIT
    return Finding(
        "clock",
        ok,
        f"{skew:.0f} s from the API's clock"
        + ("" if ok else " — leases need clocks within seconds"),
    )


def _database_finding(db: str | None) -> Finding:
    path = sqlite_path(db)
    file = SqliteFile.peek(Path(path)) if path is not None else None
    if file is not None and (not file.exists or file.tables == ()):  # not created, not changed
        state = "empty" if file.exists else "none yet"
        return Finding("database", True, f"sqlite, {state}: its tables are made on first use")
    try:
        store = Store(db, migrate=False, create=False)
        try:
            current = store.current_revision()
        finally:
            store.close()
    except Exception as exc:  # whatever stops us opening it is the finding
        return Finding("database", False, str(exc).partition("\n")[0] or type(exc).__name__)
    head = migration_head()
    kind = store.url.split("://")[0]
    if current == head:
        return Finding("database", True, f"{kind}, schema {head}")
    if current is None:
        return Finding("database", True, f"{kind}, empty: its tables are made on first use")
    if current in known_revisions():
        return Finding("database", True, f"{kind}, schema {current}: upgraded to {head} on use")
    return Finding(
        "database",
        False,
        f"this database was written by a newer dubrunner (revision {current}); upgrade dubrunner",
    )
