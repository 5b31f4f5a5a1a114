"""Which of a dataset's known on-disk layouts a tree follows, read from the folders themselves.

Researchers hold the same dataset in the shape their tool wrote: `ablate data prepare`,
DeepfakeBench's `preprocessing/preprocess.py` (frames next to each `videos` folder),
DiffusionFake's loaders (`Celeb-real-mtcnn/`, frames directly under `c23/`). Each adapter
lists its layouts with a cheap marker test; `choose` picks the one whose markers exist.
Ambiguity is never guessed away: none or several matching is a one-line error that names
every option and the setting to set, and an explicit `layout=` always wins.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ablate.core.errors import AblateError
from ablate.data.adapter_base import is_image

AUTO = ("auto", None, "")


@dataclass(frozen=True)
class Layout:
    """One way a dataset's frames can sit on disk."""

    name: str
    where: str  # the shape, for messages: "ROOT/<sub>/frames/<video>/ (DeepfakeBench)"
    present: Callable[[Path], bool]  # do this layout's marker folders exist under ROOT?


def choose(
    dataset: str, base: Path, layouts: Sequence[Layout], chosen: str | None, setting: str = "layout"
) -> Layout:
    """The layout named by `chosen`, else the single one whose markers exist under `base`."""
    by_name = {layout.name: layout for layout in layouts}
    options = "; ".join(f"{layout.name} = {layout.where}" for layout in layouts)
    if chosen not in AUTO:
        if chosen not in by_name:
            raise AblateError(
                f"dataset {dataset!r}: {setting} must be auto or one of {', '.join(by_name)} "
                f"({options}), got {chosen!r}"
            )
        return by_name[chosen]
    found = [layout for layout in layouts if layout.present(base)]
    if len(found) == 1:
        return found[0]
    how = f"set the one your tree follows with --set {setting}=NAME ({setting}: NAME in its config)"
    if not found:
        raise AblateError(
            f"dataset {dataset!r}: {base} follows none of the known layouts ({options}); "
            f"move the frames into one of them, or {how}"
        )
    raise AblateError(
        f"dataset {dataset!r}: {base} matches several layouts "
        f"({', '.join(layout.name for layout in found)}; options: {options}); {how}"
    )


def holds_image_folders(folder: Path, skip: Sequence[str] = (), probe: int = 20) -> bool:
    """True if one of the first `probe` sub-folders of `folder` (names in `skip` left out)
    directly holds an image: cheap evidence that `folder` holds per-video frame folders."""
    if not folder.is_dir():
        return False
    seen = 0
    for child in sorted(folder.iterdir()):
        if not child.is_dir() or child.name in skip:
            continue
        if any(f.is_file() and is_image(f.name) for f in child.iterdir()):
            return True
        seen += 1
        if seen >= probe:
            break
    return False
