"""The dry run of validate_space: build each distinct detector once (tiny teachers only)
and run one guided forward on 2 random images, which catches shape and width mistakes
in seconds rather than minutes into a trial. The build and forward are
`ablate.model.smoke`'s; torch is imported only when a dry run starts."""

from __future__ import annotations

import json
from typing import Any

from ablate.core.errors import AblateError
from ablate.recipe import is_guided
from ablate.space.check import _Check
from ablate.space.model import MODEL_KEYS, TINY_PREFIX


def _dry_run(check: _Check, cfgs: dict[str, Any]) -> None:
    """Build each distinct detector once (tiny teachers only) and run one guided forward."""
    from ablate.model.smoke import quiet_single_thread  # lazy: reading a space loads no torch

    with quiet_single_thread():
        _dry_run_all(check, cfgs)


def _dry_run_all(check: _Check, cfgs: dict[str, Any]) -> None:
    from ablate.model.smoke import build_and_forward  # lazy: reading a space loads no torch

    teachers: dict[str, Any] = {}
    built: set[str] = set()
    skipped: dict[str, int] = {}

    for label, cfg in cfgs.items():
        name = str(cfg.teacher.name)
        if is_guided(cfg) and not name.startswith(TINY_PREFIX):
            skipped[name] = skipped.get(name, 0) + 1
            continue
        identity = _model_identity(cfg)
        if identity in built:
            continue
        built.add(identity)
        try:
            build_and_forward(cfg, teachers)
        except AblateError as err:
            check.problem(f"dry-run build of {label}: {err}")
        except Exception as err:  # noqa: BLE001 (shape errors etc. are what we look for)
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            check.problem(f"dry-run build of {label}: {type(err).__name__}: {first}")
    if built:
        how = "one per design cell" if check.space.design else "params varied one at a time"
        check.notes.append(f"dry-run built {len(built)} distinct detector(s), one guided "
                           f"forward each ({how})")
    for name, n in skipped.items():
        check.notes.append(f"dry-run build skipped for {n} configuration(s) with real teacher "
                           f"{name} (loading it takes minutes); only teacher.path was checked")


def _model_identity(cfg: Any) -> str:
    """The recipe parts a build depends on (train.lr and friends do not change it; the
    baseline builds only the encoder, so its filter or teacher do not either)."""
    from omegaconf import OmegaConf

    keys = MODEL_KEYS if is_guided(cfg) else ("backbone", "guide", "image_size")
    parts = {k: OmegaConf.to_container(cfg[k], resolve=True) if k != "image_size" else cfg[k]
             for k in keys}
    return json.dumps(parts, sort_keys=True, default=str)
