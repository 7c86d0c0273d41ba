"""`dubrunner doctor`: the configuration checked end to end, each finding in plain words."""

from __future__ import annotations

import email.utils
import json
import time
from dataclasses import dataclass

import httpx

from dubrunner.api import ApiClient, ConfigError, Credentials, base_url_from_env
from dubrunner.errors import error_message
from dubrunner.store import Store, known_revisions, migration_head

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
    findings.append(
        Finding(
            "credentials",
            bool(creds),
            f"{' and '.join(which)} set"
            if which
            else "neither CHAMELAION_API_KEY nor CHAMELAION_BEARER_TOKEN is set",
        )
    )
    base = base_url_from_env()
    api: ApiClient | None = None
    if creds:
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
    except httpx.HTTPError as exc:
        return [Finding("API reachable", False, f"{api.base_url}: {type(exc).__name__}: {exc}")]
    out.append(
        Finding(
            "API reachable",
            200 <= health.status < 300,
            f"{api.base_url} health: HTTP {health.status}",
        )
    )
    try:
        me = api.me()
    except httpx.HTTPError as exc:
        out.append(Finding("credentials accepted", False, f"{type(exc).__name__}: {exc}"))
    else:
        if me.status == 200:
            try:
                name = json.loads(me.body).get("name", "?")
            except (ValueError, AttributeError):
                name = "?"
            out.append(Finding("credentials accepted", True, f"the API knows them as {name!r}"))
        else:
            why = error_message(me.status, me.body, me.headers.get("content-type", ""))
            out.append(Finding("credentials accepted", False, f"HTTP {me.status}: {why}"))
    server_date = health.headers.get("date")
    if server_date:
        when = email.utils.parsedate_to_datetime(server_date)
        skew = abs(when.timestamp() - time.time())
        out.append(
            Finding(
                "clock",
                skew < CLOCK_SKEW_LIMIT,
                f"{skew:.0f} s from the API's clock"
                + ("" if skew < CLOCK_SKEW_LIMIT else " — leases need clocks within seconds"),
            )
        )
    else:
        out.append(Finding("clock", True, "the API sent no Date header to compare with"))
    return out


def _database_finding(db: str | None) -> Finding:
    try:
        store = Store(db, migrate=False)
        try:
            current = store.current_revision()
        finally:
            store.close()
    except Exception as exc:  # whatever stops us opening it is the finding
        return Finding("database", False, str(exc).splitlines()[0])
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
