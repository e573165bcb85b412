"""A process that opens a study storage at the same moment as others (spawned by tests;
imports only what opening a study needs, so the processes start quickly)."""

from __future__ import annotations

from cliptune.hpo.study import make_pruner, make_sampler, make_storage, open_study


def open_together(url: str, barrier, results) -> None:
    """Wait for the others at `barrier`, open the study `race`; put (kind, created|error)."""
    barrier.wait()
    try:
        storage = make_storage(url, "", "race")
        _, created = open_study(storage, "race", "val_loss", make_sampler("random", 0),
                                make_pruner("none", 2))
        results.put(("ok", created))
    except Exception as err:  # the test wants to see any failure, not hide it
        results.put(("error", repr(err)))
