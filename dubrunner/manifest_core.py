"""What every manifest format (YAML, CSV, JSONL) shares: the Manifest and its errors, the checks
of one job entry, and the making of the batch's job specs. One place for each rule: the readers
(manifest.py for YAML, sheets.py for CSV and JSONL) only turn their text into entries with lines."""

from __future__ import annotations

import difflib
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from dubrunner.localmedia import Digests, LocalFile, is_url, local_pair
from dubrunner.records import JobSpec, derive_reference_id
from dubrunner.yamlstream import LineDict, LineList, show, type_name

MAX_ERRORS_SHOWN = 50
MAX_REFERENCE_ID = 200
MAX_URL = 8192
# Used with fullmatch: `$` would also accept a trailing newline ("ep1\n", a job apart from "ep1").
_REFERENCE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+=-]*")
_SPACE = re.compile(r"\s")
BATCH = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
JOB_KEYS = frozenset(
    {"video", "audio", "inputs", "reference_id", "disable_active_speaker_detection"}
)


@dataclass(frozen=True, slots=True)
class Manifest:
    path: str
    batch: str
    jobs: list[JobSpec]


@dataclass(frozen=True, slots=True)
class Problem:
    line: int | None
    text: str


def batch_problem(value: object) -> str | None:
    """What is wrong with a batch's name, or None."""
    if isinstance(value, str) and BATCH.fullmatch(value):
        return None
    return (
        "batch must be 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit "
        f"(got {show(value, 60)})"
    )


class ManifestError(Exception):
    """A manifest that cannot be loaded; `problems` lists every one found, with its line."""

    def __init__(self, path: str, problems: list[Problem]) -> None:
        self.path = path
        self.problems = problems
        super().__init__(self.lines()[0] if problems else path)

    def lines(self) -> list[str]:
        shown = [
            f"{self.path}:{p.line}: {p.text}" if p.line else f"{self.path}: {p.text}"
            for p in self.problems[:MAX_ERRORS_SHOWN]
        ]
        if len(self.problems) > MAX_ERRORS_SHOWN:
            shown.append(
                f"{self.path}: … and {len(self.problems) - MAX_ERRORS_SHOWN} more problems"
            )
        return shown


def did_you_mean(key: object, known: Iterable[str]) -> str:
    """', did you mean 'video'?' for a near miss of a known key ('vidoe'), else nothing."""
    if not isinstance(key, str):
        return ""
    close = difflib.get_close_matches(key.lower(), sorted(known), n=1, cutoff=0.6)
    return f", did you mean {close[0]!r}?" if close else ""


# The common case, recognised without urlsplit: a plain http(s) URL with a DNS host name, of
# printable ASCII but the `"`, `<` and `>` no URL may hold. Anything else (userinfo, IPv6, odd
# characters) takes the full path below, which also words the problem.
_PLAIN_URL = re.compile(
    r"https?://[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?(?::(\d{1,5}))?(?:[/?#][!#-;=?-~]*)?",
    re.ASCII,
)
# Printable ASCII a URL may not hold unescaped (RFC 3986): a sign of text pasted around it.
_NOT_IN_URL = re.compile(r'["<>]')
_CHARACTER_KINDS = {
    "Cc": "a control character",
    "Cf": "an invisible formatting character",
    "Cs": "a lone surrogate",
}


def character_problem(value: str, what: str) -> str | None:
    """The problem with a text holding a character no URL, file name or reference_id can mean
    (control, invisible formatting, a lone surrogate: Unicode categories Cc, Cf, Cs), or None.
    Such a text would reach the API as a URL that cannot exist (a paid request for nothing)."""
    if value.isprintable():  # the common case: none of them (isprintable is False for each)
        return None
    for char in value:
        kind = _CHARACTER_KINDS.get(unicodedata.category(char))
        if kind:
            return f"{what} contains {kind} (U+{ord(char):04X})"
    return None


def _plain_url(value: object) -> bool:
    """A usable http(s) URL of the common kind (see _PLAIN_URL), within MAX_URL, its port (if
    any) at most 65535: nothing to check further, and not a local file (is_url holds)."""
    if not isinstance(value, str) or len(value) > MAX_URL:
        return False
    plain = _PLAIN_URL.fullmatch(value)
    return plain is not None and (plain.group(1) is None or int(plain.group(1)) <= 65535)


