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

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

try:  # the C loader is an order of magnitude faster on large manifests
    from yaml import CSafeLoader as _BaseLoader
except ImportError:  # pragma: no cover - depends on how PyYAML was built
    from yaml import SafeLoader as _BaseLoader  # type: ignore[assignment]

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_JOBS = 1_000_000
MAX_ERRORS_SHOWN = 50
MAX_REFERENCE_ID = 200
MAX_URL = 8192
_REFERENCE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+=-]*$")
_BATCH = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_TOP_KEYS = frozenset({"batch", "defaults", "jobs"})
_DEFAULT_KEYS = frozenset({"disable_active_speaker_detection"})
_JOB_KEYS = frozenset(
    {"video", "audio", "inputs", "reference_id", "disable_active_speaker_detection"}
)


@dataclass(frozen=True, slots=True)
class JobSpec:
    reference_id: str
    video_url: str
    audio_url: str
    disable_asd: bool
    line: int  # where the job starts in the manifest (1-based)


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


class _LineDict(dict[Any, Any]):
    """A mapping that remembers the line of itself and of each of its values."""

    line: int
    key_lines: dict[Any, int]


class _LineList(list[Any]):
    line: int
    item_lines: list[int]


class _Loader(_BaseLoader):
    """The safe loader, plus line numbers, plus errors for duplicate keys."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> Iterator[_LineDict]:
    data = _LineDict()
    data.line = node.start_mark.line + 1
    data.key_lines = {}
    yield data
    loader.flatten_mapping(node)
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "a mapping key must be a plain value", key_node.start_mark
            ) from None
        if key in data:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        data[key] = loader.construct_object(value_node, deep=True)
        data.key_lines[key] = value_node.start_mark.line + 1


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> Iterator[_LineList]:
    data = _LineList()
    data.line = node.start_mark.line + 1
    data.item_lines = [item.start_mark.line + 1 for item in node.value]
    yield data
    data.extend(loader.construct_sequence(node, deep=True))


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)
_Loader.add_constructor("tag:yaml.org,2002:seq", _construct_sequence)


def derive_reference_id(batch: str, video_url: str, audio_url: str) -> str:
    """A stable reference_id for a job that has none: same batch and URLs, same id."""
    digest = hashlib.sha256(f"{batch}\0{video_url}\0{audio_url}".encode()).hexdigest()[:20]
    return f"{batch}-{digest}"


def _check_url(value: object, what: str) -> str | None:
    """The problem with a media URL, or None when it is a usable absolute http(s) URL."""
    if not isinstance(value, str):
        return f"{what} must be a URL string, not {_type_name(value)}"
    if len(value) > MAX_URL:
        return f"{what} is longer than {MAX_URL} characters"
    if value != value.strip() or any(c.isspace() for c in value):
        return f"{what} contains white space"
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return f"{what} is not a valid URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"{what} must be an absolute http(s) URL"
    return None


def _type_name(value: object) -> str:
    return {
        type(None): "nothing",
        bool: "true/false",
        int: "a number",
        float: "a number",
        str: "text",
        _LineDict: "a mapping",
        _LineList: "a list",
    }.get(type(value), type(value).__name__)


def _line_of(mapping: object, key: str, default: int | None) -> int | None:
    if isinstance(mapping, _LineDict):
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


def parse(text: str, name: str, default_batch: str, max_jobs: int = DEFAULT_MAX_JOBS) -> Manifest:
    """Validate a manifest's text. Raises ManifestError listing every problem found."""
    try:
        doc = yaml.load(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        what = " ".join(str(p) for p in (exc.context, exc.problem) if p) or "invalid YAML"
        raise ManifestError(
            name, [Problem(mark.line + 1 if mark else None, f"YAML syntax error: {what}")]
        ) from None
    except yaml.YAMLError as exc:
        raise ManifestError(name, [Problem(None, f"YAML error: {exc}")]) from None
    except RecursionError:
        raise ManifestError(name, [Problem(None, "the YAML is nested too deeply")]) from None

    if doc is None:
        raise ManifestError(name, [Problem(None, "the manifest is empty")])
    if not isinstance(doc, _LineDict):
        raise ManifestError(
            name,
            [Problem(1, f"the top level must be a mapping with 'jobs:', not {_type_name(doc)}")],
        )
    problems: list[Problem] = [
        Problem(
            _line_of(doc, k, 1), f"unknown top-level key {k!r} (expected batch, defaults, jobs)"
        )
        for k in doc
        if k not in _TOP_KEYS
    ]

    batch = doc.get("batch", default_batch)
    if not isinstance(batch, str) or not _BATCH.match(batch):
        line = _line_of(doc, "batch", 1)
        problems.append(
            Problem(
                line,
                "batch must be 1-100 letters, digits, '.', '_' or '-', starting with a letter "
                f"or digit (got {batch!r:.60})",
            )
        )
        batch = default_batch

    default_asd = False
    defaults = doc.get("defaults")
    if defaults is not None:
        if not isinstance(defaults, _LineDict):
            problems.append(Problem(_line_of(doc, "defaults", 1), "defaults must be a mapping"))
        else:
            for k in defaults:
                if k not in _DEFAULT_KEYS:
                    problems.append(
                        Problem(_line_of(defaults, k, None), f"unknown key {k!r} in defaults")
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

    raw_jobs = doc.get("jobs")
    if "jobs" not in doc:
        problems.append(Problem(doc.line, "no 'jobs:' list"))
        raw_jobs = []
    elif not isinstance(raw_jobs, _LineList):
        problems.append(Problem(_line_of(doc, "jobs", 1), "jobs must be a list"))
        raw_jobs = []
    elif not raw_jobs:
        problems.append(Problem(_line_of(doc, "jobs", 1), "the jobs list is empty"))
    if len(raw_jobs) > max_jobs:
        problems.append(
            Problem(_line_of(doc, "jobs", 1), f"{len(raw_jobs):,} jobs; the limit is {max_jobs:,}")
        )
        raw_jobs = []

    jobs: list[JobSpec] = []
    seen: dict[str, int] = {}
    jobs_line = _line_of(doc, "jobs", 1) or 1
    for index, raw in enumerate(raw_jobs, start=1):
        item_line = raw_jobs.item_lines[index - 1] if isinstance(raw_jobs, _LineList) else jobs_line
        spec = _parse_job(raw, index, batch, default_asd, item_line, problems)
        if spec is None:
            continue
        first = seen.get(spec.reference_id)
        if first is not None:
            problems.append(
                Problem(
                    spec.line,
                    f"job {index}: reference_id {spec.reference_id!r} is already used by the "
                    f"job at line {first}",
                )
            )
            continue
        seen[spec.reference_id] = spec.line
        jobs.append(spec)

    if problems:
        problems.sort(key=lambda p: p.line or 0)
        raise ManifestError(name, problems)
    return Manifest(path=name, batch=batch, jobs=jobs)


def _parse_job(
    raw: object,
    index: int,
    batch: str,
    default_asd: bool,
    item_line: int,
    problems: list[Problem],
) -> JobSpec | None:
    if not isinstance(raw, _LineDict):
        problems.append(
            Problem(
                item_line,
                f"job {index}: must be a mapping with video/audio or inputs, not {_type_name(raw)}",
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
                f"unknown key {k!r} (expected video, audio or inputs, reference_id, "
                "disable_active_speaker_detection)",
            )

    video: object = None
    audio: object = None
    if "inputs" in raw:
        if "video" in raw or "audio" in raw:
            bad("inputs", "give either inputs or video/audio, not both")
        inputs = raw["inputs"]
        if not isinstance(inputs, _LineList):
            bad("inputs", "inputs must be a list of {type, url}")
            inputs = _LineList()
        videos: list[object] = []
        audios: list[object] = []
        for item in inputs:
            if not isinstance(item, _LineDict):
                bad(
                    "inputs",
                    f"each input must be a mapping with type and url, not {_type_name(item)}",
                )
                continue
            extra = [k for k in item if k not in ("type", "url")]
            if extra:
                problems.append(Problem(item.line, f"job {index}: unknown input key {extra[0]!r}"))
            kind = item.get("type")
            if kind == "video":
                videos.append(item.get("url"))
            elif kind == "audio":
                audios.append(item.get("url"))
            else:
                problems.append(
                    Problem(
                        item.key_lines.get("type", item.line),
                        f'job {index}: input type must be "video" or "audio", not {kind!r:.40}',
                    )
                )
        if isinstance(inputs, _LineList) and len(videos) != 1:
            bad("inputs", f"expected exactly one video input, found {len(videos)}")
        if isinstance(inputs, _LineList) and len(audios) != 1:
            bad("inputs", f"expected exactly one audio input, found {len(audios)}")
        video = videos[0] if len(videos) == 1 else None
        audio = audios[0] if len(audios) == 1 else None
        url_key = "inputs"
        checks = (
            [(video, "the video url"), (audio, "the audio url")]
            if len(videos) == len(audios) == 1
            else []
        )
        for value, what in checks:
            problem = _check_url(value, what)
            if problem:
                bad(url_key, problem)
    else:
        video = raw.get("video")
        audio = raw.get("audio")
        if "video" not in raw:
            bad(None, "no video (give video: URL, or inputs:)")
        else:
            problem = _check_url(video, "video")
            if problem:
                bad("video", problem)
        if "audio" not in raw:
            bad(None, "no audio (give audio: URL, or inputs:)")
        else:
            problem = _check_url(audio, "audio")
            if problem:
                bad("audio", problem)

    asd = raw.get("disable_active_speaker_detection", default_asd)
    if not isinstance(asd, bool):
        bad(
            "disable_active_speaker_detection",
            "disable_active_speaker_detection must be true or false",
        )

    reference_id = raw.get("reference_id")
    if reference_id is not None:
        if isinstance(reference_id, int) and not isinstance(reference_id, bool):
            reference_id = str(reference_id)
        if not isinstance(reference_id, str) or not _REFERENCE_ID.match(reference_id):
            bad(
                "reference_id",
                "reference_id must be text of letters, digits and . _ : / @ + = - "
                f"(got {reference_id!r:.60})",
            )
        elif len(reference_id) > MAX_REFERENCE_ID:
            bad("reference_id", f"reference_id is longer than {MAX_REFERENCE_ID} characters")

    if len(problems) > before:
        return None
    assert isinstance(video, str) and isinstance(audio, str) and isinstance(asd, bool)
    if reference_id is None:
        reference_id = derive_reference_id(batch, video, audio)
    assert isinstance(reference_id, str)
    return JobSpec(reference_id, video, audio, asd, line)


def load(
    path: str | Path, max_bytes: int = DEFAULT_MAX_BYTES, max_jobs: int = DEFAULT_MAX_JOBS
) -> Manifest:
    """Read and validate a manifest file."""
    p = Path(path)
    return parse(read_text(p, max_bytes), str(path), _default_batch(p), max_jobs)


def _default_batch(path: Path) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", path.stem).strip("-._") or "batch"
    return stem[:100]
