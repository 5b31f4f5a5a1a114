"""`ablate export`: ONNX and TorchScript files give the run's logits, carry the run's metadata,
and bad input is one line that writes nothing.

The equality facts are computed apart from the exporter's own parity code: the classifier
from `load_classifier`, fresh seeded images, and the written file read back through
`load_exported` (what `ablate predict` calls); the metadata are compared with run.json and
recipe.yaml as they lie in the run folder, and read once more with onnx / torch.jit directly.
Runs: the session's tiny guided run (the `tiny` EfficientNet twin) and two ViT twins
(tiny-clip, tiny-dinov2) trained here, whose grid reshape is what tracing trips on.
"""

from __future__ import annotations

import copy
import json
import shutil
import sys
from pathlib import Path

import onnx
import pytest
import torch
from click.testing import CliRunner

from ablate.checkpoint import INFERENCE, RECIPE, load_classifier
from ablate.core.errors import AblateError
from ablate.export import export_run, load_exported, to_onnx
from ablate.export import run as run_module
from ablate.export.cli import export
from ablate.recipe import compose, load_yaml, recipe_hash
from ablate.train import train
from tests.conftest import TINY_RUN, run_cli

SUFFIX = {"onnx": ".onnx", "torchscript": ".pt"}
TOLERANCE = 1e-4
VIT_TWINS = ("tiny-clip", "tiny-dinov2")


# ---------------------------------------------------------------- helpers


