"""`ablate explain`: guided sampling from the frozen teacher, its determinism, the
disagreement AUC, and the lines a wrong RUN gets."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY_RUN
from diffusers import DDIMScheduler, DDPMScheduler, FlowMatchEulerDiscreteScheduler
from sklearn.metrics import roc_auc_score

from ablate.core.errors import AblateError
from ablate.explain.reconstruct import GuidedRun, load_guided_run, reconstruct
from ablate.explain.run import Settings, explain
from ablate.model.build import build_detector
from ablate.model.sampling import guidance_of, sample_branch
from ablate.recipe import compose

SIZE, STEPS = 32, 4


def _detector(teacher: str):
    torch.manual_seed(0)
    cfg = compose(["backbone=tiny", f"image_size={SIZE}", f"teacher={teacher}"])
    return build_detector(cfg).eval(), cfg


def _images(n: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _teacher_alone(teacher, noise: torch.Tensor, steps: int) -> torch.Tensor:
    """The teacher's own sampling, written against diffusers' schedulers directly: DDIM
    over the UNet for UNet teachers, flow-matching Euler for flow teachers."""
    config = teacher.scheduler.config
    latents, b = noise, noise.shape[0]
    if teacher.prediction_type == "flow_velocity":
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(config)
        if config.get("use_dynamic_shifting"):
            scheduler.set_timesteps(steps, mu=teacher.law.mu(teacher.tokens(noise.shape[-2:])))
        else:
            scheduler.set_timesteps(steps)
        for t in scheduler.timesteps:
            sigma = (t / config.num_train_timesteps).expand(b)
            latents = scheduler.step(teacher.predict(latents, sigma), t, latents).prev_sample
        return latents
    scheduler = DDIMScheduler.from_config(config, set_alpha_to_one=False)  # SD's DDIM
    scheduler.set_timesteps(steps)
    context = teacher.context.expand(b, -1, -1)
    for t in scheduler.timesteps:
        pred = teacher.unet(latents, t, encoder_hidden_states=context).sample
        latents = scheduler.step(pred, t, latents).prev_sample
    return latents


@pytest.mark.parametrize("teacher", ["tiny-sd15", "tiny-sd21", "tiny-sd3", "tiny-flux"])
def test_an_untrained_guide_samples_what_the_teacher_samples_alone(teacher: str) -> None:
    """The guide's projections start at zero, so at initialisation guided sampling is the
    teacher's own; once they are not zero, the guidance reaches the sampler."""
    detector, _ = _detector(teacher)
    t = detector.teacher
    images = _images()
    guidance = guidance_of(detector, images)
    shape = (2, t.latent_channels, SIZE // t.vae_factor, SIZE // t.vae_factor)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        reference = _teacher_alone(t, noise, STEPS)
        for index in (0, 1):
            guided = sample_branch(detector, index, guidance, noise, STEPS, SIZE)
            torch.testing.assert_close(guided, reference, rtol=1e-5, atol=1e-5)
        for p in detector.guide.parameters():  # every projection away from zero
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(4)))
        moved = sample_branch(detector, 0, guidance, noise, STEPS, SIZE)
    assert (moved - reference).abs().max() > 1e-3


def test_sdedit_runs_the_last_strength_of_the_schedule_from_the_frames_latent() -> None:
    detector, _ = _detector("tiny-sd15")
    calls: list[tuple[int, torch.Tensor]] = []
    original = detector.teacher.predict
    detector.teacher.predict = (
        lambda x, t, *r: calls.append((int(t[0]), x.clone())) or original(x, t, *r))
    guidance = guidance_of(detector, _images())
    noise = torch.randn(2, 4, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(0))
    init = detector.teacher.encode(_images())
    sample_branch(detector, 0, guidance, noise, 10, SIZE, init=init, strength=0.3)
    scheduler = DDPMScheduler.from_config(detector.teacher.scheduler.config)
    ddim = DDIMScheduler.from_config(detector.teacher.scheduler.config)
    ddim.set_timesteps(10)
    assert [t for t, _ in calls] == [int(t) for t in ddim.timesteps[7:]]  # the last 3 of 10
    # the first step sees the frame's latent noised to that step, by the DDPM rule
    start = ddim.timesteps[7]
    a = scheduler.alphas_cumprod[start]
    torch.testing.assert_close(calls[0][1], a.sqrt() * init + (1 - a).sqrt() * noise)
    with pytest.raises(AblateError, match="strength"):
        sample_branch(detector, 0, guidance, noise, 10, SIZE, init=init, strength=1.5)


def test_reconstructions_are_fixed_by_their_seeds_whatever_the_batch() -> None:
    detector, cfg = _detector("tiny-sd15")
    for p in detector.guide.parameters():  # a guide that does something
        p.data.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(5)))
    run = GuidedRun(None, cfg, detector)
    images = _images(3)
    first = reconstruct(run, images, [0, 1], STEPS)
    again = reconstruct(run, images, [0, 1], STEPS)
    other = reconstruct(run, images, [7, 8], STEPS)
    for key in ("source", "target", "latent_gap", "pixel_gap"):
        torch.testing.assert_close(getattr(first, key), getattr(again, key), rtol=0, atol=0)
    assert not torch.equal(first.source, other.source)
    assert (first.latent_gap > 0).all()  # the two branches' filters differ
    # frame 2 alone (as the first frame of a second batch) gets the noise it got at index 2
    alone = reconstruct(run, images[2:], [0, 1], STEPS, first_frame=2)
    torch.testing.assert_close(alone.latent_gap, first.latent_gap[2:], rtol=1e-5, atol=1e-6)
    with_strength = reconstruct(run, images, [0], STEPS, strength=0.5)
    torch.testing.assert_close(with_strength.source,
                               reconstruct(run, images, [0], STEPS, strength=0.5).source)


