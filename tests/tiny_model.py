"""Overrides for a CLIP small enough to train in a second in tests (shared by test files)."""

TINY_MODEL = [
    "model.preset=tiny", "model.image_size=32", "model.patch_size=8",
    "model.vision_width=32", "model.vision_layers=1", "model.vision_heads=2",
    "model.text_width=32", "model.text_layers=1", "model.text_heads=2",
    "model.embed_dim=32", "model.context_length=16", "model.vocab_size=128",
]