def _check_source(value: object, what: str) -> str | None:
    """The problem with a media URL or local path, or None when it may be usable (a local file
    is checked once both of a job's inputs are known: see _local_files)."""
    if not isinstance(value, str):
        return f"{what} must be a URL or a file path, not {type_name(value)}"
    if _plain_url(value):
        return None  # the common case, found fast
    scheme = value.split("://", 1)[0] if "://" in value else ""
    if scheme and scheme.isalnum() and scheme.lower() not in ("http", "https", "file"):
        return f"{what} must be an absolute http(s) URL or a local file, not a {scheme}:// URL"
    if not is_url(value):
        return character_problem(value, what)
    return _check_url(value, what)


check_source = _check_source  # for inputs given on the command line (superseding)


def _check_url(value: str, what: str) -> str | None:
    """The problem with a media URL, or None when it is a usable absolute http(s) URL."""
    if len(value) > MAX_URL:
        return f"{what} is longer than {MAX_URL} characters"
    if _plain_url(value):
        return None
    if _SPACE.search(value):
        return f"{what} contains white space"
    problem = character_problem(value, what)
    if problem:
        return problem
    odd = _NOT_IN_URL.search(value)
    if odd:
        return f"{what} contains {odd.group()!r}, which a URL cannot hold unescaped"
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return f"{what} is not a valid URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"{what} must be an absolute http(s) URL"
    return None


@dataclass(slots=True)
class RawJob:
    """A validated job before the batch's name and defaults are known (they may come after)."""

    video: str
    audio: str
    reference_id: str | None
    asd: bool | None
    line: int
    index: int
    files: tuple[LocalFile, LocalFile] | None = None  # both inputs local: uploaded


@dataclass(frozen=True, slots=True)
class Media:
    """What checking a job's local files needs: where relative paths start, the size limit."""

    base_dir: Path
    max_upload_bytes: int


def finish(
    name: str,
    batch: str,
    raws: list[RawJob],
    default_asd: bool,
    problems: list[Problem],
    digests: Digests,
) -> Manifest:
    """The manifest of checked job entries: reference_ids given or derived (local files by
    their content), each used once; raises ManifestError with every problem found so far."""
    jobs: list[JobSpec] = []
    seen: dict[str, int] = {}
    for raw in raws:
        hashes = _hashes(raw, digests, problems) if raw.files is not None else None
        if raw.files is not None and hashes is None:
            continue
        if hashes is not None:
            ref = raw.reference_id or derive_reference_id(
                batch, f"sha256:{hashes[0]}", f"sha256:{hashes[1]}"
            )
        else:
            ref = raw.reference_id or derive_reference_id(batch, raw.video, raw.audio)
        first = seen.get(ref)
        if first is not None:
            problems.append(
                Problem(
                    raw.line,
                    f"job {raw.index}: reference_id {ref!r} is already used by the job at line "
                    f"{first}",
                )
            )
            continue
        seen[ref] = raw.line
        asd = default_asd if raw.asd is None else raw.asd
        if raw.files is None or hashes is None:
            jobs.append(JobSpec(ref, raw.video, raw.audio, asd, raw.line))
        else:
            video, audio = raw.files
            jobs.append(
                JobSpec(ref, video.uri, audio.uri, asd, raw.line, *hashes, video.size, audio.size)
            )

    if problems:
        problems.sort(key=lambda p: p.line or 0)
        raise ManifestError(name, problems)
    return Manifest(path=name, batch=batch, jobs=jobs)


def _hashes(raw: RawJob, digests: Digests, problems: list[Problem]) -> tuple[str, str] | None:
    """The SHA-256s of a local job's two files (None for a job of URLs, or a file that could
    not be read to the end)."""
    if raw.files is None:
        return None
    try:
        return digests(raw.files[0]), digests(raw.files[1])
    except OSError as exc:
        problems.append(Problem(raw.line, f"job {raw.index}: cannot read a file: {exc}"))
        return None


def _bad(problems: list[Problem], raw: LineDict, index: int, key: str | None, text: str) -> None:
    """A problem of job `index`, at the line of `key`'s value (the job's line without a key)."""
    at = raw.key_lines.get(key, raw.line) if key else raw.line
    problems.append(Problem(at, f"job {index}: {text}"))


