"""`ablate data ...`: cut face crops from videos, build manifests from them, check them.

Parsing only; the work lives in prepare/, adapters.py and manifest.py.
"""

from __future__ import annotations

from typing import Any

import click
import yaml

from ablate.core.errors import AblateError
from ablate.data.adapters import DATASETS, adapter_settings, build_manifest, format_notes
from ablate.data.deepfakebench import import_deepfakebench as run_import
from ablate.data.manifest import check_manifest, count_frames, format_protocol


@click.group("data")
def data() -> None:
    """Prepare face crops, build and check frame manifests."""


@data.command("check")
@click.argument("manifest", type=click.Path(dir_okay=False))
@click.option("--no-guided", is_flag=True, help="Skip the source/target checks (test sets).")
@click.option("--max-images", type=int, default=None, help="Open at most N images (sampled).")
def check(manifest: str, no_guided: bool, max_images: int | None) -> None:
    """Check MANIFEST: files, images, labels, duplicates, pairs; exit 1 on problems."""
    report = check_manifest(manifest, guided=not no_guided, max_images=max_images)
    click.echo(report.format())
    if not report.ok:
        raise SystemExit(1)


@data.command("manifest")
@click.argument("adapter")
@click.option("--root", required=True, type=click.Path(file_okay=False), help="Dataset folder.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help=".csv or .parquet")
@click.option("--frames-dir", default=None, help="Name of the extracted-frames folder.")
@click.option(
    "--source-is",
    type=click.Choice(["A", "B"]),
    default=None,
    help="FF++: which original of fake A_B is the source (default B).",
)
@click.option(
    "--preset",
    type=click.Choice(["deepfakebench", "paper", "official_code"]),
    default=None,
    help="Frame-count protocol: deepfakebench 32/video, paper 270 train/100 eval, "
    "official_code 50 real/16 fake balanced.",
)
@click.option(
    "--layout",
    default=None,
    help="On-disk layout (default: detected; the error lists the options).",
)
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="Any adapter setting, value in YAML (e.g. methods=[Deepfakes,FaceSwap]).",
)
def manifest(
    adapter: str,
    root: str,
    out: str,
    frames_dir: str | None,
    source_is: str | None,
    preset: str | None,
    layout: str | None,
    sets: tuple[str, ...],
) -> None:
    """Build the manifest of dataset ADAPTER from --root and write it to --out
    (and how it was made to OUT.json)."""
    settings = parse_sets(sets)
    given = (("frames_dir", frames_dir), ("source_is", source_is), ("preset", preset),
             ("layout", layout))
    for key, value in given:
        if value is not None:
            settings[key] = value
    df = build_manifest(adapter, root, out, **settings)
    click.echo(count_frames(df).to_string(index=False))
    for line in format_notes(df):
        click.echo(f"note: {line}")
    click.echo(format_protocol(df.attrs.get("protocol")))
    click.echo(f"wrote {len(df)} frames to {df.attrs['manifest']}")


@data.group("import")
def import_group() -> None:
    """Turn another toolkit's dataset description into a frame manifest."""


@import_group.command("deepfakebench")
@click.argument("jsons", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option(
    "--root",
    required=True,
    type=click.Path(file_okay=False),
    help="DeepfakeBench's rgb_dir: relative frame paths start here.",
)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help=".csv or .parquet")
@click.option(
    "--compression",
    type=click.Choice(["c23", "c40", "raw"]),
    default="c23",
    show_default=True,
    help="FF++ family: which compression level of the JSON to read.",
)
@click.option(
    "--split",
    "splits",
    multiple=True,
    type=click.Choice(["train", "val", "test"]),
    help="Import only these splits (repeatable; default all).",
)
@click.option(
    "--source-is",
    type=click.Choice(["A", "B"]),
    default="B",
    show_default=True,
    help="FF++: which original of fake A_B is the source (identity donor).",
)
def import_deepfakebench(
    jsons: tuple[str, ...],
    root: str,
    out: str,
    compression: str,
    splits: tuple[str, ...],
    source_is: str,
) -> None:
    """Write the manifest of DeepfakeBench dataset JSON file(s) JSONS to --out."""
    df = run_import(
        jsons, root, out, compression=compression, splits=splits or None, source_is=source_is
    )
    click.echo(count_frames(df).to_string(index=False))
    for line in format_notes(df):
        click.echo(f"note: {line}")
    click.echo(f"wrote {len(df)} frames to {df.attrs['manifest']}")


