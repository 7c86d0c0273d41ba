"""Local media files: telling a path from a URL, the checks a file must pass before it is
uploaded, what its first bytes say it is, and its SHA-256 (streamed, cached by path, size and
stamp: mtime, ctime and inode). No HTTP; the cache's table is reached through the callables a
caller passes in."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote_to_bytes, urlsplit

from dubrunner.constants import DEFAULT_MAX_UPLOAD_BYTES as DEFAULT_MAX_UPLOAD_BYTES

CHUNK = 1024 * 1024
SNIFF_BYTES = 64

VIDEO_TYPES = {"mp4": "video/mp4", "mov": "video/quicktime", "mkv": "video/x-matroska"}
VIDEO_TYPES["webm"] = "video/webm"
AUDIO_TYPES = {"wav": "audio/wav", "mp3": "audio/mpeg", "aac": "audio/aac", "m4a": "audio/mp4"}
AUDIO_TYPES["flac"] = "audio/flac"


@dataclass(frozen=True, slots=True)
class LocalFile:
    """A file as it was when checked: its absolute path, size, modification time, and what else
    tells a file rewritten or replaced under the same name and mtime: the inode (a symlink
    pointed elsewhere, a file moved over it) and the ctime (set by every write and by a
    restored mtime; no one can set it back)."""

    path: str
    size: int
    mtime_ns: int
    inode: tuple[int, int] = (0, 0)  # (device, inode)
    ctime_ns: int = 0

    @classmethod
    def of(cls, path: str, st: os.stat_result) -> LocalFile:
        return cls(path, st.st_size, st.st_mtime_ns, (st.st_dev, st.st_ino), st.st_ctime_ns)

    @property
    def stamp(self) -> int:
        """mtime, ctime and inode folded into one signed 64-bit number: the digest cache's
        key beside the path and size (a cached SHA-256 is used only while all of them stay)."""
        key = f"{self.mtime_ns}:{self.ctime_ns}:{self.inode[0]}:{self.inode[1]}".encode()
        return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big", signed=True)

    @property
    def uri(self) -> str:
        """How the job table keeps it: a file:// URL (percent-encoded, any file name fits)."""
        return Path(self.path).as_uri()


def is_url(value: str) -> bool:
    """http(s) URLs go to generate; anything else names a local file."""
    return value[:8].lower().startswith(("http://", "https://"))


def path_of(value: str, base_dir: Path) -> tuple[str | None, str | None]:
    """(absolute path, None) for a local file named in a manifest, or (None, the problem):
    relative to the manifest's folder, absolute, `~/...`, or a file:// URL."""
    if value.lower().startswith("file:"):
        parts = urlsplit(value)
        if parts.netloc not in ("", "localhost"):
            return None, f"file URLs name a file on this machine, not on {parts.netloc!r}"
        if not parts.path:
            return None, "the file URL names no file"
        return os.path.abspath(os.fsdecode(unquote_to_bytes(parts.path))), None
    scheme = value.split(":", 1)[0] if "://" in value else ""
    if scheme and scheme.isalnum():
        return None, f"must be an http(s) URL or a local file, not a {scheme}:// URL"
    if not value.strip():
        return None, "is empty"
    if "\0" in value:
        return None, "contains a NUL character"
    path = os.path.expanduser(value)
    return os.path.abspath(os.path.join(base_dir, path)), None


def path_of_uri(uri: str) -> str:
    """The path a job's file:// URL stands for (the inverse of LocalFile.uri)."""
    return os.fsdecode(unquote_to_bytes(urlsplit(uri).path))


