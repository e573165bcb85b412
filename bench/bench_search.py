"""Optuna study designs compared at equal compute (issue 16), on benchmark tasks (issue 30):
anytime curves, speed-up over random search, paired wins, and the full-fidelity test R-sum
of each design's winner against the task's target.

    python bench/bench_search.py --out bench-search --quick                  # <= 10 min here
    python bench/bench_search.py --out bench-search --seeds 5 \\
        --designs shipped,random,tpe,random-median,tpe-sha-min2 --retrain-seeds 3
    python bench/bench_search.py --out bs-tasks --task bench/tasks/small-data.yaml
    python bench/bench_search.py --out bs-tasks --task bench/tasks/small-data.yaml \\
        --task bench/tasks/larger-model.yaml --task bench/tasks/recipe.yaml   # + pooled
    python bench/bench_search.py --out bs-tasks --task bench/tasks/recipe.yaml --spread 10

A task is what a study tunes and with what: a study file (`--study-config`, the format of
experiments/hpo.yaml: target experiment, fidelity, time limit), a search space
(`--search-space`, the format of experiments/search_space.yaml) and a compute budget per
study (`--budget`). A task file (bench/tasks/*.yaml) names them, relative to itself:

    study_config: small-data/study.yaml
    search_space: small-data/space.yaml
    budget: 10                  # N or Nx: N full-budget trials of the target; or 3e15flop
    designs: [shipped, random]  # optional: the designs compared (random is always added)
    seeds: 5                    # optional: study seeds 0..N-1

Each setting comes from, in order: the command line, --quick's reductions (seeds, budget,
fidelities), the task file, the defaults (experiments/hpo.yaml and search_space.yaml,
budget 10, 5 seeds); a task's designs win over --quick's. Without
--task the results and stage cache live at --out's top, as before tasks existed; with
tasks each lives under --out/<task file's name>/ and --out's own search_benchmark.md holds
the pooled table (designs compared over every task's seeds) and each task's tables.

The budget unit: a "full-budget trial of the target" is the target's own config trained
at the trial fidelity for the study's whole epoch budget (what an unpruned baseline trial
costs). `89.4TFLOP` (prefixes k, G, T, P, E; `flop` or `flops`) gives FLOPs instead.

A design = sampler + pruner + fidelity (per-trial epoch budget, training subset). Every
(design, seed) study runs in this process with in-memory storage through the package's
own pieces (`make_sampler`, `make_pruner`, `Objective`, the search space file, the
baseline trial first, as `optimize.py` does) and stops adding trials once its training
compute reaches the budget. Compute is training FLOPs: `epochs_flops_per_sample` of the
trial's model over the epochs it ran (forward x 3, the tokens kept under patch dropout)
times the image-text pairs per epoch, pruned and failed trials included; wall time is recorded beside it.
The study seed s seeds the sampler and the trials' runs (init, data order,
augmentation); the split stays the target's (`data.split_seed`).

The anytime curve of a study is the best validation loss of its COMPLETE trials (what
the study would return if stopped there) against cumulative compute. The report also
gives every figure for the searched trials only (the baseline's compute counts, its value
does not), since a strong target hides what a search found. A design's final
best is its curve at the budget; "compute to reach" is where its curve first reaches
random search's final best of the same seed; the speed-up is random search's median
compute to reach its own final best over the design's median. Pooled over tasks, the
compute is a fraction of each task's budget.

`--spread K` asks whether hyperparameters matter on a task at all: K configurations drawn
at random from its space (RandomSampler, seed 0) are trained once each, and the target at
--spread-seeds seeds, all at full fidelity (the target's, unless --retrain-epochs /
--retrain-max-samples reduce it); spread.md gives the span of the K test rsums against
the target's seed-to-seed std (a task is worth keeping when the span is >= 5x the std).
No study runs in this mode.

Every stage is a file under --out (or --out/<task>): `studies/<design>_seed<s>.json` and
`retrain/<params-hash>_seed<k>.json` (winners, the target and --spread's runs);
a second invocation reuses them and trains nothing. Results: search_benchmark.{json,md},
anytime.html (plotly, offline) and anytime.png; with --spread, spread.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import re
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402
from optuna.trial import TrialState  # noqa: E402
from tqdm import tqdm  # noqa: E402

from cliptune.config import RunConfig, config_from_dict, read_yaml  # noqa: E402
from cliptune.data import TrainLoader  # noqa: E402
from cliptune.errors import ConfigError  # noqa: E402
from cliptune.hpo.definition import StudyDefinition, load_plan  # noqa: E402
from cliptune.hpo.design import startup_trials  # noqa: E402
from cliptune.hpo.objective import Objective  # noqa: E402
from cliptune.hpo.search_space import (  # noqa: E402
    SearchSpace,  # noqa: E402
    base_params,
    enqueue_baseline,
    load_search_space,  # noqa: E402
)
from cliptune.hpo.study import REDUCTION_FACTOR, make_pruner, make_sampler, open_study  # noqa: E402
from cliptune.hpo.workers import run_trials  # noqa: E402
from cliptune.model.flops import epochs_flops_per_sample  # noqa: E402
from cliptune.trainer import Trainer  # noqa: E402

METRIC = "val_loss"  # the shipped objective (minimised)
RETRAIN_KEYS = ("rsum", "i2t_r1", "t2i_r1", "loss")
MAX_IDLE_TRIALS = 10  # trials in a row that trained nothing before a study gives up


# ---------------------------------------------------------------------------- designs

@dataclass(frozen=True)
class Design:
    """Sampler + pruner + fidelity. `pruner(epochs)` builds the pruner for the trials'
    epoch budget; `epochs` / `max_samples` None: the study file's (or the flags')."""

    name: str
    description: str
    sampler: Callable[[int], optuna.samplers.BaseSampler]  # seed -> sampler
    pruner: Callable[[int], optuna.pruners.BasePruner]  # epochs -> pruner
    epochs: int | None = None
    max_samples: int | None = None


def _tpe(startup: int) -> Callable[[int], optuna.samplers.BaseSampler]:
    """TPE as `make_sampler("tpe")` builds it, with another number of start-up trials."""
    return lambda seed: optuna.samplers.TPESampler(
        seed=seed, multivariate=True, constant_liar=True, n_startup_trials=startup)


def _sampler(name: str) -> Callable[[int], optuna.samplers.BaseSampler]:
    return lambda seed: make_sampler(name, seed)  # Optuna's 10 random start-up trials


def _pruner(name: str, min_epochs: int = 1, factor: int = REDUCTION_FACTOR
            ) -> Callable[[int], optuna.pruners.BasePruner]:
    """optimize.py's pruner `name` (`make_pruner`), with its first rung and factor."""
    return lambda epochs: make_pruner(name, epochs, min_epochs=min_epochs,
                                      reduction_factor=factor)


