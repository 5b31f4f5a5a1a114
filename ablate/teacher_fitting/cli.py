"""`ablate teachers ...`: fit tiny twins, LoRA-adapt teachers, list them. Parsing only."""

from __future__ import annotations

import click

from ablate.core.paths import TEACHERS_DIR  # torch-free, so --help stays fast

_COMMON = [
    click.option("--data", default="synth-blend", show_default=True, metavar="NAME",
                 help="Dataset whose real train frames are used: a benchmark family, "
                      "configs/data/<name>, or a manifest file."),
    click.option("--batch-size", type=int, help="Frames per step."),
    click.option("--lr", type=float, help="Learning rate [fit: 1e-3; adapt: 1e-3 tiny, 1e-4 real]."),
    click.option("--seed", type=int, default=0, show_default=True,
                 help="Sampling seed (and the tiny twin's initial weights)."),
    click.option("--max-frames", type=int, default=4000, show_default=True,
                 help="Use a seeded subset of at most N real frames."),
    click.option("--out", type=click.Path(file_okay=False),
                 help=f"Output folder (default: {TEACHERS_DIR}/<teacher>-...)."),
    click.option("--force", is_flag=True, help="Redo it even if the same result is stored."),
    click.option("--quiet", is_flag=True, help="No progress bars."),
]


def _common(func):  # noqa: ANN001, ANN202 - click decorator plumbing
    for option in reversed(_COMMON):
        func = option(func)
    return func


def _given(**values):  # noqa: ANN003, ANN202
    """Only the options the user set, so the settings' defaults apply to the rest."""
    return {k: v for k, v in values.items() if v is not None}


@click.group("teachers")
def teachers() -> None:
    """Teachers that know faces: fit tiny twins, LoRA-adapt any teacher, list them.

    \b
      ablate teachers fit tiny-sd15                 # ~2-3 min on 2 CPU cores
      ablate train teacher=tiny-sd15 teacher.path=results/teachers/tiny-sd15-synth-blend
      ablate teachers adapt sd15 --path /models/sd15 --lora-rank 8 --data ffpp
      ablate train teacher=sd15 teacher.path=/models/sd15 teacher.lora=results/teachers/sd15-lora8-ffpp
      ablate teachers list
    """


@teachers.command("fit")
@click.argument("teacher", metavar="TEACHER")
@_common
@click.option("--steps", type=int, help="Denoiser (UNet or transformer) steps [default: 800].")
@click.option("--vae-steps", type=int, help="VAE steps, run first [default: 400].")
@click.option("--image-size", type=int, help="Frame size in pixels [default: 64].")
@click.option("--device", default="cpu", show_default=True, help="cpu | cuda | auto")
def fit_cmd(teacher: str, data: str, batch_size: int | None, lr: float | None, seed: int,
            max_frames: int, out: str | None, force: bool, quiet: bool, steps: int | None,
            vae_steps: int | None, image_size: int | None, device: str) -> None:
    """Train tiny twin TEACHER (tiny-sd15 | tiny-sd21 | tiny-sdxl | tiny-sd3 | tiny-flux) on
    real faces.

    The VAE first (reconstruction + small KL), then the denoiser's loss on its latents with
    the teacher's own objective (eps, v or flow velocity) and the empty prompt. Saved in diffusers layout; the same
    teacher + data + settings are reused unless --force.
    """
    # lazy: loads torch only when called
    from ablate.teacher_fitting.fit import FitSettings, fit_teacher

    settings = FitSettings(teacher=teacher, data=data, seed=seed, max_frames=max_frames,
                           **_given(batch_size=batch_size, lr=lr, steps=steps,
                                    vae_steps=vae_steps, image_size=image_size))
    result = fit_teacher(settings, out, force, device, progress=not quiet)
    meta = result.meta
    if result.reused:
        click.echo(f"reusing {result.folder} (same teacher, data and settings; --force refits)")
    else:
        loss, rec = meta["losses"]["denoise"], meta["losses"]["vae_l1"]
        vae = f", VAE L1 {rec['first']:.3f} -> {rec['last']:.3f}" if rec["first"] is not None else ""
        click.echo(f"fitted {teacher} on {meta['frames']} real frames of {meta['data']} in "
                   f"{meta['wall_s']:.0f}s: denoising loss {loss['first']:.3f} -> "
                   f"{loss['last']:.3f}{vae}")
        click.echo(f"saved to {result.folder}")
    click.echo(f"use it: ablate train teacher={teacher} teacher.path={result.folder}")


@teachers.command("adapt")
@click.argument("teacher", metavar="TEACHER")
@_common
@click.option("--lora-rank", type=int, default=4, show_default=True, help="LoRA rank r.")
@click.option("--lora-alpha", type=float, help="LoRA alpha (scale alpha/r) [default: the rank].")
@click.option("--path", "base_path", metavar="PATH",
              help="teacher.path of the base: a real SD folder/file, or a fitted twin's folder.")
@click.option("--dtype", default="float32", show_default=True, help="Real teachers' dtype.")
@click.option("--steps", type=int, help="Training steps [default: 300].")
@click.option("--image-size", type=int, help="Frame size [default: 64 tiny, 256 real].")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda")
def adapt_cmd(teacher: str, data: str, batch_size: int | None, lr: float | None, seed: int,
              max_frames: int, out: str | None, force: bool, quiet: bool, lora_rank: int,
              lora_alpha: float | None, base_path: str | None, dtype: str, steps: int | None,
              image_size: int | None, device: str) -> None:
    """LoRA-adapt TEACHER's UNet or transformer (to_q/k/v/out) to a dataset's real faces.

    TEACHER is a teacher name (tiny-sd15, sd15, tiny-sd3, sd3, flux, ...; real ones need
    --path) or a fitted
    twin's folder. Stores the adapter (safetensors, diffusers/PEFT format) and the base it
    belongs to; use it as teacher.lora=FOLDER with that same base teacher.
    """
    # lazy: loads torch only when called
    from ablate.teacher_fitting.adapt import AdaptSettings, adapt_teacher

    settings = AdaptSettings(
        teacher=teacher, path=base_path, seed=seed, dtype=dtype, data=data, rank=lora_rank,
        alpha=lora_alpha, image_size=image_size, max_frames=max_frames,
        **_given(batch_size=batch_size, lr=lr, steps=steps),
    )
    result = adapt_teacher(settings, out, force, device, progress=not quiet)
    meta = result.meta
    if result.reused:
        click.echo(f"reusing {result.folder} (same base, data and settings; --force retrains)")
    else:
        loss = meta["losses"]["denoise"]
        click.echo(f"adapted {teacher} (rank {meta['rank']}, {meta['params']:,} LoRA params) on "
                   f"{meta['frames']} real frames of {meta['data']} in {meta['wall_s']:.0f}s: "
                   f"denoising loss {loss['first']:.3f} -> {loss['last']:.3f}")
        click.echo(f"saved to {result.folder}")
    # lazy: loads torch only when called
    from ablate.model.teachers import base_override

    click.echo(f"use it: ablate train {base_override(meta['base'])} teacher.lora={result.folder}")


@teachers.command("list")
@click.option("--root", default=str(TEACHERS_DIR), show_default=True,
              type=click.Path(file_okay=False), help="Where fitted teachers and adapters live.")
def list_cmd(root: str) -> None:
    """Built-in, fitted and adapted teachers: parameters, size on disk, where, how to use."""
    # lazy: loads torch only when called
    from ablate.teacher_fitting.catalog import catalog, format_catalog

    click.echo(format_catalog(catalog(root)))
