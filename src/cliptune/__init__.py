"""cliptune: train CLIP from scratch and tune it with Optuna."""

__version__ = "0.1.0"
