"""optuna-dashboard opens a study's journal with the command report.md prints, and its
HTTP API serves the study and every trial as Optuna stored them."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import optuna
from distributed_worker import free_port
from optuna.storages.journal import JournalFileBackend


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        return json.loads(response.read())


def dashboard_command(report: Path) -> list[str]:
    """The `optuna-dashboard ...` line of report.md, split like a shell would."""
    lines = re.findall(r"^optuna-dashboard .*$", report.read_text(encoding="utf-8"), flags=re.M)
    assert len(lines) == 1, lines
    return shlex.split(lines[0])


def wait_for(url: str, process: subprocess.Popen, timeout_s: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise AssertionError(f"optuna-dashboard exited: {process.stderr.read()}")
        try:
            return get_json(url)
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_dashboard_serves_the_study_with_the_reports_command(tiny_study):
    command = dashboard_command(tiny_study.results / "report.md")
    assert command[0] == "optuna-dashboard"
    # the venv's script, as `optuna-dashboard` on a PATH with the venv activated
    executable = shutil.which("optuna-dashboard", path=str(Path(sys.executable).parent))
    assert executable, "optuna-dashboard is not installed next to this Python"
    port = free_port()
    process = subprocess.Popen(
        [executable, *command[1:], "--host", "127.0.0.1", "--port", str(port)],
        cwd=tiny_study.workdir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        summaries = wait_for(f"{base}/api/studies", process)["study_summaries"]
        assert [s["study_name"] for s in summaries] == [tiny_study.name]
        assert summaries[0]["directions"] == ["minimize"]
        detail = get_json(f"{base}/api/studies/{summaries[0]['study_id']}")
        served = {t["number"]: t for t in detail["trials"]}

        journal = tiny_study.results / "study.journal"
        storage = optuna.storages.JournalStorage(JournalFileBackend(str(journal)))
        study = optuna.load_study(study_name=tiny_study.name, storage=storage)
        assert sorted(served) == [t.number for t in study.trials] == [0, 1, 2]
        for trial in study.trials:
            got = served[trial.number]
            assert got["state"] == "Complete" and trial.state.name == "COMPLETE"
            assert got["values"] == [trial.value]
            assert {p["name"]: p["param_internal_value"] for p in got["params"]} == {
                name: trial.distributions[name].to_internal_repr(value)
                for name, value in trial.params.items()}
            assert {v["step"]: v["value"] for v in got["intermediate_values"]} == \
                trial.intermediate_values
        assert [t["number"] for t in detail["best_trials"]] == [study.best_trial.number]

        # the best trial's checkpoint, served from the artifact folder the command names
        best = study.best_trial
        artifact = best.user_attrs["checkpoint_artifact"]
        url = (f"{base}/artifacts/{summaries[0]['study_id']}/"
               f"{served[best.number]['trial_id']}/{artifact}")
        with urllib.request.urlopen(url, timeout=30) as response:
            served_bytes = response.read()
        stored = tiny_study.results / "artifacts" / artifact
        assert served_bytes == stored.read_bytes() and len(served_bytes) > 1000
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert process.returncode is not None
    with socket.socket() as sock:  # nothing listens on the port: the server is really gone
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # ignore TIME_WAIT
        sock.bind(("127.0.0.1", port))