def images(size: int, n: int, seed: int) -> torch.Tensor:
    """Seeded images [n, 3, size, size] in [-1, 1], other draws than the parity check's."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


def max_gap(run: Path, file: Path) -> float:
    """Max |Δlogit| between the file (through load_exported) and the run's classifier
    (through load_classifier), on fresh images at three batch sizes (the axis is dynamic)."""
    classifier, cfg = load_classifier(run)
    model = load_exported(file)
    gap = 0.0
    for n, seed in ((4, 7), (1, 8), (6, 9)):
        x = images(int(cfg.image_size), n, seed)
        with torch.no_grad():
            want = classifier(x)
        got = model(x)
        assert got.shape == want.shape == (n,)
        assert got.dtype == torch.float32
        gap = max(gap, float((got - want).abs().max()))
    return gap


def one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert text and "\n" not in text, text
    return text


def fake_run(tmp_path: Path) -> Path:
    """A folder `resolve_run` accepts (the files exist), for errors caught before loading."""
    folder = tmp_path / "fake-run"
    folder.mkdir()
    (folder / INFERENCE).write_bytes(b"")
    (folder / RECIPE).write_text("image_size: 32\n")
    return folder


def copy_run(run: Path, tmp_path: Path) -> Path:
    """The shared run's files in a folder of this test's own (it is written into)."""
    folder = tmp_path / run.name
    shutil.copytree(run, folder, ignore=shutil.ignore_patterns("tensorboard"))
    return folder


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """Plain (unguided) runs of the ViT twins, two steps at 32 px: export reads only the
    encoder and head."""
    base = [o for o in TINY_RUN if not o.startswith(("backbone=", "train.steps="))]
    out = tmp_path_factory.mktemp("vit-twins")
    return {name: train(compose([*base, f"backbone={name}", "train.steps=2", "guide=none",
                                 f"run.out_dir={out}", f"run.name={name}"]),
                        progress=False).folder
            for name in VIT_TWINS}


# ---------------------------------------------------------------- the logits


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_the_tiny_runs_file_gives_its_logits(tiny_run, tmp_path, fmt):
    out = tmp_path / f"detector{SUFFIX[fmt]}"
    result = export_run(tiny_run, fmt, out)
    assert result.path == out and out.is_file() and result.size_bytes == out.stat().st_size
    assert result.parity.ok and result.parity.max_diff <= TOLERANCE
    assert result.parity.images == 4
    assert max_gap(tiny_run, out) <= TOLERANCE
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary file left


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("twin", VIT_TWINS)
def test_a_vit_twins_file_gives_its_logits(twins, tmp_path, twin, fmt):
    out = tmp_path / f"{twin}{SUFFIX[fmt]}"
    result = export_run(twins[twin], fmt, out)
    assert result.exporter == ("dynamo" if fmt == "onnx" else "torch.jit.trace")
    assert result.notes == ()
    assert max_gap(twins[twin], out) <= TOLERANCE


def test_the_fallback_exporter_gives_the_same_logits_and_says_so(twins, tmp_path,
                                                                  monkeypatch):
    # the TorchScript-based ONNX exporter traces: the ViT grid reshape is where it trips
    def dynamo_fails(*_args):
        raise RuntimeError("simulated dynamo failure\nwith a second line")

    monkeypatch.setattr(to_onnx, "_dynamo", dynamo_fails)
    out = tmp_path / "clip.onnx"
    result = export_run(twins["tiny-clip"], "onnx", out)
    assert result.exporter == "torchscript-based"
    assert result.notes == ("note: the dynamo ONNX exporter failed (simulated dynamo failure); "
                            "used the TorchScript-based exporter (opset 18)",)
    assert load_exported(out).metadata["exporter"] == "torchscript-based"
    assert max_gap(twins["tiny-clip"], out) <= TOLERANCE


def test_both_onnx_exporters_failing_is_one_line_that_writes_nothing(tiny_run, tmp_path,
                                                                     monkeypatch):
    def fails(*_args):
        raise RuntimeError("simulated")

    monkeypatch.setattr(to_onnx, "_dynamo", fails)
    monkeypatch.setattr(to_onnx, "_legacy", fails)
    with pytest.raises(AblateError) as err:
        export_run(tiny_run, "onnx", tmp_path / "m.onnx")
    assert "try --format torchscript" in one_line(err)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- the metadata


def test_the_metadata_round_trip_in_both_formats(tiny_run, tmp_path):
    info = json.loads((tiny_run / "run.json").read_text())
    text = (tiny_run / RECIPE).read_text()
    cfg = load_yaml(tiny_run / RECIPE)
    written = {}
    for fmt in ("onnx", "torchscript"):
        out = tmp_path / f"m{SUFFIX[fmt]}"
        result = export_run(tiny_run, fmt, out)
        meta = load_exported(out).metadata
        assert meta == result.metadata
        assert meta["format"] == fmt
        assert meta["threshold"] == info["selection"]["threshold"] is not None
        assert meta["recipe_hash"] == recipe_hash(cfg) == info["recipe_hash"]
        assert meta["image_size"] == cfg.image_size == 32
        assert meta["recipe"] == text
        assert meta["run"] == tiny_run.name
        assert meta["checkpoint_step"] == info["checkpoint_step"]
        assert meta["input_range"] == [-1, 1]
        assert meta["mean"] == meta["std"] == [0.5, 0.5, 0.5]
        assert (meta["channel_order"], meta["layout"]) == ("RGB", "NCHW")
        assert meta["output"] == "logit (sigmoid = P(fake))"
        assert meta["ablate_version"]
        written[fmt] = out
    # read once more without ablate: where other consumers look
    props = {p.key: p.value for p in onnx.load(str(written["onnx"])).metadata_props}
    assert json.loads(props["ablate"])["recipe_hash"] == recipe_hash(cfg)
    extra = {"ablate.json": ""}
    torch.jit.load(str(written["torchscript"]), _extra_files=extra)
    assert json.loads(extra["ablate.json"])["threshold"] == info["selection"]["threshold"]


def test_a_run_without_a_threshold_exports_null(tiny_run, tmp_path):
    folder = copy_run(tiny_run, tmp_path)
    info = json.loads((folder / "run.json").read_text())
    info["selection"] = None
    (folder / "run.json").write_text(json.dumps(info))
    result = export_run(folder, "torchscript", tmp_path / "m.pt")
    assert result.metadata["threshold"] is None


# ---------------------------------------------------------------- parity refuses a bad file


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_a_file_off_by_more_than_the_tolerance_is_refused_and_the_old_file_stays(
        tiny_run, tmp_path, monkeypatch, fmt):
    out = tmp_path / f"m{SUFFIX[fmt]}"
    out.write_bytes(b"the file a user had")
    real = run_module.WRITERS[fmt]

    def shifted(shift: float):
        def writer(classifier, example, meta):  # every logit moves by `shift`
            bad = copy.deepcopy(classifier)
            with torch.no_grad():
                bad.head.bias += shift
            return real(bad, example, meta)
        return writer

    monkeypatch.setitem(run_module.WRITERS, fmt, shifted(1e-3))
    with pytest.raises(AblateError) as err:
        export_run(tiny_run, fmt, out)
    assert one_line(err).startswith("parity: max |Δlogit| / max(1, |logit|) 1.0e-03 > 1e-04 on 4 images (")
    assert out.read_bytes() == b"the file a user had"
    assert [p.name for p in tmp_path.iterdir()] == [out.name]
    # a shift within the tolerance passes, and is measured
    monkeypatch.setitem(run_module.WRITERS, fmt, shifted(5e-5))
    result = export_run(tiny_run, fmt, out)
    assert 4e-5 < result.parity.max_diff <= TOLERANCE


def test_an_exporter_that_changes_the_classifier_cannot_fool_the_check(tiny_run, tmp_path,
                                                                       monkeypatch):
    # the reference logits are taken before export: a writer that leaves the module in
    # training mode (BatchNorm on batch statistics) is compared with the eval-mode logits
    real = run_module.WRITERS["torchscript"]

    def in_train_mode(classifier, example, meta):
        return real(classifier.train(), example, meta)

    monkeypatch.setitem(run_module.WRITERS, "torchscript", in_train_mode)
    with pytest.raises(AblateError) as err:
        export_run(tiny_run, "torchscript", tmp_path / "m.pt")
    assert " > 1e-04 on 4 images (torch.jit, CPU)" in one_line(err)
    assert list(tmp_path.iterdir()) == []


def test_a_failing_export_leaves_the_existing_file(tiny_run, tmp_path, monkeypatch):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"old")

    def fails(*_args):
        raise AblateError("simulated exporter failure")

    monkeypatch.setitem(run_module.WRITERS, "onnx", fails)
    with pytest.raises(AblateError):
        export_run(tiny_run, "onnx", out)
    assert out.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


# ---------------------------------------------------------------- bad input: one line


def test_an_unknown_format_is_one_line(tmp_path):
    with pytest.raises(AblateError) as err:
        export_run(fake_run(tmp_path), "tflite", tmp_path / "m.tflite")
    assert "unknown export format 'tflite'" in one_line(err)
    assert not (tmp_path / "m.tflite").exists()


def test_a_folder_that_is_no_run_is_one_line(tmp_path):
    with pytest.raises(AblateError) as err:
        export_run(tmp_path, "onnx", tmp_path / "m.onnx")
    assert "is not a run folder" in one_line(err)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("fmt", "name"), [("onnx", "m.pt"), ("torchscript", "m.onnx"),
                                           ("onnx", "m"), ("torchscript", "m.pth")])
def test_a_suffix_of_another_format_is_one_line(tmp_path, fmt, name):
    folder = fake_run(tmp_path)
    with pytest.raises(AblateError) as err:
        export_run(folder, fmt, tmp_path / name)
    assert f"{fmt} files end in" in one_line(err)
    assert not (tmp_path / name).exists()


def test_an_out_that_is_a_folder_is_one_line(tmp_path):
    (tmp_path / "x.onnx").mkdir()
    with pytest.raises(AblateError) as err:
        export_run(fake_run(tmp_path), "onnx", tmp_path / "x.onnx")
    assert "is a folder" in one_line(err)


def test_a_missing_package_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript now fails
    with pytest.raises(AblateError) as err:
        export_run(fake_run(tmp_path), "onnx", tmp_path / "m.onnx")
    assert one_line(err) == ("ablate export --format onnx needs onnx, onnxruntime and "
                             "onnxscript (missing: onnxscript): pip install 'ablate[export]'")
    assert not (tmp_path / "m.onnx").exists()


def test_files_that_are_not_exports_are_one_line(tmp_path, monkeypatch):
    cases = {}
    plain = tmp_path / "plain.pt"  # TorchScript, but not written by ablate export
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 1)), str(plain))
    cases[plain] = "carries no ablate metadata"
    pickled = tmp_path / "pickled.pt"  # a torch.save checkpoint is never unpickled
    torch.save({"w": torch.zeros(1)}, pickled)
    cases[pickled] = "is not a TorchScript archive"
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a protobuf")
    cases[garbage] = "is not a readable ONNX model"
    cases[tmp_path / "absent.onnx"] = "no such exported model file"
    cases[tmp_path / "model.h5"] = "not an exported model file"
    for path, says in cases.items():
        with pytest.raises(AblateError) as err:
            load_exported(path)
        assert says in one_line(err), path
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(AblateError) as err:
        load_exported(garbage)
    assert "pip install 'ablate[export]'" in one_line(err)


def test_images_of_another_size_are_one_line(tiny_run, tmp_path):
    out = tmp_path / "m.onnx"
    export_run(tiny_run, "onnx", out)
    model = load_exported(out)
    with pytest.raises(AblateError) as err:
        model(images(64, 2, 0))
    assert "takes images [N, 3, 32, 32]" in one_line(err)
    assert model(images(32, 0, 0)).shape == (0,)


# ---------------------------------------------------------------- the command


def test_the_command_writes_into_the_run_folder_and_prints_parity(tiny_run, tmp_path):
    folder = copy_run(tiny_run, tmp_path)
    result = CliRunner().invoke(export, [str(folder)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith(f"wrote {folder / 'model.onnx'} (onnx, dynamo exporter, "
                               "opset 18, ")
    assert lines[1].startswith("parity: max |Δlogit| / max(1, |logit|) ")
    assert lines[1].endswith(" ≤ 1e-04 on 4 images (onnxruntime, CPU)")
    assert max_gap(folder, folder / "model.onnx") <= TOLERANCE
    result = CliRunner().invoke(export, [str(folder), "--format", "torchscript"])
    assert result.exit_code == 0 and (folder / "model.pt").is_file()
    assert "(torch.jit, CPU)" in result.output


def test_the_command_help_has_an_example():
    result = CliRunner().invoke(export, ["--help"])
    assert result.exit_code == 0
    assert "ablate export runs/r1 --format torchscript --out detector.pt" in result.output


def test_the_entry_point_prints_bad_input_as_one_line(tmp_path):
    # the real `ablate` main, which attaches the command with its other groups
    cases = [(["--format", "tflite"], "error: unknown export format 'tflite'"),
             (["--out", "m.pt"], "error: --out m.pt: onnx files end in .onnx"),
             ([], "is not a run folder")]
    for extra, says in cases:
        code, out, err = run_cli("export", str(tmp_path), *extra, cwd=tmp_path)
        assert code == 2 and out == "", (extra, out, err)
        assert err.count("\n") == 1 and says in err, err
    assert list(tmp_path.iterdir()) == []


def test_parity_is_relative_beyond_a_logit_of_one():
    """A confident detector's logits are tens: float32 reorderings of ~1e-6 of their size
    must pass, and the same absolute error on a logit near 0 must not."""
    from ablate.export.parity import check_parity

    class Shifted:  # an exported model whose logits are `want` + `delta`
        runtime = "test"

        def __init__(self, delta: float) -> None:
            self.delta = delta

        def __call__(self, images):
            return torch.full((len(images),), float(images[0, 0, 0, 0])) + self.delta

    def batch(logit: float):
        x = torch.full((2, 3, 4, 4), logit)
        return [(x, torch.full((2,), logit))]

    assert check_parity(Shifted(6e-5 * 75), batch(-75.0)).ok  # 6e-5 relative at logit -75
    assert not check_parity(Shifted(2e-4), batch(0.3)).ok  # 2e-4 absolute near 0
    assert not check_parity(Shifted(2e-4 * 75), batch(-75.0)).ok
