"""OpenCLIP export: open_clip loads the folder (local-dir: and create_model with the
config) and gives our embeddings (1e-4), our token ids and our preprocessing; a SigLIP
model's logits keep their bias."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch
from export_helpers import CAPTIONS, random_checkpoint, readme_code, run_python, smooth_image
from safetensors.torch import load_file

from cliptune.checkpoint import load_model
from cliptune.data import normalize_images
from cliptune.export import export_checkpoint
from cliptune.retrieval import load_image, rank_captions

ATOL = 1e-4


@pytest.fixture(scope="module")
def oc_export(trained_tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("oc") / "tiny-open-clip"
    export_checkpoint(trained_tiny.checkpoint, "open_clip", out)
    return load_model(trained_tiny.checkpoint), out


def embeddings_match(loaded, model, tokens: torch.Tensor, images: torch.Tensor) -> None:
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(tokens, normalize=True),
                                   loaded.model.encode_text(loaded.tokenizer.encode(CAPTIONS)),
                                   atol=ATOL, rtol=0)
        torch.testing.assert_close(model.encode_image(images, normalize=True),
                                   loaded.model.encode_image(images), atol=ATOL, rtol=0)


def test_open_clip_round_trip_from_the_folder(oc_export, tmp_path):
    loaded, folder = oc_export
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    model.eval()
    tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    tokens = tokenizer(CAPTIONS)
    assert torch.equal(tokens, loaded.tokenizer.encode(CAPTIONS))  # exactly our ids
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    embeddings_match(loaded, model, tokens, images)
    torch.testing.assert_close(model.logit_scale.detach(), loaded.model.logit_scale.detach())

    path = tmp_path / "square.png"  # a square image: OpenCLIP's transform gives our pixels
    smooth_image(32, 32).save(path)
    ours = normalize_images(load_image(path, 32)[None])
    torch.testing.assert_close(preprocess(smooth_image(32, 32))[None], ours, atol=1e-5, rtol=0)


@pytest.mark.parametrize("model", [
    {"activation": "quick_gelu", "learnable_temperature": False},
    {"activation": "gelu", "image_size": 48, "patch_size": 16, "mlp_ratio": 2.0},
])
def test_open_clip_create_model_with_the_config(tmp_path, model):
    checkpoint = random_checkpoint(tmp_path / "random.pt", **model)
    out = tmp_path / "out"
    export_checkpoint(checkpoint, "open_clip", out)
    loaded = load_model(checkpoint)
    config = json.loads((out / "open_clip_config.json").read_text())
    assert config["model_cfg"]["quick_gelu"] == (model["activation"] == "quick_gelu")
    clip = open_clip.CLIP(**config["model_cfg"])  # the config alone builds the architecture
    clip.load_state_dict(load_file(out / "open_clip_model.safetensors"), strict=True)
    clip.eval()
    size = loaded.config.model.image_size
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    embeddings_match(loaded, clip, loaded.tokenizer.encode(CAPTIONS), images)


def test_open_clip_readme_snippet_runs(oc_export):
    _, folder = oc_export
    done = run_python(readme_code(folder / "README.md"), folder.parent)
    assert done.returncode == 0, done.stderr
    probs = eval(done.stdout.strip().splitlines()[-1])  # the snippet prints {caption: prob}
    assert set(probs) == {"a dog on the grass", "a red car"}
    assert abs(sum(probs.values()) - 1) < 1e-5


def test_open_clip_export_of_a_siglip_model_reproduces_its_logits(tmp_path):
    # a bias that puts the README's probabilities near 0.5 (not -10's ~1e-6)
    checkpoint = random_checkpoint(tmp_path / "siglip.pt", loss="siglip", init_temperature=0.1,
                                   init_logit_bias=3.0)
    out = tmp_path / "siglip-open-clip"
    export_checkpoint(checkpoint, "open_clip", out)
    loaded = load_model(checkpoint)
    config = json.loads((out / "open_clip_config.json").read_text())
    assert config["model_cfg"]["init_logit_bias"] == 3.0
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{out}")
    model.eval()
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    tokens = loaded.tokenizer.encode(CAPTIONS)
    with torch.no_grad():
        theirs, _ = model.get_logits(images, tokens)  # OpenCLIP adds its logit_bias
        image_emb, text_emb, scale, bias = loaded.model(images, tokens)
        ours = scale.exp() * image_emb @ text_emb.T + bias
    assert model.logit_bias.item() == loaded.model.logit_bias.item() != 3.0  # the trained one
    torch.testing.assert_close(model.logit_scale.detach(), loaded.model.logit_scale.detach())
    torch.testing.assert_close(theirs, ours, atol=1e-3, rtol=0)

    readme = out / "README.md"
    assert "SigLIP" in readme.read_text()
    done = run_python(readme_code(readme), tmp_path)
    assert done.returncode == 0, done.stderr
    probs = eval(done.stdout.strip().splitlines()[-1])  # one sigmoid per caption
    expected = rank_captions(loaded, tmp_path / "dog.jpg", list(probs))  # retrieve.py's
    assert 0.05 < min(probs.values()) and max(probs.values()) < 0.95
    assert probs == pytest.approx({m.label: m.probability for m in expected}, abs=1e-5)