DESIGNS = {d.name: d for d in (
    Design("shipped", "TPE + Hyperband (min 1, factor 5), TPE's random start-up as "
           "`optimize.py --trials 50` sets it (the baseline + 5 draws): optimize.py's defaults "
           "without a recorded fidelity check", _tpe(startup_trials(50, enqueued=1)),
           _pruner("hyperband")),
    Design("tpe10-hb", "TPE (10 random start-up trials, Optuna's default) + Hyperband (min 1, "
           "factor 5): optimize.py's defaults before start-ups were scaled",
           _sampler("tpe"), _pruner("hyperband")),
    Design("random", "random search, no pruning", _sampler("random"), _pruner("none")),
    Design("tpe", "TPE, no pruning", _sampler("tpe"), _pruner("none")),
    Design("random-median", "random + median pruner (5 start-up trials, warm-up 1 epoch)",
           _sampler("random"), _pruner("median")),
    Design("tpe-median-w2", "TPE + median pruner (5 start-up trials, warm-up 2 epochs)",
           _sampler("tpe"), _pruner("median", 2)),
    Design("tpe-sha-min2", "TPE + successive halving (min 2 epochs, factor 3)",
           _sampler("tpe"), _pruner("sha", 2, 3)),
    Design("tpe-sha-min5", "TPE + successive halving (min 5 epochs, factor 3): one rung, "
           "at the epoch whose ranking matched the full run in the fidelity check",
           _sampler("tpe"), _pruner("sha", 5, 3)),
    Design("tpe-hb-r3", "TPE + Hyperband (min 1, factor 3)", _sampler("tpe"), _pruner("hyperband", 1, 3)),
    Design("tpe-sha-r3", "TPE + successive halving (min 1 epoch, factor 3)",
           _sampler("tpe"), _pruner("sha", 1, 3)),
    Design("random-sha-r3", "random + successive halving (min 1 epoch, factor 3)",
           _sampler("random"), _pruner("sha", 1, 3)),
    Design("tpe5-hb", "TPE with 5 start-up trials + Hyperband (min 1, factor 5)",
           _tpe(5), _pruner("hyperband")),
    Design("gp", "GPSampler, no pruning", _sampler("gp"), _pruner("none")),
)}


# ---------------------------------------------------------------------------- settings

@dataclass(frozen=True)
class Bench:
    """What every study of this run shares."""

    plan: StudyDefinition
    space: SearchSpace
    budget_flops: float  # training FLOPs per study
    epochs: int  # default per-trial budget
    max_samples: int | None
    max_eval_samples: int | None
    retrain_epochs: int | None  # None: the target's (full fidelity)
    retrain_max_samples: int | None  # None: the target's (all its data)

    def definition(self, design: Design, seed: int, folder: Path | None = None
                   ) -> StudyDefinition:
        """The definition of `design`'s study of seed `seed` (its runs under `folder`)."""
        fidelity = replace(self.plan.fidelity, epochs=design.epochs or self.epochs,
                           max_samples=design.max_samples or self.max_samples,
                           max_eval_samples=self.max_eval_samples)
        target = copy.deepcopy(self.plan.target)
        target.seed = seed
        if folder is not None:
            target.runs_dir = str(folder / "runs")
            target.checkpoints_dir = str(folder / "checkpoints")
        return replace(self.plan, target=target, fidelity=fidelity)

    def full_fidelity(self, params: dict, seed: int) -> RunConfig:
        """The target with `params` (its own epochs and data unless the run reduces them)."""
        config = self.space.apply(self.plan.target, params)
        config.seed = seed
        if self.retrain_epochs is not None:
            config.train.epochs = self.retrain_epochs
        if self.retrain_max_samples is not None:
            config.data.max_samples = self.retrain_max_samples
        return config


def pairs_per_epoch(config: RunConfig, data) -> int:
    """Image-caption pairs one training epoch of `config` sees (whole batches only)."""
    batch = min(config.train.batch_size, len(data.train))
    loader = TrainLoader(data.train, batch_size=batch, seed=config.seed, epoch=1, augment=False,
                         flip=False, all_captions=config.train.all_captions)
    return len(loader) * batch


def baseline_trial_flops(bench: Bench, data) -> float:
    """Training FLOPs of the target's own config over a full-budget trial (the budget unit)."""
    config = bench.definition(DESIGNS["shipped"], bench.plan.target.seed).trial_base
    return (epochs_flops_per_sample(config.model, config.train, bench.epochs)
            * pairs_per_epoch(config, data))


# ---------------------------------------------------------------------------- one study

def trial_record(trial: optuna.trial.FrozenTrial, data) -> dict:
    """What the benchmark keeps of a finished trial: its compute and what it reported."""
    epochs = len(trial.intermediate_values)  # each reported epoch was trained in full
    pairs, per_pair = 0, 0.0
    if "config" in trial.user_attrs:  # absent when the config itself was impossible
        config = config_from_dict(trial.user_attrs["config"])
        pairs = epochs * pairs_per_epoch(config, data)
        per_pair = epochs_flops_per_sample(config.model, config.train, epochs) / max(1, epochs)
    wall = ((trial.datetime_complete - trial.datetime_start).total_seconds()
            if trial.datetime_complete and trial.datetime_start else 0.0)
    return {
        "number": trial.number, "state": trial.state.name, "params": trial.params,
        "value": trial.value if trial.state == TrialState.COMPLETE else None,
        "intermediate": {str(k): v for k, v in sorted(trial.intermediate_values.items())},
        "epochs": epochs, "pairs": pairs, "flops_per_pair": per_pair, "flops": per_pair * pairs,
        "wall_s": wall, "baseline": bool(trial.user_attrs.get("baseline")),
        "run_s": trial.user_attrs.get("run_seconds"),  # its training and validation only
    }


