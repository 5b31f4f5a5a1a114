"""`ablate bench`: how fast guided training and evaluation run (docs/performance.md).

`run.py` times the steps side by side, `flops.py` counts a step's FLOPs for MFU,
`levers.py` measures peak memory per memory lever (`--memory-matrix`), `datawait.py`
the time a step waits for its data (`--data-wait`), `overhead.py` what a sweep spends
outside trial compute, `decode.py` frame reading; `cli.py` is the command.
"""
