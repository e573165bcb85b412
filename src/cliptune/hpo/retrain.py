"""Does the study's winner hold at full scale? Retrain it and the base config, K seeds each.

Both train at the target's full fidelity (all its data, its epochs) and are scored
on the standard test split, which the study never saw. Seeds change the
initialisation, data order and augmentation; with `data.split_seed` the split stays
the same. Results: mean ± std per configuration, the paired difference (best - base,
seed by seed) with a 95% t-interval, and a verdict in words (`compare`).
"""

from __future__ import annotations

import copy
import json
import statistics
import time
import warnings

import optuna
from scipy import stats

from cliptune.config import RunConfig
from cliptune.errors import CliptuneError
from cliptune.files import write_atomic
from cliptune.hpo.report.files import (
    RETRAIN_FILE,
    ReportContext,
    best_config,
    best_trial,
)
from cliptune.hpo.search_space import base_params, baseline_trial
from cliptune.metrics import SCORES
from cliptune.trainer import Trainer


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
    for key in SCORES:
        values = [run["test"][key] for run in runs if key in run["test"]]
        if values:
            means[key] = statistics.fmean(values)
            stds[key] = statistics.stdev(values) if len(values) > 1 else 0.0
    return means, stds


def compare(best: list[float], base: list[float], metric: str = "rsum",
            higher_is_better: bool = True) -> dict:
    """Best vs base over paired seeds: the per-seed differences (best - base), their mean
    with a 95% t-interval, the pooled std of the two configurations, and a verdict.

    The rule: "better" when the interval lies above 0 (below, for a metric where lower
    is better) AND the mean difference exceeds twice the pooled standard deviation
    sqrt((s_best^2 + s_base^2) / 2); "worse" by the same rule the other way; otherwise
    "within the noise". One seed gives no interval: always "within the noise".
    """
    if len(best) != len(base) or not best:
        raise ValueError("compare needs the same number (>= 1) of best and base values")
    diffs = [a - b for a, b in zip(best, base, strict=True)]
    n, mean = len(diffs), statistics.fmean(diffs)
    pooled = ((statistics.variance(best) + statistics.variance(base)) / 2) ** 0.5 if n > 1 else 0.0
    std = statistics.stdev(diffs) if n > 1 else 0.0
    interval = None
    if n > 1 and std == 0:  # equal differences: scipy would give NaN, the interval is a point
        interval = (mean, mean)
    elif n > 1:
        with warnings.catch_warnings():  # nearly equal differences: a precision notice
            warnings.simplefilter("ignore", RuntimeWarning)
            interval = tuple(float(x) for x in stats.ttest_rel(best, base).confidence_interval())
    gain = mean if higher_is_better else -mean
    word = "within the noise"
    if interval is not None and abs(mean) > 2 * pooled:
        low, high = interval if higher_is_better else (-interval[1], -interval[0])
        word = "better" if low > 0 and gain > 0 else "worse" if high < 0 and gain < 0 else word
    if interval is None:
        reason = "one seed gives no interval; retrain with --seeds 3 or more"
    else:
        reason = (f"paired difference {mean:+.2f}, 95% interval [{interval[0]:+.2f}, "
                  f"{interval[1]:+.2f}] over {n} seeds; twice the pooled std is {2 * pooled:.2f}")
    relation = {"better": "better than", "worse": "worse than"}.get(word, "within the noise of")
    sentence = (f"The best config is {relation} the base config at full fidelity on test "
                f"{metric} ({reason}).")
    return {"metric": metric, "differences": diffs, "mean_difference": mean,
            "std_difference": std,
            "interval_95": list(interval) if interval else None, "pooled_std": pooled,
            "verdict_word": word, "verdict": sentence}


def comparison_lines(payload: dict) -> list[str]:
    """The retraining as console lines: per seed, mean ± std, the verdict."""
    best, base = payload["configs"]["best"], payload["configs"]["base"]
    key = payload["comparison"]["metric"]
    lines = [f"retrained at full fidelity, test {key} (best vs base):"]
    for b, a, diff in zip(best["runs"], base["runs"], payload["comparison"]["differences"],
                          strict=True):
        lines.append(f"  seed {b['seed']}: {b['test'][key]:.2f} vs {a['test'][key]:.2f} "
                     f"({diff:+.2f})")
    lines.append(f"  mean ± std: {best['test_mean'][key]:.2f} ± {best['test_std'][key]:.2f} vs "
                 f"{base['test_mean'][key]:.2f} ± {base['test_std'][key]:.2f}")
    return lines + [payload["verdict"]]


def retrain_study(study: optuna.Study, ctx: ReportContext, seeds: int, *,
                  show_progress: bool = True) -> dict:
    """Train the best trial's parameters and the base config at full fidelity with
    `seeds` seeds each (target seed, +1, ...); write and return retrain_results.json.

    Runs are `runs/<study>/retrain/{best,base}_seed<k>`; interrupted ones resume.
    """
    best = best_trial(study)
    if best is None:
        raise CliptuneError(
            f"--retrain-best: study {ctx.study_name!r} has no complete trial yet; run trials first"
        )
    baseline, definition = baseline_trial(study), ctx.definition
    target = definition.target
    configs = {"best": (best_config(best, ctx), best.number, best.params),
               "base": (target, baseline.number if baseline else None,
                        base_params(definition.space, target)[0])}
    seed_list = [target.seed + k for k in range(seeds)]
    payload: dict = {"epochs": target.train.epochs, "seeds": seed_list,
                     "target": definition.target_path, "configs": {}}
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
    payload["comparison"] = compare([r["test"]["rsum"] for r in best_c["runs"]],
                                    [r["test"]["rsum"] for r in base_c["runs"]])
    payload["verdict"] = payload["comparison"]["verdict"]
    payload["test"] = best_c["test_mean"]  # the best config's mean test metrics
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(ctx.out_dir / RETRAIN_FILE, json.dumps(payload, indent=2) + "\n")
    return payload
