"""How a storage host's answer to a download is judged: whether a 206 continues the part kept,
whether a body is a page rather than the video, and the two ways a try ends short of failing
(try again; start the file over)."""

from __future__ import annotations

import re

import httpx

from dubrunner.outfiles import PartInfo

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)", re.IGNORECASE)


class Retryable(Exception):
    """A try that failed in a way another try may not (a cut, a 5xx, a timeout)."""

    def __init__(self, message: str, *, storage: bool = True) -> None:
        super().__init__(message)
        self.storage = storage  # the storage host's fault, not the API's (a fresh URL's)


class Restart(Exception):
    """The bytes kept do not belong with what the server sends: start the file over."""


def continued_total(resp: httpx.Response, have: int, info: PartInfo | None) -> int:
    """The file's length from a 206, which must run from byte `have` to the end of the file this
    part was started from; anything else would splice two different byte ranges or files."""
    found = _CONTENT_RANGE.fullmatch(resp.headers.get("content-range", "").strip())
    problem = None
    total = 0
    if found is None:
        problem = "an unreadable Content-Range"
    else:
        first, last, total = (int(g) for g in found.groups())
        length = header_length(resp.headers.get("content-length"))
        if first != have or last != total - 1:
            problem = f"bytes {first}-{last}/{total} for a request from byte {have}"
        elif info is not None and info.total is not None and total != info.total:
            problem = f"a file of {total} bytes, not the {info.total} it started with"
        elif length is not None and length != total - have:
            problem = f"{length} bytes for bytes {first}-{last}"
        elif info is not None and _changed(info, resp):
            problem = "another version of the file"
    if problem is None:
        return total
    if have:
        raise Restart(f"the server resumed with {problem}")
    raise Retryable(f"a partial answer to a request for the whole file: {problem}")


def _changed(info: PartInfo, resp: httpx.Response) -> bool:
    """Whether the answer names a different version than the one the part was started from."""
    for kept, header in ((info.etag, "etag"), (info.last_modified, "last-modified")):
        sent = resp.headers.get(header)
        if kept is not None and sent is not None and sent != kept:
            return True
    return False


_PAGE_TYPES = ("text/", "application/json", "application/xml", "application/xhtml+xml")


def bare(content_type: str | None) -> str:
    return (content_type or "").split(";")[0].strip().lower()


def is_a_page(content_type: str | None) -> bool:
    """A content type no video is served with: a web page, text, JSON or XML."""
    return bare(content_type).startswith(_PAGE_TYPES)


def starts_like_text(head: bytes) -> bool:
    """The first bytes of an HTML page, an XML error document or JSON, whatever the headers
    said: no video container starts so."""
    start = head[:64].lstrip().lower()
    return start.startswith((b"<!doctype", b"<html", b"<?xml", b"<error", b"{", b"["))


def header_length(value: str | None) -> int | None:
    try:
        return int(value) if value is not None and value.strip().isdigit() else None
    except ValueError:
        return None
