"""Making manifests: manifest from-listing."""

from __future__ import annotations

from pathlib import Path

import click

from dubrunner.cli.common import OFFLINE_OPTIONS, UserError, cli, end
from dubrunner.constants import EXIT_INCOMPLETE

UNPAIRED_SHOWN = 50  # named on stderr at most, each side


@cli.group()
def manifest() -> None:
    """Make manifests: from a folder of files or a list of URLs."""


@manifest.command("from-listing")
@click.argument("source", type=click.Path(path_type=Path))
@click.option(
    "--video",
    "video_pattern",
    required=True,
    metavar="PATTERN",
    help="Where the videos are, e.g. 'S1/E{ep}.mp4': {name} stands for one or more "
    "characters other than '/'.",
)
@click.option(
    "--audio",
    "audio_pattern",
    required=True,
    metavar="PATTERN",
    help="Where the dubs are, e.g. 'dubs/ja/E{ep}-ja.wav'; a video and a dub pair when the "
    "placeholders both patterns have are equal.",
)
@click.option(
    "--reference-id",
    metavar="TEMPLATE",
    help="Each job's reference_id from the placeholders, e.g. 's1e{ep}-ja' "
    "[default: derived when loaded].",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(("yaml", "csv", "jsonl")),
    help="[default: from --out's name, else yaml]",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the manifest here (whole, or not at all) [default: stdout].",
)
@OFFLINE_OPTIONS
def from_listing(
    source: Path,
    video_pattern: str,
    audio_pattern: str,
    reference_id: str | None,
    fmt: str | None,
    out: Path | None,
) -> None:
    """A manifest pairing the files under the folder SOURCE (or the URLs in the file SOURCE,
    one a line) by two patterns.

    Files under a relative SOURCE are written relative to the manifest's folder (--out's, else
    the current one), under an absolute SOURCE as absolute paths.
    Unpaired files are named on stderr. Exit codes: 0 every matched file paired; 1 the manifest
    of the pairs written, some files unpaired; 2 bad patterns, an unreadable SOURCE, a pattern
    matching two files for one key, or no pair at all: nothing written."""
    from dubrunner import listing as ls
    from dubrunner.session_ui import Ending

    try:
        video = ls.Pattern.compile(video_pattern, "video")
        audio = ls.Pattern.compile(audio_pattern, "audio")
        items, are_files = ls.listing(source)
        pairing = ls.pair(items, video, audio)
        refs = ls.reference_ids(reference_id, pairing)
    except ls.ListingError as exc:
        raise UserError(str(exc)) from None
    kind = "file" if are_files else "line"
    if not pairing.pairs:
        raise UserError(
            f"no pair in {source}: {len(items)} {kind}(s), "
            f"{len(pairing.unpaired_videos)} matched --video, "
            f"{len(pairing.unpaired_audios)} matched --audio; nothing written"
        )
    where = (out.parent if out is not None else Path.cwd()).absolute()
    rows = [
        (ls.located(v, source, are_files, where), ls.located(a, source, are_files, where), ref)
        for (v, a, _), ref in zip(pairing.pairs, refs, strict=True)
    ]
    comment = f"dubrunner manifest from-listing: {len(rows)} pairs from {source}"
    text = ls.render(rows, fmt or ls.format_of(out), comment)
    if out is None:
        click.echo(text, nl=False)
    else:
        try:
            ls.write_atomically(out, text)
        except ls.ListingError as exc:
            raise UserError(str(exc)) from None
    details = [
        f"unpaired {what}: {item}"
        for what, side in (("video", pairing.unpaired_videos), ("audio", pairing.unpaired_audios))
        for item in side[:UNPAIRED_SHOWN]
    ]
    extra = len(pairing.unpaired_videos) + len(pairing.unpaired_audios) - len(details)
    if extra:
        details.append(f"… and {extra} more unpaired")
    sentence = f"{len(rows)} pairs" + (f" written to {out}" if out else "")
    if pairing.ignored:
        sentence += f"; {pairing.ignored} {kind}(s) matched neither pattern (left out)"
    unpaired = len(pairing.unpaired_videos) + len(pairing.unpaired_audios)
    if unpaired:
        sentence += (
            f"; {len(pairing.unpaired_videos)} video(s) and "
            f"{len(pairing.unpaired_audios)} audio(s) unpaired (left out)"
        )
    end(
        Ending(
            sentence,
            EXIT_INCOMPLETE if unpaired else 0,
            routine=not unpaired,
            details=tuple(details),
        )
    )