def test_the_interval_over_runs_is_students_t_per_recipe() -> None:
    from scipy import stats

    from ablate.explain.run import over_runs

    aucs = [0.61, 0.55, 0.70]
    summary = pd.DataFrame({
        "run": ["a0", "a1", "a2", "b0"], "recipe": ["A", "A", "A", "B"], "set": "s",
        "classifier_auc": [0.5, 0.6, 0.7, 0.9], "latent_gap_auc": [*aucs, 0.99],
        "pixel_gap_auc": [0.5, 0.5, 0.5, 0.5]})
    got = over_runs(summary)
    assert set(got["recipe"]) == {"A"}  # one run of B: no interval, never pooled with A
    row = got.set_index("score").loc["latent_gap_auc"]
    low, high = stats.t.interval(0.95, df=2, loc=np.mean(aucs), scale=stats.sem(aucs))
    assert (row["ci_low"], row["mean"], row["ci_high"]) == pytest.approx(
        (low, np.mean(aucs), high))
    assert row["runs"] == 3


@pytest.fixture(scope="module")
def explained(tmp_path_factory, tiny_run):
    out = tmp_path_factory.mktemp("explain")
    return explain([str(tiny_run)], ["synth-colour"], out=out,
                   settings=Settings(steps=2, samples=2, n=8, batch_size=4), device="cpu",
                   progress=False)


def test_the_disagreement_auc_is_sklearns_on_the_written_scores(explained) -> None:
    frames = pd.read_csv(explained.out / "frames.csv")
    summary = pd.read_csv(explained.out / "disagreement.csv")
    assert len(frames) == 8 and set(frames["label"]) == {0, 1}
    row = summary.iloc[0]
    for column, key in (("latent_gap", "latent_gap_auc"), ("pixel_gap", "pixel_gap_auc"),
                        ("score", "classifier_auc")):
        assert row[key] == pytest.approx(roc_auc_score(frames["label"], frames[column]))
    assert (explained.out / "synth-colour.png").stat().st_size > 1000


def test_two_runs_give_an_interval_over_runs(explained, tiny_run, tmp_path) -> None:
    import shutil

    twin = tmp_path / "twin"
    shutil.copytree(tiny_run, twin)
    result = explain([str(tiny_run), str(twin)], ["synth-colour"], out=tmp_path / "o",
                     settings=Settings(steps=2, samples=1, n=6, batch_size=6),
                     device="cpu", progress=False)
    row = result.intervals.set_index("score").loc["latent_gap_auc"]
    assert row["runs"] == 2 and "runs - 1 df" in row["procedure"]
    # identical runs: no spread, so the interval is the point
    assert row["ci_low"] == pytest.approx(row["mean"]) == pytest.approx(row["ci_high"])


@pytest.mark.parametrize("bad, says", [
    ({"strength": 1.5}, "--strength must be in"), ({"steps": 0}, "--steps must be"),
    ({"n": 0}, "--n must be"), ({"tests": ["no-such-set"]}, "no-such-set")])
def test_bad_settings_write_nothing(tiny_run, tmp_path, bad: dict, says: str) -> None:
    tests = bad.pop("tests", ["synth-colour"])
    with pytest.raises(AblateError, match=says):
        explain([str(tiny_run)], tests, out=tmp_path / "out",
                settings=Settings(**{"steps": 2, "n": 4, **bad}), device="cpu",
                progress=False)
    assert not (tmp_path / "out").exists()


def test_a_baseline_or_a_non_run_folder_is_one_line(tmp_path) -> None:
    from ablate.train import train

    with pytest.raises(AblateError, match="not a run folder"):
        load_guided_run(tmp_path)
    cfg = compose([*TINY_RUN, "guide=none", "train.steps=1", f"run.out_dir={tmp_path}",
                   "run.name=b"])
    baseline = train(cfg, progress=False).folder
    with pytest.raises(AblateError, match="baseline .*no filter, weight module or guide"):
        load_guided_run(baseline)


def test_the_report_shows_what_explain_measured(explained, tmp_path) -> None:
    from test_report import build_db

    from ablate.report.build import build_report

    url = f"sqlite:///{tmp_path / 'r.db'}"
    build_db(url)
    report = build_report("old", url, tmp_path / "report", formats="md",
                          explained=explained.out)
    md = (tmp_path / "report" / "report.md").read_text()
    section = md[md.index("## What the teacher rebuilds"):]
    summary = pd.read_csv(explained.out / "disagreement.csv").iloc[0]
    assert f"{summary['latent_gap_auc']:.3f}" in section and "2 sampler steps" in section
    assert (tmp_path / "report" / "explain" / "synth-colour.png").is_file()
    assert any(p.name == "report.md" for p in report.files)
    with pytest.raises(AblateError, match="no disagreement.csv"):
        build_report("old", url, tmp_path / "other", formats="md", explained=tmp_path)
    assert not (tmp_path / "other").exists()  # nothing written on bad input
