"""Export at scale: time `export_checkpoint` for each format and check that transformers
and OpenCLIP reproduce cliptune's embeddings, for a model preset (random weights).

  python bench/bench_export.py --preset vit-b-32 --repeats 3

Prints, per format: the median export time, the load time of the exported folder in its
library, and the largest absolute difference of the L2-normalised image and text
embeddings from cliptune's (fp32, CPU, 8 images and 8 captions).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from cliptune.checkpoint import load_model, save_checkpoint  # noqa: E402
from cliptune.config import RunConfig, config_to_dict, model_preset  # noqa: E402
from cliptune.export import export_checkpoint  # noqa: E402
from cliptune.model import CLIP  # noqa: E402
from cliptune.tokenizer import Tokenizer  # noqa: E402

CAPTIONS = [
    "a dog runs across the grass", "two men in hard hats work on a roof",
    "a child in a red coat plays in the snow", "a woman rides a bicycle down a city street",
    "a brown dog jumps over a fallen log", "people sit at a table in a busy restaurant",
    "a surfer rides a large wave", "an old man reads a newspaper on a park bench",
]


def random_checkpoint(preset: str, folder: Path) -> Path:
    config = RunConfig(name=f"bench-{preset}")
    config.model = model_preset(preset)
    torch.manual_seed(0)
    model = CLIP(config.model)
    tokenizer = Tokenizer.train(CAPTIONS * 4, config.model.vocab_size, config.model.context_length)
    path = folder / "model.pt"
    save_checkpoint({"config": config_to_dict(config), "tokenizer": tokenizer.to_json(),
                     "model": model.state_dict(), "epoch": 0}, path)
    return path


def hf_embeddings(folder: Path, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    from transformers import AutoTokenizer, CLIPModel

    start = time.perf_counter()
    model = CLIPModel.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    load_s = time.perf_counter() - start
    tokens = tokenizer(CAPTIONS, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        image = model.get_image_features(pixel_values=images).pooler_output
        text = model.get_text_features(**tokens).pooler_output
    return F.normalize(image, dim=-1), F.normalize(text, dim=-1), load_s


def open_clip_embeddings(folder: Path, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    import open_clip

    start = time.perf_counter()
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    load_s = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        return (model.encode_image(images, normalize=True),
                model.encode_text(tokenizer(CAPTIONS), normalize=True), load_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="vit-b-32", help="tiny, small or vit-b-32")
    parser.add_argument("--repeats", type=int, default=3, help="exports per format (median)")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        checkpoint = random_checkpoint(args.preset, tmp)
        loaded = load_model(checkpoint)
        size = loaded.config.model.image_size
        images = torch.randn(8, 3, size, size, generator=torch.Generator().manual_seed(0))
        ours_image = loaded.model.encode_image(images)
        ours_text = loaded.model.encode_text(loaded.tokenizer.encode(CAPTIONS))
        print(f"preset {args.preset}: {loaded.model.num_parameters() / 1e6:.1f} M parameters, "
              f"checkpoint {checkpoint.stat().st_size / 1e6:.0f} MB")
        print(f"{'format':<10} {'export s (median)':>18} {'load s':>7} "
              f"{'max |d| image':>14} {'max |d| text':>13}")
        for fmt, embed in (("hf", hf_embeddings), ("open_clip", open_clip_embeddings)):
            times = []
            for repeat in range(args.repeats):
                start = time.perf_counter()
                export_checkpoint(checkpoint, fmt, tmp / fmt, overwrite=repeat > 0)
                times.append(time.perf_counter() - start)
            image, text, load_s = embed(tmp / fmt, images)
            print(f"{fmt:<10} {statistics.median(times):>18.2f} {load_s:>7.2f} "
                  f"{(image - ours_image).abs().max().item():>14.2e} "
                  f"{(text - ours_text).abs().max().item():>13.2e}")


if __name__ == "__main__":
    main()
