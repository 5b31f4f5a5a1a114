"""The one JSON dict every exported file carries: enough to feed the model (size, range,
layout), read its output (logit, threshold) and rebuild the run's data preparation (the full
recipe) without the run folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ablate.checkpoint import RECIPE
from ablate.core.errors import AblateError
from ablate.core.names import RUN_INFO
from ablate.recipe import load_yaml, recipe_hash
from ablate.version import package_version

METADATA_KEY = "ablate"  # the ONNX model's metadata_props key
EXTRA_FILE = "ablate.json"  # the TorchScript archive's extra file
INPUT_NAME, OUTPUT_NAME = "images", "logits"  # the ONNX graph's input and output


def run_metadata(folder: Path, fmt: str) -> dict[str, Any]:
    """The dict for a run folder; `recipe_hash` is recomputed from recipe.yaml (the recipe
    `load_classifier` returns has its weight paths cleared)."""
    text = (folder / RECIPE).read_text()
    cfg = load_yaml(folder / RECIPE)
    info = _run_info(folder)
    selection = info.get("selection") or {}
    threshold = selection.get("threshold")
    step = info.get("checkpoint_step", selection.get("step"))
    return {
        "format": fmt,
        "image_size": int(cfg.image_size),
        "input_range": [-1.0, 1.0],
        # input = (rgb01 - mean) / std: [0, 1] RGB to [-1, 1]; the encoder applies its own
        # normalisation inside the graph
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "channel_order": "RGB",
        "layout": "NCHW",
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "output": "logit (sigmoid = P(fake))",
        "threshold": None if threshold is None else float(threshold),
        "threshold_on": "P(fake) = sigmoid(logit), chosen on the source validation split",
        "recipe_hash": recipe_hash(cfg),
        "run": folder.resolve().name,
        "checkpoint_step": None if step is None else int(step),
        "recipe": text,
        "ablate_version": package_version(),
    }


def encode(meta: dict[str, Any]) -> str:
    return json.dumps(meta, indent=1)


def decode(text: str | bytes | None, name: str) -> dict[str, Any]:
    """The dict back from a file; one line when the file has none (not written by us)."""
    if not text:
        raise AblateError(f"{name} carries no ablate metadata; write it with `ablate export`")
    try:
        meta = json.loads(text)
    except ValueError as err:
        raise AblateError(f"{name}: its ablate metadata are not JSON ({err})") from None
    if not isinstance(meta, dict) or "image_size" not in meta:
        raise AblateError(f"{name}: its ablate metadata lack image_size; export it again")
    return meta


def _run_info(folder: Path) -> dict[str, Any]:
    file = folder / RUN_INFO
    if not file.is_file():
        return {}
    try:
        info = json.loads(file.read_text())
    except ValueError as err:
        raise AblateError(f"{file} is not JSON ({err}); was it edited?") from None
    return info if isinstance(info, dict) else {}
