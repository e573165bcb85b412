"""Export to Hugging Face `transformers`: a folder `CLIPModel.from_pretrained` and
`CLIPProcessor.from_pretrained` load.

Files: `config.json` (CLIPConfig), `model.safetensors`, `preprocessor_config.json`
(an image processor that gives exactly our pixels, see `image_processor_config`) and
the tokenizer files.

One id changes on the way. transformers pools the text tower at the first position
holding `eos_token_id`, except that `eos_token_id == 2` selects its legacy rule (the
position of the LARGEST id in the row). Our `<end>` is id 2, so the export gives
`<end>` the tokenizer's largest id and that token id 2: the tokenizer JSON and the
token-embedding rows are swapped together, so embeddings are unchanged and both rules
pool at `<end>`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file

from cliptune.checkpoint import LoadedModel
from cliptune.config import ModelConfig
from cliptune.data.preprocess import CLIP_MEAN, CLIP_STD, INTERPOLATION, PIL_BICUBIC
from cliptune.errors import CheckpointError
from cliptune.export.tokenizer_files import swap_token_ids, write_tokenizer_files
from cliptune.tokenizer import Tokenizer

LAYER_NORM_EPS = 1e-5  # nn.LayerNorm's default, which our model uses
# ours (inside transformer.blocks.N) -> transformers (inside encoder.layers.N)
BLOCK_RENAMES = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}


def hf_end_token_id(tokenizer: Tokenizer) -> int:
    """The id `<end>` has in the export: the tokenizer's largest id (see the module doc)."""
    end_id = tokenizer.vocab_size - 1
    if end_id <= tokenizer.eot_id:
        raise CheckpointError("the tokenizer has no tokens beyond its special ones; nothing to export")
    return end_id


def _blocks(state: dict[str, torch.Tensor], ours: str, theirs: str, layers: int) -> dict:
    out = {}
    for n in range(layers):
        src, dst = f"{ours}.transformer.blocks.{n}.", f"{theirs}.encoder.layers.{n}."
        for old, new in BLOCK_RENAMES.items():
            for kind in ("weight", "bias"):
                out[f"{dst}{new}.{kind}"] = state[f"{src}{old}.{kind}"]
        for kind in ("weight", "bias"):
            q, k, v = state[f"{src}attn.qkv.{kind}"].chunk(3, dim=0)
            out.update({f"{dst}self_attn.{name}_proj.{kind}": part
                        for name, part in zip("qkv", (q, k, v), strict=True)})
    return out


def hf_state_dict(
    state: dict[str, torch.Tensor], config: ModelConfig, swap: tuple[int, int]
) -> dict[str, torch.Tensor]:
    """Our CLIP state dict renamed to transformers' CLIPModel keys, with token-embedding
    rows `swap[0]` and `swap[1]` exchanged."""
    tokens = state["text.token_embedding.weight"].clone()
    a, b = swap
    tokens[[a, b]] = tokens[[b, a]]
    out = {
        "vision_model.embeddings.patch_embedding.weight": state["visual.patch_conv.weight"],
        "vision_model.embeddings.class_embedding": state["visual.class_embedding"],
        "vision_model.embeddings.position_embedding.weight": state["visual.positional_embedding"],
        "vision_model.pre_layrnorm.weight": state["visual.ln_pre.weight"],
        "vision_model.pre_layrnorm.bias": state["visual.ln_pre.bias"],
        "vision_model.post_layernorm.weight": state["visual.ln_post.weight"],
        "vision_model.post_layernorm.bias": state["visual.ln_post.bias"],
        "visual_projection.weight": state["visual.projection"].t(),
        "text_model.embeddings.token_embedding.weight": tokens,
        "text_model.embeddings.position_embedding.weight": state["text.positional_embedding"],
        "text_model.final_layer_norm.weight": state["text.ln_final.weight"],
        "text_model.final_layer_norm.bias": state["text.ln_final.bias"],
        "text_projection.weight": state["text.text_projection"].t(),
        "logit_scale": state["logit_scale"],
        **_blocks(state, "visual", "vision_model", config.vision_layers),
        **_blocks(state, "text", "text_model", config.text_layers),
    }
    # safetensors wants each tensor in its own contiguous storage (chunks and .t() are views)
    return {key: value.detach().to("cpu", torch.float32).contiguous().clone()
            for key, value in out.items()}


