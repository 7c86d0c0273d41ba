"""A manifest from a listing: the files under a folder (or the URLs of a file, one a line) paired
by two patterns, `--video 'S1/E{ep}.mp4' --audio 'dubs/ja/E{ep}-ja.wav'`. A video and an audio
pair when the placeholders both patterns have take the same values; what matched one pattern
and found no partner is unpaired, named. No DB, no HTTP, nothing written but the manifest."""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from dubrunner.constants import EXIT_INCOMPLETE, EXIT_OK
from dubrunner.manifest_core import character_problem
from dubrunner.session_ui import Ending

UNPAIRED_SHOWN = 50  # named on stderr at most, each side
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
FORMATS = ("yaml", "csv", "jsonl")


class ListingError(Exception):
    """Bad patterns, an unreadable source, or a listing that cannot be paired: nothing written."""


@dataclass(frozen=True)
class Pattern:
    text: str
    regex: re.Pattern[str]
    names: tuple[str, ...]  # its placeholders, in order, each once

    @classmethod
    def compile(cls, text: str, what: str) -> Pattern:
        """`{name}` stands for one or more characters other than '/'; a name given twice must
        match the same text; anything else is itself."""
        parts: list[str] = []
        names: list[str] = []
        at = 0
        for m in _PLACEHOLDER.finditer(text):
            parts.append(re.escape(text[at : m.start()]))
            name = m.group(1)
            parts.append(f"(?P={name})" if name in names else f"(?P<{name}>[^/]+)")
            if name not in names:
                names.append(name)
            at = m.end()
        parts.append(re.escape(text[at:]))
        literal = _PLACEHOLDER.sub("", text)
        if "{" in literal or "}" in literal:
            raise ListingError(
                f"--{what} {text!r}: a placeholder is {{name}}, letters, digits and '_'"
            )
        if not names:
            raise ListingError(
                f"--{what} {text!r} has no {{placeholder}}: nothing tells one episode from another"
            )
        return cls(text, re.compile("".join(parts)), tuple(names))


@dataclass
class Pairing:
    """Pairs in the order of their videos, and what found no partner."""

    pairs: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    unpaired_videos: list[str] = field(default_factory=list)
    unpaired_audios: list[str] = field(default_factory=list)
    ignored: int = 0  # matched neither pattern
    unusable: list[str] = field(default_factory=list)  # "NAME (why, skipped)", never written


@dataclass(frozen=True)
class Made:
    """A manifest made from a listing: its text, and what was left out."""

    text: str
    pairing: Pairing
    kind: str  # what was listed: "file" or "line"

    def ending(self, out: Path | None) -> Ending:
        """Exit 0 when every matched file paired, else 1 with the unpaired named."""
        p = self.pairing
        unpaired = [f"unusable {self.kind}: {item}" for item in p.unusable] + [
            f"unpaired {what}: {item}"
            for what, side in (("video", p.unpaired_videos), ("audio", p.unpaired_audios))
            for item in side
        ]
        details = unpaired[:UNPAIRED_SHOWN]
        if len(unpaired) > len(details):
            details.append(f"… and {len(unpaired) - len(details)} more unpaired")
        sentence = f"{len(p.pairs)} pairs" + (f" written to {out}" if out else "")
        if p.ignored:
            sentence += f"; {p.ignored} {self.kind}(s) matched neither pattern (left out)"
        if p.unusable:
            sentence += f"; {len(p.unusable)} {self.kind}(s) unusable (left out)"
        if p.unpaired_videos or p.unpaired_audios:
            sentence += (
                f"; {len(p.unpaired_videos)} video(s) and {len(p.unpaired_audios)} audio(s) "
                "unpaired (left out)"
            )
        code = EXIT_INCOMPLETE if unpaired else EXIT_OK  # unusable files too
        return Ending(sentence, code, routine=not unpaired, details=tuple(details))