def check_file(path: str, max_bytes: int) -> tuple[LocalFile | None, str | None]:
    """The file if it can be uploaded (exists, regular, readable, not empty, within the limit),
    else why not."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None, f"no such file: {path}"
    except OSError as exc:
        return None, f"cannot read {path}: {exc.strerror}"
    if stat.S_ISDIR(st.st_mode):
        return None, f"{path} is a directory, not a file"
    if not stat.S_ISREG(st.st_mode):
        return None, f"{path} is not a regular file"
    if st.st_size == 0:
        return None, f"{path} is empty"
    if st.st_size > max_bytes:
        return None, (
            f"{path} is {st.st_size:,} bytes; the limit is {max_bytes:,} (--max-upload-bytes)"
        )
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as exc:
        return None, f"cannot read {path}: {exc.strerror}"
    return LocalFile.of(path, st), None


def local_pair(
    video: str, audio: str, base_dir: Path, max_bytes: int
) -> tuple[tuple[LocalFile, LocalFile] | None, list[tuple[int, str]]]:
    """A job's two inputs as files: (both files, []) when both are local and fit; (None, []) for
    two URLs; else (None, the problems, each with 0 for the video or 1 for the audio). One of
    each is refused: the API takes two URLs (generate) or two uploaded files
    (generate-with-media), never one of each."""
    local = (not is_url(video), not is_url(audio))
    if not any(local):
        return None, []
    if not all(local):
        which, other = ("video", "audio") if local[0] else ("audio", "video")
        shown = repr(video if local[0] else audio)
        shown = shown if len(shown) <= 80 else shown[:79] + "…"
        return None, [
            (
                0 if local[0] else 1,
                f"{which} {shown} is a local file and {other} a URL: the API takes two URLs "
                "(generate) or two uploaded files (generate-with-media), not one of each; give "
                "both as URLs or both as files",
            )
        ]
    files: list[LocalFile] = []
    problems: list[tuple[int, str]] = []
    for index, (value, what) in enumerate(((video, "video"), (audio, "audio"))):
        path, problem = path_of(value, base_dir)
        if path is not None:
            found, problem = check_file(path, max_bytes)
            if found is not None:
                files.append(found)
                continue
        problems.append((index, f"{what}: {problem}"))
    return ((files[0], files[1]) if len(files) == 2 else None), problems


def sniff(head: bytes) -> tuple[str, str] | None:
    """(format, content type) from a file's first bytes, or None when it is none of the
    formats the API is given: mp4, mov, mkv, webm; wav, mp3, aac, m4a, flac."""
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand == b"qt  ":
            return "mov", VIDEO_TYPES["mov"]
        if brand in (b"M4A ", b"M4B ", b"M4P "):
            return "m4a", AUDIO_TYPES["m4a"]
        return "mp4", VIDEO_TYPES["mp4"]
    if head[4:8] in (b"moov", b"mdat", b"wide", b"free", b"pnot"):
        return "mov", VIDEO_TYPES["mov"]  # an older QuickTime file, without ftyp
    if head[:4] == b"\x1a\x45\xdf\xa3":  # EBML: Matroska, or WebM (its DocType says which)
        return ("webm", VIDEO_TYPES["webm"]) if b"webm" in head else ("mkv", VIDEO_TYPES["mkv"])
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "wav", AUDIO_TYPES["wav"]
    if head[:4] == b"fLaC":
        return "flac", AUDIO_TYPES["flac"]
    if head[:3] == b"ID3":
        return "mp3", AUDIO_TYPES["mp3"]
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        if head[1] & 0x06 == 0:  # layer bits 00: an ADTS (AAC) frame
            return "aac", AUDIO_TYPES["aac"]
        return "mp3", AUDIO_TYPES["mp3"]  # an MPEG audio frame
    return None


def kind_of(fmt: str) -> str:
    return "video" if fmt in VIDEO_TYPES else "audio"


def read_head(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read(SNIFF_BYTES)


def media_problem(path: str, which: str) -> str | None:
    """What `check` says about a local file given as `which` (video | audio): its first bytes
    must be a format of that kind."""
    try:
        found = sniff(read_head(path))
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror}"
    if found is None:
        return (
            f"{path} is not a {which} file the API takes (by its first bytes; mp4, mov, mkv, "
            "webm; wav, mp3, aac, m4a, flac)"
        )
    fmt, _ = found
    if kind_of(fmt) != which:
        return f"{path} is {kind_of(fmt)} ({fmt}, by its first bytes), not {which}"
    return None


def file_problem(uri: str, which: str, max_bytes: int) -> str | None:
    """What `check` says about a job's local file (a file:// URL): None when it is readable,
    within the limit, and its first bytes are of the right kind."""
    path = path_of_uri(uri)
    _, problem = check_file(path, max_bytes)
    return problem or media_problem(path, which)


def content_type(path: str, which: str) -> str:
    """The content type an upload part declares: from the file's magic bytes."""
    found = sniff(read_head(path))
    if found is None:
        return "application/octet-stream"
    return found[1]


def sha256_file(path: str) -> str:
    """The SHA-256 of a file, read in chunks (constant memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


Lookup = Callable[[str, int, int], str | None]  # (path, size, stamp) → the SHA-256 cached
Save = Callable[[str, int, int, str], None]


class Digests:
    """SHA-256s of local files, each computed once: remembered for this run, and (with
    `lookup`/`save`, the database's cache) across runs while the path, size and stamp (mtime,
    ctime, inode) stay. `lookup=None` hashes every file again (check), saving what it finds."""

    def __init__(self, lookup: Lookup | None = None, save: Save | None = None) -> None:
        self._lookup = lookup
        self._save = save
        self._memo: dict[LocalFile, str] = {}
        self.computed = 0

    def __call__(self, f: LocalFile) -> str:
        found = self._memo.get(f)
        if found is None and self._lookup is not None:
            found = self._lookup(f.path, f.size, f.stamp)
        if found is None:
            found = sha256_file(f.path)
            self.computed += 1
            if self._save is not None:
                self._save(f.path, f.size, f.stamp, found)
        self._memo[f] = found
        return found
