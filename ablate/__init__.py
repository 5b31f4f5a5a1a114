"""ablate: ablation and architecture search for diffusion-guided deepfake detectors."""

import logging
import os

__version__ = "0.1.0"

# Weights and data come from local paths only: the Hugging Face Hub is never asked (peft imports
# bitsandbytes, whose CPU backend would otherwise query the Hub for an optional 4-bit kernel
# at import time, then log that it fell back to its own kernels).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
for _name in ("bitsandbytes.backends.cpu.ops", "kernels"):
    logging.getLogger(_name).setLevel(logging.ERROR)
