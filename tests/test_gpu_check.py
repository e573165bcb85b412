"""bench/gpu_check.py, the GPU acceptance run, in its CPU form (`--device cpu --quick`):
every step runs and is ok (the cuda tests skip), the JSON and the markdown table are
written; a step past its time limit is killed with everything it started, and the run
goes on; `--device cuda` without a GPU is a clear error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu_check.py"
STEPS = ["cuda_tests", "train_resume", "eval_export", "vit_b32", "data_fed", "study",
         "mfu_levers"]


def gpu_check(*args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, text=True,
                          capture_output=True, timeout=timeout)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check")
    done = gpu_check("--device", "cpu", "--quick", "--out", str(out), timeout=900)
    return out, done, json.loads((out / "gpu_check.json").read_text())


def test_every_step_runs_and_is_ok(quick_run):
    out, done, report = quick_run
    assert done.returncode == 0, done.stdout + done.stderr
    steps = {entry["name"]: entry for entry in report["steps"]}
    assert list(steps) == STEPS
    for name, entry in steps.items():
        assert entry["ok"] and entry["error"] is None, (name, entry["error"])
        assert entry["seconds"] > 0 and entry["figures"], name
        assert (out / "logs" / f"{name}.log").is_file()
    assert f"{len(STEPS)}/{len(STEPS)} steps ok" in done.stdout


def test_the_figures_say_what_was_checked(quick_run):
    _, _, report = quick_run
    figures = {entry["name"]: entry["figures"] for entry in report["steps"]}
    tests = figures["cuda_tests"]
    assert tests["tests"] >= 6 and tests["skipped"] == tests["tests"] and tests["passed"] == 0
    train = figures["train_resume"]
    assert train["killed_after_epoch"] == 1 < train["epochs"]
    assert train["resumed_equals_uninterrupted"] is True  # exact on the CPU
    assert figures["eval_export"]["evaluate_equals_metrics_json"] is True
    assert figures["eval_export"]["hf_max_embedding_diff"] <= 1e-4
    assert figures["vit_b32"]["mfu"] > 0 and figures["vit_b32"]["vs_openclip"] > 0
    assert figures["data_fed"]["fed_vs_synthetic"] > 0
    assert figures["study"]["complete"] + figures["study"]["pruned"] == 4
    assert figures["study"]["workers_overlapped"] is True
    assert {"baseline_mfu", "default_adamw_mfu", "batch_x2_mfu"} <= set(figures["mfu_levers"])


def test_the_markdown_table_has_a_row_per_step(quick_run):
    out, _, report = quick_run
    table = (out / "gpu_check.md").read_text()
    assert table.startswith("### GPU acceptance run on CPU")
    for entry in report["steps"]:
        assert f"({entry['label']}) {entry['name']} | yes |" in table
    assert "| data-fed vs synthetic samples/s at 224 px |" in table


def _processes_under(folder: Path) -> list[str]:
    """Command lines of live processes that mention `folder`."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = (Path("/proc") / pid / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if str(folder).encode() in cmdline:
            found.append(cmdline.decode(errors="replace"))
    return found


def test_a_step_past_its_limit_is_killed_and_the_run_goes_on(tmp_path):
    """train_resume (three main.py runs) cannot finish in 5 s: it is killed with the
    training process it started; the next step still runs and is recorded."""
    done = gpu_check("--device", "cpu", "--quick", "--out", str(tmp_path), "--steps",
                     "train_resume,eval_export", "--step-timeout", "5", timeout=120)
    assert done.returncode == 1
    steps = {entry["name"]: entry for entry in json.loads((tmp_path / "gpu_check.json")
                                                          .read_text())["steps"]}
    assert not steps["train_resume"]["ok"]
    assert steps["train_resume"]["error"] == "timed out after 5 s (killed)"
    assert not steps["eval_export"]["ok"]
    assert "run the train_resume step first" in steps["eval_export"]["error"]
    assert _processes_under(tmp_path) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_device_cuda_without_a_gpu_is_a_clear_error(tmp_path):
    done = gpu_check("--out", str(tmp_path), timeout=120)
    assert done.returncode == 2
    assert "--device cuda: torch" in done.stderr and "sees no CUDA GPU" in done.stderr
    assert "--device cpu --quick" in done.stderr
    assert not (tmp_path / "gpu_check.json").exists()
