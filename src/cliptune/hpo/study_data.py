"""The study's one data decision, and the check that every process keeps to it.

The driver resolves the data source once (`auto` -> shapes or flickr30k, see
`cliptune.data.sources`) and prepares the data before any worker starts, so the image
cache is built once per machine and the workers only read it. What it used, the
resolved source and `PreparedData.fingerprint`, is the study fingerprint's `data` part
(a driver that joins later must see the same data) and each trial's `data` attribute.
A study that recorded a decision keeps it: a joining driver whose config says `auto`
takes the recorded source instead of probing the network again. Worker processes get
the resolved source and stop, naming both, if what they load has another fingerprint.
"""

from __future__ import annotations

from cliptune.config import RunConfig
from cliptune.data import PreparedData
from cliptune.errors import DataError
from cliptune.trainer import Trainer


def data_record(data: PreparedData | None) -> dict | None:
    """`{"source", "fingerprint", "images"}` of prepared data (None: no data)."""
    if data is None:
        return None
    images = len(data.train) + len(data.val) + len(data.test)
    return {"source": data.source, "fingerprint": data.fingerprint, "images": images}


def prepare_trial_data(config: RunConfig, *, quiet: bool = True) -> PreparedData:
    """The data a trial of `config` trains on (image cache built or reused, tokenizer)."""
    return Trainer(config, show_progress=not quiet, resume=None).prepare_data()


def decide_data(recorded: dict | None, base: RunConfig, *,
                quiet: bool) -> tuple[PreparedData, str | None]:
    """Prepare the trials' data for the study whose fingerprint is `recorded`.

    `base.data.source` `auto` becomes the recorded source when the study has one (the
    note says so), else what `auto` resolves to now; either way `base` is left holding
    the resolved source, which is what the workers get. Returns (data, note)."""
    decided = (recorded or {}).get("data")
    note = None
    if decided and base.data.source == "auto":
        base.data.source = decided["source"]
        note = (f"data: {decided['source']}, as the study decided when its data was first "
                "recorded (`auto` is not resolved again)")
    data = prepare_trial_data(base, quiet=quiet)
    base.data.source = data.source
    return data, note


def check_same_data(data: PreparedData, expected: dict | None, who: str) -> None:
    """Raise `DataError` naming both when `data` is not the data the study decided on."""
    seen = data_record(data)
    if expected is None or seen["fingerprint"] == expected["fingerprint"]:
        return
    raise DataError(
        f"{who} loaded other data than the study's driver decided on: it sees "
        f"{seen['source']} (fingerprint {seen['fingerprint']}, {seen['images']} images), the "
        f"study uses {expected['source']} (fingerprint {expected['fingerprint']}, "
        f"{expected.get('images', '?')} images). The dataset changed while the study ran "
        "(files added, removed or edited, another download): restore it, or start a new "
        "--study-name for the new data"
    )
