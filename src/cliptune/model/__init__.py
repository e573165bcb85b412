"""The CLIP model (`clip.py`, readable top to bottom) and its analytic FLOPs (`flops.py`)."""

from cliptune.model.clip import CLIP

__all__ = ["CLIP"]
