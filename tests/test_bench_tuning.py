"""`ablate bench --tuning`: one row per encoder tuning mode, its trainable parameters right.

The counts in the rows are checked against counts made here, by hand, from the structure of
an untouched (tuning=full) twin: which modules are LayerNorms, which parameters are biases,
the shapes of the LoRA / SVD target Linears. No timings are asserted (speed belongs to
BENCHMARKS.md), only that each measured row has a positive step time and peak.
"""

import functools
import json
import logging

import pytest
from click.testing import CliRunner
from torch import nn

from ablate.bench.tuning_rows import parameter_counts, parse_modes, row_overrides
from ablate.cli import cli
from ablate.core.errors import AblateError
from ablate.core.schema import setting
from ablate.model.build import build_classifier, build_detector
from ablate.model.tuning import MODES
from ablate.recipe import compose

TWIN = ["backbone=tiny-clip", "guide=none", "image_size=28", "train.batch_size=2",
        "train.device=cpu"]


def _numel(params) -> int:  # noqa: ANN001
    return sum(p.numel() for p in params)


def _matches(name: str, targets) -> bool:  # noqa: ANN001
    return any(name == t or name.endswith("." + t) for t in targets)


@functools.cache
def _reference(recipe: tuple[str, ...]):  # noqa: ANN202
    """The recipe with tuning=full, built once: (its config, its classifier)."""
    cfg = compose(row_overrides(list(recipe), "full"))
    return cfg, build_classifier(cfg)


def hand_count(mode: str, recipe: list[str] = TWIN) -> int:
    """Trainable parameters of encoder + head under `mode`, from the full model's structure."""
    cfg, classifier = _reference(tuple(recipe))
    encoder = classifier.backbone
    head = _numel(classifier.head.parameters())  # Linear(C, 1): C + 1, trains in every mode
    if mode == "full":
        return _numel(encoder.parameters()) + head
    if mode == "linear":
        return head
    if mode == "layernorm":
        return _numel(p for m in encoder.modules() if isinstance(m, nn.LayerNorm)
                      for p in m.parameters(recurse=False)) + head
    if mode == "bias":
        return _numel(p for n, p in encoder.named_parameters() if n.endswith("bias")) + head
    linears = [(n, m) for n, m in encoder.named_modules() if isinstance(m, nn.Linear)]
    if mode == "lora":  # A [r, in] + B [out, r] per target
        rank = int(setting(cfg, "backbone.lora_rank"))
        targets = tuple(setting(cfg, "backbone.lora_targets"))
        return sum(rank * (m.in_features + m.out_features)
                   for n, m in linears if _matches(n, targets)) + head
    assert mode == "svd"  # per row block (q, k, v apart): U [o, k] + S [k] + V [k, in]
    targets = tuple(setting(cfg, "backbone.svd_targets"))
    svd_rank = setting(cfg, "backbone.svd_rank")
    total = 0
    for n, m in linears:
        if not _matches(n, targets):
            continue
        blocks = 3 if n.endswith("qkv") and m.out_features == 3 * m.in_features else 1
        out = m.out_features // blocks
        k = 1 if svd_rank is None else min(out, m.in_features) - int(svd_rank)
        total += blocks * (out * k + k + k * m.in_features)
    return total + head


def requires_grad_count(mode: str, recipe: list[str] = TWIN) -> int:
    """The same, counted on the model `build_classifier` makes for that mode."""
    classifier = build_classifier(compose(row_overrides(recipe, mode)))
    return sum(p.numel() for p in classifier.parameters() if p.requires_grad)


def test_hand_counts_agree_with_the_built_models():
    for mode in MODES:
        assert hand_count(mode) == requires_grad_count(mode), mode
    counts = {mode: hand_count(mode) for mode in MODES}
    assert counts["linear"] < counts["layernorm"] < counts["full"]
    assert all(counts[m] < counts["full"] for m in ("bias", "lora", "svd"))


