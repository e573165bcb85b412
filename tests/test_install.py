"""`pip install .` gives a package with the console scripts and the default experiments,
usable away from the checkout (built offline: no build isolation, no index)."""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from export_helpers import smooth_image

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = ["cliptune-train", "cliptune-optimize", "cliptune-evaluate", "cliptune-retrieve",
           "cliptune-export", "cliptune-make-shards"]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The package installed with pip into a fresh folder (deps come from this venv)."""
    root = tmp_path_factory.mktemp("install")
    source = root / "source"  # a copy, so the build leaves nothing in the checkout
    shutil.copytree(REPO, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".venv", ".git", "runs", "checkpoints", "optuna-results", "__pycache__", "*.egg-info",
        "build", ".pytest_cache", ".ruff_cache"))
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(root / "site"), str(source)],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr
    return root / "site"


def run_installed(site: Path, command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run with only the installed package importable (not the checkout's src/)."""
    env = {**os.environ, "PYTHONPATH": str(site), "CLIPTUNE_CACHE": str(cwd / "cache")}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_console_scripts_answer_help(installed, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(installed)}
    processes = {script: subprocess.Popen([str(installed / "bin" / script), "--help"], cwd=tmp_path,
                                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True)
                 for script in SCRIPTS}  # all at once: each spends seconds importing torch
    failures = {}
    for script, process in processes.items():
        out, err = process.communicate(timeout=300)
        if process.returncode != 0 or not out.startswith(f"usage: {script}"):
            failures[script] = err.strip().splitlines()[-1:] or out[:200]
    assert not failures, failures


def test_installed_package_finds_its_default_experiments(installed, tmp_path):
    code = ("import cliptune, cliptune.resources as r; print(cliptune.__file__); "
            "print(r.experiment_file('default.yaml').read_text(), end='')")
    done = run_installed(installed, [sys.executable, "-c", code], tmp_path)
    assert done.returncode == 0, done.stderr
    location, _, text = done.stdout.partition("\n")
    assert Path(location).is_relative_to(installed)  # the installed copy, not src/
    assert text == (REPO / "experiments" / "default.yaml").read_text()
    for name in ("hpo.yaml", "search_space.yaml"):
        assert filecmp.cmp(installed / "cliptune" / "experiments" / name,
                           REPO / "experiments" / name, shallow=False)


def test_console_scripts_do_what_the_src_scripts_do(installed, trained_tiny, tmp_path):
    checkpoint = str(trained_tiny.checkpoint)
    by_script = run_installed(installed, [str(installed / "bin" / "cliptune-export"),
                                          "--checkpoint", checkpoint, "--format", "open_clip",
                                          "--out", "a"], tmp_path)
    assert by_script.returncode == 0, by_script.stderr
    by_src = subprocess.run([sys.executable, str(REPO / "src" / "export.py"), "--checkpoint",
                             checkpoint, "--format", "open_clip", "--out", "b"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert by_src.returncode == 0, by_src.stderr
    for name in ("open_clip_model.safetensors", "open_clip_config.json", "tokenizer.json"):
        assert filecmp.cmp(tmp_path / "a" / name, tmp_path / "b" / name, shallow=False), name

    bad = run_installed(installed, [str(installed / "bin" / "cliptune-evaluate"),
                                    "--checkpoint", "missing.pt"], tmp_path)
    assert bad.returncode == 2 and bad.stderr == "error: checkpoint not found: missing.pt\n"
    captions = tmp_path / "captions.txt"
    captions.write_text("a red circle\na blue square\n")
    smooth_image(40, 40).save(tmp_path / "img.png")
    ranked = run_installed(installed, [str(installed / "bin" / "cliptune-retrieve"),
                                       "--checkpoint", checkpoint, "--image", "img.png",
                                       "--captions", "captions.txt", "--device", "cpu"], tmp_path)
    assert ranked.returncode == 0, ranked.stderr
    assert "a red circle" in ranked.stdout and "a blue square" in ranked.stdout
