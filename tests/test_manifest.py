"""Manifest schema, load/save and check_manifest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ablate.core.errors import AblateError
from ablate.data.manifest import (
    COLUMNS,
    check_manifest,
    count_frames,
    load_manifest,
    read_protocol,
    save_manifest,
)


def png(path: Path, value: int = 128) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((16, 16, 3), value, dtype=np.uint8)).save(path)
    return str(path)


def row(
    path: str,
    label: int = 0,
    video: str = "000",
    split: str = "train",
    frame: int = 0,
    source: str | None = None,
    target: str | None = None,
    method: str | None = None,
) -> dict:
    if label == 0 and source is None:
        source = target = path
    return {
        "path": path,
        "label": label,
        "video_id": video,
        "dataset": "toy",
        "split": split,
        "method": method or ("real" if label == 0 else "Deepfakes"),
        "frame": frame,
        "source_path": source,
        "target_path": target,
    }


@pytest.fixture
def clean(tmp_path: Path) -> pd.DataFrame:
    a = png(tmp_path / "frames/000/0000.png")
    b = png(tmp_path / "frames/001/0000.png")
    f = png(tmp_path / "frames/000_001/0000.png")
    return pd.DataFrame(
        [
            row(a, video="000"),
            row(b, video="001"),
            row(f, label=1, video="000_001", method="Deepfakes", source=b, target=a),
        ]
    )


@pytest.mark.parametrize("name", ["m.csv", "m.parquet"])
def test_save_load_round_trip(tmp_path, clean, name):
    out = tmp_path / name
    save_manifest(clean, out)
    raw = pd.read_parquet(out) if name.endswith("parquet") else pd.read_csv(out, dtype=str)
    assert list(raw.columns) == COLUMNS
    assert raw["path"].iloc[0] == "frames/000/0000.png"  # relative to the manifest's folder
    back = load_manifest(out)
    assert back["path"].tolist() == clean["path"].tolist()
    assert back["source_path"].tolist() == clean["source_path"].tolist()
    assert back["video_id"].tolist() == ["000", "001", "000_001"]  # not parsed as numbers
    assert back["label"].dtype.kind == "i" and back["frame"].dtype.kind == "i"
    assert back["path_text"].iloc[0] == "frames/000/0000.png"
    assert back.attrs["manifest"] == str(out.resolve())


def test_paths_outside_manifest_folder_stay_absolute(tmp_path, clean):
    out = tmp_path / "sub" / "m.csv"
    save_manifest(clean, out)
    assert pd.read_csv(out)["path"].iloc[0] == clean["path"].iloc[0]


def test_optional_partner_columns_and_empty_partners(tmp_path, clean):
    out = tmp_path / "m.csv"
    clean.drop(columns=["source_path", "target_path"]).to_csv(out, index=False)
    back = load_manifest(out)
    assert back["source_path"].isna().all()


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda df: df.drop(columns=["label"]), "lacks column"),
        (lambda df: df.assign(label=[0, 2, 1]), "label outside"),
        (lambda df: df.assign(label=["real", 0, 1]), "label outside"),
        (lambda df: df.assign(split=["train", "dev", "test"]), "split outside"),
        (lambda df: df.assign(frame=[0, 1.5, 2]), "non-integer frame"),
        (lambda df: df.iloc[0:0], "no rows"),
    ],
)
def test_load_rejects_bad_tables(tmp_path, clean, change, message):
    out = tmp_path / "m.csv"
    change(clean).to_csv(out, index=False)
    with pytest.raises(AblateError, match=message):
        load_manifest(out)


def test_load_rejects_missing_and_unreadable_files(tmp_path):
    with pytest.raises(AblateError, match="does not exist"):
        load_manifest(tmp_path / "none.csv")
    bad = tmp_path / "m.parquet"
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(AblateError, match="cannot read manifest"):
        load_manifest(bad)


def test_check_clean_manifest_is_ok(tmp_path, clean):
    save_manifest(clean, tmp_path / "m.csv")
    report = check_manifest(tmp_path / "m.csv")
    assert report.ok, report.format()
    assert report.images_opened == 3
    assert "no problems found" in report.format()
    counts = report.counts.set_index(["method", "label"])
    assert counts.loc[("real", 0), "frames"] == 2 and counts.loc[("real", 0), "videos"] == 2


def test_check_finds_every_problem(tmp_path, clean):
    corrupt = tmp_path / "frames/002/0000.png"
    corrupt.parent.mkdir(parents=True)
    corrupt.write_bytes(b"\x89PNG garbage bytes")
    truncated = tmp_path / "frames/003/0000.png"
    png(truncated)
    truncated.write_bytes(truncated.read_bytes()[:60])
    rows = [
        row(str(corrupt), video="002"),
        row(str(truncated), video="003"),
        row(str(tmp_path / "frames/gone.png"), video="004"),
        {**row(clean["path"][0], video="000"), "label": 3},
        row(clean["path"][1], video="001"),  # duplicate of clean row 1
        row(clean["path"][2], label=1, video="000_001"),  # fake without source/target
        row(
            png(tmp_path / "frames/001_000/0000.png"),
            label=1,
            video="001_000",
            source=str(tmp_path / "frames/missing_source.png"),
            target=clean["path"][1],
        ),
        row(png(tmp_path / "frames/005/0000.png"), video="000", split="test"),
    ]
    df = pd.concat([clean, pd.DataFrame(rows)], ignore_index=True)
    df.to_csv(tmp_path / "m.csv", index=False)  # bad label: write the file directly
    report = check_manifest(tmp_path / "m.csv")
    p = report.problems
    assert not report.ok
    assert sorted(p["unreadable images"]) == sorted([str(corrupt), str(truncated)])
    assert p["missing files"] == [str(tmp_path / "frames/gone.png")]
    assert len(p["bad labels"]) == 1 and "label=3" in p["bad labels"][0]
    assert p["duplicate rows (same path and split)"] == sorted(
        [clean["path"][0], clean["path"][1], clean["path"][2]]
    )
    assert p["fakes without source/target"] == [clean["path"][2]]
    assert p["missing source/target files"] == [str(tmp_path / "frames/missing_source.png")]
    assert p["videos in several splits"] == ["toy/000"]
    text = report.format()
    assert "PROBLEM unreadable images: 2" in text and "PROBLEM missing files: 1" in text


def test_check_not_guided_and_max_images(tmp_path, clean):
    clean.loc[2, ["source_path", "target_path"]] = None
    save_manifest(clean, tmp_path / "m.csv")
    assert not check_manifest(tmp_path / "m.csv").ok
    report = check_manifest(tmp_path / "m.csv", guided=False, max_images=2)
    assert report.ok and report.images_opened == 2 and report.images_total == 3


def test_check_structural_errors_raise(tmp_path, clean):
    clean.drop(columns=["split"]).to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(AblateError, match="split"):
        check_manifest(tmp_path / "m.csv")


def test_count_frames_empty():
    assert list(count_frames(pd.DataFrame(columns=COLUMNS)).columns)[-2:] == ["frames", "videos"]


def test_identity_and_family_columns_round_trip_as_text(tmp_path, clean):
    out = tmp_path / "m.csv"
    save_manifest(clean.assign(identity=["000", "001", "000"], family=[None, None, "FS"]), out)
    assert list(pd.read_csv(out, dtype=str).columns) == COLUMNS + ["identity", "family"]
    back = load_manifest(out)
    assert back["identity"].tolist() == ["000", "001", "000"]  # not parsed as numbers
    assert back["family"].isna().tolist() == [True, True, False]


def test_old_manifest_without_optional_columns_or_record_loads(tmp_path, clean):
    out = tmp_path / "m.csv"
    clean.to_csv(out, index=False)  # written by an older version: no identity, no sidecar
    back = load_manifest(out)
    assert back["identity"].isna().all() and back["family"].isna().all()
    assert back.attrs["protocol"] is None
    assert "protocol: not recorded" in check_manifest(out).format()


def test_protocol_record_follows_the_file_it_describes(tmp_path, clean):
    out = tmp_path / "m.csv"
    save_manifest(clean, out, protocol={"adapter": "toy", "preset": "paper"})
    assert read_protocol(out)["preset"] == "paper"
    assert "preset paper" in check_manifest(out).format()
    with open(out, "a") as f:  # the manifest changes under its record
        f.write(out.read_text().splitlines()[1] + "\n")
    assert read_protocol(out) is None
    save_manifest(clean, out)  # rewritten without a protocol: the stale record goes
    assert not (tmp_path / "m.csv.json").exists()
