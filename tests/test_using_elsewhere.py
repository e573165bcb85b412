"""docs/USING_ELSEWHERE.md works as written: its bash blocks export a tiny trained model
(and a study's best trial), then every python block runs in a fresh interpreter."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

from export_helpers import smooth_image

REPO = Path(__file__).resolve().parent.parent
PAGE = REPO / "docs" / "USING_ELSEWHERE.md"


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", PAGE.read_text(encoding="utf-8"),
                      flags=re.S | re.M)


def test_every_snippet_runs_against_a_tiny_exported_model(trained_tiny, tmp_path):
    project = tmp_path / "project"  # what a user's working folder looks like
    (project / "checkpoints" / "default").mkdir(parents=True)
    shutil.copy(trained_tiny.checkpoint, project / "checkpoints" / "default" / "best.pt")
    (project / "src").symlink_to(REPO / "src")
    study = project / "optuna-results" / "clip-hpo"
    study.mkdir(parents=True)
    (study / "best_results.json").write_text(json.dumps(
        {"study": "clip-hpo", "trial": 0, "checkpoint": "checkpoints/default/best.pt"}))
    smooth_image(120, 90).save(project / "dog.jpg")

    bash = code_blocks("bash")
    assert bash, "no bash block"
    for block in bash:  # `python` in the docs is this interpreter
        script = f'python() {{ "{sys.executable}" "$@"; }}\nset -euo pipefail\n{block}'
        done = subprocess.run(["bash", "-c", script], cwd=project, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, (block, done.stderr)
    assert (project / "exported" / "best-trial" / "model.safetensors").is_file()

    python = code_blocks("python")
    assert len(python) >= 4
    processes = [subprocess.Popen([sys.executable, "-c", block], cwd=project, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for block in python]
    for block, process in zip(python, processes, strict=True):
        out, err = process.communicate(timeout=600)
        assert process.returncode == 0, (block, err)
        assert out.strip(), block  # every snippet shows its result
