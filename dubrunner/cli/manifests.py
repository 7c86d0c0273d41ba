"""Making manifests: manifest from-listing."""

from __future__ import annotations

from pathlib import Path

import click

from dubrunner.cli.common import OFFLINE_OPTIONS, UserError, cli, end


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
    Unpaired files are named on stderr, and unusable ones (a name not UTF-8, or with a control
    character), left out. Exit codes: 0 every matched file paired; 1 the manifest of the pairs
    written, some files unpaired or unusable; 2 bad patterns, an unreadable SOURCE, a pattern
    matching two files for one key, or no pair at all: nothing written."""
    from dubrunner import listing

    try:
        made = listing.from_listing(
            source,
            listing.Pattern.compile(video_pattern, "video"),
            listing.Pattern.compile(audio_pattern, "audio"),
            reference_id,
            fmt or listing.format_of(out),
            (out.parent if out is not None else Path.cwd()).absolute(),
        )
        if out is not None:
            listing.write_atomically(out, made.text)
    except listing.ListingError as exc:
        raise UserError(str(exc)) from None
    if out is None:
        click.echo(made.text, nl=False)
    end(made.ending(out))
