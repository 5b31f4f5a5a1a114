"""`ablate bench --estimate-memory`: peak memory from fake tensors, no GPU, no weights.

The estimate is held to MemTracker on real tensors (same step, same tracker), its breakdown
to its own total, its optimiser state to a count by hand (and bitsandbytes' own state), and
its rows to the levers that apply; a recipe whose weight files are missing still estimates.
"""

import pytest
import torch
from click.testing import CliRunner
from torch._subclasses.fake_tensor import is_fake

from ablate.bench.estimate import (
    GB,
    Breakdown,
    adamw8bit_state_bytes,
    architecture_only,
    build,
    estimate_recipe,
    evaluation,
    gpu_speed,
    measure,
)
from ablate.bench.levers import LEVERS, PLAIN
from ablate.cli import cli
from ablate.core.errors import AblateError
from ablate.model.build import build_detector
from ablate.recipe import compose
from tests.conftest import run_cli

TINY = ["backbone=tiny", "image_size=32", "train=cpu", "train.batch_size=4"]
# weight files that do not exist: an estimate must not read them
MISSING = ["teacher.path=/no/such/teacher-folder", "backbone.pretrained_path=/no/such/b.pth"]
# activations, not weights, dominate this one's step: the calibration compares graphs
CALIBRATION = ["backbone=tiny", "image_size=64", "train=cpu", "train.batch_size=16"]


@pytest.fixture(scope="module")
def matrix():
    """The tiny recipe's lever rows, with weight paths that lead nowhere (built once)."""
    from ablate.bench.estimate_table import estimate_matrix

    return estimate_matrix([*TINY, *MISSING], device_gb=0.6)


# ----------------------------------------------------------------- fast: no model built


