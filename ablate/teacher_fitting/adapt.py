"""`ablate teachers adapt`: LoRA-adapt any teacher's UNet to a dataset's real faces.

Why LoRA: a real SD UNet is too large to fine-tune per dataset, and the detector wants the
teacher's general image prior kept; a low-rank update of the attention projections
(to_q, to_k, to_v, to_out.0) moves it toward the dataset's faces for a few MB. The VAE and the
empty-prompt conditioning stay as they are; the loss is the teacher's own denoising objective.

Output: `pytorch_lora_weights.safetensors` (diffusers' pipeline LoRA layout, `unet.` keys, the
PEFT LoraConfig in its header, so `pipe.load_lora_weights(folder)` reads it too) and
`ablate_adapter.json` naming the base teacher (family, path or seed, UNet fingerprint), which
`teacher.lora=FOLDER` checks before fusing the adapter.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from ablate.core.errors import AblateError
from ablate.model.teachers import (
    ADAPTER_META,
    ADAPTER_NAME,
    ADAPTER_WEIGHTS,
    FITTED_META,
    LORA_TARGETS,
    TEACHERS_DIR,
    Teacher,
    denoiser_fingerprint,
    folder_family,
    read_json,
)
from ablate.registry import build, registry
from ablate.teacher_fitting.fit import (
    cached,
    check_settings,
    encode_bank,
    load_images,
    loss_ends,
    publish,
    real_rows,
    resolve_device,
    rows_digest,
    slug,
    train_denoiser,
)

ADAPT_VERSION = 1


@dataclass(frozen=True)
class AdaptSettings:
    """Everything that defines an adapter (its cache key, with the base UNet fingerprint)."""

    teacher: str = "tiny-sd15"  # a registered teacher name, or a fitted/diffusers folder
    path: str | None = None  # teacher.path of the base
    seed: int = 0  # tiny twins: the base weights; always: the training's sampling
    dtype: str = "float32"  # real teachers only
    data: str = "synth-blend"
    rank: int = 4
    alpha: float | None = None  # LoRA scale alpha/rank; default alpha = rank (scale 1)
    steps: int = 300
    batch_size: int = 8
    image_size: int | None = None  # default: 64 for tiny twins, 256 (the paper's) otherwise
    lr: float | None = None  # default: 1e-3 for tiny twins, 1e-4 (diffusers' LoRA scripts) else
    max_frames: int = 4000


@dataclass
class AdaptResult:
    folder: Path
    reused: bool
    meta: dict[str, Any]
    teacher: Teacher | None = field(default=None, repr=False)  # base + kept adapter; None if reused


def base_spec(settings: AdaptSettings) -> tuple[str, dict[str, Any]]:
    """(registered name, arguments) of the base teacher; a folder is read for its family."""
    name, path = settings.teacher, settings.path
    if name not in registry("teacher"):
        folder = Path(name).expanduser()
        folder = folder if folder.is_dir() else TEACHERS_DIR / name
        if not folder.is_dir():
            registry("teacher").get(name)  # raises: unknown teacher, with the valid names
        if (folder / FITTED_META).is_file():
            name = str(read_json(folder / FITTED_META).get("teacher"))
        else:
            found = folder_family(folder)
            if found is None:
                raise AblateError(f"{folder} is not a teacher folder: no unet/ or transformer/ "
                                  "of sd15, sd21, sdxl, sd3 or flux to adapt")
            name = found
        path = str(folder)
    if name.startswith("tiny-"):
        return name, {"seed": settings.seed, "path": path}
    return name, {"path": path, "dtype": settings.dtype}


def base_record(name: str, args: dict[str, Any], teacher: Teacher) -> dict[str, Any]:
    """What `ablate_adapter.json` says about the base (checked by `load_lora`)."""
    path = args.get("path")
    return {
        "teacher": name,
        "family": teacher.family,
        "path": str(Path(path).expanduser().resolve()) if path else None,
        "seed": args.get("seed") if name.startswith("tiny-") and not path else None,
        "dtype": str(teacher.denoiser.dtype).removeprefix("torch."),
        "unet": denoiser_fingerprint(teacher.denoiser),
    }


def adapt_teacher(
    settings: AdaptSettings,
    out: str | Path | None = None,
    force: bool = False,
    device: str = "auto",
    progress: bool = True,
) -> AdaptResult:
    """Train a LoRA adapter for the base teacher on the real train frames and save it."""
    from peft import LoraConfig

    if settings.rank < 1:
        raise AblateError(f"--lora-rank must be positive, got {settings.rank}")
    name, args = base_spec(settings)
    tiny = name.startswith("tiny-")
    image_size = settings.image_size or (64 if tiny else 256)
    lr = settings.lr or (1e-3 if tiny else 1e-4)
    check_settings(settings.steps, settings.batch_size, image_size, settings.max_frames)
    teacher = build("teacher", name, **args)
    teacher.check_image_size(image_size)
    base = base_record(name, args, teacher)
    rows = real_rows(settings.data, settings.max_frames, settings.seed)
    digest = rows_digest(rows)
    blob = json.dumps(
        {**asdict(settings), "image_size": image_size, "lr": lr, "frames": digest,
         "base": base["unet"]["weights"], "v": ADAPT_VERSION},
        sort_keys=True,
    )
    key = hashlib.sha256(blob.encode()).hexdigest()[:16]
    label = Path(args["path"]).name if args.get("path") else name
    default = TEACHERS_DIR / f"{label}-lora{settings.rank}-{slug(settings.data)}"
    out = Path(out).expanduser() if out else default
    meta = cached(out, ADAPTER_META, key, force)
    if meta is not None:
        return AdaptResult(out, True, meta)

    start = time.perf_counter()
    torch_device = resolve_device(device)
    teacher.to(torch_device)
    images = load_images(rows, image_size)  # [N, 3, S, S]
    bank = encode_bank(teacher, images, torch_device)
    alpha = settings.alpha if settings.alpha is not None else settings.rank
    config = LoraConfig(
        r=settings.rank,
        lora_alpha=alpha,
        init_lora_weights="gaussian",  # lora_B = 0: training starts exactly at the base
        target_modules=list(LORA_TARGETS),
    )
    teacher.denoiser.add_adapter(config, adapter_name=ADAPTER_NAME)
    params = [p for n, p in teacher.denoiser.named_parameters() if ".lora_" in n]
    for p in params:  # train (and store) the adapter in fp32 even on a half-precision base
        p.data = p.data.float()
    generator = torch.Generator().manual_seed(settings.seed)
    losses = train_denoiser(
        teacher, bank, params, settings.steps, settings.batch_size, lr, generator,
        progress, desc="lora",
    )
    staging = out.parent / f".{out.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    save_adapter(teacher, staging)
    meta = {
        "kind": "lora",
        "weights": ADAPTER_WEIGHTS,
        "rank": settings.rank,
        "alpha": alpha,
        "target_modules": list(LORA_TARGETS),
        "params": sum(p.numel() for p in params),
        "base": base,
        "data": settings.data,
        "frames": len(images),
        "frames_digest": digest,
        "image_size": image_size,
        "lr": lr,
        "settings": asdict(settings),
        "key": key,
        "adapt_version": ADAPT_VERSION,
        "losses": {"denoise": loss_ends(losses)},
        "wall_s": round(time.perf_counter() - start, 1),
        "device": str(torch_device),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    (staging / ADAPTER_META).write_text(json.dumps(meta, indent=2) + "\n")
    publish(staging, out)
    teacher.origin = {"lora": str(out / ADAPTER_WEIGHTS), "lora_key": key, "lora_fused": False}
    return AdaptResult(out, False, meta, teacher)


def save_adapter(teacher: Teacher, folder: Path) -> None:
    """The adapter as diffusers writes pipeline LoRAs (safetensors, `unet.` or `transformer.`
    prefix + config)."""
    from diffusers.loaders import SD3LoraLoaderMixin, StableDiffusionLoraLoaderMixin
    from peft.utils import get_peft_model_state_dict

    net, part = teacher.denoiser, teacher.denoiser_name  # "unet" or "transformer"
    state = get_peft_model_state_dict(net, adapter_name=ADAPTER_NAME)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()}
    mixin = StableDiffusionLoraLoaderMixin if part == "unet" else SD3LoraLoaderMixin
    mixin.save_lora_weights(
        str(folder),
        **{f"{part}_lora_layers": state,
           f"{part}_lora_adapter_metadata": net.peft_config[ADAPTER_NAME].to_dict()},
        safe_serialization=True,
    )
