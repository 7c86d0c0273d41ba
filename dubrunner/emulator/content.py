"""What the emulator serves besides its answers: where the API lives, and the outputs."""

from __future__ import annotations

import hashlib
import hmac

PREFIX = "/api/"


def output_content(request_id: str, size: int) -> bytes:
    """The deterministic 'lip-synced video' served for a request."""
    seed = hashlib.sha256(request_id.encode()).digest()
    reps = size // len(seed) + 1
    return (b"\x00\x00\x00\x18ftypmp42" + seed * reps)[:size]


SIGNING_KEY = b"emulator-storage-key"


def signature(request_id: str, expires: int) -> str:
    """The storage host's signature of an output URL valid until `expires` (Unix ms)."""
    return hmac.new(SIGNING_KEY, f"{request_id}:{expires}".encode(), hashlib.sha256).hexdigest()
