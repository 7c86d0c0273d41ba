"""Keeping secrets out of everything dubrunner stores or prints.

Two kinds of secret: the API credentials (known values, scrubbed from any text), and secrets that
live inside media URLs (user:password@ and signed query strings), shown redacted but sent in full.
"""

from __future__ import annotations

import threading
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"

# Query (or fragment) parameters whose values are masked: any name containing one of these...
_SECRET_PARTS = ("token", "secret", "key", "signature", "password", "credential")
# ...and these names (signatures and the fields of signed URLs: S3, GCS, Azure SAS, CloudFront).
_SECRET_NAMES = frozenset(
    {"sig", "auth", "authorization", "pwd", "passwd", "policy", "expires"}
    | {"se", "st", "sv", "skoid", "sktid", "skt", "ske", "sks", "skv"}
)


def _secret_name(name: str) -> bool:
    name = name.strip().lower()  # 'sig\n' is still sig
    return name in _SECRET_NAMES or any(part in name for part in _SECRET_PARTS)


_lock = threading.Lock()
_secrets: tuple[str, ...] = ()


def register_secret(value: str | None) -> None:
    """Remember a credential so that `scrub` masks it wherever it appears."""
    global _secrets
    if value and len(value) >= 4:
        # As it may be quoted in an error: escaped by repr() (a stray "\r" as "\\r"), or as bytes.
        forms = {value, repr(value)[1:-1], repr(value.encode("utf-8", "replace"))[2:-1]}
        with _lock:
            # Longest first, so a secret that contains another is masked whole.
            _secrets = tuple(sorted({*_secrets, *forms}, key=len, reverse=True))


def scrub(text: str) -> str:
    """Mask every registered credential in `text`."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def redact_url(url: str) -> str:
    """The URL as it may be shown: no userinfo, no signature-like query values."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return scrub(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = MASK + "@" + netloc.rsplit("@", 1)[1]
    query = _mask_parameters(parts.query)
    # A fragment of k=v pairs is read like a query: OAuth puts its #access_token= there.
    fragment = _mask_parameters(parts.fragment) if "=" in parts.fragment else parts.fragment
    return scrub(urlunsplit((parts.scheme, netloc, parts.path, query, fragment)))


def _mask_parameters(text: str) -> str:
    pairs = parse_qsl(text, keep_blank_values=True)
    if not any(_secret_name(k) for k, _ in pairs):
        return text  # as it was, not re-encoded
    return urlencode([(k, MASK if _secret_name(k) else v) for k, v in pairs], safe="*")


# Characters shown as '?' wherever foreign text reaches a terminal: an escape sequence from a
# server could repaint the screen, set the window's title or plant a hyperlink, and a bidi
# override could show a line backwards. Newlines and tabs are layout.
_INERT = {
    c: "?"
    for c in (*range(0x20), *range(0x7F, 0xA0), 0x200E, 0x200F, *range(0x202A, 0x202F))
    if chr(c) not in "\n\t"
} | {c: "?" for c in range(0x2066, 0x206A)}


def inert(text: str) -> str:
    """`text` with every control character replaced, safe to write to a terminal."""
    return text.translate(_INERT)


def shown(text: str) -> str:
    """Foreign text as it may be shown: credentials masked, control characters made inert."""
    return inert(scrub(text))


def is_http_url(value: object) -> bool:
    """An absolute http(s) URL that can be parsed (a host, a numeric port if any)."""
    if not isinstance(value, str) or not value.startswith(("http://", "https://")):
        return False
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        return False
    return bool(parts.hostname)