def test_guided_detector_counts_add_filters_weights_and_guide(tiny_teachers):
    cfg = compose(row_overrides(["backbone=tiny-clip", "image_size=32"], "layernorm"))
    detector = build_detector(cfg, teacher=tiny_teachers[cfg.teacher.name])
    counts = parameter_counts(detector)
    assert counts["classifier_trainable"] == hand_count("layernorm", ["backbone=tiny-clip",
                                                                      "image_size=32"])
    extra = sum(p.numel() for module in (detector.filter_source, detector.filter_target,
                                         detector.weight_source, detector.weight_target,
                                         detector.guide)
                for p in module.parameters() if p.requires_grad)
    assert extra > 0 and counts["detector_trainable"] == counts["classifier_trainable"] + extra
    assert not any(p.requires_grad for p in detector.teacher.parameters())


@pytest.fixture(scope="module")
def report():
    """One `ablate bench --tuning --json` run over every mode (one process per row)."""
    args = ["bench", "--tuning", "--json", "--device", "cpu", "--warmup", "0", "--repeats",
            "1", "--threads", "1", "--jobs", "2", *TWIN]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.output[result.output.index("{"):])


@pytest.mark.subprocess
def test_a_row_per_mode_with_the_hand_counts(report):
    rows = report["rows"]
    assert list(rows) == list(MODES)
    for mode, row in rows.items():
        assert "na" not in row and "error" not in row, (mode, row)
        assert row["classifier_trainable"] == hand_count(mode), mode
        assert row["detector_trainable"] == row["classifier_trainable"]  # guide=none
        assert row["head_trainable"] + row["encoder_trainable"] == row["classifier_trainable"]
        assert row["step_s"] > 0 and row["forward_s"] > 0 and row["peak_mb"] > 0
        # Adam / AdamW: two fp32 moments (+ a step counter) per trainable tensor
        assert row["optimizer_state_mb"] >= 8 * row["detector_trainable"] / 2**20
        assert row["grads_mb"] == pytest.approx(4 * row["detector_trainable"] / 2**20)
    trainable = {mode: row["classifier_trainable"] for mode, row in rows.items()}
    assert trainable["linear"] < trainable["layernorm"] < trainable["full"]
    assert rows["full"]["optimizer_state_mb"] > rows["linear"]["optimizer_state_mb"]
    assert report["guided"] is False and report["backbone"] == "tiny-clip"


def test_a_mode_that_cannot_apply_is_a_row_saying_why():
    from ablate.bench.tuning_rows import _row_in_child

    spec = {"overrides": row_overrides(["backbone=tiny", "guide=none"], "layernorm"),
            "warmup": 0, "repeats": 1, "threads": None}
    level = logging.getLogger("ablate").level
    try:
        row = _row_in_child(spec)  # here, in this process: the CNN has no LayerNorm
    finally:
        logging.getLogger("ablate").setLevel(level)  # the row quietens it, for a child
    assert row["na"].startswith("n/a: ") and "LayerNorm" in row["na"]
    assert "\n" not in row["na"]


def test_modes_parse_and_reject():
    assert parse_modes(None) == MODES and parse_modes("all") == MODES
    assert parse_modes("linear, full,linear") == ("linear", "full")
    with pytest.raises(AblateError, match="qlora"):
        parse_modes("linear,qlora")
    result = CliRunner().invoke(cli, ["bench", "--tuning", "--memory-matrix"])
    assert isinstance(result.exception, AblateError)
    assert "separate runs" in str(result.exception)


def test_format_prints_a_line_per_mode():
    from ablate.bench.tuning_rows import format_tuning

    row = {"classifier_trainable": 33, "detector_trainable": 33, "detector_params": 44961,
           "step_s": 0.01, "forward_s": None, "peak_mb": 900.0, "above_floor_mb": 20.0,
           "grads_mb": 0.0, "optimizer_state_mb": 0.0, "setup_s": 0.1}
    report = {"device": "cpu", "guided": False, "backbone": "tiny", "image_size": 32,
              "batch_size": 2, "optimizer": "adamw", "repeats": 1, "warmup": 0,
              "peak_kind": "VmHWM", "machine": {"start": {"load_avg": [0]}, "end_load_avg": [0]},
              "rows": {"linear": row, "layernorm": {"na": "n/a: no LayerNorm"}}}
    text = format_tuning(report)
    assert "\nlinear " in text and "\nlayernorm  n/a: no LayerNorm" in text
