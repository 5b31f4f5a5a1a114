"""ablate: ablation and architecture search for diffusion-guided deepfake detectors."""

__version__ = "0.1.0"
