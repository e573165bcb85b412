"""A torchrun job whose rank is SIGKILLed stops within a bounded time; relaunching resumes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from test_main_cli import TINY_FLAGS

from cliptune.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parent.parent
STOP_WITHIN_S = 60


def torchrun(tmp_path: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "CLIPTUNE_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1",
           "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", "2", str(REPO / "src" / "main.py"), *TINY_FLAGS,
               "--device", "cpu", *args]
    return subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def worker_pid(parent: int, rank: int) -> int | None:
    """The pid of the torchrun worker with RANK=`rank` (a child of `parent`)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    return None


def test_sigkill_of_one_rank_stops_the_job_and_relaunch_resumes(tmp_path):
    last = tmp_path / "checkpoints" / "cli" / "last.pt"
    job = torchrun(tmp_path, "--epochs", "60")
    try:
        deadline = time.monotonic() + 240
        while not last.is_file():
            assert job.poll() is None, job.communicate()[0]
            assert time.monotonic() < deadline, "no checkpoint written"
            time.sleep(0.05)
        victim = worker_pid(job.pid, rank=1)
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        output, _ = job.communicate(timeout=STOP_WITHIN_S)
        assert time.monotonic() - killed_at < STOP_WITHIN_S
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
    assert job.returncode != 0
    print(output)
    assert "Signals.SIGKILL" in output or "SIGKILL" in output, output
    assert "epoch 60/60" not in output
    assert worker_pid(job.pid, 0) is None  # no orphaned rank left behind

    done_epoch = load_checkpoint(last)["epoch"]
    assert 1 <= done_epoch < 60
    # the same job relaunched (stopping one epoch later on the same schedule) resumes
    again = torchrun(tmp_path, "--epochs", str(done_epoch + 1))
    output, _ = again.communicate(timeout=300)
    assert again.returncode == 0, output
    assert f"resuming {Path('checkpoints') / 'cli' / 'last.pt'} after epoch {done_epoch}" in output
    assert f"epoch {done_epoch + 1}/{done_epoch + 1}" in output
    assert output.count("epoch 1/") == 0
    assert load_checkpoint(last)["epoch"] == done_epoch + 1
    assert (tmp_path / "checkpoints" / "cli" / "metrics.json").is_file()