def test_eight_bit_state_is_what_bitsandbytes_allocates():
    bnb = pytest.importorskip("bitsandbytes")
    model = torch.nn.Sequential(torch.nn.Linear(100, 100), torch.nn.Linear(100, 3),
                                torch.nn.Conv2d(8, 64, 3), torch.nn.Linear(300, 300))
    params = list(model.parameters())
    optimizer = bnb.optim.AdamW8bit(params, lr=1e-3)
    for p in params:
        p.grad = torch.ones_like(p)
    optimizer.step()  # on the CPU: bitsandbytes >= 0.45 steps there
    seen, held = set(), 0
    for state in optimizer.state.values():
        for value in state.values():
            if torch.is_tensor(value) and value.data_ptr() not in seen:  # qmaps are shared
                seen.add(value.data_ptr())
                held += value.numel() * value.element_size()
    assert held == adamw8bit_state_bytes(p.numel() for p in params)
    # by hand: >= 4096 elements: 1 + 1 byte, and 2 fp32 absmax per 256 elements; else 4 + 4
    big = [10000, 4608, 90000]  # the 100x100 and 300x300 weights, the 64x8x3x3 kernel
    small = [100, 300, 3, 64, 300]
    by_hand = sum(2 * n + 8 * -(-n // 256) for n in big) + 8 * sum(small) + 2 * 256 * 4
    assert held == by_hand


def test_breakdown_from_a_snapshot_and_an_optimiser_swap():
    from torch.distributed._tools.mem_tracker import _TOTAL_KEY, _MemRefType

    kind = _MemRefType
    snap = {torch.device("cpu"): {kind.PARAM: 10, kind.BUFFER: 1, kind.GRAD: 2, kind.ACT: 30,
                                  kind.TEMP: 4, kind.OPT: 20, kind.OTH: 3, _TOTAL_KEY: 70}}
    b = Breakdown.from_snapshot(snap)
    assert (b.weights, b.grads, b.optimizer, b.activations, b.temporaries, b.inputs,
            b.peak) == (11, 2, 20, 30, 4, 3, 70)
    swapped = b.with_optimizer_state(20, 5)
    assert swapped.optimizer == 5 and swapped.peak == 55
    assert sum(v for k, v in swapped.as_dict().items() if k != "peak") == swapped.peak


@pytest.mark.parametrize("value", ["0", "-1"])
def test_device_memory_must_be_positive(value):
    result = CliRunner().invoke(cli, ["bench", "--estimate-memory", "--device-memory", value])
    assert result.exit_code != 0
    assert isinstance(result.exception, AblateError)
    message = str(result.exception)
    assert "--device-memory" in message and "\n" not in message
    assert "Traceback" not in result.output


def test_device_memory_error_is_one_line_from_the_entry_point(tmp_path):
    code, out, err = run_cli("bench", "--estimate-memory", "--device-memory", "-1", cwd=tmp_path)
    assert code != 0 and out == ""
    assert err.strip().count("\n") == 0 and err.startswith("error: --device-memory")
    assert "Traceback" not in err


def test_estimate_options_need_the_estimate_mode():
    result = CliRunner().invoke(cli, ["bench", "--batch", "4"])
    assert isinstance(result.exception, AblateError)
    assert "goes with --estimate-memory" in str(result.exception)
    result = CliRunner().invoke(cli, ["bench", "--estimate-memory", "--memory-matrix"])
    assert "separate runs" in str(result.exception)


# ----------------------------------------------------------------- slow: models built


@pytest.mark.slow
@pytest.mark.parametrize("extra", [
    (),  # the recipe as train=cpu says: auto -> bf16 autocast, channels-last (a GPU's view)
    (*PLAIN, "train.branch_backward=true"),  # fp32, math attention, branch by branch
])
def test_fake_estimate_equals_the_tracker_on_real_tensors(extra):
    cfg = compose(architecture_only([*CALIBRATION, *extra]))
    speed = gpu_speed(cfg.train)
    fake, real = build(cfg), build(cfg, fake=False)
    assert is_fake(fake.detector.classifier.head.weight)
    assert not is_fake(real.detector.classifier.head.weight)
    estimated, measured = measure(fake, cfg, speed), measure(real, cfg, speed)
    assert set(estimated) == set(measured) == {"step", "validation", "encode"}
    for phase in estimated:
        assert estimated[phase].peak == pytest.approx(measured[phase].peak, rel=0.05), phase
    # activations, not weights, carry this step: the graphs were compared
    assert measured["step"].activations > 0.3 * measured["step"].peak
    assert evaluation(fake, 16).peak == pytest.approx(evaluation(real, 16).peak, rel=0.05)


@pytest.mark.slow
def test_optimizer_state_is_a_hand_count():
    cfg = compose(architecture_only([*TINY, *PLAIN]))
    # counted on a real detector, apart from the estimate's fake one
    real = build_detector(cfg)
    trainable = [p for p in real.parameters() if p.requires_grad]
    numel = sum(p.numel() for p in trainable)
    # what fused AdamW keeps per tensor: two fp32 moments and a 0-dim fp32 step
    probe = torch.nn.Linear(3, 2)
    adamw = torch.optim.AdamW(probe.parameters(), fused=True)
    probe(torch.ones(1, 3)).sum().backward()
    adamw.step()
    state = adamw.state[probe.weight]
    assert set(state) == {"step", "exp_avg", "exp_avg_sq"}
    assert state["step"].dtype == torch.float32 and state["step"].numel() == 1
    by_hand = 2 * 4 * numel + 4 * len(trainable)

    built = build(cfg)
    assert built.trainable_params == numel
    phases = measure(built, cfg, gpu_speed(cfg.train))
    assert {b.optimizer for b in phases.values()} == {by_hand}
    eight = compose(architecture_only([*TINY, *PLAIN, "train.optimizer=adamw8bit"]))
    phases = measure(built, eight, gpu_speed(eight.train))
    # 8-bit: uint8 moments + an fp32 absmax per 256 elements each, fp32 moments under 4096
    numels = [p.numel() for p in trainable]
    eight_by_hand = (sum(2 * n + 2 * 4 * -(-n // 256) for n in numels if n >= 4096)
                     + sum(2 * 4 * n for n in numels if n < 4096) + 2 * 256 * 4)
    assert {b.optimizer for b in phases.values()} == {eight_by_hand}


@pytest.mark.slow
def test_every_row_sums_to_its_peak_and_levers_change_it(matrix):
    rows = matrix["rows"]
    assert list(rows) == [lever.name for lever in LEVERS] + ["all"]
    measured = {name: row for name, row in rows.items() if "na" not in row}
    assert {"plain", "bf16", "grad_checkpointing", "branch_backward", "adamw8bit",
            "all"} <= set(measured)
    for name, row in measured.items():
        for phase, b in row["phases"].items():
            parts = {k: v for k, v in b.items() if k != "peak"}
            assert all(v >= 0 for v in parts.values()), (name, phase)
            assert sum(parts.values()) == b["peak"] > 0, (name, phase)
        assert row["train"] == row["phases"][row["phase"]]
        assert row["needs_gb"] > row["train"]["peak"] / GB
    plain = rows["plain"]["phases"]
    assert rows["adamw8bit"]["phases"]["step"]["optimizer"] < 0.3 * plain["step"]["optimizer"]
    assert rows["bf16"]["phases"]["step"]["activations"] < plain["step"]["activations"]
    assert matrix["trainable_params"] > 0 and matrix["architecture_only"]


@pytest.mark.slow
def test_a_lever_with_nothing_to_act_on_is_an_na_row(matrix):
    from ablate.bench.estimate_table import format_estimate, why_not

    # a transformer teacher keeps its own SDPA attention: the attention lever cannot act
    cfg = compose(architecture_only(["teacher=tiny-sd3", *TINY, *PLAIN]))
    sdpa = next(lever for lever in LEVERS if lever.name == "sdpa")
    assert why_not(sdpa, build(cfg), cfg).startswith("n/a: no UNet")
    # the plain baseline has no teacher or guide: four levers have nothing to act on
    cfg = compose(architecture_only(["guide=none", *TINY, *PLAIN]))
    baseline = build(cfg)
    reasons = {lever.name: why_not(lever, baseline, cfg) for lever in LEVERS[1:]}
    for name in ("grad_checkpointing", "branch_backward", "sdpa", "teacher_bf16"):
        assert reasons[name].startswith("n/a: "), name
    assert reasons["bf16"] is None and reasons["adamw8bit"] is None
    # and a row that says so in the table, not a copy of the plain row
    rows = {**matrix["rows"], "sdpa": {"label": "train.attention=sdpa", "na": reasons["sdpa"]}}
    text = format_estimate({**matrix, "rows": rows})
    line = next(line for line in text.splitlines() if line.startswith("train.attention=sdpa"))
    assert line.split()[1:3] == ["n/a:", "guide=none"]


@pytest.mark.slow
def test_no_weights_are_read(matrix):
    from ablate.bench.estimate_table import format_estimate

    # the paths lead nowhere: a real build refuses them, the estimate never opens them
    for missing in MISSING:
        with pytest.raises(AblateError, match="does not exist|must be a folder"):
            build_detector(compose([*TINY, missing]))
    assert "architecture only: no weights were read" in format_estimate(matrix)
    # a real teacher at full size, pointed at a missing folder, also estimates
    found = estimate_recipe(["teacher=sd15", "teacher.path=/no/such/sd15", "backbone=tiny",
                             "image_size=64", "train=cpu"], batch=2)
    assert found.trainable_params > 300e6  # the ControlNet copy of SD 1.5's encoder
    assert found.train.weights > 4 * found.trainable_params  # + the frozen fp32 UNet
    assert found.needs_gb > found.train.peak / GB and found.eval.peak > 0


@pytest.mark.slow
def test_levers_that_fit_are_the_fitting_rows_cheapest_first(matrix, monkeypatch):
    from ablate.bench import estimate_table

    def with_limit(overrides, batch=None, device_gb=None):
        rows = {name: row if "na" in row else {**row, "fits": row["needs_gb"] <= device_gb}
                for name, row in matrix["rows"].items()}
        return {**matrix, "rows": rows}

    monkeypatch.setattr(estimate_table, "estimate_matrix", with_limit)
    rows = {n: r for n, r in matrix["rows"].items() if "na" not in r}
    needs = sorted(r["needs_gb"] for r in rows.values())
    limit = (needs[0] + needs[-1]) / 2
    found = estimate_table.levers_that_fit(TINY, limit)
    assert found == sorted((n for n, r in rows.items() if r["needs_gb"] <= limit),
                           key=lambda n: rows[n]["needs_gb"])
    assert found and len(found) < len(rows)
    assert estimate_table.levers_that_fit(TINY, 1e6)[-1] in rows
