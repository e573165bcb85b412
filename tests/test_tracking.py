"""RunLogger: a resumed run's TensorBoard log replaces what the killed run wrote after the
resume step, whatever the event files' names."""

import time

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cliptune.tracking import RunLogger


def test_a_resumed_log_purges_the_killed_runs_later_steps(tmp_path):
    killed = RunLogger(tmp_path)
    for step in range(1, 6):
        killed.scalars({"loss": float(step)}, step, prefix="train/")
    killed.close()
    # The killed run's file opened in this very second by a process whose name sorts
    # last: a new file named for this second would sort before it.
    (old,) = tmp_path.glob("events.out.tfevents.*")
    stamp = int(time.time()) + 1
    old.rename(tmp_path / f"events.out.tfevents.{stamp:010d}.~host.99999.0")

    resumed = RunLogger(tmp_path, purge_step=3)
    for step in (3, 4):
        resumed.scalars({"loss": 10.0 * step}, step, prefix="train/")
    resumed.close()

    events = EventAccumulator(str(tmp_path))
    events.Reload()
    got = {event.step: event.value for event in events.Scalars("train/loss")}
    assert got == {1: 1.0, 2: 2.0, 3: 30.0, 4: 40.0}
