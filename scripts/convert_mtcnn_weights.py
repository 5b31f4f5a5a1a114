"""Write ablate/data/mtcnn/mtcnn.safetensors from the MTCNN weights in facenet-pytorch's wheel.

facenet-pytorch 2.6.0 ships P-Net, R-Net and O-Net as three pickled state dicts
(facenet_pytorch/data/{pnet,rnet,onet}.pt, MIT licence). ablate vendors them as one
safetensors file, keys prefixed `pnet.`, `rnet.`, `onet.`, so `pip install ablate` brings
the default face detector with no pickle and no facenet-pytorch. The .pt files are read
with `torch.load(weights_only=True)` only (tensors, never code). The output is the same
bytes on every run; the sha256 printed must match WEIGHTS_SHA256 in
ablate/data/mtcnn/__init__.py (a new file means new weights: update the pin and say so).

    .venv/bin/pip install --no-deps facenet-pytorch==2.6.0   # `make install` does
    .venv/bin/python scripts/convert_mtcnn_weights.py           # writes, prints the sha256
    .venv/bin/python scripts/convert_mtcnn_weights.py --source DIR --out FILE
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "ablate" / "data" / "mtcnn" / "mtcnn.safetensors"
NETS = ("pnet", "rnet", "onet")
VERSION = "2.6.0"  # the facenet-pytorch whose weights ablate ships


def installed_weights() -> Path:
    """facenet_pytorch/data of the installed wheel (found without importing the package)."""
    spec = importlib.util.find_spec("facenet_pytorch")
    if spec is None or spec.origin is None:
        sys.exit(f"facenet-pytorch is not installed: pip install --no-deps "
                 f"facenet-pytorch=={VERSION}, or pass --source DIR")
    found = importlib.metadata.version("facenet-pytorch")
    if found != VERSION:
        sys.exit(f"facenet-pytorch {found} is installed, not {VERSION}: pip install --no-deps "
                 f"facenet-pytorch=={VERSION}, or pass --source DIR")
    return Path(spec.origin).parent / "data"


def convert(source: Path, out: Path) -> str:
    """Write the three nets' tensors to `out` as one safetensors file; its sha256."""
    tensors: dict[str, torch.Tensor] = {}
    for net in NETS:
        state = torch.load(source / f"{net}.pt", map_location="cpu", weights_only=True)
        tensors.update({f"{net}.{k}": v.contiguous().clone() for k, v in state.items()})
    # one metadata key only: safetensors writes several in random order (a new sha each run)
    metadata = {"source": f"facenet-pytorch {VERSION} facenet_pytorch/data/*.pt; MIT licence: "
                          "LICENSE-facenet-pytorch.md"}
    save_file(tensors, str(out), metadata=metadata)
    out.chmod(0o644)  # save_file writes 0600; the wheel keeps the mode and others must read it
    return hashlib.sha256(out.read_bytes()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, help="folder with pnet.pt, rnet.pt, onet.pt "
                        "(default: the installed facenet-pytorch's)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    sha = convert(args.source or installed_weights(), args.out)
    print(f"{args.out}\nsha256 {sha}")


if __name__ == "__main__":
    main()
