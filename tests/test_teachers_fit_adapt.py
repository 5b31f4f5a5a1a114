"""Teachers that know faces: fitted tiny twins and LoRA adapters (save, load, check, list)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from torch import Tensor

from ablate.cli import cli, main
from ablate.core.errors import AblateError
from ablate.model.teachers import (
    ADAPTER_META,
    ADAPTER_WEIGHTS,
    FITTED_META,
    Teacher,
    fingerprints_match,
    load_lora,
    sd15,
    tiny_teacher,
    unet_fingerprint,
)
from ablate.registry import build
from ablate.teacher_fitting.adapt import AdaptResult, AdaptSettings, adapt_teacher, base_spec
from ablate.teacher_fitting.fit import (
    FitResult,
    FitSettings,
    LatentBank,
    denoising_loss,
    encode_bank,
    fit_teacher,
    train_denoiser,
)

# A few steps on 16 real frames at 32 px: what the tests need is the plumbing, not quality.
FIT = FitSettings(steps=3, vae_steps=2, batch_size=4, image_size=32, max_frames=16)
ADAPT = AdaptSettings(rank=4, steps=4, batch_size=4, image_size=32, lr=1e-2, max_frames=16)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("teachers")


@pytest.fixture(scope="module")
def fitted(root: Path) -> FitResult:
    return fit_teacher(FIT, out=root / "tiny-sd15-synth-blend", progress=False)


@pytest.fixture(scope="module")
def adapted(root: Path) -> AdaptResult:
    return adapt_teacher(ADAPT, out=root / "tiny-sd15-lora4-synth-blend", device="cpu",
                         progress=False)


def _inputs(batch: int = 2, size: int = 4) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, 4, size, size, generator=g), torch.tensor([10, 700][:batch])


@torch.no_grad()
def _predict(teacher: Teacher) -> Tensor:
    z, t = _inputs()
    return teacher.predict(z, t)  # [2, 4, 4, 4]


def _one_line_error(err: pytest.ExceptionInfo, *needles: str) -> None:
    message = str(err.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message


# --- fitted twins ---------------------------------------------------------------------------------


def test_fitted_twin_saves_and_reloads_identically(fitted: FitResult) -> None:
    folder, teacher = fitted.folder, fitted.teacher
    assert teacher is not None and not fitted.reused
    assert (folder / "unet/diffusion_pytorch_model.safetensors").is_file()
    assert (folder / "model_index.json").is_file() and not list(folder.parent.glob(".*partial"))
    meta = json.loads((folder / FITTED_META).read_text())
    assert meta["family"] == "sd15" and meta["frames"] == 16 and meta["settings"]["steps"] == 3
    loaded = build("teacher", "tiny-sd15", path=str(folder))
    assert loaded.name == "tiny-sd15" and not any(p.requires_grad for p in loaded.parameters())
    assert loaded.latent_scale == teacher.latent_scale == meta["latent_scale"] != 0.18215
    assert torch.equal(loaded.context, teacher.context)
    assert torch.equal(_predict(loaded), _predict(teacher))
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        a, b = teacher.vae.encode(images).latent_dist, loaded.vae.encode(images).latent_dist
    assert torch.equal(a.mean, b.mean) and torch.equal(a.std, b.std)
    enc = [t.encode(images, generator=torch.Generator().manual_seed(2)) for t in (teacher, loaded)]
    assert torch.equal(*enc)
    assert not torch.equal(_predict(loaded), _predict(tiny_teacher("sd15")))  # it did train
    assert sd15(path=str(folder)).latent_scale == loaded.latent_scale  # a real-variant folder too


def test_fit_is_cached_and_refuses_to_overwrite_other_settings(fitted: FitResult) -> None:
    again = fit_teacher(FIT, out=fitted.folder, progress=False)
    assert again.reused and again.teacher is None and again.meta["key"] == fitted.meta["key"]
    other = FitSettings(**{**FIT.__dict__, "steps": 4})
    with pytest.raises(AblateError) as err:
        fit_teacher(other, out=fitted.folder, progress=False)
    _one_line_error(err, "other settings", "--force")


@pytest.mark.slow  # seconds of training or many steps: not in make test-fast
def test_fitting_reduces_the_denoising_loss_on_a_fixed_batch() -> None:
    for family in ("sd15", "sd21"):  # epsilon and v-prediction objectives
        teacher = tiny_teacher(family)
        images = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
        bank = encode_bank(teacher, images, torch.device("cpu"))  # a fixed batch of 8 latents
        fixed = LatentBank(bank.mean, torch.zeros_like(bank.std), bank.scale)

        @torch.no_grad()
        def loss(bank: LatentBank = fixed, teacher: Teacher = teacher) -> float:
            g = torch.Generator().manual_seed(123)  # the same noise and timesteps every time
            return sum(denoising_loss(teacher, bank.sample(8, g), g).item() for _ in range(4))

        before = loss()
        g = torch.Generator().manual_seed(0)
        losses = train_denoiser(teacher, fixed, teacher.unet.parameters(), 30, 8, 2e-3, g)
        after = loss()
        print(f"tiny-{family} denoising loss {before / 4:.3f} -> {after / 4:.3f}")
        assert len(losses) == 30 and after < 0.8 * before
        assert not any(p.requires_grad for p in teacher.parameters())  # frozen again


def test_fit_user_errors() -> None:
    with pytest.raises(AblateError) as err:
        fit_teacher(FitSettings(teacher="sd15"), progress=False)
    _one_line_error(err, "cannot be fitted", "tiny-sd15", "teachers adapt")
    with pytest.raises(AblateError) as err:
        fit_teacher(FitSettings(image_size=60), progress=False)
    _one_line_error(err, "multiple of 8")


def test_tiny_path_checks_the_family(fitted: FitResult, tmp_path: Path) -> None:
    with pytest.raises(AblateError) as err:
        build("teacher", "tiny-sdxl", path=str(fitted.folder))
    _one_line_error(err, "not tiny-sdxl", "use teacher=tiny-sd15")
    with pytest.raises(AblateError) as err:
        build("teacher", "tiny-sd15", path=str(tmp_path / "nope"))
    _one_line_error(err, "does not exist", "ablate teachers list")


# --- LoRA adapters ---------------------------------------------------------------------------------


def test_adapter_round_trip_changes_the_output(adapted: AdaptResult) -> None:
    folder, trained = adapted.folder, adapted.teacher
    assert trained is not None and adapted.meta["base"]["seed"] == 0
    meta = json.loads((folder / ADAPTER_META).read_text())
    assert meta["base"]["family"] == "sd15" and meta["base"]["unet"]["weights"]
    base = _predict(tiny_teacher("sd15"))
    in_memory = _predict(trained)
    assert not torch.allclose(in_memory, base, atol=1e-4)
    fused = build("teacher", "tiny-sd15", lora=str(folder))  # what teacher.lora=PATH builds
    assert not any("lora" in k for k in fused.state_dict())  # plain modules, weights merged
    assert not any(p.requires_grad for p in fused.parameters()) and not fused.training
    torch.testing.assert_close(_predict(fused), in_memory, rtol=0, atol=1e-5)
    kept = load_lora(tiny_teacher("sd15"), folder, fuse=False)
    assert not any(p.requires_grad for p in kept.parameters())
    torch.testing.assert_close(_predict(kept), in_memory, rtol=0, atol=1e-6)
    # the file: diffusers' pipeline LoRA layout with the PEFT config in its header
    with safe_open(str(folder / ADAPTER_WEIGHTS), "pt") as handle:
        keys, header = list(handle.keys()), handle.metadata()
    assert keys and all(k.startswith("unet.") and ".lora_" in k for k in keys)
    assert {k.split(".lora_")[0].rsplit(".", 1)[-1] for k in keys} >= {"to_q", "to_k", "to_v"}
    assert json.loads(header["lora_adapter_metadata"])["unet.r"] == 4


def test_disabled_or_zero_scale_adapter_is_exactly_the_base(adapted: AdaptResult) -> None:
    base = _predict(tiny_teacher("sd15"))
    kept = load_lora(tiny_teacher("sd15"), adapted.folder, fuse=False)
    assert not torch.equal(_predict(kept), base)
    kept.unet.disable_adapters()
    assert torch.equal(_predict(kept), base)
    kept.unet.enable_adapters()
    assert not torch.equal(_predict(kept), base)
    assert torch.equal(_predict(load_lora(tiny_teacher("sd15"), adapted.folder, False, 0.0)), base)
    assert torch.equal(_predict(load_lora(tiny_teacher("sd15"), adapted.folder, True, 0.0)), base)


def test_unet_fingerprint_tolerates_half_precision_not_other_weights() -> None:
    unet = tiny_teacher("sd15").unet
    found = unet_fingerprint(unet)
    assert fingerprints_match(found, unet_fingerprint(tiny_teacher("sd15").unet))
    assert fingerprints_match(found, unet_fingerprint(tiny_teacher("sd15").unet.to(torch.bfloat16)))
    assert not fingerprints_match(found, unet_fingerprint(tiny_teacher("sd15", seed=1).unet))
    assert not fingerprints_match(found, unet_fingerprint(tiny_teacher("sd21").unet))


def test_adapter_base_mismatch_is_one_line(adapted: AdaptResult, fitted: FitResult,
                                           tmp_path: Path) -> None:
    lora = str(adapted.folder)
    with pytest.raises(AblateError) as err:
        build("teacher", "tiny-sd15", seed=1, lora=lora)
    _one_line_error(err, "other UNet weights", "use teacher=tiny-sd15 teacher.seed=0")
    with pytest.raises(AblateError) as err:
        build("teacher", "tiny-sd15", path=str(fitted.folder), lora=lora)
    _one_line_error(err, "other UNet weights")
    with pytest.raises(AblateError) as err:
        build("teacher", "tiny-sd21", lora=lora)
    _one_line_error(err, "trained for sd15 teachers", "not sd21")
    bare = tmp_path / "bare"  # weights without ablate_adapter.json: shapes are still checked
    bare.mkdir()
    shutil.copy(adapted.folder / ADAPTER_WEIGHTS, bare / ADAPTER_WEIGHTS)
    with pytest.raises(AblateError) as err:
        build("teacher", "tiny-sd21", lora=str(bare))
    _one_line_error(err, "does not fit teacher tiny-sd21")
    with pytest.raises(AblateError) as err:
        build("teacher", "tiny-sd15", lora=str(tmp_path / "missing"))
    _one_line_error(err, "does not exist")


def test_adapt_a_fitted_folder_and_unknown_names(fitted: FitResult) -> None:
    name, args = base_spec(AdaptSettings(teacher=str(fitted.folder)))
    assert name == "tiny-sd15" and args == {"seed": 0, "path": str(fitted.folder)}
    with pytest.raises(AblateError) as err:
        adapt_teacher(AdaptSettings(teacher="tiny-sd16"), progress=False)
    _one_line_error(err, "unknown teacher 'tiny-sd16'", "tiny-sd15")
    with pytest.raises(AblateError) as err:
        build("teacher", "sd16")
    _one_line_error(err, "unknown teacher 'sd16'")


# --- the command ------------------------------------------------------------------------------------


def _main(args: list[str], monkeypatch: pytest.MonkeyPatch,
          capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["ablate", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    return int(exit_info.value.code), capsys.readouterr().err


def test_cli_errors_are_one_line(monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _main(["teachers", "fit", "sd15"], monkeypatch, capsys)
    assert code == 2 and err.count("\n") == 1 and "cannot be fitted" in err
    code, err = _main(["teachers", "adapt", "nope"], monkeypatch, capsys)
    assert code == 2 and err.count("\n") == 1 and "unknown teacher 'nope'" in err


def test_cli_fit_reuses_and_list_shows_fitted_and_adapted(
    root: Path, fitted: FitResult, adapted: AdaptResult
) -> None:
    runner = CliRunner()
    args = ["teachers", "fit", "tiny-sd15", "--steps", "3", "--vae-steps", "2", "--batch-size",
            "4", "--image-size", "32", "--max-frames", "16", "--out", str(fitted.folder)]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "reusing" in result.output and f"teacher.path={fitted.folder}" in result.output
    result = runner.invoke(cli, ["teachers", "list", "--root", str(root)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "fitted (1)" in out and "adapted (1)" in out and "tiny-sd15-synth-blend" in out
    assert "tiny-sd15-lora4-synth-blend" in out and "teacher.lora=" in out
    assert "1.35M" in out  # the fitted twin's UNet + VAE parameters, read from its files
    assert "MB" in out
