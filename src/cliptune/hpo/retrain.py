"""Does the study's winner hold at full scale? Retrain it and the base config, K seeds each.

Both train at the target's full fidelity (all its data, its epochs) and are scored
on the standard test split, which the study never saw. Seeds change the
initialisation, data order and augmentation; with `data.split_seed` the split stays
the same. Results: mean ± std per configuration, the difference of the means, and
whether that difference is larger than the spread.
"""

from __future__ import annotations

import copy
import json
import statistics
import time

import optuna

from cliptune.config import RunConfig
from cliptune.errors import CliptuneError
from cliptune.hpo.baseline import base_params, baseline_trial
from cliptune.hpo.fidelity import StudyPlan
from cliptune.hpo.reports import (
    RETRAIN_FILE,
    ReportContext,
    best_config,
    best_trial,
    write_text_atomic,
)
from cliptune.hpo.search_space import SearchSpace
from cliptune.trainer import Trainer

KEYS = ("rsum", "i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "loss")


def _train(config: RunConfig, extra: dict, show_progress: bool) -> dict:
    """Train `config` (resuming an interrupted run) and evaluate its best checkpoint."""
    start = time.perf_counter()
    trainer = Trainer(config, show_progress=show_progress, resume="auto", hparams_extra=extra)
    fit = trainer.fit()
    results = trainer.evaluate_best(("val", "test"))
    return {"seed": config.seed, "best_epoch": fit.best_epoch,
            "checkpoint": str(trainer.checkpoint_dir / "best.pt"),
            "run_dir": str(trainer.run_dir), "wall_time_s": time.perf_counter() - start,
            "val": results["val"], "test": results["test"]}


def _summary(runs: list[dict]) -> tuple[dict, dict]:
    means, stds = {}, {}
    for key in KEYS:
        values = [run["test"][key] for run in runs if key in run["test"]]
        if values:
            means[key] = statistics.fmean(values)
            stds[key] = statistics.stdev(values) if len(values) > 1 else 0.0
    return means, stds


def verdict(difference: float, spread: float, metric: str = "rsum") -> str:
    """Plain words: is the best config's lead larger than the seed-to-seed spread?"""
    side = "beats" if difference > 0 else "trails"
    size = "larger" if abs(difference) > spread else "not larger"
    return (f"The best config {side} the base config by {abs(difference):.1f} test {metric} "
            f"(mean of the seeds); that is {size} than the spread "
            f"(the larger standard deviation, {spread:.1f}).")


def retrain_study(study: optuna.Study, ctx: ReportContext, plan: StudyPlan, space: SearchSpace,
                  seeds: int, *, show_progress: bool = True) -> dict:
    """Train the best trial's parameters and the base config at full fidelity with
    `seeds` seeds each (target seed, +1, ...); write and return retrain_results.json.

    Runs are `runs/<study>/retrain/{best,base}_seed<k>`; interrupted ones resume.
    """
    best = best_trial(study)
    if best is None:
        raise CliptuneError(
            f"--retrain-best: study {ctx.study_name!r} has no complete trial yet; run trials first"
        )
    baseline = baseline_trial(study)
    configs = {"best": (best_config(best, ctx), best.number, best.params),
               "base": (plan.target, baseline.number if baseline else None,
                        base_params(space, plan.target)[0])}
    seed_list = [plan.target.seed + k for k in range(seeds)]
    payload: dict = {"epochs": plan.target.train.epochs, "seeds": seed_list,
                     "target": plan.target_path, "configs": {}}
    for name, (config, trial, params) in configs.items():
        runs = []
        for seed in seed_list:
            run = copy.deepcopy(config)
            run.name, run.seed = f"{ctx.study_name}/retrain/{name}_seed{seed}", seed
            if show_progress:
                print(f"retraining the {name} config (seed {seed}, {run.train.epochs} epochs) "
                      f"as run {run.name!r}", flush=True)
            runs.append(_train(run, {"study": ctx.study_name, "retrain": name, "trial": trial
                                     if trial is not None else -1}, show_progress))
        means, stds = _summary(runs)
        payload["configs"][name] = {"trial": trial, "params": params, "runs": runs,
                                    "test_mean": means, "test_std": stds}
    best_c, base_c = payload["configs"]["best"], payload["configs"]["base"]
    payload["difference"] = {k: best_c["test_mean"][k] - base_c["test_mean"][k]
                             for k in best_c["test_mean"] if k in base_c["test_mean"]}
    spread = max(best_c["test_std"].get("rsum", 0.0), base_c["test_std"].get("rsum", 0.0))
    payload["spread_rsum"] = spread
    payload["verdict"] = verdict(payload["difference"]["rsum"], spread)
    payload["test"] = best_c["test_mean"]  # the best config's mean test metrics
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(ctx.out_dir / RETRAIN_FILE, json.dumps(payload, indent=2) + "\n")
    return payload