def run_study(bench: Bench, design: Design, seed: int, objective: Objective, work: Path) -> dict:
    """Trials of `design` until their training FLOPs reach the budget; returns the record."""
    base = objective.base
    study, _ = open_study(optuna.storages.InMemoryStorage(), f"{design.name}-seed{seed}", METRIC,
                          design.sampler(seed), design.pruner(base.train.epochs))
    enqueue_baseline(study, bench.space, bench.plan.target)
    trials, flops, start, idle = [], 0.0, time.perf_counter(), 0
    bar = tqdm(total=100, desc=f"{design.name} seed {seed}", unit="% budget", leave=False)
    while flops < bench.budget_flops:
        run_trials(study, objective, 1)
        trials.append(trial_record(study.trials[-1], objective.data))
        flops += trials[-1]["flops"]
        idle = idle + 1 if trials[-1]["flops"] == 0 else 0
        if idle == MAX_IDLE_TRIALS:
            raise ConfigError(f"design {design.name}, seed {seed}: {idle} trials in a row failed "
                              f"before training (last: {trials[-1]['state']}); check the search "
                              "space and the study file")
        bar.update(min(100, round(100 * flops / bench.budget_flops)) - bar.n)
    bar.close()
    shutil.rmtree(work, ignore_errors=True)  # trial runs and checkpoints: not needed
    return {"design": design.name, "seed": seed, "epochs": base.train.epochs,
            "max_samples": base.data.max_samples, "max_eval_samples": base.data.max_eval_samples,
            "wall_s": time.perf_counter() - start, "trials": trials}


# ---------------------------------------------------------------------------- curves

def anytime_curve(record: dict, *, searched_only: bool = False) -> list[dict]:
    """One point per trial: cumulative FLOPs and wall seconds at its end, and the best
    value of the complete trials so far (None before the first). With `searched_only`
    the baseline trial's compute counts but its value does not: what the search itself
    found, which a strong baseline would otherwise hide."""
    points, flops, wall, best = [], 0.0, 0.0, None
    for trial in record["trials"]:
        flops += trial["flops"]
        wall += trial["wall_s"]
        counted = not (searched_only and trial["baseline"])
        if counted and trial["value"] is not None and (best is None or trial["value"] < best):
            best = trial["value"]
        points.append({"flops": flops, "wall_s": wall, "best": best, "trial": trial["number"]})
    return points


def value_at(curve: list[dict], flops: float) -> float | None:
    """The curve's best value at `flops` of compute (trials finished by then)."""
    best = None
    for point in curve:
        if point["flops"] > flops:
            break
        best = point["best"]
    return best


def compute_to_reach(curve: list[dict], target: float, budget: float) -> float | None:
    """Compute at which the curve first reaches `target` within `budget`; None: never."""
    for point in curve:
        if point["flops"] > budget:
            return None
        if point["best"] is not None and point["best"] <= target:
            return point["flops"]
    return None


def _median_or_inf(values: list[float | None]) -> float:
    """Median where None (never reached) counts as infinitely large."""
    return statistics.median(math.inf if v is None else v for v in values)


def _spread(values: list[float]) -> dict:
    values = sorted(values)
    quartiles = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else \
        [values[0]] * 3
    return {"median": statistics.median(values), "q1": quartiles[0], "q3": quartiles[2],
            "min": values[0], "max": values[-1]}


def summarize(curves: dict[str, dict[int, list[dict]]], budget: float) -> dict:
    """Per design: final best, compute to reach random search's final best, speed-up and
    paired wins over random search (seed by seed)."""
    random = curves["random"]
    random_final = {s: value_at(random[s], budget) for s in random}
    random_reach_by_seed = {s: compute_to_reach(random[s], random_final[s], budget) for s in random}
    summary = {}
    for name, by_seed in curves.items():
        seeds = sorted(set(by_seed) & set(random))  # paired: the seeds both have
        random_reach = _median_or_inf([random_reach_by_seed[s] for s in seeds])
        final = {s: value_at(by_seed[s], budget) for s in seeds}
        reach = {s: compute_to_reach(by_seed[s], random_final[s], budget) for s in seeds}
        median_reach = _median_or_inf(list(reach.values()))
        summary[name] = {
            "final_best": {str(s): final[s] for s in seeds},
            "final_best_spread": _spread([math.inf if v is None else v for v in final.values()]),
            "compute_to_reach": {str(s): reach[s] for s in seeds},
            "median_compute_to_reach": median_reach if math.isfinite(median_reach) else None,
            "median_reach_fraction_of_budget": (median_reach / budget
                                                if math.isfinite(median_reach) else None),
            "speedup": random_reach / median_reach if 0 < median_reach < math.inf else None,
            "wins": sum(final[s] is not None and random_final[s] is not None
                        and final[s] < random_final[s] for s in seeds),
            "ties": sum(final[s] == random_final[s] for s in seeds),
            "seeds": len(seeds),
        }
    return summary


def _grid(budget: float, smallest: float, n: int = 120) -> list[float]:
    low = math.log10(max(smallest, budget * 1e-3))
    return [10 ** (low + (math.log10(budget) - low) * i / (n - 1)) for i in range(n)]


def curve_bands(curves: dict[str, dict[int, list[dict]]], budget: float) -> dict:
    """Median and quartiles over seeds of every design's curve on a common compute grid
    (None where fewer than half the seeds have a complete trial yet)."""
    smallest = min(p["flops"] for by_seed in curves.values() for c in by_seed.values()
                   for p in c if p["flops"] > 0)
    grid = _grid(budget, smallest)
    bands = {}
    for name, by_seed in curves.items():
        rows = {"median": [], "q1": [], "q3": []}
        for x in grid:
            values = [v for v in (value_at(c, x) for c in by_seed.values()) if v is not None]
            ok = 2 * len(values) >= len(by_seed)
            padded = values + [math.inf] * (len(by_seed) - len(values))
            spread = _spread(padded) if ok else {}
            for key in rows:
                value = spread.get(key)
                rows[key].append(value if value is not None and math.isfinite(value) else None)
        bands[name] = rows
    return {"flops": grid, "designs": bands}


# ---------------------------------------------------------------------------- retraining

def params_key(params: dict) -> str:
    """A short, stable name for a parameter set (the retrain cache file)."""
    return hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]


def retrain(bench: Bench, params: dict, seed: int, work: Path) -> dict:
    """Train `params` at full fidelity with the Trainer and score its best checkpoint on test."""
    config = bench.full_fidelity(params, seed)
    config.name = f"retrain/{params_key(params)}_seed{seed}"
    config.runs_dir, config.checkpoints_dir = str(work / "runs"), str(work / "checkpoints")
    start = time.perf_counter()
    trainer = Trainer(config, show_progress=False, resume="auto")
    fit = trainer.fit()
    test = trainer.evaluate_best(("test",))["test"]
    flops = (epochs_flops_per_sample(config.model, config.train, fit.epochs_completed)
             * pairs_per_epoch(config, trainer.data))
    return {"params": params, "seed": seed, "epochs": config.train.epochs,
            "max_samples": config.data.max_samples, "best_epoch": fit.best_epoch,
            "wall_s": time.perf_counter() - start, "flops": flops,
            "test": {k: test[k] for k in RETRAIN_KEYS if k in test}}


