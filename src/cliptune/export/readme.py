"""README.md of an exported folder: what the model is, how it was trained, how to load it.

The load snippets are plain Python that runs as written from the folder the export
was made in (with a `dog.jpg` there); the tests execute them.
"""

from __future__ import annotations

import json
from pathlib import Path

from cliptune.checkpoint import LoadedModel
from cliptune.tables import format_metrics_table

HF_SNIPPET = '''import torch
from PIL import Image
from transformers import CLIPModel, CLIPProcessor

model = CLIPModel.from_pretrained("{path}").eval()
processor = CLIPProcessor.from_pretrained("{path}")
captions = ["a dog on the grass", "a red car"]
inputs = processor(text=captions, images=Image.open("dog.jpg").convert("RGB"),
                   return_tensors="pt", padding="max_length", truncation=True)
with torch.no_grad():
    image_emb = model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output
    text_emb = model.get_text_features(input_ids=inputs["input_ids"],
                                       attention_mask=inputs["attention_mask"]).pooler_output
image_emb = image_emb / image_emb.norm(dim=-1, keepdim=True)
text_emb = text_emb / text_emb.norm(dim=-1, keepdim=True)
{probs}
print(dict(zip(captions, probs[0].tolist())))
'''

OPEN_CLIP_SNIPPET = '''import open_clip
import torch
from PIL import Image

model, _, preprocess = open_clip.create_model_and_transforms("local-dir:{path}")
tokenizer = open_clip.get_tokenizer("local-dir:{path}")
model.eval()
captions = ["a dog on the grass", "a red car"]
with torch.no_grad():
    image_emb = model.encode_image(preprocess(Image.open("dog.jpg")).unsqueeze(0), normalize=True)
    text_emb = model.encode_text(tokenizer(captions), normalize=True)
{probs}
print(dict(zip(captions, probs[0].tolist())))
'''
SOFTMAX = "probs = (model.logit_scale.exp() * image_emb @ text_emb.T).softmax(dim=-1)"
# SigLIP: one sigmoid per pair; transformers' CLIPModel has no bias, so its value is written out
SIGMOID = {
    "hf": "logit_bias = {bias!r}  # SigLIP's learned bias: CLIPModel has none (see Notes)\n"
          "probs = torch.sigmoid(model.logit_scale.exp() * image_emb @ text_emb.T + logit_bias)",
    "open_clip": "probs = torch.sigmoid(model.logit_scale.exp() * image_emb @ text_emb.T "
                 "+ model.logit_bias)",
}

NOTES = {
    "hf": [
        "Token ids are cliptune's except one swap: `<end>` (id 2 in cliptune) and the "
        "tokenizer's last token trade ids, and `text_config.eos_token_id` names the new "
        "id. transformers reads `eos_token_id == 2` as its legacy pooling rule (pool at "
        "the largest id), so id 2 cannot mark the end; the embedding rows are swapped "
        "with the ids, so the embeddings are exactly cliptune's.",
        "Tokenize with `truncation=True` (the context length is "
        "`model_max_length`); `padding=True` or `padding=\"max_length\"` both work.",
        "The image processor: `CLIPProcessor`, `AutoProcessor` and `AutoImageProcessor` "
        "load transformers' `TimmWrapperImageProcessor` (install `timm`), whose resize and "
        "crop are exactly cliptune's; `CLIPImageProcessor`, named explicitly, centres its "
        "crop differently (one resized pixel off for shapes such as 640x427). Give it RGB "
        "images (`.convert(\"RGB\")`) and `return_tensors=\"pt\"`. transformers' note "
        "that it falls back to the pil backend is expected. `processor.save_pretrained` "
        "writes an image processor config that transformers cannot load back (a "
        "transformers limitation): copy `preprocessor_config.json` from this folder.",
    ],
    "open_clip": [
        "Token ids are exactly cliptune's; the text tower pools at `<end>` "
        "(`pool_type: eos`). OpenCLIP's tokenizer wrapper first runs `ftfy` and HTML "
        "unescaping, which changes only unusual text (entities such as `&amp;`).",
    ],
}
SIGLIP_NOTES = {
    "hf": "Trained with SigLIP's sigmoid loss, whose learned logit bias ({bias:.4f}) "
          "transformers' `CLIPModel` has no place for: embeddings, similarities and rankings "
          "are exactly the model's, but `logits_per_image` lack the bias and their softmax is "
          "not what the model learned. A pair's match probability is "
          "`sigmoid(logit_scale.exp() * cosine + {bias:.4f})`, as the snippet computes.",
    "open_clip": "Trained with SigLIP's sigmoid loss: `model.logit_bias` holds its learned "
                 "bias, and a pair's match probability is the sigmoid of its logit (one per "
                 "pair, not a softmax over the captions), as the snippet computes.",
}
PREPROCESSING_NOTE = (
    "Images: shorter side to {size} px (bicubic), centre crop, CLIP mean/std: the "
    "resize-then-crop these libraries apply, so they see the pixels cliptune trained on."
)


