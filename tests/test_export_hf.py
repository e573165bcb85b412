"""Hugging Face export: transformers loads the folder and gives our embeddings (1e-4),
our tokens (one documented id swap) and our preprocessing; a SigLIP model's bias, which
CLIPModel lacks, goes into its README."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from export_helpers import (
    CAPTIONS,
    photo_jpeg,
    random_checkpoint,
    readme_code,
    run_python,
    smooth_image,
)
from PIL import Image
from transformers import AutoTokenizer, CLIPModel, CLIPProcessor

from cliptune.checkpoint import load_model
from cliptune.config import PRESETS
from cliptune.data import normalize_images
from cliptune.export import export_checkpoint
from cliptune.export.hf import hf_end_token_id
from cliptune.retrieval import load_image, rank_captions

ATOL = 1e-4
PHOTO_SHAPES = [(640, 427), (500, 375), (375, 500)]  # (width, height)


@pytest.fixture(scope="module")
def hf_export(trained_tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("hf") / "tiny-hf"
    export_checkpoint(trained_tiny.checkpoint, "hf", out)
    return load_model(trained_tiny.checkpoint), out


def load_hf(folder):
    model, info = CLIPModel.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert not info["mismatched_keys"], info
    return model.eval()


def hf_ids(ours: torch.Tensor, end_id: int) -> torch.Tensor:
    """Our ids with `<end>` (2) and `end_id` trading places, as the export does."""
    swapped = ours.clone()
    swapped[ours == 2] = end_id
    swapped[ours == end_id] = 2
    return swapped


def embeddings_match(loaded, model, tokenizer, images: torch.Tensor, padding) -> None:
    inputs = tokenizer(CAPTIONS, padding=padding, truncation=True, return_tensors="pt")
    with torch.no_grad():
        text = F.normalize(model.get_text_features(**inputs).pooler_output, dim=-1)
        image = F.normalize(model.get_image_features(pixel_values=images).pooler_output, dim=-1)
        ours_text = loaded.model.encode_text(loaded.tokenizer.encode(CAPTIONS))
        ours_image = loaded.model.encode_image(images)
    torch.testing.assert_close(text, ours_text, atol=ATOL, rtol=0)
    torch.testing.assert_close(image, ours_image, atol=ATOL, rtol=0)


def test_hf_round_trip_of_a_trained_checkpoint(hf_export):
    loaded, folder = hf_export
    model = load_hf(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    end_id = hf_end_token_id(loaded.tokenizer)
    assert model.config.text_config.eos_token_id == end_id != 2

    ours = loaded.tokenizer.encode(CAPTIONS)
    theirs = tokenizer(CAPTIONS, padding="max_length", truncation=True, return_tensors="pt")
    assert torch.equal(theirs.input_ids, hf_ids(ours, end_id))
    assert torch.equal(theirs.attention_mask, (ours != 0).long())
    assert tokenizer.decode(theirs.input_ids[0], skip_special_tokens=True).strip() == "a red circle"

    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for padding in ("max_length", True):  # padded to the context or to the longest caption
        embeddings_match(loaded, model, tokenizer, images, padding)
    torch.testing.assert_close(model.logit_scale.detach(), loaded.model.logit_scale.detach())


@pytest.mark.parametrize("model", [
    {"activation": "quick_gelu", "learnable_temperature": False},
    {"activation": "gelu", "image_size": 48, "patch_size": 16, "mlp_ratio": 2.0},
])
def test_hf_round_trip_of_other_architectures(tmp_path, model):
    checkpoint = random_checkpoint(tmp_path / "random.pt", **model)
    export_checkpoint(checkpoint, "hf", tmp_path / "out")
    loaded = load_model(checkpoint)
    hf = load_hf(tmp_path / "out")
    assert hf.config.vision_config.hidden_act == model["activation"]
    size = loaded.config.model.image_size
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    embeddings_match(loaded, hf, AutoTokenizer.from_pretrained(tmp_path / "out"), images, True)


def image_embeddings(model, pixel_values: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return F.normalize(model.get_image_features(pixel_values=pixel_values).pooler_output, dim=-1)


def test_hf_processor_reproduces_our_preprocessing(hf_export, tmp_path):
    loaded, folder = hf_export
    processor = CLIPProcessor.from_pretrained(folder)
    model = load_hf(folder)
    # kept, upscaled, downscaled, and a wide image (its central crop, not the left square)
    for width, height in ((32, 32), (20, 20), (100, 100), (96, 64)):
        path = tmp_path / f"{width}x{height}.png"
        smooth_image(width, height, seed=width).save(path)
        inputs = processor(images=smooth_image(width, height, seed=width), text=["a red circle"],
                           return_tensors="pt", padding="max_length", truncation=True)
        ours = normalize_images(load_image(path, 32)[None])
        torch.testing.assert_close(inputs["pixel_values"], ours, atol=1e-5, rtol=0)
        with torch.no_grad():
            torch.testing.assert_close(image_embeddings(model, inputs["pixel_values"]),
                                       loaded.model.encode_image(ours), atol=ATOL, rtol=0)


@pytest.mark.parametrize("preset", ["tiny", "small", "vit-b-32"])
def test_hf_processor_gives_our_embeddings_on_photos(tmp_path, preset):
    """JPEG photos of common shapes at each preset's image size: the folder's processor sees
    cliptune's pixels (where transformers' CLIPImageProcessor would crop 640x427 one resized
    pixel off at all three sizes), so the embeddings agree."""
    size, patch = PRESETS[preset].image_size, PRESETS[preset].patch_size
    checkpoint = random_checkpoint(tmp_path / "random.pt", image_size=size, patch_size=patch)
    export_checkpoint(checkpoint, "hf", tmp_path / "hf")
    loaded, model = load_model(checkpoint), load_hf(tmp_path / "hf")
    paths = [tmp_path / f"{width}x{height}.jpg" for width, height in PHOTO_SHAPES]
    for seed, (path, (width, height)) in enumerate(zip(paths, PHOTO_SHAPES, strict=True)):
        path.write_bytes(photo_jpeg(width, height, seed))
    processor = CLIPProcessor.from_pretrained(tmp_path / "hf")
    inputs = processor(images=[Image.open(path).convert("RGB") for path in paths],
                       text=CAPTIONS[:1], return_tensors="pt", padding=True, truncation=True)
    ours = normalize_images(torch.stack([load_image(path, size) for path in paths]))
    torch.testing.assert_close(inputs["pixel_values"], ours, atol=1e-5, rtol=0)  # ~5e-7
    with torch.no_grad():
        torch.testing.assert_close(image_embeddings(model, inputs["pixel_values"]),
                                   loaded.model.encode_image(ours), atol=ATOL, rtol=0)


def test_hf_config_files(hf_export):
    loaded, folder = hf_export
    config = json.loads((folder / "config.json").read_text())
    m = loaded.config.model
    assert config["vision_config"]["hidden_size"] == m.vision_width
    assert config["vision_config"]["num_attention_heads"] == m.vision_heads
    assert config["text_config"]["max_position_embeddings"] == m.context_length
    assert config["text_config"]["intermediate_size"] == int(m.text_width * m.mlp_ratio)
    pre = json.loads((folder / "preprocessor_config.json").read_text())
    assert pre["crop_size"] == {"height": 32, "width": 32} and pre["size"] == {"shortest_edge": 32}
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    assert tokenizer_config["model_max_length"] == m.context_length
    readme = (folder / "README.md").read_text()
    assert "## Training" in readme and "rsum" in readme and "shapes" in readme


def test_hf_readme_snippet_runs(hf_export):
    _, folder = hf_export
    done = run_python(readme_code(folder / "README.md"), folder.parent)
    assert done.returncode == 0, done.stderr
    probs = eval(done.stdout.strip().splitlines()[-1])  # the snippet prints {caption: prob}
    assert set(probs) == {"a dog on the grass", "a red car"}
    assert abs(sum(probs.values()) - 1) < 1e-5


def test_hf_export_of_a_siglip_model_keeps_embeddings_and_writes_the_bias_out(tmp_path):
    # a bias that puts the README's probabilities near 0.5 (not -10's ~1e-6)
    checkpoint = random_checkpoint(tmp_path / "siglip.pt", loss="siglip", init_temperature=0.1,
                                   init_logit_bias=3.0)
    out = tmp_path / "siglip-hf"
    export_checkpoint(checkpoint, "hf", out)
    loaded = load_model(checkpoint)
    hf = load_hf(out)  # no missing or unexpected keys: the bias is not a CLIPModel weight
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    embeddings_match(loaded, hf, AutoTokenizer.from_pretrained(out), images, True)
    torch.testing.assert_close(hf.logit_scale.detach(), loaded.model.logit_scale.detach())

    bias = loaded.model.logit_bias.item()
    readme = (out / "README.md").read_text()
    assert f"learned logit bias ({bias:.4f})" in readme
    done = run_python(readme_code(out / "README.md"), tmp_path)
    assert done.returncode == 0, done.stderr
    probs = eval(done.stdout.strip().splitlines()[-1])  # the README's sigmoid with the bias
    expected = rank_captions(loaded, tmp_path / "dog.jpg", list(probs))  # retrieve.py's
    assert 0.05 < min(probs.values()) and max(probs.values()) < 0.95
    # the processor's pixels of this non-square dog.jpg are within a level of ours
    assert probs == pytest.approx({m.label: m.probability for m in expected}, abs=1e-3)
