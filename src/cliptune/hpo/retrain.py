"""Retrain the study's best configuration and evaluate it on the test split."""

from __future__ import annotations

import json
import time

import optuna

from cliptune.errors import CliptuneError
from cliptune.hpo.reports import (
    RETRAIN_FILE,
    ReportContext,
    best_config,
    best_trial,
    write_text_atomic,
)
from cliptune.trainer import Trainer


def retrain_best(
    study: optuna.Study, ctx: ReportContext, epochs: int, *, show_progress: bool = True
) -> dict:
    """Train the best trial's config (as in best_config.yaml) for `epochs` epochs and
    evaluate its best checkpoint on val and test.

    The run is `runs/<study>/retrain_trial_<n>` (next to the trials in TensorBoard),
    its checkpoints `checkpoints/<study>/retrain_trial_<n>/`; an interrupted retrain
    resumes. The results go to `retrain_results.json`, which the reports include.
    """
    best = best_trial(study)
    if best is None:
        raise CliptuneError(
            f"--retrain-best: study {ctx.study_name!r} has no complete trial yet; run trials first"
        )
    config = best_config(best, ctx)  # what best_config.yaml holds
    config.name = f"{ctx.study_name}/retrain_trial_{best.number:04d}"
    config.train.epochs = epochs
    if show_progress:
        print(f"retraining trial {best.number} for {epochs} epochs as run {config.name!r}")
    start = time.perf_counter()
    trainer = Trainer(config, show_progress=show_progress, resume="auto",
                      hparams_extra={"trial": best.number, "study": ctx.study_name,
                                     "retrain": True})
    fit = trainer.fit()
    results = trainer.evaluate_best(("val", "test"))
    payload = {
        "trial": best.number,
        "params": best.params,
        "epochs": epochs,
        "best_epoch": fit.best_epoch,
        "checkpoint": str(trainer.checkpoint_dir / "best.pt"),
        "run_dir": str(trainer.run_dir),
        "wall_time_s": time.perf_counter() - start,
        "val": results["val"],
        "test": results["test"],
    }
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(ctx.out_dir / RETRAIN_FILE, json.dumps(payload, indent=2) + "\n")
    return payload
