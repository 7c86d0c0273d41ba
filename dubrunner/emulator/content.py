"""What the emulator serves besides its answers: where the API lives, the names its requests are
counted under, and the outputs with their signed URLs."""

from __future__ import annotations

import hashlib
import hmac
import time

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


def endpoint_of(method: str, path: str) -> str:
    """The name a request is counted under in the stats' `by_endpoint`."""
    route = path[len(PREFIX) :].rstrip("/") if path.startswith(PREFIX) else path
    if route == "v1/lipsync/requests":
        return "list"
    if route.startswith("v1/lipsync/requests/"):
        return "get"
    if route.startswith("v1/lipsync/generate"):
        return "generate"
    if path.startswith("/outputs/"):
        return "output"
    if path.startswith(("/media/", "/_emulator/")):
        return path.split("/")[1]
    return route if route in ("health", "v1/users/me") else "other"


def signed(request_id: str, query: dict[str, list[str]]) -> bool:
    """Whether an output URL carries a valid signature that has not expired."""
    try:
        expires = int(query.get("expires", [""])[0])
    except ValueError:
        return False
    given = query.get("signature", [""])[0]
    return expires >= time.time() * 1000 and hmac.compare_digest(
        given, signature(request_id, expires)
    )