def winner(records: dict[int, dict], curves: dict[int, list[dict]], budget: float) -> dict | None:
    """The winner of the design's typical study: the study whose final best is the median
    over seeds (the lower one for an even count), and its best complete trial by then
    (None: that study completed no trial within the budget)."""
    finals = sorted(records, key=lambda s: (value_at(curves[s], budget) or math.inf, s))
    seed = finals[(len(finals) - 1) // 2]
    best = value_at(curves[seed], budget)
    if best is None:
        return None
    trial = next(t for t in records[seed]["trials"] if t["value"] == best)
    return {"study_seed": seed, "trial": trial["number"], "value": best, "params": trial["params"]}


# ---------------------------------------------------------------------------- outputs

def write_plots(bands: dict, out: Path, budget: float) -> None:
    """anytime.html (plotly, offline) and anytime.png (matplotlib): median and IQR."""
    import plotly.graph_objects as go

    x = [f / 1e12 for f in bands["flops"]]
    figure = go.Figure()
    axes = plt.subplots(figsize=(8, 5))[1]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, rows) in enumerate(bands["designs"].items()):
        color = matplotlib.colors.to_hex(colors[i % len(colors)])
        q1 = [v if v is not None else math.nan for v in rows["q1"]]
        q3 = [v if v is not None else math.nan for v in rows["q3"]]
        median = [v if v is not None else math.nan for v in rows["median"]]
        figure.add_trace(go.Scatter(x=x, y=q3, line={"width": 0}, showlegend=False,
                                    legendgroup=name, hoverinfo="skip", line_shape="hv"))
        figure.add_trace(go.Scatter(x=x, y=q1, line={"width": 0}, fill="tonexty",
                                    fillcolor=_rgba(color, 0.15), showlegend=False,
                                    legendgroup=name, hoverinfo="skip", line_shape="hv"))
        figure.add_trace(go.Scatter(x=x, y=median, name=name, legendgroup=name,
                                    line={"color": color}, line_shape="hv"))
        axes.step(x, median, where="post", color=color, label=name)
        axes.fill_between(x, q1, q3, step="post", color=color, alpha=0.15)
    title = "best validation loss so far (median, IQR over seeds) vs training compute"
    figure.update_layout(title=title, xaxis_title="training compute (TFLOP)",
                         yaxis_title="best validation loss of complete trials")
    figure.update_xaxes(type="log")
    figure.add_vline(x=budget / 1e12, line_dash="dot")
    figure.write_html(out / "anytime.html", include_plotlyjs=True)
    axes.set_xscale("log")
    axes.axvline(budget / 1e12, linestyle=":", color="grey")
    axes.set_xlabel("training compute (TFLOP)")
    axes.set_ylabel("best validation loss of complete trials")
    axes.set_title(title, fontsize=10)
    axes.legend()
    axes.figure.tight_layout()
    axes.figure.savefig(out / "anytime.png", dpi=120)
    plt.close(axes.figure)


def _rgba(color: str, alpha: float) -> str:
    r, g, b = (round(255 * c) for c in matplotlib.colors.to_rgb(color))
    return f"rgba({r},{g},{b},{alpha})"


def _fmt(value: float | None, spec: str = ".4f") -> str:
    return "-" if value is None or not math.isfinite(value) else format(value, spec)


