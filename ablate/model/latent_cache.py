"""Teacher latents, computed once per image and teacher instead of once per step.

The frozen VAE encoder is deterministic: an image always has the same posterior
N(mean, exp(logvar)). So the cache stores the *posterior* (mean and logvar), not a
sample, and every step still draws a fresh latent from it with the step's
generator (`sample_latents`), exactly as `vae.encode(x).latent_dist.sample()`
would. Cached and uncached steps therefore compute the same thing; only the VAE
call is skipped.

Keys: sha1 of the decoded image tensor (its bytes, shape and dtype: a function of
the file's content, the image size and any flip) + a fingerprint of the teacher's
VAE encoder weights. Memory first (LRU, `max_memory_mb`), optionally also one
safetensors file per entry under `directory` that later runs and other processes
reuse.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import weakref
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from torch import Tensor, nn

from ablate.sharding import Shard

_POOL = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1))
_THREADED_BYTES = 256 * 1024  # hashlib releases the GIL; threads pay off on big images
_FINGERPRINTS: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()


@torch.no_grad()
def vae_posterior(teacher: nn.Module, images: Tensor) -> Tensor:
    """images [N, 3, H, W] in [-1, 1] -> posterior parameters [N, 2C, H/f, W/f], float32.

    Runs in the VAE's own dtype with autocast off, so the result does not depend on
    the training precision (and a cached entry serves fp32 and bf16 runs alike).
    """
    vae = teacher.vae
    device = next(vae.parameters()).device
    with torch.autocast(device.type, enabled=False):
        x = images.to(device=device, dtype=vae.dtype)
        return vae.encode(x).latent_dist.parameters.float()  # mean ++ logvar on dim 1


@torch.no_grad()
def sample_latents(
    teacher: nn.Module, posterior: Tensor, generator: torch.Generator | None = None,
    shard: Shard | None = None,
) -> Tensor:
    """posterior [N, 2C, h, w] -> scaled (and shifted) latents [N, C, h, w] in the denoiser's dtype.

    One draw for all N rows (same random stream whether or not the posterior came
    from the cache). With a `shard` the rows are sources then targets of this process's
    slice, and the draw is the global batch's, of which it keeps its rows (one process:
    the whole draw, as `DiagonalGaussianDistribution.sample` makes it)."""
    gaussian = DiagonalGaussianDistribution(posterior)
    eps = (shard or Shard(0, 1)).randn(tuple(gaussian.mean.shape), generator, posterior.device,
                                       posterior.dtype, groups=2)
    return teacher.scale_latents(gaussian.mean + gaussian.std * eps)


def content_keys(images: Tensor) -> list[str]:
    """sha1 per image of [N, ...] (bytes + shape + dtype); CPU copies only if needed."""
    images = images.detach().cpu().contiguous()
    header = f"{tuple(images.shape[1:])}|{images.dtype}|".encode()

    def key(i: int) -> str:
        h = hashlib.sha1(header)
        h.update(images[i].view(-1).view(torch.uint8).numpy().data)
        return h.hexdigest()

    if len(images) > 1 and images[0].nbytes >= _THREADED_BYTES:
        return list(_POOL.map(key, range(len(images))))
    return [key(i) for i in range(len(images))]


def vae_fingerprint(teacher: nn.Module) -> str:
    """Teacher name + sha1 of what the posterior depends on (VAE encoder, quant_conv,
    dtype, latent scale). Computed once per VAE object: a frozen teacher's VAE never
    changes."""
    vae = teacher.vae
    if vae in _FINGERPRINTS:
        return _FINGERPRINTS[vae]
    h = hashlib.sha1(f"{teacher.latent_scale}|{vae.dtype}|".encode())  # shift: not in posteriors
    for name, value in vae.state_dict().items():
        if name.startswith(("encoder.", "quant_conv.")):
            h.update(name.encode())
            h.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().data)
    fingerprint = f"{teacher.name}-{h.hexdigest()[:16]}"
    _FINGERPRINTS[vae] = fingerprint
    return fingerprint


class LatentCache:
    """Posterior of every image seen, per teacher: memory (LRU) then optional disk."""

    def __init__(self, directory: str | Path | None = None, max_memory_mb: float = 8192) -> None:
        self.directory = Path(directory).expanduser() if directory else None
        self.max_bytes = int(max_memory_mb * 2**20)
        self._memory: OrderedDict[tuple[str, str], Tensor] = OrderedDict()
        self._bytes = 0
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._memory)

    def clear(self) -> None:
        """Forget the memory entries (disk files stay)."""
        self._memory.clear()
        self._bytes = 0

    def posteriors(
        self, teacher: nn.Module, images: Tensor, device: torch.device | str | None = None
    ) -> Tensor:
        """images [N, 3, H, W] in [-1, 1] (keep them on the CPU: keys hash their bytes)
        -> posteriors [N, 2C, H/f, W/f] float32 on `device`.

        Images not cached yet are encoded in one VAE call, each distinct one once
        (a real frame is its own source and target)."""
        fingerprint = vae_fingerprint(teacher)
        keys = content_keys(images)
        found: dict[str, Tensor] = {}
        missing: dict[str, int] = {}  # key -> first row with that content
        for row, key in enumerate(keys):
            if key in found or key in missing:
                continue
            entry = self._lookup((fingerprint, key))
            if entry is None:
                missing[key] = row
            else:
                found[key] = entry
        self.hits += len(found)
        self.misses += len(missing)
        if missing:
            rows = list(missing.values())
            fresh = vae_posterior(teacher, images[rows]).cpu()  # [M, 2C, h, w]
            for key, value in zip(missing, fresh, strict=True):
                found[key] = value.clone()  # own storage: an entry must not pin the batch
                self._store((fingerprint, key), found[key])
        out = torch.stack([found[key] for key in keys])  # [N, 2C, h, w]
        return out.to(device) if device is not None else out

    # ------------------------------------------------------------------ internals

    def _lookup(self, key: tuple[str, str]) -> Tensor | None:
        entry = self._memory.get(key)
        if entry is not None:
            self._memory.move_to_end(key)
            return entry
        entry = self._from_disk(key)
        if entry is not None:
            self._remember(key, entry)
        return entry

    def _store(self, key: tuple[str, str], value: Tensor) -> None:
        self._remember(key, value)
        self._to_disk(key, value)

    def _remember(self, key: tuple[str, str], value: Tensor) -> None:
        if value.nbytes > self.max_bytes:
            return
        self._memory[key] = value
        self._bytes += value.nbytes
        while self._bytes > self.max_bytes:
            _, old = self._memory.popitem(last=False)
            self._bytes -= old.nbytes

    def _file(self, key: tuple[str, str]) -> Path | None:
        if self.directory is None:
            return None
        fingerprint, content = key
        return self.directory / fingerprint / content[:2] / f"{content}.safetensors"

    def _from_disk(self, key: tuple[str, str]) -> Tensor | None:
        file = self._file(key)
        if file is None or not file.is_file():
            return None
        from safetensors.torch import load_file

        try:
            return load_file(str(file))["posterior"]
        except (OSError, KeyError, RuntimeError, ValueError):
            return None  # a half-written or foreign file: encode again

    def _to_disk(self, key: tuple[str, str], value: Tensor) -> None:
        file = self._file(key)
        if file is None:
            return
        from safetensors.torch import save_file

        file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=file.parent, suffix=".tmp")
        os.close(fd)
        save_file({"posterior": value.contiguous()}, tmp)
        os.replace(tmp, file)  # atomic: parallel trials never read a partial file
