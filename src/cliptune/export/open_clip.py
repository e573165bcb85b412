"""Export to OpenCLIP: a folder `open_clip.create_model_and_transforms("local-dir:DIR")`
and `open_clip.get_tokenizer("local-dir:DIR")` load.

Files: `open_clip_config.json` (`model_cfg` + `preprocess_cfg`),
`open_clip_model.safetensors` and the tokenizer files (OpenCLIP wraps them with
`transformers.AutoTokenizer`). Our CLIP is OpenCLIP's architecture, so the weights
only change names; the text tower pools at `<end>` (`pool_type="eos"`), so token ids
are exactly cliptune's.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

from cliptune.checkpoint import LoadedModel
from cliptune.config import ModelConfig
from cliptune.data.preprocess import CLIP_MEAN, CLIP_STD, INTERPOLATION
from cliptune.export.tokenizer_files import write_tokenizer_files
from cliptune.tokenizer import Tokenizer

# (pattern over our keys, replacement): applied in order, first match wins
RENAMES = [
    (r"^visual\.patch_conv\.", "visual.conv1."),
    (r"^visual\.projection$", "visual.proj"),
    (r"^text\.", ""),  # OpenCLIP keeps the text tower at the top level
]
BLOCK_RENAMES = [
    (r"\.transformer\.blocks\.", ".transformer.resblocks."),
    (r"^transformer\.blocks\.", "transformer.resblocks."),
    (r"\.attn\.qkv\.(weight|bias)$", r".attn.in_proj_\1"),
]


def open_clip_key(key: str) -> str:
    """Our state-dict key -> OpenCLIP's."""
    for pattern, replacement in RENAMES:
        if re.search(pattern, key):
            key = re.sub(pattern, replacement, key)
            break
    for pattern, replacement in BLOCK_RENAMES:
        key = re.sub(pattern, replacement, key)
    return key


def open_clip_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our CLIP state dict with OpenCLIP's names (float32, CPU, one storage per tensor)."""
    return {open_clip_key(key): value.detach().to("cpu", torch.float32).contiguous().clone()
            for key, value in state.items()}


def open_clip_model_config(config: ModelConfig) -> dict:
    """OpenCLIP's `model_cfg` for our architecture (what `open_clip.CLIP(**cfg)` takes); a
    SigLIP model's `init_logit_bias` gives OpenCLIP's CLIP its `logit_bias` parameter."""
    bias = {} if config.init_logit_bias is None else {"init_logit_bias": config.init_logit_bias}
    return {
        "embed_dim": config.embed_dim,
        **bias,
        "quick_gelu": config.activation == "quick_gelu",
        "vision_cfg": {
            "image_size": config.image_size,
            "patch_size": config.patch_size,
            "width": config.vision_width,
            "layers": config.vision_layers,
            "head_width": config.vision_width // config.vision_heads,
            "mlp_ratio": config.mlp_ratio,
        },
        "text_cfg": {
            "context_length": config.context_length,
            "vocab_size": config.vocab_size,
            "width": config.text_width,
            "heads": config.text_heads,
            "layers": config.text_layers,
            "mlp_ratio": config.mlp_ratio,
            "pad_id": config.pad_token_id,
            "eos_id": Tokenizer.eot_id,
            "pool_type": "eos",
            # any non-empty name makes get_tokenizer use the folder's tokenizer files
            "hf_tokenizer_name": "cliptune",
        },
    }


def preprocess_config(config: ModelConfig) -> dict:
    """OpenCLIP's `preprocess_cfg` for `cliptune.data.preprocess`'s recipe: OpenCLIP builds
    torchvision's Resize (bicubic, shorter side) + CenterCrop from it, the same pixels."""
    return {
        "size": config.image_size,
        "mode": "RGB",
        "mean": list(CLIP_MEAN),
        "std": list(CLIP_STD),
        "interpolation": INTERPOLATION,
        "resize_mode": "shortest",
    }


def write_open_clip(loaded: LoadedModel, out_dir: Path) -> list[str]:
    """Write the OpenCLIP folder into `out_dir` (which exists); return the file names."""
    model_config = loaded.config.model
    save_file(open_clip_state_dict(loaded.model.state_dict()),
              out_dir / "open_clip_model.safetensors", metadata={"format": "pt"})
    payload = {"model_cfg": open_clip_model_config(loaded.model.config),  # SigLIP: the bias
               "preprocess_cfg": preprocess_config(model_config)}
    (out_dir / "open_clip_config.json").write_text(json.dumps(payload, indent=2) + "\n",
                                                    encoding="utf-8")
    tokenizer_files = write_tokenizer_files(
        loaded.tokenizer.to_json(), model_config.context_length, out_dir
    )
    return ["open_clip_config.json", "open_clip_model.safetensors", *tokenizer_files]