def _summary_table(result: dict, summary: dict) -> list[str]:
    lines = [
        "| design | compute to reach random's final best (median, x budget) | speed-up "
        "| final best median [min, max] | wins vs random | trials (pruned) | study wall "
        "(median) | winner test rsum (mean +- std) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in summary.items():
        spread = row["final_best_spread"]
        retrain = result["retrain"].get(name, {})
        rsum = (f"{retrain['test_rsum_mean']:.1f} +- {retrain['test_rsum_std']:.1f}"
                if retrain.get("test_rsum_mean") is not None else "-")
        studies = result["studies"][name]
        trials = statistics.median(len(r["trials"]) for r in studies.values())
        pruned = statistics.median(sum(t["state"] == "PRUNED" for t in r["trials"])
                                   for r in studies.values())
        wall = statistics.median(r["wall_s"] for r in studies.values())
        lines.append(
            f"| {name} | {_fmt(row['median_reach_fraction_of_budget'], '.2f')} "
            f"| {_fmt(row['speedup'], '.2f') if row['speedup'] else 'not reached'} "
            f"| {_fmt(spread['median'])} [{_fmt(spread['min'])}, {_fmt(spread['max'])}] "
            f"| {row['wins']} of {row['seeds']} (ties {row['ties']}) "
            f"| {trials:g} ({pruned:g}) | {wall / 60:.1f} min | {rsum} |")
    return lines


def markdown(result: dict, title: str = "# Study designs at equal compute") -> str:
    """search_benchmark.md: the settings and one table row per design."""
    s, budget = result["settings"], result["budget_flops"]
    lines = [
        title, "",
        f"Study file {s['study_config']}, search space {s['search_space']}. "
        f"Budget per study: {budget / 1e12:.3g} TFLOP of training ({s['budget_trials']:.3g} "
        f"full-budget trials of the target's own config); study seeds "
        f"{', '.join(result['studies']['random'])}; trials at {s['epochs']} epochs, "
        f"{s['max_samples'] or 'all'} training / {s['max_eval_samples'] or 'all'} validation "
        f"images unless the design says otherwise; metric: validation loss (lower is better). "
        f"Retrained at {s['retrain_fidelity']}, seeds {s['retrain_seeds']}.", "",
        *_summary_table(result, result["summary"]), "",
        "Searched trials only (the baseline trial, the target's own settings, costs its "
        "compute but its value is not counted): what each search found beyond the "
        "starting point.", "",
        *_summary_table(result, result["summary_searched_only"]),
    ]
    base = result["retrain"].get("target (no search)")
    if base and base["test_rsum_mean"] is not None:  # None: --retrain-seeds 0
        lines += ["", f"Target's own config at the same fidelity: test rsum "
                  f"{base['test_rsum_mean']:.1f} +- {base['test_rsum_std']:.1f}."]
    lines += ["", "Designs:", ""] + [f"- `{n}`: {DESIGNS[n].description}"
                                      for n in result["summary"]]
    lines += ["", "Wall times were measured on a shared machine (under load); FLOPs are not "
              "affected by load.", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- tasks

@dataclass(frozen=True)
class Budget:
    """Training compute per study: `amount` full-budget trials of the target's own config
    (unit "trials", the trial-fidelity run of the target: today's unit) or training FLOPs."""

    amount: float
    unit: str  # trials | FLOP

    def flops(self, trial_flops: float) -> float:
        """The budget in FLOPs, given the FLOPs of one full-budget trial of the target."""
        return self.amount * trial_flops if self.unit == "trials" else self.amount

    def record(self) -> float | str:
        """Its entry in definition.json (a plain number for trials, as before tasks)."""
        return self.amount if self.unit == "trials" else f"{self.amount:g} FLOP"


BUDGET_SYNTAX = re.compile(r"(?P<amount>(\d+\.?\d*|\.\d+)(e[+-]?\d+)?)\s*"
                           r"(?P<unit>x|(?P<prefix>[kgtpe]?)flops?)?", re.IGNORECASE)
SI_PREFIX = {"": 1.0, "k": 1e3, "g": 1e9, "t": 1e12, "p": 1e15, "e": 1e18}
MAX_TRIALS = 1e6  # a bare number above this is a FLOP count written without its unit


def parse_budget(value: object, where: str) -> Budget:
    """`10` or `10x`: 10 full-budget trials of the target; `3e15flop`, `89.4TFLOP`: FLOPs."""
    match = None if isinstance(value, bool) else BUDGET_SYNTAX.fullmatch(str(value).strip())
    if match is None or float(match["amount"]) <= 0:
        raise ConfigError(f"{where}: expected a positive number of full-budget trials of the "
                          f"target (10 or 10x) or training FLOPs (3e15flop, 89.4TFLOP), "
                          f"got {value!r}")
    amount = float(match["amount"])
    if match["prefix"] is not None:
        return Budget(amount * SI_PREFIX[match["prefix"].lower()], "FLOP")
    if amount > MAX_TRIALS:
        raise ConfigError(f"{where}: {value} would be {amount:g} full-budget trials: a bare "
                          f"number counts trials of the target; write {value}flop for FLOPs")
    return Budget(amount, "trials")


def check_designs(value: object, where: str) -> list[str]:
    """Design names from `a,b` or a list, random search (the reference) first."""
    names = value.split(",") if isinstance(value, str) else value
    if not isinstance(names, list) or not names:
        raise ConfigError(f"{where}: expected design names (a list or `a,b`), got {value!r}")
    names = [str(n).strip() for n in names]
    unknown = [n for n in names if n not in DESIGNS]
    if unknown:
        raise ConfigError(f"{where}: unknown design(s) {', '.join(unknown)}; choose from "
                          f"{', '.join(DESIGNS)}")
    return list(dict.fromkeys(["random", *names]))


TASK_KEYS = ("study_config", "search_space", "budget", "designs", "seeds")
TASK_REQUIRED = ("study_config", "search_space", "budget")


@dataclass(frozen=True)
class Task:
    """A benchmark task: its name (the file's stem; None: the command line alone) and the
    settings its file gives, study and space paths resolved against the file's folder."""

    name: str | None
    settings: dict


def load_task(path: str | Path) -> Task:
    """Read a task file (bench/tasks/*.yaml); every error names the file and the key."""
    path = Path(path)
    data = read_yaml(path, "--task: file not found")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of {', '.join(TASK_KEYS)}")
    unknown = sorted(set(data) - set(TASK_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(map(str, unknown))}; a task file "
                          f"holds {', '.join(TASK_KEYS)}")
    missing = [key for key in TASK_REQUIRED if key not in data]
    if missing:
        raise ConfigError(f"{path}: missing key(s) {', '.join(missing)}; a task file needs "
                          f"{', '.join(TASK_REQUIRED)}")
    settings: dict = {}
    for key in ("study_config", "search_space"):
        file = path.parent / str(data[key])
        if not file.is_file():
            raise ConfigError(f"{path}: {key}: file not found: {file} (relative to the task "
                              "file's folder)")
        settings[key] = str(file.resolve())
    settings["budget"] = parse_budget(data["budget"], f"{path}: budget")
    if "designs" in data:
        settings["designs"] = check_designs(data["designs"], f"{path}: designs")
    if "seeds" in data:
        seeds = data["seeds"]
        if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
            raise ConfigError(f"{path}: seeds: expected a positive whole number, got {seeds!r}")
        settings["seeds"] = seeds
    return Task(path.stem, settings)


# ---------------------------------------------------------------------------- spread

SPREAD_RATIO = 5.0  # hyperparameters matter: the configurations' span >= 5x the seed std


def spread_configs(space: SearchSpace, k: int) -> list[dict]:
    """`k` configurations of `space` from Optuna's RandomSampler (seed 0): the first k of
    one fixed sequence, so a larger K reuses a smaller one's runs."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    return [space.suggest(study.ask()) for _ in range(k)]


def spread_summary(config_rsums: list[float], target_rsums: list[float]) -> dict:
    """Span of the configurations' test rsums against the target's seed-to-seed std."""
    span = max(config_rsums) - min(config_rsums)
    std = statistics.stdev(target_rsums)
    ratio = span / std if std > 0 else math.inf
    return {"span": span, "min": min(config_rsums), "max": max(config_rsums),
            "target_mean": statistics.fmean(target_rsums), "target_std": std,
            "ratio": ratio, "matters": ratio >= SPREAD_RATIO}


def run_spread(settings: argparse.Namespace, out: Path) -> dict:
    """--spread K: K random configurations of the space and the target over several seeds,
    all at full fidelity (the retrain's); spread.{json,md} under `out`."""
    bench = make_bench(settings)
    cache = Cache(out, {k: getattr(settings, k) for k in (
        "study_config", "search_space", "retrain_epochs", "retrain_max_samples")})
    work = out / "work" / str(os.getpid())
    seed = bench.plan.target.seed

    def trained(params: dict, run_seed: int) -> dict:
        return cache.get("retrain", f"{params_key(params)}_seed{run_seed}",
                         lambda: retrain(bench, params, run_seed, work / "retrain"))

    configs = [trained(params, seed) for params in spread_configs(bench.space, settings.spread)]
    target_params = base_params(bench.space, bench.plan.target)[0] or {}  # {}: the target as is
    target = [trained(target_params, seed + k) for k in range(settings.spread_seeds)]
    shutil.rmtree(work, ignore_errors=True)
    result = {
        "task": settings.task, "study_config": settings.study_config,
        "search_space": settings.search_space, "fidelity": retrain_fidelity(settings),
        "configs": configs, "target": target,
        **spread_summary([r["test"]["rsum"] for r in configs], [r["test"]["rsum"] for r in target]),
        "computed_this_run": cache.computed,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "spread.json").write_text(json.dumps(result, indent=1))
    (out / "spread.md").write_text(spread_markdown(result))
    return result


def _param(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def spread_verdict(result: dict) -> str:
    """The criterion in words."""
    return ("hyperparameters matter" if result["matters"] else "hyperparameters do not clearly "
            "matter") + f" (span / std {_fmt(result['ratio'], '.1f')}, criterion >= {SPREAD_RATIO:g})"


def spread_markdown(result: dict, title: str = "# Do hyperparameters matter? Random "
                    "configurations against seed noise") -> str:
    """spread.md: one row per configuration, the target's seeds, the verdict."""
    names = list(result["configs"][0]["params"])
    seeds = ", ".join(str(r["seed"]) for r in result["target"])
    lines = [
        title, "",
        f"Study file {result['study_config']}, search space {result['search_space']}. "
        f"{len(result['configs'])} configurations drawn at random from the space "
        f"(RandomSampler, seed 0), each trained once (seed {result['configs'][0]['seed']}), and "
        f"the target's own config at seeds {seeds}; all at {result['fidelity']}, scored by "
        "test rsum.", "",
        "| run | test rsum | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    for i, run in enumerate(result["configs"], 1):
        lines.append(f"| random {i} | {run['test']['rsum']:.1f} | "
                     + " | ".join(_param(run["params"][n]) for n in names) + " |")
    for run in result["target"]:
        lines.append(f"| target, seed {run['seed']} | {run['test']['rsum']:.1f} | "
                     + " | ".join(_param(run["params"].get(n, "")) for n in names) + " |")
    lines += [
        "", f"Span of the random configurations: **{result['span']:.1f}** rsum "
        f"({result['min']:.1f} to {result['max']:.1f}); the target over {len(result['target'])} "
        f"seeds: {result['target_mean']:.1f} +- **{result['target_std']:.2f}** (std). "
        f"Verdict: {spread_verdict(result)}.", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- pooled

def versus_target(result: dict, name: str) -> dict | None:
    """The design's winner against the target at full fidelity: mean test rsum difference
    and the pooled std of the two (None: either was not retrained over 2+ seeds)."""
    mine, base = result["retrain"].get(name), result["retrain"].get("target (no search)")
    if not mine or not base or min(len(mine["runs"]), len(base["runs"])) < 2:
        return None
    difference = mine["test_rsum_mean"] - base["test_rsum_mean"]
    pooled_std = math.sqrt((mine["test_rsum_std"] ** 2 + base["test_rsum_std"] ** 2) / 2)
    return {"difference": difference, "pooled_std": pooled_std,
            "beats": difference > 2 * pooled_std}


def pooled(results: dict[str, dict]) -> dict:
    """Per design, over every task's paired seeds: wins against random search and the
    speed-up from compute fractions of each task's budget (so tasks of any cost pool), as
    `summarize` defines them for one task; per task: speed-up and winner vs target."""
    first = next(iter(results.values()))
    designs = [n for n in first["summary"] if all(n in r["summary"] for r in results.values())]
    rows = {}
    for name in designs:
        mine, theirs = [], []
        for result in results.values():
            budget, summary = result["budget_flops"], result["summary"]
            for seed, reach in summary[name]["compute_to_reach"].items():
                ref = summary["random"]["compute_to_reach"][seed]
                mine.append(None if reach is None else reach / budget)
                theirs.append(None if ref is None else ref / budget)
        mine_median, theirs_median = _median_or_inf(mine), _median_or_inf(theirs)
        rows[name] = {
            "median_reach_fraction_of_budget": (mine_median if math.isfinite(mine_median)
                                                else None),
            "speedup": (theirs_median / mine_median if 0 < mine_median < math.inf else None),
            "wins": sum(r["summary"][name]["wins"] for r in results.values()),
            "seeds": sum(r["summary"][name]["seeds"] for r in results.values()),
            "speedup_per_task": {t: r["summary"][name]["speedup"] for t, r in results.items()},
            "versus_target": {t: versus_target(r, name) for t, r in results.items()},
        }
    return rows


def pooled_markdown(results: dict[str, dict], rows: dict) -> str:
    """search_benchmark.md of several tasks: the pooled table, then each task's tables."""
    lines = [
        f"# Study designs at equal compute: {len(results)} task(s)", "",
        f"Tasks: {', '.join(f'`{t}`' for t in results)}. Pooled over every task's paired "
        "seeds; compute to reach random search's final best is a fraction of each task's "
        "budget, so tasks of different cost pool. Winner vs target: the design's winner "
        "retrained at full fidelity minus the target's own config (mean test rsum; the "
        "pooled std of the two in brackets; **bold** where the gain exceeds twice it).", "",
        "| design | compute to reach random's final best (median, x budget) | speed-up "
        "| speed-up per task | wins vs random | winner vs target, test rsum per task |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        per_task = ", ".join(_fmt(s, ".2f") if s else "not reached"
                             for s in row["speedup_per_task"].values())
        versus = ", ".join(
            "-" if v is None else
            (f"**{v['difference']:+.1f}**" if v["beats"] else f"{v['difference']:+.1f}")
            + f" ({v['pooled_std']:.1f})" for v in row["versus_target"].values())
        lines.append(
            f"| {name} | {_fmt(row['median_reach_fraction_of_budget'], '.2f')} "
            f"| {_fmt(row['speedup'], '.2f') if row['speedup'] else 'not reached'} "
            f"| {per_task} | {row['wins']} of {row['seeds']} | {versus} |")
    for task, result in results.items():
        lines += ["", markdown(result, title=f"## Task `{task}`")]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- main

class Cache:
    """One JSON file per finished stage; counts the stages this invocation computed.

    definition.json holds the settings the stages depend on; a later invocation whose
    settings differ on a key both record stops (another --out, or delete it)."""

    def __init__(self, out: Path, definition: dict):
        self.out = out
        self.computed = {"budget": 0, "studies": 0, "retrain": 0}
        path = out / "definition.json"
        old = json.loads(path.read_text()) if path.is_file() else {}
        changed = sorted(k for k in definition if k in old and old[k] != definition[k])
        if changed:
            raise ConfigError(f"--out {out} holds a run with other settings "
                              f"({', '.join(changed)}); pass another --out or delete it")
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**old, **definition}, indent=1))

    def has(self, kind: str, name: str) -> bool:
        """Whether the stage is finished (its file exists)."""
        return (self.out / kind / f"{name}.json").is_file()

    def get(self, kind: str, name: str, compute: Callable[[], dict]) -> dict:
        """The stage's cached record, or `compute()` written atomically."""
        path = self.out / kind / f"{name}.json"
        if path.is_file():
            return json.loads(path.read_text())
        record = compute()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=1))
        tmp.replace(path)
        self.computed[kind] += 1
        return record


# Settings by precedence: a flag, then --quick's reductions, then the task file, then FULL.
QUICK = {"seeds": 3, "designs": ["random", "shipped", "tpe"], "budget": Budget(3.0, "trials"),
         "epochs": 5, "max_samples": 500, "max_eval_samples": 100, "retrain_seeds": 2,
         "retrain_epochs": 3, "retrain_max_samples": 1000, "spread_seeds": 2}
FULL = {"seeds": 5, "designs": ["random", "shipped", "tpe", "random-median", "tpe-sha-min2"],
        "budget": Budget(10.0, "trials"), "epochs": None, "max_samples": None,
        "max_eval_samples": None, "retrain_seeds": 3, "retrain_epochs": None,
        "retrain_max_samples": None, "spread_seeds": 3,
        "study_config": str(REPO / "experiments" / "hpo.yaml"),
        "search_space": str(REPO / "experiments" / "search_space.yaml")}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="results and stage cache folder")
    parser.add_argument("--task", action="append", metavar="FILE[,FILE]", help="a task file "
                        "(bench/tasks/*.yaml: study file, search space, budget); repeat or "
                        "separate with commas for several, pooled (results under --out/<name>/)")
    parser.add_argument("--quick", action="store_true", help="a reduced run (<= 10 min here)")
    parser.add_argument("--seeds", type=int, help="study seeds 0..N-1 (default: the task's, "
                        "else 5; quick 3)")
    parser.add_argument("--only-seeds", metavar="LIST", help="comma-separated subset of the "
                        "seeds to run now (processes sharing one --out can split a run)")
    parser.add_argument("--cached-only", action="store_true", help="train no new study: "
                        "report the studies already under --out (a design is compared with "
                        "random search on the seeds both have)")
    parser.add_argument("--designs", help=f"comma-separated, from {', '.join(DESIGNS)} "
                        "(random is always added; default: the task's)")
    parser.add_argument("--budget", help="training compute per study: N (or Nx) full-budget "
                        "trials of the target's own config, or FLOPs such as 3e15flop or "
                        "89.4TFLOP (default: the task's, else 10; quick 3)")
    parser.add_argument("--epochs", type=int, help="per-trial epoch budget (default: the study "
                        "file's)")
    parser.add_argument("--max-samples", type=int, help="training images per trial")
    parser.add_argument("--max-eval-samples", type=int, help="validation images per trial")
    parser.add_argument("--retrain-seeds", type=int, metavar="K",
                        help="seeds per winner at full fidelity (default 3; 0: no retraining)")
    parser.add_argument("--retrain-epochs", type=int, help="reduce the full-fidelity runs "
                        "(retrains and --spread; quick runs)")
    parser.add_argument("--retrain-max-samples", type=int, help="reduce the full-fidelity runs "
                        "(retrains and --spread; quick runs)")
    parser.add_argument("--spread", type=int, metavar="K", help="instead of studies: train K "
                        "random configurations of the space and the target at --spread-seeds "
                        "seeds at full fidelity; spread.md says whether the span of their test "
                        f"rsums is >= {SPREAD_RATIO:g}x the target's seed std")
    parser.add_argument("--spread-seeds", type=int, metavar="N",
                        help="seeds of the target in --spread (default 3; quick 2)")
    parser.add_argument("--study-config", help="study file (default: the task's, else "
                        "experiments/hpo.yaml)")
    parser.add_argument("--search-space", help="search space file (default: the task's, else "
                        "experiments/search_space.yaml)")
    args = parser.parse_args(argv)
    try:
        if args.designs is not None:
            args.designs = check_designs(args.designs, "--designs")
        if args.budget is not None:
            args.budget = parse_budget(args.budget, "--budget")
    except ConfigError as err:
        parser.error(str(err))
    if args.seeds is not None and args.seeds < 1:
        parser.error("--seeds must be >= 1")
    if args.spread is not None and args.spread < 2:
        parser.error("--spread K needs K >= 2 configurations to have a span")
    if args.spread_seeds is not None and args.spread_seeds < 2:
        parser.error("--spread-seeds must be >= 2 (a standard deviation needs two runs)")
    args.task = [p.strip() for arg in args.task or [] for p in arg.split(",") if p.strip()]
    return args


