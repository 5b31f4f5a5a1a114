"""Every shipped recipe's identity, recorded before the house was rebuilt (issue 23).

A recipe hash decides which stored results a run reuses and which it pairs with; a
refactor that moves a default or renames a key must not change one. The recorded list
(tests/data/recipe_hashes.json) was written by this file's `current_hashes` on the code
before any such change; regenerate it only for a change that means to re-run results:
    python tests/test_recipe_hashes.py --write
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RECORDED = Path(__file__).parent / "data" / "recipe_hashes.json"
ROOT = Path(__file__).resolve().parents[1]
SEEDS = (0, 1)


def current_hashes() -> dict[str, str]:
    """name -> recipe hash, for the default recipe, each preset, and each shipped space's
    recipes (a design's cells; a search's fixed part), at seeds 0 and 1."""
    from ablate.recipe import compose, recipe_hash
    from ablate.space import load_space

    wanted: dict[str, list[str]] = {"default": []}
    for preset in sorted((ROOT / "configs" / "recipe").glob("*.yaml")):
        wanted[f"recipe={preset.stem}"] = [f"recipe={preset.stem}"]
    for path in sorted((ROOT / "search_spaces").glob("*.yaml")):
        space = load_space(str(path))
        if space.design is not None:
            for label, extra in space.design.grid().items():
                wanted[f"{path.stem}:{label}"] = [*space.overrides(), *extra]
        else:
            wanted[f"{path.stem}:fixed"] = space.overrides()
    return {f"{name}@{seed}": recipe_hash(compose([*overrides, f"seed={seed}"]))
            for name, overrides in wanted.items() for seed in SEEDS}


def test_every_shipped_recipe_keeps_its_hash() -> None:
    recorded = json.loads(RECORDED.read_text())
    now = current_hashes()
    changed = {k: (recorded[k], now.get(k)) for k in recorded if now.get(k) != recorded[k]}
    assert not changed, f"recipe hashes changed (recorded, now): {changed}"
    assert len(recorded) >= 40  # the list covers the presets and every shipped space


if __name__ == "__main__" and "--write" in sys.argv:
    RECORDED.write_text(json.dumps(current_hashes(), indent=1, sort_keys=True) + "\n")
