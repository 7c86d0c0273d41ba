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

`load` reads a file by its name: CSV and JSON Lines through sheets.py, anything else as YAML
here; every reader feeds its entries to the same checks (manifest_core.py).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from dubrunner.constants import DEFAULT_MAX_BYTES, DEFAULT_MAX_JOBS
from dubrunner.localmedia import DEFAULT_MAX_UPLOAD_BYTES, Digests
from dubrunner.manifest_core import Manifest as Manifest
from dubrunner.manifest_core import ManifestError as ManifestError
from dubrunner.manifest_core import (
    Media,
    RawJob,
    batch_problem,
    did_you_mean,
    finish,
    parse_job,
)
from dubrunner.manifest_core import Problem as Problem
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

_TOP_KEYS = frozenset({"batch", "defaults", "jobs"})
_DEFAULT_KEYS = frozenset({"disable_active_speaker_detection"})


def _line_of(mapping: object, key: str, default: int | None) -> int | None:
    if isinstance(mapping, LineDict):
        return mapping.key_lines.get(key, mapping.line)
    return default


def read_text(path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> str:
    """The file's text, or a ManifestError for what makes it unreadable."""
    name = str(path)
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # it is recorded with the jobs, as text
        shown = os.fsencode(name).decode("utf-8", "backslashreplace")
        raise ManifestError(
            shown, [Problem(None, "the file's name is not valid UTF-8: rename the file")]
        ) from None
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


def parse(
    text: str,
    name: str,
    default_batch: str,
    max_jobs: int = DEFAULT_MAX_JOBS,
    *,
    base_dir: Path | None = None,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    digests: Digests | None = None,
    given_batch: str | None = None,
) -> Manifest:
    """Validate a manifest's text. Raises ManifestError listing every problem found. Local
    files are found from `base_dir` (default: the working directory) and hashed by `digests`
    (default: hashed here, cached for this call only). `given_batch` (--batch) is the batch;
    a `batch:` in the text must then be the same."""
    problems: list[Problem] = []
    media = Media(base_dir or Path.cwd(), max_upload_bytes)
    digests = digests or Digests()
    raws: list[RawJob] = []
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
            job = parse_job(reader.value(item, 2), index, line_of_event(item), problems, media)
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
            f"unknown top-level key {show(k)}{did_you_mean(k, _TOP_KEYS)} (expected batch, "
            "defaults, jobs)",
        )
        for k in doc
        if k not in _TOP_KEYS and not (isinstance(k, str) and k.startswith("x-"))
    )

    batch = doc.get("batch", given_batch or default_batch)
    wrong = batch_problem(batch)
    if wrong:
        problems.append(Problem(_line_of(doc, "batch", 1), wrong))
        batch = given_batch or default_batch
    elif given_batch and batch != given_batch:
        problems.append(
            Problem(
                _line_of(doc, "batch", 1),
                f"batch {batch!r} differs from --batch {given_batch!r}; the batch is part of "
                "every derived reference_id: give one of them, or the same",
            )
        )

    default_asd = False
    defaults = doc.get("defaults")
    if defaults is not None:
        if not isinstance(defaults, LineDict):
            problems.append(Problem(_line_of(doc, "defaults", 1), "defaults must be a mapping"))
        else:
            problems.extend(
                Problem(
                    _line_of(defaults, k, None),
                    f"unknown key {show(k)} in defaults{did_you_mean(k, _DEFAULT_KEYS)}",
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
    return finish(name, batch, raws, default_asd, problems, digests)


def load(
    path: str | Path,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_jobs: int = DEFAULT_MAX_JOBS,
    *,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    digests: Digests | None = None,
    batch: str | None = None,
) -> Manifest:
    """Read and validate a manifest file: CSV (.csv), JSON Lines (.jsonl, .ndjson) or YAML
    (any other name). Local files are relative to its folder. `batch` (--batch) names the
    batch; without it, YAML's `batch:` or the file's stem."""
    p = Path(path)
    if batch is not None:
        wrong = batch_problem(batch)
        if wrong:
            raise ManifestError(str(path), [Problem(None, f"--{wrong}")])
    text = read_text(p, max_bytes)
    media = Media(p.absolute().parent, max_upload_bytes)
    kind = p.suffix.lower()
    if kind in (".csv", ".jsonl", ".ndjson"):
        from dubrunner.sheets import parse_csv, parse_jsonl

        reader = parse_csv if kind == ".csv" else parse_jsonl
        return reader(text, str(path), batch or _default_batch(p), max_jobs, media, digests)
    return parse(
        text,
        str(path),
        _default_batch(p),
        max_jobs,
        base_dir=media.base_dir,
        max_upload_bytes=max_upload_bytes,
        digests=digests,
        given_batch=batch,
    )


def _default_batch(path: Path) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", path.stem).strip("-._") or "batch"
    return stem[:100]
