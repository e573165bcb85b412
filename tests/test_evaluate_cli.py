"""Evaluation (embeddings, batch-size-independent loss, metrics) and evaluate.py on a tiny
random checkpoint over a 60-image Shapes set."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_checkpoint import write_tiny_checkpoint

from cliptune.checkpoint import load_checkpoint, load_model, save_checkpoint
from cliptune.cli.common import run_cli
from cliptune.data import prepare_data
from cliptune.errors import ConfigError
from cliptune.evaluation import checkpoint_split, embed_split, evaluate_split, split_loss
from cliptune.loss import clip_loss, sigmoid_loss

REPO = Path(__file__).resolve().parents[1]
METRIC_KEYS = {"i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum",
               "i2t_medr", "t2i_medr", "loss"}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("evaluate")
    write_tiny_checkpoint(root / "run" / "best.pt", root / "cache")
    return root


def check_metrics(metrics: dict) -> None:
    assert set(metrics) == METRIC_KEYS
    for key in METRIC_KEYS - {"rsum", "i2t_medr", "t2i_medr", "loss"}:
        assert 0 <= metrics[key] <= 1
    assert metrics["rsum"] == pytest.approx(
        100 * sum(metrics[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10))
    )
    assert metrics["i2t_medr"] >= 1 and metrics["t2i_medr"] >= 1
    assert metrics["loss"] > 0


# ---------------------------------------------------------------- split_loss


def fake_split(first_caption_index: list[int]) -> SimpleNamespace:
    return SimpleNamespace(first_caption_index=lambda: np.array(first_caption_index))


def unit(rows: int, seed: int) -> torch.Tensor:
    x = torch.randn(rows, 8, generator=torch.Generator().manual_seed(seed))
    return x / x.norm(dim=1, keepdim=True)


def test_split_loss_pairs_each_image_with_its_first_caption():
    images, texts = unit(4, 0), unit(9, 1)
    first = [0, 3, 5, 8]
    scale = torch.tensor(2.0)
    expected = clip_loss(images, texts[first], scale).item()
    assert split_loss(images, texts, fake_split(first), scale, batch_size=8) == pytest.approx(expected)


@pytest.mark.parametrize(("count", "batch_size", "chunks"), [
    (6, 3, [(0, 3), (3, 6)]),
    (8, 3, [(0, 3), (3, 6), (6, 8)]),
    (7, 3, [(0, 3), (3, 7)]),  # a last chunk of one has no negatives: it joins the previous
])
def test_split_loss_is_a_size_weighted_mean_over_fixed_chunks(count, batch_size, chunks):
    images, texts = unit(count, 2), unit(count, 3)
    expected = sum(
        clip_loss(images[a:b], texts[a:b], torch.tensor(1.5)).item() * (b - a) for a, b in chunks
    ) / count
    result = split_loss(images, texts, fake_split(list(range(count))), 1.5, batch_size)
    assert result == pytest.approx(expected, rel=1e-6)


def test_split_loss_of_a_siglip_model_is_its_sigmoid_loss_over_the_chunks():
    images, texts = unit(7, 4), unit(7, 5)
    scale, bias = torch.tensor(2.3), torch.tensor(-4.0)
    expected = sum(sigmoid_loss(images[a:b], texts[a:b], scale, bias).item() * (b - a)
                   for a, b in [(0, 3), (3, 7)]) / 7
    result = split_loss(images, texts, fake_split(list(range(7))), scale, 3, logit_bias=bias)
    assert result == pytest.approx(expected, rel=1e-6)


def test_split_loss_needs_negatives():
    with pytest.raises(ValueError, match="at least 2"):
        split_loss(unit(4, 0), unit(4, 1), fake_split([0, 1, 2, 3]), 1.0, batch_size=1)


# ---------------------------------------------------------------- on a real split


def test_checkpoint_split_uses_the_runs_split_seed_and_tokenizer(workspace):
    loaded = load_model(workspace / "run" / "best.pt")
    split = checkpoint_split(loaded, "test", quiet=True)
    assert len(split) == 6 and len(split.captions) == 30  # 10% of 60 images, 5 captions each
    assert torch.equal(split.tokens, loaded.tokenizer.encode(split.captions))

    config = loaded.config
    other_split = prepare_data(replace(config.data, split_seed=config.data.split_seed + 1),
                               image_size=32, vocab_size=300, context_length=16,
                               tokenizer=loaded.tokenizer, quiet=True)
    assert other_split.test.image_names != split.image_names


def test_embed_and_evaluate_split(workspace):
    loaded = load_model(workspace / "run" / "best.pt")
    split = checkpoint_split(loaded, "val", quiet=True)
    model = loaded.model.train()
    image_emb, text_emb = embed_split(model, split, batch_size=4, device="cpu", precision="fp32")
    assert model.training  # mode restored
    assert image_emb.shape == (6, 32) and text_emb.shape == (30, 32)
    assert image_emb.dtype == torch.float32 and image_emb.device.type == "cpu"
    assert torch.allclose(image_emb.norm(dim=1), torch.ones(6), atol=1e-5)

    model.eval()
    by_four = evaluate_split(model, split, batch_size=4, device="cpu", precision="fp32")
    by_sixteen = evaluate_split(model, split, batch_size=16, device="cpu", precision="fp32")
    assert not model.training
    check_metrics(by_four)
    for key in METRIC_KEYS - {"loss"}:  # embedding batch size does not change retrieval
        assert by_four[key] == pytest.approx(by_sixteen[key])
    # loss chunks: 6 images in chunks of 4 and 2 vs. one chunk of 6
    assert by_four["loss"] != pytest.approx(by_sixteen["loss"])

    # the Trainer's form (validation figures): the same metrics, and the embeddings scored
    metrics, images, texts = evaluate_split(model, split, batch_size=4, device="cpu",
                                            precision="fp32", sharded=True,
                                            return_embeddings=True)
    assert metrics == by_four
    assert torch.equal(images, image_emb) and torch.equal(texts, text_emb)


def test_fp16_on_cpu_is_refused(workspace):
    loaded = load_model(workspace / "run" / "best.pt")
    split = checkpoint_split(loaded, "val", quiet=True)
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        embed_split(loaded.model, split, batch_size=4, device="cpu", precision="fp16")


# ---------------------------------------------------------------- the CLI


def call_evaluate(capsys, *args: str) -> tuple[int, str, str]:
    """evaluate.py's `main` through `run_cli` in this process (same exit codes as a run)."""
    spec = importlib.util.spec_from_file_location("evaluate_cli", REPO / "src" / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: module.main(["--device", "cpu", *args]))
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_evaluate_cli_end_to_end(workspace):
    checkpoint = workspace / "run" / "best.pt"
    env = {**os.environ, "CLIPTUNE_CACHE": str(workspace / "cache")}
    result = subprocess.run(
        [sys.executable, "src/evaluate.py", "--checkpoint", str(checkpoint), "--device", "cpu"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:3] == ["split", "i2t", "R@1"])
    assert lines[header + 2].split()[0] == "test"

    report = json.loads((workspace / "run" / "eval_test.json").read_text())
    assert report["split"] == "test" and report["images"] == 6 and report["captions"] == 30
    check_metrics(report["metrics"])
    assert f"{100 * report['metrics']['i2t_r1']:.1f}" == lines[header + 2].split()[1]

    loaded = load_model(checkpoint)  # the same numbers in-process, from the same split
    expected = evaluate_split(loaded.model, checkpoint_split(loaded, "test", quiet=True),
                              batch_size=16, device="cpu", precision="fp32")
    assert report["metrics"] == pytest.approx(expected, rel=1e-5)


