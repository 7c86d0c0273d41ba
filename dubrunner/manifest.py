"""Manifest files: YAML → validated job specs. Every error names the file and line; no DB, no HTTP.

batch: season1-ja                 # optional, default: the file's stem
defaults:                         # optional
  disable_active_speaker_detection: false
jobs:
  - video: https://cdn.example.com/ep01.mp4
    audio: https://cdn.example.com/ep01-ja.wav
    reference_id: s1e01-ja        # optional, default: derived from batch, video and audio
  - inputs:                       # the API's own shape, either order
      - {type: audio, url: https://cdn.example.com/ep02-ja.wav}
      - {type: video, url: https://cdn.example.com/ep02.mp4}
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from dubrunner.constants import DEFAULT_MAX_BYTES, DEFAULT_MAX_JOBS
from dubrunner.localmedia import DEFAULT_MAX_UPLOAD_BYTES, Digests, LocalFile, is_url, local_pair
from dubrunner.records import JobSpec
from dubrunner.records import derive_reference_id as derive_reference_id
from dubrunner.yamlstream import (
    ALLOWED_TAGS,
    EventReader,
    LineDict,
    LineList,
    YamlProblem,
    line_of_event,
    show,
    type_name,
)

MAX_ERRORS_SHOWN = 50
MAX_REFERENCE_ID = 200
MAX_URL = 8192
# Used with fullmatch: `$` would also accept a trailing newline ("ep1\n", a job apart from "ep1").
_REFERENCE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+=-]*")
_SPACE = re.compile(r"\s")
_BATCH = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_TOP_KEYS = frozenset({"batch", "defaults", "jobs"})
_DEFAULT_KEYS = frozenset({"disable_active_speaker_detection"})
_JOB_KEYS = frozenset(
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


def _did_you_mean(key: object, known: Iterable[str]) -> str:
    """', did you mean 'video'?' for a near miss of a known key ('vidoe'), else nothing."""
    if not isinstance(key, str):
        return ""
    close = difflib.get_close_matches(key.lower(), sorted(known), n=1, cutoff=0.6)
    return f", did you mean {close[0]!r}?" if close else ""


# The common case, recognised without urlsplit: a plain http(s) URL with a DNS host name. Anything
# else (userinfo, IPv6, odd characters) takes the full path below, which also words the problem.
_PLAIN_URL = re.compile(
    r"https?://[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?(?::(\d{1,5}))?(?:[/?#][!-~]*)?", re.ASCII
)


def _check_source(value: object, what: str) -> str | None:
    """The problem with a media URL or local path, or None when it may be usable (a local file
    is checked once both of a job's inputs are known: see _local_files)."""
    if not isinstance(value, str):
        return f"{what} must be a URL or a file path, not {type_name(value)}"
    scheme = value.split("://", 1)[0] if "://" in value else ""
    if scheme and scheme.isalnum() and scheme.lower() not in ("http", "https", "file"):
        return f"{what} must be an absolute http(s) URL or a local file, not a {scheme}:// URL"
    if not is_url(value):
        return None
    return _check_url(value, what)


check_source = _check_source  # for inputs given on the command line (superseding)


def _check_url(value: str, what: str) -> str | None:
    """The problem with a media URL, or None when it is a usable absolute http(s) URL."""
    if len(value) > MAX_URL:
        return f"{what} is longer than {MAX_URL} characters"
    plain = _PLAIN_URL.fullmatch(value)
    if plain and (plain.group(1) is None or int(plain.group(1)) <= 65535):
        return None
    if _SPACE.search(value):
        return f"{what} contains white space"
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return f"{what} is not a valid URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"{what} must be an absolute http(s) URL"
    return None


def _line_of(mapping: object, key: str, default: int | None) -> int | None:
    if isinstance(mapping, LineDict):
        return mapping.key_lines.get(key, mapping.line)
    return default


def read_text(path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> str:
    """The file's text, or a ManifestError for what makes it unreadable."""
    name = str(path)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise ManifestError(
                name, [Problem(None, f"the file is {size:,} bytes; the limit is {max_bytes:,}")]
            )
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ManifestError(name, [Problem(None, "no such file")]) from None
    except IsADirectoryError:
        raise ManifestError(name, [Problem(None, "is a directory, not a manifest file")]) from None
    except OSError as exc:
        raise ManifestError(name, [Problem(None, f"cannot read it: {exc.strerror}")]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ManifestError(
            name, [Problem(line, f"not UTF-8 text (byte 0x{raw[exc.start]:02x})")]
        ) from None
    if text.startswith("\ufeff"):
        text = text[1:]
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise ManifestError(name, [Problem(line, "contains a NUL byte: not a text file")])
    return text


@dataclass(slots=True)
class _RawJob:
    """A validated job before the batch's name and defaults are known (they may come after)."""

    video: str
    audio: str
    reference_id: str | None
    asd: bool | None
    line: int
    index: int
    files: tuple[LocalFile, LocalFile] | None = None  # both inputs local: uploaded


@dataclass(frozen=True, slots=True)
class _Media:
    """What checking a job's local files needs: where relative paths start, the size limit."""

    base_dir: Path
    max_upload_bytes: int


def parse(
    text: str,
    name: str,
    default_batch: str,
    max_jobs: int = DEFAULT_MAX_JOBS,
    *,
    base_dir: Path | None = None,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    digests: Digests | None = None,
) -> Manifest:
    """Validate a manifest's text. Raises ManifestError listing every problem found. Local
    files are found from `base_dir` (default: the working directory) and hashed by `digests`
    (default: hashed here, cached for this call only)."""
    problems: list[Problem] = []
    media = _Media(base_dir or Path.cwd(), max_upload_bytes)
    digests = digests or Digests()
    raws: list[_RawJob] = []
    reader = EventReader(text)
    streamed = {"jobs": False}

    def stream_jobs(key: Any, ev: yaml.Event) -> bool:
        """The jobs list goes by one job at a time: validated, kept compact, the rest dropped."""
        if key != "jobs" or not isinstance(ev, yaml.SequenceStartEvent) or ev.anchor:
            return False
        if ev.tag not in ALLOWED_TAGS:
            return False
        streamed["jobs"] = True
        for index, item in enumerate(reader.items(yaml.SequenceEndEvent), start=1):
            if index > max_jobs:
                raise YamlProblem(
                    line_of_event(ev), f"more than {max_jobs:,} jobs; the limit is {max_jobs:,}"
                )
            job = _parse_job(reader.value(item, 2), index, line_of_event(item), problems, media)
            if job is not None:
                raws.append(job)
        return True

    try:
        reader.next()  # the stream starts
        ev = reader.next()
        if isinstance(ev, yaml.StreamEndEvent):
            raise ManifestError(name, [Problem(None, "the manifest is empty")])
        root = reader.next()
        if isinstance(root, yaml.MappingStartEvent) and root.tag in ALLOWED_TAGS:
            doc: Any = reader.mapping(root, 0, special=stream_jobs)
            if root.anchor:
                reader.anchors[root.anchor] = doc
        else:
            doc = reader.value(root)
        reader.next()  # the document ends
        after = reader.next()
        if isinstance(after, yaml.DocumentStartEvent):
            raise YamlProblem(
                line_of_event(after), "a manifest is one YAML document; found another"
            )
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        what = " ".join(str(p) for p in (exc.context, exc.problem) if p) or "invalid YAML"
        raise ManifestError(
            name, [Problem(mark.line + 1 if mark else None, f"YAML syntax error: {what}")]
        ) from None
    except yaml.YAMLError as exc:
        raise ManifestError(name, [Problem(None, f"YAML error: {str(exc)[:200]}")]) from None
    except YamlProblem as exc:
        raise ManifestError(name, [Problem(exc.line, exc.text)]) from None
    except RecursionError:
        raise ManifestError(name, [Problem(None, "the YAML is nested too deeply")]) from None

    if doc is None:
        raise ManifestError(name, [Problem(None, "the manifest is empty")])
    if not isinstance(doc, LineDict):
        raise ManifestError(
            name,
            [Problem(1, f"the top level must be a mapping with 'jobs:', not {type_name(doc)}")],
        )
    problems.extend(
        Problem(
            _line_of(doc, k, 1),
            f"unknown top-level key {show(k)}{_did_you_mean(k, _TOP_KEYS)} (expected batch, "
            "defaults, jobs)",
        )
        for k in doc
        if k not in _TOP_KEYS and not (isinstance(k, str) and k.startswith("x-"))
    )

    batch = doc.get("batch", default_batch)
    if not isinstance(batch, str) or not _BATCH.fullmatch(batch):
        problems.append(
            Problem(
                _line_of(doc, "batch", 1),
                "batch must be 1-100 letters, digits, '.', '_' or '-', starting with a letter "
                f"or digit (got {show(batch, 60)})",
            )
        )
        batch = default_batch

    default_asd = False
    defaults = doc.get("defaults")
    if defaults is not None:
        if not isinstance(defaults, LineDict):
            problems.append(Problem(_line_of(doc, "defaults", 1), "defaults must be a mapping"))
        else:
            problems.extend(
                Problem(
                    _line_of(defaults, k, None),
                    f"unknown key {show(k)} in defaults{_did_you_mean(k, _DEFAULT_KEYS)}",
                )
                for k in defaults
                if k not in _DEFAULT_KEYS
            )
            value = defaults.get("disable_active_speaker_detection", False)
            if isinstance(value, bool):
                default_asd = value
            else:
                problems.append(
                    Problem(
                        _line_of(defaults, "disable_active_speaker_detection", None),
                        "disable_active_speaker_detection must be true or false",
                    )
                )

    jobs_line = _line_of(doc, "jobs", 1)
    if "jobs" not in doc:
        problems.append(Problem(doc.line, "no 'jobs:' list"))
    elif not streamed["jobs"]:
        aliased = isinstance(doc["jobs"], LineList)
        problems.append(
            Problem(
                jobs_line,
                "jobs must be a list written in place, not an alias"
                if aliased
                else "jobs must be a list",
            )
        )
    elif not raws and not problems:
        problems.append(Problem(jobs_line, "the jobs list is empty"))

    jobs: list[JobSpec] = []
    seen: dict[str, int] = {}
    for raw in raws:
        hashes = _hashes(raw, digests, problems)
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


def _hashes(raw: _RawJob, digests: Digests, problems: list[Problem]) -> tuple[str, str] | None:
    """The SHA-256s of a local job's two files (None for a job of URLs, or a file that could
    not be read to the end)."""
    if raw.files is None:
        return None
    try:
        return digests(raw.files[0]), digests(raw.files[1])
    except OSError as exc:
        problems.append(Problem(raw.line, f"job {raw.index}: cannot read a file: {exc}"))
        return None


def _parse_job(
    raw: object, index: int, item_line: int, problems: list[Problem], media: _Media
) -> _RawJob | None:
    if not isinstance(raw, LineDict):
        problems.append(
            Problem(
                item_line,
                f"job {index}: must be a mapping with video/audio or inputs, not {type_name(raw)}",
            )
        )
        return None
    line = raw.line
    before = len(problems)

    def bad(key: str | None, text: str) -> None:
        at = raw.key_lines.get(key, line) if key else line
        problems.append(Problem(at, f"job {index}: {text}"))

    for k in raw:
        if k not in _JOB_KEYS:
            bad(
                k,
                f"unknown key {show(k)}{_did_you_mean(k, _JOB_KEYS)} (expected video, audio or "
                "inputs, reference_id, disable_active_speaker_detection)",
            )

    video: object = None
    audio: object = None
    if "inputs" in raw:
        if "video" in raw or "audio" in raw:
            bad("inputs", "give either inputs or video/audio, not both")
        inputs = raw["inputs"]
        if not isinstance(inputs, LineList):
            bad("inputs", "inputs must be a list of {type, url}")
            inputs = None
        videos: list[object] = []
        audios: list[object] = []
        for item in inputs or ():
            if not isinstance(item, LineDict):
                bad(
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
                        + _did_you_mean(extra[0], ("type", "url")),
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
                bad("inputs", f"expected exactly one video input, found {len(videos)}")
            if len(audios) != 1:
                bad("inputs", f"expected exactly one audio input, found {len(audios)}")
            if len(videos) == len(audios) == 1:
                video, audio = videos[0], audios[0]
                for value, what in ((video, "the video url"), (audio, "the audio url")):
                    problem = _check_source(value, what)
                    if problem:
                        bad("inputs", problem)
    else:
        video = raw.get("video")
        audio = raw.get("audio")
        for key, value in (("video", video), ("audio", audio)):
            if key not in raw:
                bad(None, f"no {key} (give {key}: URL, or inputs:)")
            else:
                problem = _check_source(value, key)
                if problem:
                    bad(key, problem)

    asd = raw.get("disable_active_speaker_detection")
    if asd is not None and not isinstance(asd, bool):
        bad(
            "disable_active_speaker_detection",
            "disable_active_speaker_detection must be true or false",
        )

    reference_id = raw.get("reference_id")
    if reference_id is not None:
        if isinstance(reference_id, int) and not isinstance(reference_id, bool):
            reference_id = str(reference_id)
        if not isinstance(reference_id, str) or not _REFERENCE_ID.fullmatch(reference_id):
            bad(
                "reference_id",
                "reference_id must be text of letters, digits and . _ : / @ + = - "
                f"(got {show(reference_id, 60)})",
            )
        elif len(reference_id) > MAX_REFERENCE_ID:
            bad("reference_id", f"reference_id is longer than {MAX_REFERENCE_ID} characters")

    files = None
    if len(problems) == before:
        assert isinstance(video, str) and isinstance(audio, str)
        keys = ("inputs", "inputs") if "inputs" in raw else ("video", "audio")
        files, found = local_pair(video, audio, media.base_dir, media.max_upload_bytes)
        for which, text in found:
            bad(keys[which], text)
    if len(problems) > before:
        return None
    assert isinstance(video, str) and isinstance(audio, str)
    assert asd is None or isinstance(asd, bool)
    assert reference_id is None or isinstance(reference_id, str)
    return _RawJob(video, audio, reference_id, asd, line, index, files)


def load(
    path: str | Path,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_jobs: int = DEFAULT_MAX_JOBS,
    *,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    digests: Digests | None = None,
) -> Manifest:
    """Read and validate a manifest file; local files are relative to its folder."""
    p = Path(path)
    return parse(
        read_text(p, max_bytes),
        str(path),
        _default_batch(p),
        max_jobs,
        base_dir=p.absolute().parent,
        max_upload_bytes=max_upload_bytes,
        digests=digests,
    )


def _default_batch(path: Path) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", path.stem).strip("-._") or "batch"
    return stem[:100]
