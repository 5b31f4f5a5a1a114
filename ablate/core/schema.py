"""The recipe's settings, each declared once: its default, one line of doc, and whether it
changes a result.

A recipe (`configs/config.yaml` composed) has
- the top-level settings `image_size` and `seed`;
- the groups `train`, `data`, `eval`, `run` and `loss`, each a fixed set of settings;
- the slots `backbone`, `filter`, `weight`, `guide`, `teacher`: `name` picks the variant, and
  the variant's own keys are the arguments of its registered factory
  (`registry(slot).get(name).arguments()`, declared by the factory's signature, not here).
  `SLOT_KEYS` declares only what code outside the variant reads or treats specially
  (`teacher.path`, `teacher.dtype`, the teacher's part files, `guide.layers`, ...).

What follows from the declarations, never listed by hand:
- `NON_RESULT_KEYS`: the settings (or whole groups) with `result=False`: a recipe that differs
  only in them is the same result, reused, not re-run;
- `OMIT_AT_DEFAULT`: the settings added after results were stored (`hash_when_default=False`):
  at their default they are left out of the recipe hash, so older recipes keep theirs;
- `FILE_KEYS`: the teacher settings that name weight files (their bytes define the result;
  `backbone.pretrained_path` is a file setting too, see ablate/core/identity.py).

`setting(cfg, "train.eval_every")` reads a setting, falling back to its default here when a
recipe lacks it (one saved before the setting existed); a recipe is never filled in, since a
key added to it would change its hash. How to add a setting: docs/recipe.md.

Plain Python (no Hydra, no torch): it works on a `DictConfig` and on a plain dict alike.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ablate.core.errors import AblateError
from ablate.core.names import SLOTS
from ablate.core.paths import RUNS_DIR


@dataclass(frozen=True)
class Setting:
    """One recipe setting."""

    default: Any
    doc: str
    result: bool = True  # False: changes where, how fast or how visibly, not what is computed
    hash_when_default: bool = True  # False: left out of the hash at its default (came later)
    file: bool = False  # names a local file: its bytes, not its path, define the result
    # (ablate/core/identity.py: the recipe hash sees only set / unset, the reuse key the bytes)
    choices: tuple[Any, ...] | None = None  # the only values allowed (checked at compose)


@dataclass(frozen=True)
class Group:
    """A recipe group (`train`, `data`, ...): a fixed set of settings."""

    name: str
    doc: str
    settings: dict[str, Setting]
    result: bool = True  # False: the whole group stays out of the hash


TOP_LEVEL: dict[str, Setting] = {
    "image_size": Setting(64, "pixels; a multiple of the teacher's VAE factor (8)"),
    "seed": Setting(0, "the run's seed: the unit of replication"),
}

_SPEED = "speed only (docs/performance.md): same result up to rounding"

GROUPS: dict[str, Group] = {g.name: g for g in (
    Group("train", "optimiser, schedule and speed (configs/train/)", {
        "steps": Setting(60, "optimiser steps (when epochs is null)"),
        "epochs": Setting(None, "if set, overrides steps with epochs x batches per epoch"),
        "batch_size": Setting(8, "the global batch (split over train.processes)"),
        "optimizer": Setting("adamw", "adam | adamw | adamw8bit (8-bit moments: other numbers)"),
        "lr": Setting(1.0e-4, "learning rate"),
        "weight_decay": Setting(0.0, "the optimiser's weight decay"),
        "grad_clip": Setting(1.0, "max gradient norm; null = off"),
        "device": Setting("auto", "auto | cpu | cuda", result=False),
        "log_every": Setting(10, "steps between curve points", result=False),
        "eval_every": Setting(20, "steps between source-val evaluations, 'epoch', or 0 = only "
                                  "at the end (selection uses them)"),
        "select": Setting("best_val", "which evaluated step is kept: best_val (best source-val "
                                      "AUC) | last (the final step) | proxy (best AUC on the val "
                                      "split of train.proxy); the threshold is always source "
                                      "val's (ablate/core/selection.py)",
                          hash_when_default=False, choices=("best_val", "last", "proxy")),
        "proxy": Setting(None, "the set train.select=proxy chooses on, never a test set: a "
                               "dataset name (its val split) or holdout:METHOD (that "
                               "manipulation method of data.train, left out of training)",
                         hash_when_default=False),
        "precision": Setting("auto", "auto (bf16 autocast on a GPU, else fp32) | fp32 | bf16; "
                                     "bf16 changes numbers beyond rounding"),
        "channels_last": Setting("auto", "auto (GPU only) | true | false; " + _SPEED,
                                 result=False),
        "attention": Setting("sdpa", "sdpa (PyTorch kernels) | math (explicit softmax); "
                             + _SPEED, result=False),
        "grad_checkpointing": Setting(False, "recompute activations (less memory); " + _SPEED,
                                      result=False),
        "branch_backward": Setting(False, "backpropagate each branch before the next; "
                                   + _SPEED, result=False),
        "compile": Setting(False, "torch.compile the trained modules and the teacher; "
                           + _SPEED, result=False),
        "latent_cache": Setting(True, "teacher VAE posteriors once per image; " + _SPEED,
                                result=False),
        "latent_cache_dir": Setting(None, "the latent cache also on disk, shared by later runs",
                                    result=False),
        "latent_cache_mb": Setting(8192, "memory budget of the latent cache", result=False),
        "loader_workers": Setting(0, "processes loading batches ahead (same batches as 0)",
                                  result=False),
        "pin_memory": Setting("auto", "auto (GPU only) | true | false: page-locked batches",
                              result=False),
        "processes": Setting(1, "data-parallel processes of one run (Ray Train)", result=False),
        "t_min": Setting(0.0, "guided loss: timesteps drawn from [t_min, t_max] of the teacher's "
                              "schedule (0 = clean); its lower end", hash_when_default=False),
        "t_max": Setting(1.0, "guided loss: the upper end of that range (1 = pure noise)",
                         hash_when_default=False),
    }),
    Group("data", "what is trained and tested on", {
        "train": Setting("synth-blend", "source domain: a benchmark family, configs/data/<name> "
                                        "or a manifest path"),
        "tests": Setting(("synth-blend", "synth-colour", "synth-warp", "synth-lowres"),
                         "cross-dataset test sets"),
        "source_is": Setting(None, "FF++ fake A_B: which original is the source; null = the "
                                   "dataset config's"),
        "augment": Setting("flip", "augmentation of the encoder's image (ablate.data.augment)",
                           choices=("none", "flip", "paper", "code")),
        "max_skip_fraction": Setting(0.05, "stop if more than this share of frames is missing "
                                           "or corrupt"),
        "frame_cache_dir": Setting(None, "decoded frames also on disk, memory-mapped and shared",
                                   result=False),
        "host_memory_gb": Setting("auto", "GiB of RAM decoded frames may take (auto: half the "
                                          "available); over it they go to the on-disk frame "
                                          "store (docs/data.md)", result=False),
        "roots": Setting({}, "dataset name -> folder of its face frames, beating root: in "
                             "configs/data/<name>.yaml (data.roots.ffpp=/data/ffpp); where the "
                             "frames are, not what they hold (the reuse key hashes the rows)",
                         result=False),
    }),
    Group("eval", "how test metrics are computed (each metric row records it)", {
        "eer": Setting("interpolated", "interpolated (brentq) | nearest (the ROC point)",
                       hash_when_default=False, choices=("interpolated", "nearest")),
        "bootstrap_unit": Setting("auto", "what the bootstrap resamples; auto: identities where "
                                          "the test manifest names them, else videos",
                                  hash_when_default=False, choices=("auto", "identity", "video")),
    }),
    Group("run", "where a run is written and under which name", {
        "name": Setting(None, "the run folder's name; null = <timestamp>-<recipe hash>"),
        "out_dir": Setting(RUNS_DIR.as_posix(), "where run folders go"),
    }, result=False),
    Group("loss", "weights of the loss terms (configs/loss/)", {
        "ce": Setting(1.0, "classification loss"),
        "source": Setting(0.7, "source reconstruction (guided only)"),
        "target": Setting(1.0, "target reconstruction (guided only)"),
        "weight_source": Setting(1.0, "source weight-module loss (guided only)"),
        "weight_target": Setting(1.0, "target weight-module loss (guided only)"),
        "orthogonal": Setting(0.0, "backbone.tuning=svd: Effort's orthogonality of the "
                                   "singular vectors", hash_when_default=False),
        "singular": Setting(0.0, "backbone.tuning=svd: Effort's |‖Ŵ‖²_F - ‖W‖²_F| "
                                 "(weight energy kept)", hash_when_default=False),
        "uniformity": Setting(0.0, "GenD: uniformity of the L2-normalised head inputs "
                                   "(Wang & Isola, t=2)", hash_when_default=False),
        "alignment": Setting(0.0, "GenD: squared distance between same-label head inputs",
                             hash_when_default=False),
    }),
)}

_PART = "single-file sd3 / flux only: a separate part file"
_LORA = "backbone.tuning=lora: "
_SVD = "backbone.tuning=svd: "
TUNING_MODES = ("full", "linear", "layernorm", "bias", "lora", "svd")

# Keys a slot has whatever its variant, or that code outside the variant reads; every other
# key of a slot is an argument of its variant's factory. `name` defaults to the default
# recipe's variant (configs/config.yaml's defaults list; tests keep the two equal).
SLOT_KEYS: dict[str, dict[str, Setting]] = {
    "backbone": {
        "name": Setting("tiny", "the encoder variant (configs/backbone/)"),
        "pretrained_path": Setting(None, "local timm weights; null = random init", file=True),
        # how the encoder trains and where it is read (ablate/model/tuning.py, docs/method.md)
        "tuning": Setting("full", "which encoder parameters train: full | linear (head only) "
                                  "| layernorm (GenD) | bias (BitFit) | lora | svd (Effort)",
                          hash_when_default=False, choices=TUNING_MODES),
        "lora_rank": Setting(8, _LORA + "rank r", hash_when_default=False),
        "lora_alpha": Setting(16.0, _LORA + "alpha (scale alpha/r)", hash_when_default=False),
        "lora_dropout": Setting(0.0, _LORA + "dropout on the adapter's input",
                                hash_when_default=False),
        "lora_targets": Setting(("attn.qkv", "attn.proj"), _LORA + "Linear modules adapted, by "
                                "name suffix", hash_when_default=False),
        "svd_rank": Setting(None, _SVD + "rank of the frozen principal part; null = min(out, "
                                         "in) - 1, as Effort", hash_when_default=False),
        "svd_targets": Setting(("attn.qkv", "attn.proj"), _SVD + "Linear modules split, by name "
                               "suffix (a fused qkv as three blocks)", hash_when_default=False),
        "taps": Setting(None, "ViT blocks whose patch tokens form the filter's grid: null = the "
                              "last (normed), or a list of indices (-1 = last), concatenated",
                        hash_when_default=False),
        "pool": Setting("mean", "what the head reads: mean (of the grid) | cls (the class "
                                "token, ViTs)", hash_when_default=False, choices=("mean", "cls")),
        "l2_normalize": Setting(False, "L2-normalise the head's input (GenD)",
                                hash_when_default=False),
    },
    "filter": {"name": Setting("paper", "the feature filter variant (configs/filter/)")},
    "weight": {
        "name": Setting("paper", "the weight module variant (configs/weight/)"),
        # a search axis (issue 27): how the feature grid is pooled before the MLP / FC
        "pool": Setting("mean", "paper and code weight modules: mean (as both sources) | max",
                        hash_when_default=False, choices=("mean", "max")),
    },
    "guide": {
        "name": Setting("controlnet", "the guide variant; none = the plain baseline"),
        "layers": Setting(None, "transformer teachers: blocks copied; null = the teacher's "
                                "default", hash_when_default=False),
        # the guide's structure, a search axis (ablate/model/guide.py `structure`, docs/method.md)
        "blocks": Setting(None, "UNet teachers: down blocks the copy holds; null = all + the "
                                "mid block", hash_when_default=False),
        "inject": Setting("all", "UNet teachers: residuals injected: all | mid | k (deepest k "
                                 "+ mid) | [indices and/or mid]; the rest are zeros",
                          hash_when_default=False),
        "zero_init": Setting(True, "UNet teachers: zero-initialised projections (false: "
                                   "PyTorch's default init)", hash_when_default=False),
        "depth": Setting(1, "adapter, UNet teachers: convs per pyramid level",
                         hash_when_default=False),
    },
    "teacher": {
        "name": Setting("tiny-sd15", "the frozen diffusion teacher (configs/teacher/)"),
        "path": Setting(None, "local weights (folder or file); null = built in code", file=True),
        "lora": Setting(None, "adapter from `ablate teachers adapt`, fused in", file=True),
        "dtype": Setting("float32", "float32 | bfloat16 | float16: what the frozen teacher "
                                    "computes in"),
        "vae_path": Setting(None, _PART + " (the VAE)", hash_when_default=False, file=True),
        "clip_l_path": Setting(None, _PART + " (CLIP-L)", hash_when_default=False, file=True),
        "clip_g_path": Setting(None, _PART + " (CLIP-G)", hash_when_default=False, file=True),
        "t5_path": Setting(None, _PART + " (T5-XXL)", hash_when_default=False, file=True),
    },
}
assert tuple(SLOT_KEYS) == SLOTS

# Slot keys the builder applies to whatever variant is named (ablate/model/build.py), never
# passed to its factory: encoder tuning and feature taps work on any encoder.
BUILDER_APPLIED: dict[str, tuple[str, ...]] = {
    "backbone": ("tuning", "lora_rank", "lora_alpha", "lora_dropout", "lora_targets",
                 "svd_rank", "svd_targets", "taps", "pool", "l2_normalize"),
}

# Factory arguments a slot's builder passes itself (ablate/model/build.py), never recipe keys.
BUILDER_ARGUMENTS: dict[str, tuple[str, ...]] = {
    "backbone": ("image_size",),
    "filter": ("in_channels", "out_channels", "in_size", "out_size"),
    "weight": ("in_channels",),
    "guide": ("teacher",),
    "teacher": (),
}


def declared() -> dict[str, Setting]:
    """Every declared setting by dotted key (a slot's variant arguments are not here)."""
    out = dict(TOP_LEVEL)
    for group in GROUPS.values():
        out.update({f"{group.name}.{k}": s for k, s in group.settings.items()})
    for slot, settings in SLOT_KEYS.items():
        out.update({f"{slot}.{k}": s for k, s in settings.items()})
    return out


def non_result_keys() -> tuple[str, ...]:
    """Groups and settings that do not change a result (left out of the recipe hash)."""
    out: list[str] = []
    for group in GROUPS.values():
        if not group.result:
            out.append(group.name)
        else:
            out.extend(f"{group.name}.{k}" for k, s in group.settings.items() if not s.result)
    out.extend(k for k, s in {**TOP_LEVEL, **_slot_settings()}.items() if not s.result)
    return tuple(out)


def omit_at_default() -> dict[str, Any]:
    """dotted key -> the default at which it is left out of the hash (`hash_when_default`)."""
    return {k: s.default for k, s in declared().items() if not s.hash_when_default}


def _slot_settings() -> dict[str, Setting]:
    return {f"{slot}.{k}": s for slot, keys in SLOT_KEYS.items() for k, s in keys.items()}


NON_RESULT_KEYS = non_result_keys()
OMIT_AT_DEFAULT = omit_at_default()
FILE_KEYS = tuple(k for k, s in SLOT_KEYS["teacher"].items() if s.file)  # teacher.<key>


# ------------------------------------------------------------------------------ reading


_MISSING = object()


def _child(node: Any, key: str) -> Any:
    if isinstance(node, Mapping) or hasattr(node, "keys"):  # dict or DictConfig
        try:
            return node[key] if key in node else _MISSING
        except TypeError:
            return _MISSING
    return _MISSING


def default(key: str) -> Any:
    """The declared default of a dotted key; an unknown key is a one-line AblateError."""
    found = declared().get(key)
    if found is None:
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        raise AblateError(unknown_key_message(key, known_keys(parent)))
    value = found.default
    if isinstance(value, dict):  # a copy: the declaration's own dict must stay empty
        return dict(value)
    return list(value) if isinstance(value, tuple) else value


def setting(cfg: Any, key: str) -> Any:
    """`cfg.<key>` of a whole recipe (`"train.eval_every"`), or its declared default where
    the recipe lacks it. Only declared settings: a variant's own arguments (filter.heads)
    take their defaults from its factory, at build time."""
    node = cfg
    for part in key.split("."):
        node = _child(node, part)
        if node is _MISSING:
            return default(key)
    return node


def group_setting(node: Any, key: str) -> Any:
    """`setting` for the group node itself: `group_setting(cfg.train, "train.precision")`."""
    value = _child(node, key.partition(".")[2])
    return default(key) if value is _MISSING else value


def check_choices(cfg: Any) -> None:
    """Every declared setting with `choices` holds one of them (a recipe lacking the setting
    gets its default, which is one): a bad value is one line now, not minutes into a run."""
    for key, found in declared().items():
        if found.choices is None:
            continue
        value = setting(cfg, key)
        if isinstance(value, bool) or value not in found.choices:
            raise AblateError(f"{key} must be one of {', '.join(map(str, found.choices))}, "
                              f"not {value!r}")


def timestep_range(cfg: Any) -> tuple[float, float]:
    """(train.t_min, train.t_max) as floats, the part of the teacher's training schedule the
    guided step draws its timesteps from (Teacher.sample_timesteps); a range outside
    0 <= t_min < t_max <= 1, or a value that is not a number, is one line."""
    t_min, t_max = setting(cfg, "train.t_min"), setting(cfg, "train.t_max")
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (t_min, t_max))
    if not numbers or not 0.0 <= t_min < t_max <= 1.0:
        raise AblateError(f"train.t_min={t_min!r}, train.t_max={t_max!r}: both must be numbers "
                          "with 0 <= train.t_min < train.t_max <= 1 (fractions of the teacher's "
                          "schedule)")
    return float(t_min), float(t_max)


