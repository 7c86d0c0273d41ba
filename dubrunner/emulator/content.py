"""What the emulator serves besides its answers: where the API lives, and the outputs."""

from __future__ import annotations

import hashlib

PREFIX = "/api/"


def output_content(request_id: str, size: int) -> bytes:
    """The deterministic 'lip-synced video' served for a request."""
    seed = hashlib.sha256(request_id.encode()).digest()
    reps = size // len(seed) + 1
    return (b"\x00\x00\x00\x18ftypmp42" + seed * reps)[:size]
