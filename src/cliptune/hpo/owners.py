"""Who runs a trial, and whether they are still alive.

Optuna's journal storage has no heartbeat, so nothing in Optuna tells a dead
worker's RUNNING trial from a live one. Every trial therefore records its owner
(`owner` user attribute: host, pid, process start time) and a liveness beat (`beat`,
a UNIX time rewritten every `BEAT_INTERVAL_S` while the trial runs). A driver fails
a RUNNING trial only when its owner is dead: on this host, its process is gone (or
the pid now belongs to another process); on another host, its beat is older than
`BEAT_GRACE_S`. RDB storages also get Optuna's own heartbeat (see `study.py`).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

OWNER_ATTR = "owner"
BEAT_ATTR = "beat"
REASON_ATTR = "fail_reason"
BEAT_INTERVAL_S = 20.0
BEAT_GRACE_S = 120.0


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks) of a Linux process, None if unknown."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) "
    return fields[0], int(fields[19])


def owner_record(pid: int | None = None) -> dict[str, Any]:
    """This process (or `pid` on this host) as a trial owner."""
    pid = os.getpid() if pid is None else pid
    stat = _proc_stat(pid)
    return {"host": socket.gethostname(), "pid": pid, "started": stat[1] if stat else None}


def process_alive(pid: int, started: int | None = None) -> bool:
    """Whether process `pid` of this host runs (not a zombie; the same process when
    its start time is known)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    stat = _proc_stat(pid)
    if stat is None:
        return True  # no /proc: trust the signal check
    state, ticks = stat
    return state not in ("Z", "X") and (started is None or ticks == started)


def owner_alive(trial: FrozenTrial, now: float | None = None,
                grace_s: float = BEAT_GRACE_S) -> bool:
    """Whether the owner of a RUNNING trial may still be working on it."""
    owner = trial.user_attrs.get(OWNER_ATTR)
    now = time.time() if now is None else now
    if owner and owner.get("host") == socket.gethostname():
        return process_alive(int(owner["pid"]), owner.get("started"))
    beat = trial.user_attrs.get(BEAT_ATTR)
    if beat is None and trial.datetime_start is not None:
        beat = trial.datetime_start.timestamp()
    return beat is not None and now - beat <= grace_s


def fail_trial(study: optuna.Study, storage, trial: FrozenTrial, reason: str) -> bool:
    """Mark `trial` FAIL with `reason`; False if it finished meanwhile."""
    study_id = storage.get_study_id_from_name(study.study_name)
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
    try:
        storage.set_trial_user_attr(trial_id, REASON_ATTR, reason)
        study.tell(trial.number, state=TrialState.FAIL)
    except (ValueError, RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
        return False  # its owner finished it after all
    return True


def fail_dead_owners(study: optuna.Study, storage, reason: str,
                     grace_s: float = BEAT_GRACE_S) -> list[int]:
    """Fail every RUNNING trial whose owner is dead; returns their numbers."""
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not owner_alive(trial, grace_s=grace_s) and fail_trial(study, storage, trial, reason):
            failed.append(trial.number)
    return failed


class Beat:
    """Context manager: records the owner, then rewrites the beat in a thread."""

    def __init__(self, trial: optuna.Trial, interval_s: float = BEAT_INTERVAL_S):
        self.trial = trial
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hpo-beat", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.trial.set_user_attr(BEAT_ATTR, time.time())
            except Exception:  # a finished trial or a storage hiccup; the next beat retries
                pass

    def __enter__(self) -> Beat:
        self.trial.set_user_attr(OWNER_ATTR, owner_record())
        self.trial.set_user_attr(BEAT_ATTR, time.time())
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