@data.command("prepare")
@click.option(
    "--videos", required=True, help="Folder (searched recursively), one video file, or a glob."
)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Crops go here.")
@click.option(
    "--preset",
    type=click.Choice(["deepfakebench", "diffusionfake"]),
    default=None,
    help="deepfakebench: aligned, scale 1.3, 256 px, 32 frames (= the defaults); "
    "diffusionfake: MTCNN box crop, scale 1.3, 256 px, 270 frames. Flags given override it.",
)
@click.option(
    "--frames",
    type=click.IntRange(min=0),
    default=None,
    help="Frames per video, evenly spaced; 0 = every frame.  [default: 32]",
)
@click.option("--size", type=int, default=None, help="Crop side in pixels.  [default: 256]")
@click.option(
    "--scale",
    type=float,
    default=None,
    help="Crop side = scale x the face (template span or box side).  [default: 1.3]",
)
@click.option(
    "--align",
    type=click.Choice(["similarity", "none"]),
    default=None,
    help="similarity: rotate/scale the 5 landmarks onto a template (DeepfakeBench); "
    "none: square box crop.  [default: similarity]",
)
@click.option(
    "--detector",
    type=click.Choice(["mtcnn", "lbp", "haar", "none"]),
    default=None,
    help="mtcnn: facenet-pytorch's MTCNN; lbp: scikit-image's cascade; haar: OpenCV 4's; "
    "none: centre crop.  [default: mtcnn]",
)
@click.option(
    "--min-face-score",
    type=float,
    default=None,
    help="A detection scoring lower is not a face (a miss; MTCNN only).  [default: 0.9]",
)
@click.option(
    "--smooth",
    type=click.IntRange(min=1),
    default=None,
    help="Average boxes/landmarks over this many neighbouring sampled frames; 1 = off.  "
    "[default: 3]",
)
@click.option(
    "--match-crops/--no-match-crops",
    default=None,
    help="Cut each FF++ fake A_B with the faces found on its target original A.  "
    "[default: on]",
)
@click.option("--margin", type=float, default=None, hidden=True)  # replaced by --scale
@click.option(
    "--frames-dir",
    default=None,
    help="Rename each 'videos' folder of the input paths to this (FF++/DFD: frames).",
)
@click.option(
    "--max-skip-fraction",
    type=float,
    default=0.05,
    show_default=True,
    help="Stop with an error once more than this fraction of videos is skipped.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Videos processed in parallel.",
)
@click.option("--overwrite", is_flag=True, help="Redo videos already prepared.")
@click.option(
    "--shard",
    default=None,
    metavar="I/N",
    help="Only node I of N's share of the videos (I from 0), dealt by sorted path; an FF++ "
    "fake goes with its target original. Run I = 0..N-1 into one shared --out.",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def prepare(
    videos: str,
    out: str,
    preset: str | None,
    frames: int | None,
    size: int | None,
    scale: float | None,
    align: str | None,
    detector: str | None,
    min_face_score: float | None,
    smooth: int | None,
    match_crops: bool | None,
    margin: float | None,
    frames_dir: str | None,
    max_skip_fraction: float,
    workers: int,
    overwrite: bool,
    shard: str | None,
    quiet: bool,
) -> None:
    """Cut evenly spaced frames of every video into face crops, resumably.

    \b
    VIDEOS/a/b/xyz.mp4 -> OUT/a/b/xyz/<frame index>.png (+ prepared.json).
    Skipped videos are listed; a rerun skips finished ones. Per-dataset
    commands: docs/data.md. FF++ as downloaded, crops where `ffpp` reads them
    (originals first, fakes cut with their target original's faces):
      ablate data prepare --videos 'ROOT/*_sequences/*/c23/videos/*.mp4' \\
          --out ROOT --frames-dir frames
    """
    # lazy: loads cv2 and skimage only when called
    from ablate.data.prepare import prepare as run_prepare
    from ablate.data.prepare.jobs import parse_shard

    if margin is not None:
        raise AblateError(
            f"--margin was replaced by --scale (crop side = scale x face): use --scale "
            f"{1 + margin:g} for --margin {margin:g}"
        )
    summary = run_prepare(
        videos,
        out,
        preset=preset,
        frames=frames,
        size=size,
        scale=scale,
        align=align,
        detector=detector,
        min_face_score=min_face_score,
        smooth=smooth,
        match_crops=match_crops,
        max_skip_fraction=max_skip_fraction,
        workers=workers,
        frames_dir=frames_dir,
        overwrite=overwrite,
        progress=not quiet,
        shard=None if shard is None else parse_shard(shard),
    )
    for line in summary.format():
        click.echo(line)


@data.command("adapters")
def adapters() -> None:
    """List dataset adapters and their settings."""
    for entry in DATASETS.entries():
        click.echo(f"{entry.name}: {entry.description}")
        settings = ", ".join(f"{k}={v!r}" for k, v in adapter_settings(entry.name).items())
        click.echo(f"    {settings}")


def parse_sets(sets: tuple[str, ...]) -> dict[str, Any]:
    """KEY=VALUE pairs -> settings, each value read as YAML (numbers, lists, null)."""
    settings: dict[str, Any] = {}
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise AblateError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            settings[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise AblateError(f"--set {key}: value {value!r} is not valid YAML") from None
    return settings
