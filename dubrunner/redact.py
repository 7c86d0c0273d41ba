"""Keeping secrets out of everything dubrunner stores or prints.

Two kinds of secret: the API credentials (known values, scrubbed from any text), and secrets that
live inside media URLs (user:password@ and signed query strings), shown redacted but sent in full.
"""

from __future__ import annotations

import re
import threading
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"

# Query parameters that carry a signature or a credential in signed/pre-authenticated URLs.
_SECRET_PARAMS = re.compile(
    r"^(x-amz-(signature|credential|security-token)|x-goog-(signature|credential)|sig|signature|"
    r"token|access_token|api_key|apikey|key|password|se|st|sv|skoid|sktid|skt|ske|sks|skv|"
    r"policy|key-pair-id|expires|auth|secret)$",
    re.IGNORECASE,
)

_lock = threading.Lock()
_secrets: tuple[str, ...] = ()


def register_secret(value: str | None) -> None:
    """Remember a credential so that `scrub` masks it wherever it appears."""
    global _secrets
    if value and len(value) >= 4:
        with _lock:
            if value not in _secrets:
                # Longest first, so a secret that contains another is masked whole.
                _secrets = tuple(sorted({*_secrets, value}, key=len, reverse=True))


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
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(_SECRET_PARAMS.match(k) for k, _ in pairs):
            query = urlencode(
                [(k, MASK if _SECRET_PARAMS.match(k) else v) for k, v in pairs], safe="*"
            )
    return scrub(urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment)))
