"""`ablate teachers list`: built-in, fitted and adapted teachers, their sizes and how to use them.

Sizes are read without loading weights: built-in architectures are counted on the meta device,
stored ones from their safetensors headers. Parameters are denoiser (UNet or transformer) + VAE (what a teacher holds;
text encoders are used once for the empty prompt) and, for adapters, the LoRA weights alone.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ablate.core.names import FITTED_META
from ablate.model import teachers as tm
from ablate.model.teachers import lora
from ablate.registry import registry


@dataclass(frozen=True)
class Entry:
    kind: str  # built-in | fitted | adapted
    name: str
    family: str
    params: int | None
    disk_mb: float | None  # None: built in memory, nothing stored
    where: str
    use: str  # recipe overrides that select it
    note: str = ""


def builtin_entries() -> list[Entry]:
    entries = []
    for name in registry("teacher").names():
        parts = tm.architecture(name)
        if parts is None:
            continue  # a variant registered elsewhere: no known architecture to count
        family = name.removeprefix("tiny-")
        if name.startswith("tiny-"):
            where, use = "in memory (seeded random weights)", f"teacher={name}"
        else:
            where = ("a local diffusers folder or .safetensors file" if family in ("sd15", "sd21", "sdxl")
                     else "a local diffusers folder")
            use = f"teacher={name} teacher.path=/path/to/{name}"
        params = sum(_meta_params(cls, config) for cls, config in parts)
        entries.append(Entry("built-in", name, family, params, None, where, use))
    return entries


def stored_entries(root: str | Path = lora.TEACHERS_DIR) -> list[Entry]:
    """Fitted twins and adapters directly under `root` (half-written `.partial` ones skipped)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        return []
    entries = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if (folder / FITTED_META).is_file():
            entries.append(_fitted(folder))
        elif (folder / lora.ADAPTER_META).is_file():
            entries.append(_adapted(folder))
    return entries


def catalog(root: str | Path = lora.TEACHERS_DIR) -> list[Entry]:
    return builtin_entries() + stored_entries(root)


def format_catalog(entries: list[Entry]) -> str:
    """A plain-text table, grouped by kind, each row followed by the overrides that use it."""
    lines: list[str] = []
    width = max((len(e.name) for e in entries), default=10)
    for kind in ("built-in", "fitted", "adapted"):
        group = [e for e in entries if e.kind == kind]
        lines.append(f"{kind} ({len(group)})")
        if not group and kind != "built-in":
            verb = "fit" if kind == "fitted" else "adapt"
            lines.append(f"  none yet: `ablate teachers {verb} ...`")
        for e in group:
            mb = "-" if e.disk_mb is None else f"{e.disk_mb:.1f} MB"
            lines.append(
                f"  {e.name:<{width}}  {e.family:<5} {human(e.params):>7} params  {mb:>9}  {e.where}"
            )
            detail = f"  ({e.note})" if e.note else ""
            lines.append(f"  {'':<{width}}  use: {e.use}{detail}")
    return "\n".join(lines)


def human(n: int | None) -> str:
    if n is None:
        return "?"
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}" if unit != "k" else f"{n / size:.0f}{unit}"
    return str(n)


def frozen_params(teacher: dict[str, Any] | None) -> int | None:
    """Parameters of a composed teacher config's denoiser + VAE (what a guided step carries
    frozen), without loading weights: a folder's safetensors headers, else the built-in
    architecture on the meta device; 0 for no teacher (the baseline), None if unknown."""
    if not teacher:
        return 0
    path = teacher.get("path")
    if path:
        folder = Path(str(path)).expanduser()
        if folder.is_file():
            return _safetensors_params([folder]) if folder.suffix == ".safetensors" else None
        if not folder.is_dir():
            folder = lora.TEACHERS_DIR / str(path)
        files = _weight_files(folder)
        return _safetensors_params(files) if files else None
    parts = tm.architecture(str(teacher.get("name")))
    return None if parts is None else sum(_meta_params(cls, config) for cls, config in parts)


# --- internals -----------------------------------------------------------------------------------


def _weight_files(folder: Path) -> list[Path]:
    """The denoiser's and VAE's safetensors, one variant each: the plain files (shards
    included) where there are any, else the one variant the folder holds (e.g. fp16)."""
    files = []
    for sub in ("unet", "transformer", "vae"):
        found = sorted((folder / sub).glob("*.safetensors"))
        plain = [f for f in found if "." not in f.stem]  # not .fp16. / .non_ema. variants
        variants = sorted({f.stem.split(".", 1)[1].split("-")[0] for f in found if "." in f.stem})
        files += plain or [f for f in found if variants and f".{variants[0]}" in f.name]
    return files


def _meta_params(cls: type, config: dict[str, Any]) -> int:
    with torch.device("meta"):
        model = cls(**config)
    return sum(p.numel() for p in model.parameters())


BUFFERS = ("pos_embed.pos_embed", "position_ids")  # saved with the weights, not parameters


def _safetensors_params(files: list[Path]) -> int | None:
    """Parameter count from safetensors headers (no tensor is read); stored buffers that are
    no parameters (SD3's sincos position table, CLIP's position ids) are left out."""
    from safetensors import safe_open

    total = 0
    try:
        for file in files:
            with safe_open(str(file), "pt") as handle:
                for key in handle.keys():
                    if key.endswith(BUFFERS):
                        continue
                    shape = handle.get_slice(key).get_shape()
                    total += int(torch.Size(shape).numel())
    except Exception:  # noqa: BLE001 - a listing shows '?' for an unreadable file
        return None
    return total


def _disk_mb(folder: Path) -> float:
    total = sum(os.path.getsize(p) for p in folder.rglob("*") if p.is_file())
    return total / 2**20


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _meta(folder: Path, name: str) -> dict[str, Any]:
    try:
        data = json.loads((folder / name).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _fitted(folder: Path) -> Entry:
    meta = _meta(folder, FITTED_META)
    weights = _weight_files(folder)
    where = _display(folder)
    settings = meta.get("settings") or {}
    loss = (meta.get("losses") or {}).get("denoise") or {}
    note = f"{meta.get('data', '?')}: {meta.get('frames', '?')} real frames"
    if settings:
        note += f", {settings.get('steps')} steps at {settings.get('image_size')} px"
    if loss.get("first") is not None:
        note += f", denoising loss {loss['first']:.3f} -> {loss['last']:.3f}"
    return Entry(
        "fitted",
        folder.name,
        str(meta.get("family", "?")),
        _safetensors_params(weights),
        _disk_mb(folder),
        where,
        f"teacher={meta.get('teacher', 'tiny-?')} teacher.path={where}",
        note if meta else "unreadable metadata",
    )


def _adapted(folder: Path) -> Entry:
    meta = _meta(folder, lora.ADAPTER_META)
    base = meta.get("base") or {}
    where = _display(folder)
    note = f"rank {meta.get('rank', '?')} LoRA of {lora.base_label(base)} on {meta.get('data', '?')}"
    return Entry(
        "adapted",
        folder.name,
        str(base.get("family", "?")),
        _safetensors_params([folder / meta.get("weights", lora.ADAPTER_WEIGHTS)]),
        _disk_mb(folder),
        where,
        f"{lora.base_override(base)} teacher.lora={where}",
        note if meta else "unreadable metadata",
    )