def from_listing(
    source: Path,
    video: Pattern,
    audio: Pattern,
    reference_id: str | None,
    fmt: str,
    manifest_dir: Path,
) -> Made:
    """The manifest of SOURCE's pairs, in `fmt`, its files named from `manifest_dir`. Raises
    ListingError when nothing pairs."""
    items, are_files = listing(source)
    usable, unusable = _usable(items)
    pairing = pair(usable, video, audio)
    pairing.unusable = unusable
    refs = reference_ids(reference_id, pairing)
    kind = "file" if are_files else "line"
    if not pairing.pairs:
        raise ListingError(
            f"no pair in {source}: {len(items)} {kind}(s), "
            f"{len(pairing.unpaired_videos)} matched --video, "
            f"{len(pairing.unpaired_audios)} matched --audio; nothing written"
        )
    rows = [
        (
            located(v, source, are_files, manifest_dir),
            located(a, source, are_files, manifest_dir),
            ref,
        )
        for (v, a, _), ref in zip(pairing.pairs, refs, strict=True)
    ]
    if any(_not_utf8(text) for row in rows for text in row if text is not None):
        raise ListingError(f"{_shown(str(source))}: its path is not valid UTF-8; nothing written")
    comment = f"dubrunner manifest from-listing: {len(rows)} pairs from {source}"
    return Made(render(rows, fmt, comment), pairing, kind)


def _usable(items: list[str]) -> tuple[list[str], list[str]]:
    """(the items a manifest can name, the others as "NAME (why, skipped)"): a file name that is
    not UTF-8 (Python holds its bytes as lone surrogates) cannot be written in a manifest, nor one
    with a control or invisible formatting character, which the manifest's checks refuse."""
    usable: list[str] = []
    unusable: list[str] = []
    for item in items:
        if _not_utf8(item):
            unusable.append(f"{_shown(item)} (name is not valid UTF-8, skipped)")
            continue
        problem = character_problem(item, "name")
        if problem:
            unusable.append(f"{item.encode('unicode_escape').decode()} ({problem}, skipped)")
            continue
        usable.append(item)
    return usable, unusable


