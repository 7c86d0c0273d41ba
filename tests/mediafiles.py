"""Small media files for tests: the right magic bytes, then filler (sparse when large)."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

MP4_HEAD = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2"
WAV_HEAD = b"RIFF" + struct.pack("<I", 0) + b"WAVEfmt "


def make_file(path: Path, head: bytes, size: int, seed: str = "", sparse: bool = False) -> Path:
    """`head`, then `size - len(head)` bytes: distinct per `seed` (so that files differ), or
    zeros left as a hole when `sparse`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(head)
        if sparse:
            f.truncate(size)
            return path
        block = hashlib.sha256(f"{path.name}{seed}".encode()).digest() * 2048  # 64 KiB
        left = size - len(head)
        while left > 0:
            f.write(block[:left])
            left -= len(block)
    return path


def video(path: Path, size: int = 4096, seed: str = "", sparse: bool = False) -> Path:
    return make_file(path, MP4_HEAD, size, seed, sparse)


def audio(path: Path, size: int = 2048, seed: str = "", sparse: bool = False) -> Path:
    return make_file(path, WAV_HEAD, size, seed, sparse)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def local_manifest(
    folder: Path, n: int, batch: str = "local", size: int = 4096, refs: bool = False
) -> Path:
    """A manifest of n local pairs in `folder` (files beside it, paths relative)."""
    lines = [f"batch: {batch}", "jobs:"]
    for i in range(n):
        video(folder / "media" / f"e{i:03d}.mp4", size)
        audio(folder / "media" / f"e{i:03d}-ja.wav", size // 2 or 1)
        if refs:
            lines.append(f"  - reference_id: {batch}-e{i:03d}")
            lines.append(f"    video: media/e{i:03d}.mp4")
        else:
            lines.append(f"  - video: media/e{i:03d}.mp4")
        lines.append(f"    audio: media/e{i:03d}-ja.wav")
    path = folder / "m.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path