def test_evaluate_cli_split_json_and_data_flags(workspace, capsys, tmp_path):
    out = tmp_path / "reports" / "val.json"
    code, stdout, err = call_evaluate(
        capsys, "--checkpoint", str(workspace / "run" / "best.pt"), "--split", "val",
        "--batch-size", "4", "--json", str(out), "--cache-dir", str(tmp_path / "cache"),
    )
    assert code == 0, err
    report = json.loads(out.read_text())
    assert report["split"] == "val" and report["images"] == 6
    check_metrics(report["metrics"])
    assert (tmp_path / "cache" / "images").is_dir()  # --cache-dir overrode the saved one
    assert f"metrics: {out}" in stdout


@pytest.mark.parametrize(("args", "message"), [
    (["--checkpoint", "{root}/missing.pt"], r"checkpoint not found: .*missing\.pt"),
    (["--checkpoint", "{tmp}/notes.txt"], r"notes\.txt is not a cliptune checkpoint"),
    (["--checkpoint", "{root}/run/best.pt", "--data", "folder", "--data-dir", "{tmp}/nowhere"],
     r"nowhere"),
])
def test_evaluate_cli_bad_input_exits_2(workspace, capsys, tmp_path, args, message):
    (tmp_path / "notes.txt").write_text("not a checkpoint\n")
    code, out, err = call_evaluate(capsys, *[a.format(root=workspace, tmp=tmp_path) for a in args])
    assert code == 2
    assert err.startswith("error: ") and re.search(message, err), err
    assert not (tmp_path / "eval_test.json").exists()


def test_evaluate_cli_scores_a_capped_run_on_its_subset_or_the_whole_split(workspace, capsys,
                                                                           tmp_path):
    """A run trained with data.max_eval_samples (an HPO trial's best.pt) is scored on its
    capped split, and the console says so; --all-images scores the whole split."""
    state = load_checkpoint(workspace / "run" / "best.pt")
    state["config"]["data"]["max_eval_samples"] = 3
    capped = tmp_path / "trial" / "best.pt"
    save_checkpoint(state, capped)

    code, out, err = call_evaluate(capsys, "--checkpoint", str(capped))
    assert code == 0, err
    assert ("test: 3 images, 15 captions (the run's data.max_eval_samples=3 caps the split; "
            "--all-images scores all of it)") in out
    assert json.loads((capped.parent / "eval_test.json").read_text())["images"] == 3

    code, out, err = call_evaluate(capsys, "--checkpoint", str(capped), "--all-images")
    assert code == 0, err
    assert "test: 6 images, 30 captions\n" in out
    assert json.loads((capped.parent / "eval_test.json").read_text())["images"] == 6
