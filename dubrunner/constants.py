"""What the command line needs before any heavy import (SQLAlchemy, httpx, rich, YAML): exit
codes, defaults, the database's URL from --db. Nothing here imports more than the standard
library, so that `dubrunner --help` and shell completion start at once."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote

EXIT_OK = 0
EXIT_INCOMPLETE = 1  # some jobs failed or halted
EXIT_USAGE = 2  # bad input or usage: nothing was written
EXIT_INTERRUPTED = 130

# The API's credentials: read from these variables only, and kept from any command dubrunner runs.
CREDENTIAL_VARIABLES = ("CHAMELAION_API_KEY", "CHAMELAION_BEARER_TOKEN")

DEFAULT_DB = "sqlite:///./dubrunner.db"
DEFAULT_MAX_BYTES = 64 * 1024 * 1024  # of a manifest
DEFAULT_MAX_JOBS = 1_000_000  # in a manifest
DEFAULT_MAX_UPLOAD_BYTES = 2 * 1024**3  # a local media file (--max-upload-bytes)
MAX_SHOWN = 50  # problems (or conflicts) listed one a line before the sentence


def database_url(value: str | None) -> str:
    """A SQLAlchemy URL from `--db`: a URL as it is, anything else is a SQLite file path."""
    if not value:
        return DEFAULT_DB
    if "://" in value:
        return value
    # A path's own % and ? are escaped: in a URL they would start an escape or the query.
    path = str(Path(value).expanduser().absolute()).replace("%", "%25").replace("?", "%3F")
    return "sqlite:///" + path


def sqlite_path(value: str | None) -> str | None:
    """The file of a SQLite `--db` (None: a server's database, or SQLite in memory)."""
    url = database_url(value)
    if not url.startswith("sqlite:///"):
        return None
    path = unquote(url.removeprefix("sqlite:///").partition("?")[0])  # as SQLAlchemy reads it
    return None if not path or path == ":memory:" else path


def database_exists(value: str | None) -> bool:
    """False for a SQLite file that is not there (a server's database is taken as there)."""
    path = sqlite_path(value)
    return path is None or Path(path).exists()
