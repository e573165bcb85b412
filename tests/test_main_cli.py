import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cliptune.checkpoint import load_checkpoint
from cliptune.cli import train as main
from cliptune.errors import CliptuneError

REPO = Path(__file__).resolve().parent.parent
TINY_FLAGS = [
    "--data", "shapes", "--epochs", "2", "--batch-size", "16", "--image-size", "32",
    "--run-name", "cli", "--device", "cpu", "--set", "data.shapes_images=60", "--set", "data.val_size=12",
    "--set", "data.test_size=12", "--set", "model.vision_width=32", "--set", "model.text_width=32",
    "--set", "model.vision_layers=1", "--set", "model.text_layers=1", "--set", "model.vision_heads=2",
    "--set", "model.text_heads=2", "--set", "model.embed_dim=32", "--set", "model.vocab_size=128",
    "--set", "model.context_length=16",
]


def run_main(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CLIPTUNE_CACHE": str(tmp_path / "cache")}
    return subprocess.run(
        [sys.executable, str(REPO / "src" / "main.py"), *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )


def test_main_trains_evaluates_and_resumes(tmp_path):
    done = run_main(tmp_path, *TINY_FLAGS)
    assert done.returncode == 0, done.stderr
    metrics = json.loads((tmp_path / "checkpoints" / "cli" / "metrics.json").read_text())
    assert {"val", "test"} <= metrics.keys()
    assert 0 <= metrics["test"]["rsum"] <= 600
    assert "epoch 2/2" in done.stdout + done.stderr
    first = done.stdout.splitlines()[0]  # no --config: the hardware chose, and it says so
    assert first.startswith("experiment: ") and first.endswith("--config FILE chooses another)")
    assert "tensorboard --logdir runs" in done.stdout + done.stderr
    assert list((tmp_path / "runs" / "cli").glob("events.out.tfevents.*"))
    state = load_checkpoint(tmp_path / "checkpoints" / "cli" / "best.pt")
    assert state["config"]["data"]["source"] == "shapes"
    assert state["config"]["model"]["image_size"] == 32

    # the same command again finds a finished run and trains nothing more
    again = run_main(tmp_path, *TINY_FLAGS)
    assert again.returncode == 0, again.stderr
    assert "resuming" in again.stdout + again.stderr
    assert "epoch 1/2" not in again.stdout + again.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "train.lrr=1"], "unknown config key 'train.lrr'"),
        (["--epochs", "0"], "train.epochs must be positive"),
        (["--config", "missing.yaml"], "config file not found: missing.yaml"),
        (["--preset", "huge"], "unknown model preset 'huge'"),
        (["--resume", "nowhere.pt"], "nowhere.pt: no such file"),
    ]
    + ([] if torch.cuda.is_available() else [(["--device", "cuda"], "no CUDA GPU")]),
)
def test_user_mistakes_raise_a_clear_error(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CliptuneError) as info:
        main.run(args)
    assert message in str(info.value)


def test_a_user_mistake_exits_2_without_traceback(tmp_path):
    done = run_main(tmp_path, "--set", "train.lrr=1")
    assert done.returncode == 2
    assert "error: unknown config key 'train.lrr'" in done.stderr
    assert "Traceback" not in done.stderr


def test_inputs_are_checked_before_the_resume_rules(tmp_path, monkeypatch):
    """After a finished run of the same name, a quick command with a mistyped folder is told
    about the folder, not about a config that differs from the finished run's."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CLIPTUNE_CACHE", str(tmp_path / "cache"))
    assert main.run(TINY_FLAGS) == 0
    with pytest.raises(CliptuneError) as info:
        main.run([*TINY_FLAGS, "--data", "auto", "--data-dir", "no/such/folder",
                  "--epochs", "1", "--max-samples", "30"])
    assert str(info.value) == "data folder not found: no/such/folder (check --data-dir)"
    with pytest.raises(CliptuneError, match=r"cannot resume run 'cli'.*data.max_samples: "
                       r"None -> 30.*--no-resume.*--run-name NAME"):
        main.run([*TINY_FLAGS, "--max-samples", "30"])  # a real difference is still refused


def test_an_empty_config_file_is_refused(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    with pytest.raises(CliptuneError, match=r"empty.yaml is empty"):
        main.run(["--config", str(empty)])


def test_ctrl_c_says_how_to_resume(tmp_path):
    """SIGINT (Ctrl-C) in mid-training: exit 130 with the checkpoint and the resume hint on
    a line of its own, never glued to the progress bar; the same command resumes."""
    import signal
    import time

    env = {**os.environ, "CLIPTUNE_CACHE": str(tmp_path / "cache")}
    flags = [*TINY_FLAGS, "--epochs", "40"]
    # SIGINT as a terminal sends it: a suite started in the background (`cmd &`) ignores
    # SIGINT, its children inherit that, and Python then installs no KeyboardInterrupt.
    job = subprocess.Popen([sys.executable, str(REPO / "src" / "main.py"), *flags],
                           cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    last = tmp_path / "checkpoints" / "cli" / "last.pt"
    deadline = time.monotonic() + 240
    while not last.is_file():
        assert job.poll() is None, job.communicate()
        assert time.monotonic() < deadline, "no checkpoint written"
        time.sleep(0.05)
    job.send_signal(signal.SIGINT)
    _, stderr = job.communicate(timeout=120)
    assert job.returncode == 130, stderr
    hint = next(line for line in stderr.splitlines() if "interrupted" in line)
    assert hint == ("interrupted: checkpoints/cli/last.pt holds the run up to its last "
                    "checkpoint; the same command (with --run-name cli) resumes it from there")
    again = run_main(tmp_path, *flags, "--epochs", "2")
    assert "resuming checkpoints/cli/last.pt" in again.stdout + again.stderr