def choices(key: str) -> tuple[Any, ...]:
    """The values a setting allows (its declaration's `choices`)."""
    found = declared().get(key)
    if found is None or found.choices is None:
        raise KeyError(f"{key} declares no choices")
    return found.choices


# ------------------------------------------------------------------------------ unknown keys


def known_keys(parent: str = "") -> list[str]:
    """The declared keys directly under `parent` ("" = the top level; a slot: its common keys
    only, its variant's arguments come from the registry)."""
    if not parent:
        return [*SLOTS, *GROUPS, *TOP_LEVEL]
    if parent in GROUPS:
        return list(GROUPS[parent].settings)
    if parent in SLOT_KEYS:
        return list(SLOT_KEYS[parent])
    return []


def unknown_key_message(key: str, valid: Iterable[str]) -> str:
    """One line: the unknown dotted `key`, the nearest valid one, and every valid key beside
    it (`valid`: the keys under `key`'s parent). An unknown parent is matched itself."""
    parent, _, leaf = key.rpartition(".")
    valid = sorted(valid)
    where = f"under {parent}" if parent else "at the top level"
    if parent and not valid and parent not in known_keys():
        top = parent.split(".")[0]
        near = _nearest(top, known_keys())
        hint = f"; did you mean {near + key[len(top):]!r}?" if near else ""
        return (f"unknown recipe key {key!r}{hint} (valid keys at the top level: "
                f"{', '.join(sorted(known_keys()))})")
    near = _nearest(leaf, valid)
    hint = f"; did you mean {(parent + '.' if parent else '') + near!r}?" if near else ""
    return f"unknown recipe key {key!r}{hint} (valid keys {where}: {', '.join(valid)})"


def _nearest(word: str, candidates: list[str]) -> str | None:
    """difflib's closest match, else the candidate that is a prefix of `word` or has it as
    one (lr_rate -> lr, cache -> latent_cache is no match: it must start alike)."""
    close = difflib.get_close_matches(word, candidates, n=1)
    if close:
        return close[0]
    stems = [c for c in candidates if min(len(c), len(word)) >= 2
             and (word.startswith(c) or c.startswith(word))]
    return max(stems, key=len) if stems else None