def hf_config(config: ModelConfig, end_id: int) -> dict:
    """transformers' CLIPConfig for our architecture, as the dict `config.json` holds."""
    def tower(width: int, layers: int, heads: int) -> dict:
        return {
            "hidden_size": width,
            "intermediate_size": int(width * config.mlp_ratio),
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "hidden_act": config.activation,
            "layer_norm_eps": LAYER_NORM_EPS,
            "attention_dropout": 0.0,
            "dropout": 0.0,
            "projection_dim": config.embed_dim,
        }

    return {
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "projection_dim": config.embed_dim,
        "logit_scale_init_value": math.log(1.0 / config.init_temperature),
        "dtype": "float32",
        "text_config": {
            "model_type": "clip_text_model",
            **tower(config.text_width, config.text_layers, config.text_heads),
            "vocab_size": config.vocab_size,
            "max_position_embeddings": config.context_length,
            "pad_token_id": config.pad_token_id,
            "bos_token_id": Tokenizer.sot_id,
            "eos_token_id": end_id,
        },
        "vision_config": {
            "model_type": "clip_vision_model",
            **tower(config.vision_width, config.vision_layers, config.vision_heads),
            "image_size": config.image_size,
            "patch_size": config.patch_size,
            "num_channels": 3,
        },
    }


def image_processor_config(config: ModelConfig) -> dict:
    """`preprocessor_config.json`: `cliptune.data.preprocess`'s recipe (shorter side to
    `image_size`, PIL bicubic, centre crop offset by round(), CLIP mean/std) as transformers
    loads it.

    transformers' own CLIPImageProcessor cannot be configured to give these pixels: it
    centres its crop at floor((side - size) / 2), one resized pixel off wherever the excess
    is odd and its floored half odd (640x427 at 64, 128 and 224 px), and its default
    torchvision backend resizes a tensor, up to a level off PIL. So `image_processor_type`
    names TimmWrapperImageProcessor, which AutoImageProcessor (hence CLIPProcessor and
    AutoProcessor) builds from `pretrained_cfg`: timm's eval transform, torchvision's
    Resize + CenterCrop on the PIL image, which is OpenCLIP's transform and our recipe
    exactly (it needs `timm`). The CLIPImageProcessor keys stay for code that builds that
    class by name: the right sizes and statistics, with its crop convention."""
    size = config.image_size
    return {
        "image_processor_type": "TimmWrapperImageProcessor",
        "pretrained_cfg": {
            "input_size": [3, size, size],
            "interpolation": INTERPOLATION,
            "crop_pct": 1.0,  # resize the shorter side to the crop size itself
            "crop_mode": "center",
            "mean": list(CLIP_MEAN),
            "std": list(CLIP_STD),
        },
        "processor_class": "CLIPProcessor",
        "do_convert_rgb": True,
        "do_resize": True,
        "size": {"shortest_edge": size},
        "resample": PIL_BICUBIC,
        "do_center_crop": True,
        "crop_size": {"height": size, "width": size},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(CLIP_MEAN),
        "image_std": list(CLIP_STD),
    }


def write_hf(loaded: LoadedModel, out_dir: Path) -> list[str]:
    """Write the transformers folder into `out_dir` (which exists); return the file names."""
    model_config = loaded.config.model
    end_id = hf_end_token_id(loaded.tokenizer)
    state = hf_state_dict(loaded.model.state_dict(), model_config, (Tokenizer.eot_id, end_id))
    save_file(state, out_dir / "model.safetensors", metadata={"format": "pt"})
    for name, payload in (("config.json", hf_config(model_config, end_id)),
                          ("preprocessor_config.json", image_processor_config(model_config)),
                          ("processor_config.json", {"processor_class": "CLIPProcessor"})):
        (out_dir / name).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    tokenizer_json = swap_token_ids(loaded.tokenizer.to_json(), Tokenizer.eot_id, end_id)
    tokenizer_files = write_tokenizer_files(tokenizer_json, model_config.context_length, out_dir)
    return ["config.json", "model.safetensors", "preprocessor_config.json",
            "processor_config.json", *tokenizer_files]
