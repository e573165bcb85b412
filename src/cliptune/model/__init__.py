"""The CLIP model: transformer layers, the two towers and the joint model."""

from cliptune.model.clip import CLIP

__all__ = ["CLIP"]
