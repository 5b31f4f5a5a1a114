"""`ablate bench`: how fast guided training and evaluation run (docs/performance.md).

`run.py` times the steps side by side, `overhead.py` measures what a sweep spends
outside trial compute, `cli.py` is the command.
"""
