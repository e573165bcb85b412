"""retrieve.py and cliptune.retrieval on a tiny random checkpoint: ranked output, zero-shot
classes, and a clean exit 2 with a message for every kind of bad input."""

from __future__ import annotations

import importlib.util
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from test_checkpoint import write_tiny_checkpoint

from cliptune import retrieval
from cliptune.checkpoint import load_model
from cliptune.cli.common import run_cli
from cliptune.errors import CliptuneError

REPO = Path(__file__).resolve().parents[1]
CAPTIONS = ["a red square", "a blue circle", "a green triangle", "two yellow stars"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("retrieve")
    write_tiny_checkpoint(root / "tiny.pt", root / "cache")
    photos = root / "photos"
    photos.mkdir()
    # different sizes and formats: each is resized and centre-cropped to 32 px
    Image.new("RGB", (40, 60), (220, 30, 30)).save(photos / "red.png")
    Image.new("RGB", (80, 50), (30, 30, 220)).save(photos / "blue.jpg")
    Image.new("L", (33, 33), 128).save(photos / "grey.bmp")
    (photos / "notes.txt").write_text("not an image, and ignored\n")
    (root / "captions.txt").write_text("\n".join(CAPTIONS) + "\n\n")
    (root / "empty.txt").write_text("\n  \n")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (root / "templates.txt").write_text("a photo of a {}.\na sketch of a {}.\n")
    (root / "no_images").mkdir()
    return root


def retrieve_args(workspace: Path, args: tuple[str, ...]) -> list[str]:
    return ["--checkpoint", str(workspace / "tiny.pt"), "--device", "cpu", *args]


def run_retrieve(workspace: Path, *args: str) -> subprocess.CompletedProcess:
    """retrieve.py in a fresh interpreter, as a user runs it (about 3 s: torch imports)."""
    env = {**os.environ, "CLIPTUNE_CACHE": str(workspace / "cache")}
    return subprocess.run(
        [sys.executable, "src/retrieve.py", *retrieve_args(workspace, args)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )


def call_retrieve(workspace: Path, capsys, *args: str) -> tuple[int, str, str]:
    """retrieve.py's `main` through `run_cli` in this process: same code path and exit
    codes as the subprocess, without the interpreter start-up."""
    spec = importlib.util.spec_from_file_location("retrieve_cli", REPO / "src" / "retrieve.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: module.main(retrieve_args(workspace, args)))
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def ranked_lines(stdout: str) -> list[tuple[int, float, float, str]]:
    """(rank, cosine, probability %, label) of each printed result, after the header."""
    lines = stdout.strip().splitlines()
    assert lines[0].split()[:3] == ["rank", "cosine", "prob"]
    rows = []
    for line in lines[1:]:
        rank, cosine, prob, label = line.split(maxsplit=3)
        rows.append((int(rank), float(cosine), float(prob.rstrip("%")), label))
    return rows


def check_ranking(rows, labels, count):
    assert [row[0] for row in rows] == list(range(1, count + 1))
    cosines = [row[1] for row in rows]
    assert cosines == sorted(cosines, reverse=True)
    assert all(-1.0001 <= c <= 1.0001 for c in cosines)
    assert all(0 <= row[2] <= 100 for row in rows)
    assert len({row[3] for row in rows}) == count and {row[3] for row in rows} <= set(labels)


def test_captions_for_an_image(workspace):
    result = run_retrieve(workspace, "--image", str(workspace / "photos" / "red.png"),
                          "--captions", str(workspace / "captions.txt"), "--topk", "10")
    assert result.returncode == 0, result.stderr
    rows = ranked_lines(result.stdout)
    check_ranking(rows, CAPTIONS, len(CAPTIONS))  # topk above the count shows them all
    assert sum(row[2] for row in rows) == pytest.approx(100, abs=0.3)

    # The CLI prints what the package computes.
    loaded = load_model(workspace / "tiny.pt")
    matches = retrieval.rank_captions(loaded, workspace / "photos" / "red.png", CAPTIONS, topk=10)
    assert [m.label for m in matches] == [row[3] for row in rows]
    assert [m.score for m in matches] == pytest.approx([row[1] for row in rows], abs=1e-4)


def test_more_captions_and_images_than_one_batch(workspace, capsys):
    """--batch-size 3: 4 captions (and 3 images with --batch-size 2) are encoded in two
    batches; the ranking is the one of a single batch."""
    image = str(workspace / "photos" / "red.png")
    queries = [("--image", image, "--captions", str(workspace / "captions.txt"), "--topk", "10"),
               ("--text", "a red square", "--images", str(workspace / "photos"))]
    for query, small in zip(queries, ("3", "2"), strict=True):
        code, whole, err = call_retrieve(workspace, capsys, *query)
        assert code == 0, err
        code, batched, err = call_retrieve(workspace, capsys, *query, "--batch-size", small)
        assert code == 0, err
        assert batched == whole and len(ranked_lines(batched)) >= 3
    loaded = load_model(workspace / "tiny.pt")
    torch.testing.assert_close(retrieval.embed_texts(loaded, CAPTIONS, batch_size=3),
                               retrieval.embed_texts(loaded, CAPTIONS), rtol=1e-5, atol=1e-6)


def test_prompts_with_topk(workspace, capsys):
    code, out, err = call_retrieve(workspace, capsys, "--image",
                                   str(workspace / "photos" / "blue.jpg"),
                                   "--prompts", "a dog, a cat ,a car", "--topk", "2")
    assert code == 0, err
    check_ranking(ranked_lines(out), ["a dog", "a cat", "a car"], 2)


def test_images_for_a_text(workspace, capsys):
    code, out, err = call_retrieve(workspace, capsys, "--text", "a red square", "--images",
                                   str(workspace / "photos"), "--topk", "3")
    assert code == 0, err
    rows = ranked_lines(out)
    photos = [str(workspace / "photos" / name) for name in ("blue.jpg", "grey.bmp", "red.png")]
    check_ranking(rows, photos, 3)  # notes.txt is not an image and is skipped

    # Cosine is symmetric: the same pair scores the same from either side.
    loaded = load_model(workspace / "tiny.pt")
    for _, cosine, _, path in rows:
        [match] = retrieval.rank_captions(loaded, path, ["a red square"], topk=1)
        assert match.score == pytest.approx(cosine, abs=1e-4)
        assert match.probability == pytest.approx(1.0)  # one candidate takes all


def test_zero_shot_classes(workspace, capsys):
    code, out, err = call_retrieve(workspace, capsys, "--image",
                                   str(workspace / "photos" / "grey.bmp"),
                                   "--classes", "dog,cat,car", "--templates",
                                   str(workspace / "templates.txt"))
    assert code == 0, err
    rows = ranked_lines(out)
    check_ranking(rows, ["dog", "cat", "car"], 3)
    assert sum(row[2] for row in rows) == pytest.approx(100, abs=0.2)


def test_class_embedding_is_the_normalised_template_mean(workspace):
    loaded = load_model(workspace / "tiny.pt")
    templates = ["a photo of a {}.", "a sketch of a {}."]
    image = workspace / "photos" / "red.png"
    [match] = retrieval.classify(loaded, image, ["dog"], templates=templates, topk=1)
    prompts = retrieval.embed_texts(loaded, ["a photo of a dog.", "a sketch of a dog."])
    class_emb = prompts.mean(dim=0) / prompts.mean(dim=0).norm()
    image_emb = retrieval.embed_images(loaded, [image])[0]
    assert match.label == "dog"
    assert match.score == pytest.approx(float(class_emb @ image_emb), abs=1e-5)
    assert not math.isclose(match.score, float(prompts[0] @ image_emb), abs_tol=1e-6)

    with pytest.raises(CliptuneError, match="has no {}"):
        retrieval.classify(loaded, image, ["dog"], templates=["a photo"])


def test_load_image_matches_the_training_resize(workspace):
    image = retrieval.load_image(workspace / "photos" / "red.png", 32)
    assert image.dtype == torch.uint8 and image.shape == (3, 32, 32)
    assert image[:, 16, 16].tolist() == [220, 30, 30]
    grey = retrieval.load_image(workspace / "photos" / "grey.bmp", 32)
    assert grey.shape == (3, 32, 32)  # greyscale becomes RGB


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--image", "{root}/missing.png", "--prompts", "a,b"], "image not found: .*missing.png"),
        (["--image", "{root}/broken.png", "--prompts", "a,b"], "broken.png is not a readable image"),
        (["--image", "{root}/photos/red.png", "--captions", "{root}/empty.txt"],
         "empty.txt is empty"),
        (["--text", "a dog", "--images", "{root}/no_images"], "no images in .*no_images"),
        (["--checkpoint", "{root}/captions.txt", "--image", "{root}/photos/red.png",
          "--prompts", "a,b"], "captions.txt is not a cliptune checkpoint"),
    ],
    ids=["missing-image", "not-an-image", "empty-captions", "empty-folder", "not-a-checkpoint"],
)
def test_bad_input_exits_2_with_a_message(workspace, capsys, args, message):
    code, out, err = call_retrieve(workspace, capsys, *[a.format(root=workspace) for a in args])
    assert code == 2
    assert err.startswith("error: ") and re.search(message, err), err
    assert out == ""


def test_bad_input_in_a_real_process(workspace):
    result = run_retrieve(workspace, "--image", str(workspace / "broken.png"), "--prompts", "a,b")
    assert result.returncode == 2
    assert re.fullmatch(r"error: .*broken\.png is not a readable image.*\n", result.stderr)
    assert "Traceback" not in result.stderr


def test_query_mode_must_be_complete(workspace, capsys):
    code, _, err = call_retrieve(workspace, capsys, "--image", str(workspace / "photos" / "red.png"))
    assert code == 2
    assert "give either --image with --captions" in err


@pytest.mark.parametrize(
    ("args", "flags"),
    [
        (["--image", "{root}/photos/red.png", "--text", "a red circle", "--prompts", "a,b"],
         "--image --prompts and --text"),
        (["--text", "x", "--images", "{root}/photos", "--prompts", "a,b"],
         "--prompts and --text --images"),
        (["--text", "x", "--images", "{root}/photos", "--classes", "dog,cat"],
         "--classes and --text --images"),
        (["--image", "{root}/photos/red.png", "--captions", "{root}/captions.txt",
          "--images", "{root}/photos"], "--image --captions and --images"),
    ],
    ids=["image-and-text", "prompts-with-text-query", "classes-with-text-query",
         "images-with-image-query"],
)
def test_mixed_queries_are_refused_by_the_parser(workspace, capsys, args, flags):
    code, out, err = call_retrieve(workspace, capsys, *[a.format(root=workspace) for a in args])
    assert code == 2 and out == ""
    assert f"{flags} are two different queries" in err
    assert "Traceback" not in err