def task_settings(args: argparse.Namespace, task: Task) -> argparse.Namespace:
    """The settings of one task's run: a flag wins, then --quick's reductions (seeds,
    budget, fidelities), then the task file, then the full run's defaults; the task's
    designs win over --quick's list."""
    settings = copy.copy(args)
    quick = QUICK if args.quick else {}
    for key in FULL:
        layers = (task.settings, quick, FULL) if key == "designs" else (quick, task.settings, FULL)
        if getattr(settings, key) is None:
            setattr(settings, key, next(layer[key] for layer in layers if key in layer))
    settings.task = task.name
    return settings


def main(argv: list[str] | None = None) -> dict:
    """Run (or resume) the benchmark; returns what search_benchmark.json (or spread.json)
    holds."""
    args = parse_args(argv)
    try:
        return run(args)
    except ConfigError as err:
        sys.exit(f"error: {err}")


def run(args: argparse.Namespace) -> dict:
    """One run without --task (results at --out's top, as before tasks); with tasks, each
    under --out/<task>/ and the pooled results at --out's top."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    one = run_spread if args.spread else run_task
    if not args.task:
        return one(task_settings(args, Task(None, {})), args.out)
    tasks = [load_task(path) for path in args.task]
    names = [task.name for task in tasks]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"--task: two task files named {twice[0]}.yaml; results are kept "
                          "under --out/<file name>/, so task names must differ")
    results = {task.name: one(task_settings(args, task), args.out / task.name) for task in tasks}
    if args.spread:
        combined = {"tasks": results}
        text = spread_overview(results)
        files = ("spread.json", "spread.md")
    else:
        combined = {"tasks": results, "pooled": pooled(results)}
        text = pooled_markdown(results, combined["pooled"])
        files = ("search_benchmark.json", "search_benchmark.md")
    (args.out / files[0]).write_text(json.dumps(combined, indent=1))
    (args.out / files[1]).write_text(text)
    print(text)
    return combined


def spread_overview(results: dict[str, dict]) -> str:
    """spread.md of several tasks: one summary row each, then each task's table."""
    lines = ["# Do hyperparameters matter? Spread per task", "",
             "| task | random configurations | span of their test rsum | target's seed std "
             "(seeds) | span / std | verdict |", "|---|---|---|---|---|---|"]
    for task, r in results.items():
        lines.append(f"| `{task}` | {len(r['configs'])} | {r['span']:.1f} | "
                     f"{r['target_std']:.2f} ({len(r['target'])}) | {_fmt(r['ratio'], '.1f')} | "
                     f"{'matters' if r['matters'] else 'does not clearly matter'} |")
    for task, r in results.items():
        lines += ["", spread_markdown(r, title=f"## Task `{task}`")]
    return "\n".join(lines)