def _shown(name: str) -> str:
    """A file name as its bytes would read, those that are not UTF-8 as \\xff."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def _not_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def pair(items: Iterable[str], video: Pattern, audio: Pattern) -> Pairing:
    """Pair the items (relative paths or URLs) by the placeholders both patterns share."""
    shared = tuple(n for n in video.names if n in audio.names)
    if not shared:
        raise ListingError(
            f"--video {video.text!r} and --audio {audio.text!r} share no placeholder to pair by"
        )
    sides: tuple[dict[tuple[str, ...], list[tuple[str, dict[str, str]]]], ...] = ({}, {})
    result = Pairing()
    for item in items:
        found = [
            (m, side) for side, p in enumerate((video, audio)) if (m := p.regex.fullmatch(item))
        ]
        if not found:
            result.ignored += 1
            continue
        if len(found) == 2:
            raise ListingError(f"{item!r} matches both --video and --audio")
        m, side = found[0]
        values = m.groupdict()
        sides[side].setdefault(tuple(values[n] for n in shared), []).append((item, values))
    problems = [
        f"{len(items)} {what}s for {_key_text(shared, key)}: "
        + ", ".join(repr(i) for i, _ in items)
        for what, side in (("video", sides[0]), ("audio", sides[1]))
        for key, items in side.items()
        if len(items) > 1
    ]
    if problems:
        raise ListingError("; ".join(problems[:5]))
    videos, audios = sides
    for key in sorted(videos, key=lambda k: _natural(videos[k][0][0])):
        (video_item, values) = videos[key][0]
        if key in audios:
            audio_item, audio_values = audios[key][0]
            result.pairs.append((video_item, audio_item, {**audio_values, **values}))
        else:
            result.unpaired_videos.append(video_item)
    result.unpaired_audios = sorted(
        (items[0][0] for key, items in audios.items() if key not in videos), key=_natural
    )
    return result


def _key_text(names: tuple[str, ...], key: tuple[str, ...]) -> str:
    return ", ".join(f"{n}={v!r}" for n, v in zip(names, key, strict=True))


def _natural(text: str) -> list[object]:
    """E2 before E10."""
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", text)]


def listing(source: Path) -> tuple[list[str], bool]:
    """(the items, whether they are files): the relative paths of the files under a folder
    (hidden ones left out, '/' between names), or the lines of a file of URLs (blank lines and
    `#` comments left out)."""
    if source.is_dir():
        return list(_files(source)), True
    try:
        text = source.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ListingError(f"{source}: no such folder or file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ListingError(f"{source}: cannot read it as a list of URLs: {exc}") from None
    lines = [line.strip() for line in text.splitlines()]
    return [line for line in lines if line and not line.startswith("#")], False


def _files(root: Path) -> Iterator[str]:
    for folder, dirs, files in os.walk(root, onerror=_raise):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel = Path(folder).relative_to(root)
        for name in sorted(files):
            if not name.startswith("."):
                yield (rel / name).as_posix()


def _raise(exc: OSError) -> None:
    raise ListingError(f"cannot list {exc.filename}: {exc.strerror}")


def reference_ids(template: str | None, pairing: Pairing) -> list[str | None]:
    """Each pair's reference_id from a template of the patterns' placeholders, or None each."""
    if template is None:
        return [None] * len(pairing.pairs)
    names = set(_PLACEHOLDER.findall(template))
    known = set().union(*(values for _, _, values in pairing.pairs)) if pairing.pairs else names
    unknown = sorted(names - known)
    if unknown:
        raise ListingError(f"--reference-id {template!r}: no placeholder {unknown[0]!r} to fill")
    return [_fill(template, values) for _, _, values in pairing.pairs]


def _fill(template: str, values: dict[str, str]) -> str:
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def render(rows: list[tuple[str, str, str | None]], fmt: str, comment: str) -> str:
    """The manifest's text: YAML (a `jobs:` list), CSV (a header row) or JSON Lines."""
    with_ids = any(ref is not None for _, _, ref in rows)
    if fmt == "csv":
        out = io.StringIO(newline="")
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["video", "audio", "reference_id"] if with_ids else ["video", "audio"])
        for video, audio, ref in rows:
            writer.writerow([video, audio, ref] if with_ids else [video, audio])
        return out.getvalue()
    if fmt == "jsonl":
        return "".join(
            json.dumps({"video": v, "audio": a, **({"reference_id": r} if r else {})}) + "\n"
            for v, a, r in rows
        )
    lines = [f"# {comment}", "jobs:"]
    for video, audio, ref in rows:  # JSON strings are YAML double-quoted scalars
        lines.append(f"  - video: {json.dumps(video)}")
        lines.append(f"    audio: {json.dumps(audio)}")
        if ref is not None:
            lines.append(f"    reference_id: {json.dumps(ref)}")
    return "\n".join(lines) + "\n"


def format_of(out: Path | None) -> str:
    """The format a manifest file's name asks for: .csv, .jsonl/.ndjson, else YAML."""
    suffix = out.suffix.lower() if out is not None else ""
    return {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}.get(suffix, "yaml")


def located(item: str, source: Path, is_file: bool, manifest_dir: Path) -> str:
    """How the manifest names an item: a URL as it is; a file under an absolute SOURCE by its
    absolute path, else by its path from the manifest's folder (where a manifest's relative
    paths start)."""
    if not is_file:
        return item
    if source.is_absolute():
        return (source / item).as_posix()
    return Path(os.path.relpath(source.absolute() / item, manifest_dir.absolute())).as_posix()


def write_atomically(path: Path, text: str) -> None:
    """The whole file or, on failure, the old one (or none) as it was."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ListingError(f"cannot write {path}: {exc.strerror}") from None
