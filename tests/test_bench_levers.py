"""`ablate bench --memory-matrix`, the FLOP count behind MFU, and `--data-wait`.

No timings are asserted (speed belongs to BENCHMARKS.md): the matrix yields one row
per lever with a positive peak or a reason, 8-bit AdamW holds less optimiser state,
the FLOP counter agrees with a hand count, and the data-wait phase sees every image.
"""

import pytest
import torch
from click.testing import CliRunner

from ablate.bench.flops import (
    NO_PEAK,
    count_flops,
    datasheet_peak,
    peak_for,
    utilisation,
)
from ablate.bench.levers import LEVERS, not_applicable
from ablate.cli import cli
from ablate.core.errors import AblateError

TINY = ["image_size=32", "train.batch_size=2"]


def test_flop_count_of_linear_and_conv_matches_hand_count():
    m, k, n = 8, 32, 16
    linear = torch.nn.Linear(k, n)
    x = torch.randn(m, k)  # no grad for x: backward computes the weight's gradient only
    flops = count_flops(lambda: linear(x).sum().backward())
    assert flops == 2 * m * n * k + 2 * m * n * k  # forward matmul + weight-gradient matmul

    b, cin, cout, size, kernel = 2, 3, 5, 10, 3
    conv = torch.nn.Conv2d(cin, cout, kernel, padding=1)
    with torch.no_grad():
        flops = count_flops(lambda: conv(torch.randn(b, cin, size, size)))
    assert flops == 2 * b * cout * size * size * cin * kernel * kernel


def test_peaks_by_gpu_name_and_override():
    assert datasheet_peak("NVIDIA H100 80GB HBM3", "bf16", tf32=True).tflops == 989.4
    assert datasheet_peak("NVIDIA H100 PCIe", "bf16", tf32=True).tflops == 756.5
    assert datasheet_peak("NVIDIA A100-SXM4-80GB", "bf16", tf32=True).tflops == 312.0
    assert datasheet_peak("NVIDIA A100-SXM4-80GB", "fp32", tf32=False).tflops == 19.5
    assert datasheet_peak("NVIDIA A10G", "fp32", tf32=True).tflops == 62.5
    assert datasheet_peak("Some Future GPU", "bf16", tf32=True).tflops is None
    cpu = torch.device("cpu")
    assert peak_for(cpu, "fp32", None).source == NO_PEAK
    assert peak_for(cpu, "fp32", 2.0).tflops == 2.0
    u = utilisation(4 * 10**12, 2.0, peak_for(cpu, "fp32", 4.0))  # 2 TFLOP/s of 4
    assert u["achieved_tflops"] == pytest.approx(2.0) and u["mfu"] == pytest.approx(0.5)
    assert utilisation(10**9, 1.0, peak_for(cpu, "fp32", None))["mfu"] is None


def test_levers_that_cannot_apply_say_why(monkeypatch):
    monkeypatch.setattr("ablate.bench.levers.supports_dtype", lambda device, dtype: False)
    monkeypatch.setattr("ablate.train.supports_dtype", lambda device, dtype: False)
    cpu = torch.device("cpu")
    why = {lever.name: not_applicable(lever, TINY, cpu) for lever in LEVERS}
    assert why["bf16"].startswith("n/a: ") and "bf16" in why["bf16"]
    assert why["teacher_bf16"].startswith("n/a: ") and "bfloat16" in why["teacher_bf16"]
    assert why["plain"] is None and why["sdpa"] is None


def test_memory_matrix_on_cpu_has_a_row_per_lever(monkeypatch):
    """Each row is its own process (two at once); bf16 is made unavailable here so that
    the n/a rows appear and the run stays short."""
    from ablate.bench.levers import format_matrix, memory_matrix

    monkeypatch.setattr("ablate.bench.levers.supports_dtype", lambda device, dtype: False)
    monkeypatch.setattr("ablate.train.supports_dtype", lambda device, dtype: False)
    report = memory_matrix(TINY, device="cpu", warmup=1, repeats=1, threads=1, jobs=2)
    rows = report["rows"]
    assert list(rows) == [lever.name for lever in LEVERS] + ["all"]
    for name, row in rows.items():
        assert "error" not in row, (name, row)
    for name in ("bf16", "teacher_bf16"):
        assert rows[name]["na"].startswith("n/a: ")
    for name in ("plain", "grad_checkpointing", "branch_backward", "sdpa", "adamw8bit", "all"):
        assert rows[name]["peak_mb"] > 0 and rows[name]["step_s"] > 0, name
        assert rows[name]["peak_mb"] >= rows[name]["floor_mb"] > 0
    assert rows["plain"]["precision"] == "fp32" and rows["plain"]["optimizer"] == "adamw"
    assert rows["all"]["optimizer"] == "adamw8bit"
    # the 8-bit moments: 2 bytes per parameter instead of 8 (small tensors stay fp32)
    assert rows["adamw8bit"]["optimizer_state_mb"] < 0.5 * rows["plain"]["optimizer_state_mb"]
    assert report["flops_per_step"] > 0
    assert rows["plain"]["mfu"]["mfu"] is None  # a CPU has no known peak
    assert report["goal"]["met"] is None and "--memory-matrix" in report["goal"]["pending"]
    table = format_matrix(report)
    assert "n/a: " in table and "all levers (without bf16, teacher_bf16)" in table


def test_data_wait_sees_every_image():
    from ablate.bench.datawait import data_wait, format_data_wait

    report = data_wait(TINY, device="cpu", warmup=1, repeats=2, workers=1, threads=1)
    assert set(report["results"]) == {"workers=0", "workers=1"}
    for r in report["results"].values():
        assert r["wait_s"] >= 0 and r["wait_mean_s"] >= 0 and 0 <= r["wait_fraction"] <= 1
        assert r["steps"] == 2 and r["images"] == 2 * 2  # steps x batch
        assert r["images_per_s"] > 0
    assert "workers=1" in format_data_wait(report)


@pytest.mark.parametrize("args, message", [
    (["--memory-matrix", "--data-wait"], "separate runs"),
    (["--loader-workers", "2"], "goes with --data-wait"),
    (["--memory-matrix", "guide=none"], "guided recipe"),
])
def test_bench_modes_refuse_bad_input(args, message):
    result = CliRunner().invoke(cli, ["bench", "--device", "cpu", *args])
    assert isinstance(result.exception, AblateError) and message in str(result.exception)