def make_bench(settings: argparse.Namespace, budget_flops: float = 0.0) -> Bench:
    """The study file, search space and fidelities of `settings`."""
    plan = load_plan(settings.study_config, space=load_search_space(settings.search_space),
                     metric=METRIC)
    plan.check_machine()
    return Bench(plan, plan.space, budget_flops=budget_flops,
                 epochs=settings.epochs or plan.budget,
                 max_samples=settings.max_samples or plan.fidelity.max_samples,
                 max_eval_samples=settings.max_eval_samples or plan.fidelity.max_eval_samples,
                 retrain_epochs=settings.retrain_epochs,
                 retrain_max_samples=settings.retrain_max_samples)


def retrain_fidelity(settings: argparse.Namespace) -> str:
    """Where winners (and --spread's runs) train, in words."""
    if settings.retrain_epochs is None and settings.retrain_max_samples is None:
        return "the target's full fidelity"
    return (f"reduced fidelity ({settings.retrain_epochs or 'target'} epochs, "
            f"{settings.retrain_max_samples or 'all'} training images)")


def run_task(settings: argparse.Namespace, out: Path) -> dict:
    """Studies, curves, retrains and the result files of one task, under `out`."""
    bench = make_bench(settings)
    plan = bench.plan
    definition = {k: getattr(settings, k) for k in (
        "study_config", "search_space", "epochs", "max_samples", "max_eval_samples",
        "retrain_epochs", "retrain_max_samples")}
    definition["budget"] = settings.budget.record()
    cache = Cache(out, definition)
    work = out / "work" / str(os.getpid())  # per process: runs sharing --out each clean their own
    objectives: dict[tuple, Objective] = {}

    def objective_for(design: Design, seed: int) -> Objective:
        definition = bench.definition(design, seed, work)
        base = definition.trial_base
        key = (base.train.epochs, base.data.max_samples, seed)
        if key not in objectives:
            objectives.clear()  # one loaded dataset at a time
            objectives[key] = Objective(definition, f"seed{seed}")
            objectives[key].load_data()
        return objectives[key]

    unit = cache.get("budget", "unit", lambda: {"baseline_trial_flops": baseline_trial_flops(
        bench, objective_for(DESIGNS["shipped"], plan.target.seed).data)})["baseline_trial_flops"]
    bench = replace(bench, budget_flops=settings.budget.flops(unit))
    records: dict[str, dict[int, dict]] = {name: {} for name in settings.designs}
    seeds = range(settings.seeds) if settings.only_seeds is None else [
        int(s) for s in settings.only_seeds.split(",")]
    prefix = f"{settings.task}: " if settings.task else ""
    for seed in seeds:  # seed-major: the designs of a seed share loaded data
        for name in settings.designs:
            design = DESIGNS[name]
            stage = f"{name}_seed{seed}"
            if settings.cached_only and not cache.has("studies", stage):
                continue
            records[name][seed] = cache.get(
                "studies", stage,
                lambda d=design, s=seed: run_study(bench, d, s, objective_for(d, s), work))
            print(f"{prefix}{name} seed {seed}: {len(records[name][seed]['trials'])} trials, "
                  f"{records[name][seed]['wall_s'] / 60:.1f} min", flush=True)
    objectives.clear()
    missing = [name for name, by_seed in records.items() if not by_seed]
    if missing:
        raise ConfigError(f"--cached-only: no finished study of {', '.join(missing)} under {out}")
    curves = {n: {s: anytime_curve(r) for s, r in by_seed.items()} for n, by_seed in records.items()}
    summary = summarize(curves, bench.budget_flops)
    searched = summarize({n: {s: anytime_curve(r, searched_only=True) for s, r in by_seed.items()}
                          for n, by_seed in records.items()}, bench.budget_flops)

    winners = {n: winner(records[n], curves[n], bench.budget_flops) for n in settings.designs}
    base = base_params(bench.space, plan.target)[0]
    if base is not None:
        winners["target (no search)"] = {"params": base}
    retrains = {}
    for name, win in winners.items():
        if win is None:
            continue
        runs = [cache.get("retrain", f"{params_key(win['params'])}_seed{plan.target.seed + k}",
                          lambda w=win, k=k: retrain(bench, w["params"], plan.target.seed + k,
                                                     work / "retrain"))
                for k in range(settings.retrain_seeds)]
        rsums = [r["test"]["rsum"] for r in runs]
        retrains[name] = {**win, "runs": runs,
                          "test_rsum_mean": statistics.fmean(rsums) if rsums else None,
                          "test_rsum_std": statistics.stdev(rsums) if len(rsums) > 1 else 0.0}
    shutil.rmtree(work, ignore_errors=True)

    result = {
        "settings": {"task": settings.task, "seeds": settings.seeds,
                     "designs": settings.designs, "budget": settings.budget.record(),
                     "budget_trials": bench.budget_flops / unit, "epochs": bench.epochs,
                     "max_samples": bench.max_samples, "max_eval_samples": bench.max_eval_samples,
                     "quick": settings.quick, "retrain_seeds": settings.retrain_seeds,
                     "retrain_fidelity": retrain_fidelity(settings),
                     "study_config": settings.study_config, "search_space": settings.search_space},
        "metric": METRIC, "direction": "minimize", "budget_flops": bench.budget_flops,
        "baseline_trial_flops": unit,
        "designs": {n: DESIGNS[n].description for n in settings.designs},
        "studies": {n: {str(s): r for s, r in by_seed.items()} for n, by_seed in records.items()},
        "curves": {n: {str(s): c for s, c in by_seed.items()} for n, by_seed in curves.items()},
        "summary": summary, "summary_searched_only": searched, "retrain": retrains,
        "computed_this_run": cache.computed,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "search_benchmark.json").write_text(json.dumps(result, indent=1))
    (out / "search_benchmark.md").write_text(markdown(result))
    write_plots(curve_bands(curves, bench.budget_flops), out, bench.budget_flops)
    if not settings.task:
        print(markdown(result))
    return result


if __name__ == "__main__":
    main()
