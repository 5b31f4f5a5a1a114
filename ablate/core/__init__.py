"""The torch-free bottom layer: what every other layer may import and nothing else imports.

- `errors`: the one-line user error;
- `paths`: every `results/...` location;
- `names`: the names layers share (slots, score files, metric provenance columns);
- `schema`: the recipe's settings, each with its default and whether it changes a result.

Nothing here imports torch, Hydra, Ray or another `ablate` layer (the import contracts in
pyproject.toml keep it so).
"""