def _architecture(loaded: LoadedModel) -> list[str]:
    m = loaded.config.model
    params = loaded.model.num_parameters()
    return [
        f"- {params / 1e6:.2f} M parameters, joint embedding of {m.embed_dim} dimensions",
        f"- image tower: ViT, {m.image_size} px images in {m.patch_size} px patches, width "
        f"{m.vision_width}, {m.vision_layers} layers, {m.vision_heads} heads",
        f"- text tower: causal transformer, width {m.text_width}, {m.text_layers} layers, "
        f"{m.text_heads} heads, {m.context_length} tokens, byte-level BPE of "
        f"{loaded.tokenizer.vocab_size} ids (embedding table {m.vocab_size})",
        f"- activation {m.activation}, MLP ratio {m.mlp_ratio:g}",
    ]


def _training(loaded: LoadedModel, checkpoint: Path) -> list[str]:
    config, state = loaded.config, loaded.checkpoint
    data = config.data.source if config.data.source != "folder" else f"folder {config.data.data_dir}"
    best = state.get("best") or {}
    lines = [
        f"- run `{config.name}`, seed {config.seed}, data: {data}",
        f"- {config.train.epochs} epochs planned, {config.train.loss} loss, batch "
        f"{config.train.batch_size}, peak lr {config.train.lr:g}, weight decay "
        f"{config.train.weight_decay:g}, precision {config.train.precision}",
        f"- exported from `{checkpoint}` (epoch {state.get('epoch', '?')}; best "
        f"{config.train.best_metric} {best.get('value', float('nan')):.4g} at epoch "
        f"{int(best.get('epoch', 0)) or '?'})",
        "- the full training config is in `cliptune_config.yaml`",
    ]
    metrics = _evaluated(checkpoint)
    where = "its best checkpoint, as evaluated after training"
    if not metrics:
        val = {k[4:]: v for k, v in (state.get("metrics") or {}).items() if k.startswith("val_")}
        metrics = {"val": val} if val else {}
        where = "the validation split at the checkpoint's epoch"
    if metrics:
        lines += ["", f"Retrieval metrics of {where} (recalls in %):",
                  "", "```", format_metrics_table(metrics), "```"]
    return lines


def _evaluated(checkpoint: Path) -> dict[str, dict]:
    """The val/test metrics of the run's `metrics.json` when it describes this checkpoint."""
    path = checkpoint.parent / "metrics.json"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(record, dict) or Path(str(record.get("weights", ""))).name != checkpoint.name:
        return {}
    return {split: record[split] for split in ("val", "test") if isinstance(record.get(split), dict)}


def readme_text(loaded: LoadedModel, checkpoint: Path, fmt: str, path: str) -> str:
    """The README of an export in format `fmt` (`hf` or `open_clip`) that users will
    load from `path`."""
    library = {"hf": "Hugging Face transformers", "open_clip": "OpenCLIP"}[fmt]
    bias = None if loaded.model.logit_bias is None else loaded.model.logit_bias.item()
    probs = SOFTMAX if bias is None else SIGMOID[fmt].format(bias=bias)
    snippet = (HF_SNIPPET if fmt == "hf" else OPEN_CLIP_SNIPPET).format(path=path, probs=probs)
    notes = [*NOTES[fmt], PREPROCESSING_NOTE.format(size=loaded.config.model.image_size)]
    if bias is not None:
        notes.append(SIGLIP_NOTES[fmt].format(bias=bias))
    out = [
        f"# {loaded.config.name}: a CLIP trained with cliptune ({library} format)",
        "",
        "A CLIP (ViT image encoder and causal text transformer, contrastive loss, learned "
        "temperature) trained from scratch with cliptune. Image and "
        "text embeddings live in one space: cosine similarity ranks captions for an image "
        "and images for a caption.",
        "", "## Architecture", "", *_architecture(loaded),
        "", "## Training", "", *_training(loaded, checkpoint),
        "", "## Loading", "", "```python", snippet.rstrip(), "```",
        "", "## Notes", "", *(f"- {note}" for note in notes), "",
    ]
    return "\n".join(out)