def parse_job(
    raw: object,
    index: int,
    item_line: int,
    problems: list[Problem],
    media: Media,
    missing: str = "give {key}: URL, or inputs:",
) -> RawJob | None:
    """Job `index` checked (its problems added to `problems`, each with its line), or None when
    it has any. `missing`: the hint after "no video" in the reader's own words."""
    if not isinstance(raw, LineDict):
        problems.append(
            Problem(
                item_line,
                f"job {index}: must be a mapping with video/audio or inputs, not {type_name(raw)}",
            )
        )
        return None
    before = len(problems)
    if not raw.keys() <= JOB_KEYS:  # the loop only when a key is unknown (rare)
        for k in raw:
            if k not in JOB_KEYS:
                _bad(
                    problems,
                    raw,
                    index,
                    k,
                    f"unknown key {show(k)}{did_you_mean(k, JOB_KEYS)} (expected video, audio "
                    "or inputs, reference_id, disable_active_speaker_detection)",
                )

    video: object = None
    audio: object = None
    plain = False  # both inputs plain http(s) URLs (_plain_url): usable, and no local files
    if "inputs" in raw:
        if "video" in raw or "audio" in raw:
            _bad(problems, raw, index, "inputs", "give either inputs or video/audio, not both")
        inputs = raw["inputs"]
        if not isinstance(inputs, LineList):
            _bad(problems, raw, index, "inputs", "inputs must be a list of {type, url}")
            inputs = None
        videos: list[object] = []
        audios: list[object] = []
        for item in inputs or ():
            if not isinstance(item, LineDict):
                _bad(
                    problems,
                    raw,
                    index,
                    "inputs",
                    f"each input must be a mapping with type and url, not {type_name(item)}",
                )
                continue
            extra = [k for k in item if k not in ("type", "url")]
            if extra:
                problems.append(
                    Problem(
                        item.line,
                        f"job {index}: unknown input key {show(extra[0])}"
                        + did_you_mean(extra[0], ("type", "url")),
                    )
                )
            kind = item.get("type")
            if kind == "video":
                videos.append(item.get("url"))
            elif kind == "audio":
                audios.append(item.get("url"))
            else:
                problems.append(
                    Problem(
                        item.key_lines.get("type", item.line),
                        f'job {index}: input type must be "video" or "audio", not {show(kind)}',
                    )
                )
        if inputs is not None:
            if len(videos) != 1:
                _bad(
                    problems,
                    raw,
                    index,
                    "inputs",
                    f"expected exactly one video input, found {len(videos)}",
                )
            if len(audios) != 1:
                _bad(
                    problems,
                    raw,
                    index,
                    "inputs",
                    f"expected exactly one audio input, found {len(audios)}",
                )
            if len(videos) == len(audios) == 1:
                video, audio = videos[0], audios[0]
                for value, what in ((video, "the video url"), (audio, "the audio url")):
                    problem = _check_source(value, what)
                    if problem:
                        _bad(problems, raw, index, "inputs", problem)
    else:
        video = raw.get("video")
        audio = raw.get("audio")
        plain = _plain_url(video) and _plain_url(audio)
        if not plain:  # else both are given, and _check_source would find nothing
            for key, value in (("video", video), ("audio", audio)):
                if key not in raw:
                    _bad(problems, raw, index, None, f"no {key} ({missing.format(key=key)})")
                else:
                    problem = _check_source(value, key)
                    if problem:
                        _bad(problems, raw, index, key, problem)

    asd = raw.get("disable_active_speaker_detection")
    if asd is not None and not isinstance(asd, bool):
        _bad(
            problems,
            raw,
            index,
            "disable_active_speaker_detection",
            f"disable_active_speaker_detection must be true or false (got {show(asd)})",
        )

    reference_id = raw.get("reference_id")
    if reference_id is not None:
        if isinstance(reference_id, int) and not isinstance(reference_id, bool):
            reference_id = str(reference_id)
        if not isinstance(reference_id, str) or not _REFERENCE_ID.fullmatch(reference_id):
            _bad(
                problems,
                raw,
                index,
                "reference_id",
                "reference_id must be text of letters, digits and . _ : / @ + = - "
                f"(got {show(reference_id, 60)})",
            )
        elif len(reference_id) > MAX_REFERENCE_ID:
            _bad(
                problems,
                raw,
                index,
                "reference_id",
                f"reference_id is longer than {MAX_REFERENCE_ID} characters",
            )

    files = None
    if len(problems) == before and not plain:  # plain URLs: is_url holds, local_pair says None
        assert isinstance(video, str) and isinstance(audio, str)
        keys = ("inputs", "inputs") if "inputs" in raw else ("video", "audio")
        files, found = local_pair(video, audio, media.base_dir, media.max_upload_bytes)
        for which, text in found:
            _bad(problems, raw, index, keys[which], text)
    if len(problems) > before:
        return None
    assert isinstance(video, str) and isinstance(audio, str)
    assert asd is None or isinstance(asd, bool)
    assert reference_id is None or isinstance(reference_id, str)
    return RawJob(video, audio, reference_id, asd, raw.line, index, files)
