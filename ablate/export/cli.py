"""The `ablate export` command: parses options, calls `export_run`, prints where it wrote."""

from __future__ import annotations

from pathlib import Path

import click

from ablate.export.formats import FORMATS, check_format, check_out


@click.command("export")
@click.argument("run", metavar="RUN")
@click.option("--format", "fmt", default="onnx", show_default=True, metavar="|".join(FORMATS),
              help="onnx: one .onnx file for onnxruntime and other ONNX runtimes (needs "
                   "ablate[export]); torchscript: a .pt archive for torch.jit.load.")
@click.option("--out", type=click.Path(dir_okay=False), metavar="FILE",
              help="Where to write (default: <RUN>/model.onnx or <RUN>/model.pt); its "
                   "suffix must name the format (.onnx; .pt, .ts or .torchscript).")
def export(run: str, fmt: str, out: str | None) -> None:
    """Write a run's detector (encoder + head) as one ONNX or TorchScript file.

    \b
    RUN is a run folder (what `ablate train` printed). The file takes images
    [N, 3, S, S], RGB in [-1, 1] (S = the recipe's image_size; any N) and returns
    logits [N], P(fake) = sigmoid(logit). It carries its own metadata (image size,
    input range, mean/std, the run's decision threshold, recipe and recipe hash):
    ONNX in metadata_props["ablate"], TorchScript in the extra file ablate.json.
    After every export the file is read back by its runtime on the CPU and must
    give the run's logits within 1e-4 (relative beyond |logit| 1) on seeded images; otherwise nothing is
    written (an existing file stays as it was).

    \b
    Examples:
      ablate export runs/r1                         # runs/r1/model.onnx
      ablate export runs/r1 --format torchscript --out detector.pt
      ablate predict runs/r1/model.onnx face.jpg    # score with the exported file
    """
    check_format(fmt)  # before torch loads: a typo costs no import time
    if out:
        check_out(fmt, Path(out))
    # lazy: loads torch and the exporters only when called
    from ablate.export.run import export_run

    result = export_run(run, fmt, out)
    for note in result.notes:
        click.echo(note)
    how = (f"{result.exporter} exporter, opset {result.metadata.get('opset')}"
           if result.format == "onnx" else result.exporter)
    click.echo(f"wrote {result.path} ({result.format}, {how}, {_size(result.size_bytes)})")
    click.echo(result.parity.line())


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"
