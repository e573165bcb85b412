"""src/export.py: the command end to end, a study as the source, and clear errors
(exit 2, `error: ...`, no traceback) for every bad checkpoint or folder."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cliptune.cli.export import main
from cliptune.errors import CheckpointError
from cliptune.export.source import resolve_checkpoint

REPO = Path(__file__).resolve().parent.parent


def export_subprocess(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """`python src/export.py ARGS` run in `cwd`."""
    return subprocess.run([sys.executable, str(REPO / "src" / "export.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def export(capsys, monkeypatch):
    """The CLI's `main` in this process (what the console script runs), in `cwd`; returns
    the exit code and output like a subprocess would."""

    def call(cwd: Path, *args: str) -> subprocess.CompletedProcess:
        monkeypatch.chdir(cwd)
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            main(list(args))
        out = capsys.readouterr()
        return subprocess.CompletedProcess(args, exit_info.value.code, out.out, out.err)

    return call


def assert_clear_error(done: subprocess.CompletedProcess, *fragments: str) -> None:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("error: "), done.stderr
    for fragment in fragments:
        assert fragment in done.stderr, done.stderr


def test_export_cli_writes_both_formats_and_replaces_only_with_force(trained_tiny, export):
    cwd = trained_tiny.workdir
    done = export_subprocess(cwd, "--checkpoint", "checkpoints/tiny", "--format", "hf", "--out", "cli/hf")
    assert done.returncode == 0, done.stderr
    files = {p.name for p in (cwd / "cli" / "hf").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json",
            "README.md", "cliptune_config.yaml"} <= files
    assert "checkpoints/tiny/best.pt" in done.stdout
    assert not list((cwd / "cli").glob(".*partial*"))  # the temporary folder is gone

    again = export(cwd, "--checkpoint", "checkpoints/tiny/best.pt", "--format", "hf",
                   "--out", "cli/hf")
    assert_clear_error(again, "cli/hf is not empty", "--force")
    forced = export(cwd, "--checkpoint", "checkpoints/tiny/best.pt", "--format", "open_clip",
                    "--out", "cli/hf", "--force")
    assert forced.returncode == 0, forced.stderr
    files = {p.name for p in (cwd / "cli" / "hf").iterdir()}
    assert "open_clip_config.json" in files and "config.json" not in files

    (cwd / "cli" / "mine").mkdir()
    (cwd / "cli" / "mine" / "notes.txt").write_text("keep me")
    refused = export(cwd, "--checkpoint", "checkpoints/tiny/best.pt", "--format", "hf",
                     "--out", "cli/mine", "--force")
    assert_clear_error(refused, "not a cliptune export")
    assert (cwd / "cli" / "mine" / "notes.txt").read_text() == "keep me"


def test_export_from_a_study_results_folder(trained_tiny, tmp_path, export):
    project = tmp_path / "project"
    (project / "checkpoints" / "st").mkdir(parents=True)
    shutil.copy(trained_tiny.checkpoint, project / "checkpoints" / "st" / "best.pt")
    results = project / "optuna-results" / "st"
    results.mkdir(parents=True)
    record = {"study": "st", "trial": 3, "checkpoint": "checkpoints/st/best.pt", "retrain": None}
    (results / "best_results.json").write_text(json.dumps(record))
    # from the project folder and from anywhere else (relative to the results folder)
    assert resolve_checkpoint(results) == project / "checkpoints" / "st" / "best.pt"
    done = export(project, "--checkpoint", "optuna-results/st", "--format", "open_clip",
                  "--out", "exported")
    assert done.returncode == 0, done.stderr
    assert (project / "exported" / "open_clip_model.safetensors").is_file()
    assert "checkpoints/st/best.pt" in json.loads(
        (project / "exported" / "cliptune_export.json").read_text())["checkpoint"]

    record["checkpoint"] = None
    record["retrain"] = {"checkpoint": "checkpoints/st/retrain_trial_0003/best.pt"}
    (results / "best_results.json").write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="retrain_trial_0003/best.pt"):
        resolve_checkpoint(results)
    record["checkpoint"] = "checkpoints/st/gone.pt"
    (results / "best_results.json").write_text(json.dumps(record))
    assert_clear_error(export(project, "--checkpoint", str(results), "--format", "hf",
                              "--out", "x"), "gone.pt", "not there")


def test_export_cli_rejects_broken_and_foreign_checkpoints(trained_tiny, tmp_path, export):
    good = trained_tiny.checkpoint.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(good[: len(good) // 2])
    (tmp_path / "text.pt").write_text("not a checkpoint")
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "foreign.pt")
    torch.save({"format": "cliptune-checkpoint", "version": 1, "config": {}},
               tmp_path / "no_weights.pt")
    (tmp_path / "empty_dir").mkdir()
    cases = {
        "truncated.pt": "corrupt or truncated",
        "text.pt": "not a cliptune checkpoint",
        "foreign.pt": "not a cliptune checkpoint",
        "no_weights.pt": "lacks tokenizer, model",
        "missing.pt": "checkpoint not found",
        "empty_dir": "without best.pt",
    }
    for name, message in cases.items():
        run = export_subprocess if name == "foreign.pt" else export  # one as a real process
        done = run(tmp_path, "--checkpoint", name, "--format", "hf", "--out", f"out-{name}")
        assert_clear_error(done, name, message)
        assert not (tmp_path / f"out-{name}").exists()
    wrong_format = export(tmp_path, "--checkpoint", "x.pt", "--format", "onnx", "--out", "o")
    assert wrong_format.returncode == 2 and "invalid choice: 'onnx'" in wrong_format.stderr
