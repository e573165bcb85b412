"""Does the study's reduced fidelity rank configurations as the full one does?

`python src/optimize.py --check-fidelity K` draws K configurations from the search
space (seeded; the target's own settings first, when the space holds them), trains
each twice: at the study's trial fidelity (`StudyDefinition.trial_base`: its subset,
all its epochs, the validation metric at every epoch) and at the target's full fidelity
(`StudyDefinition.target`: all its data, its epochs). It then measures how well the first
ranks the second: Spearman and Kendall correlation with a seeded bootstrap 95%
interval over the K pairs, and the overlap of the two top-3 sets; for the final
(best-epoch) value and for the value at each rung the pruner judges trials at.

Results: `optuna-results/<study>/fidelity_check.{json,md}`. Every trained run is
cached in `optuna-results/<study>/fidelity_check/` (a JSON per run, named by its
config), and runs resume from their checkpoints, so an interrupted check continues.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
import warnings
from pathlib import Path

import numpy as np
import optuna
from scipy import stats

from cliptune.config import RunConfig, config_to_dict
from cliptune.data import PreparedData
from cliptune.errors import ConfigError
from cliptune.files import write_atomic
from cliptune.hpo.definition import CALLBACK_KEYS, StudyDefinition, StudySettings, driver_seed
from cliptune.hpo.design import GOOD_SPEARMAN
from cliptune.hpo.objective import data_key
from cliptune.hpo.report.files import FIDELITY_CHECK, fmt, table
from cliptune.hpo.search_space import SearchSpace, base_params
from cliptune.hpo.study import METRICS, pruner_rungs
from cliptune.trainer import Trainer

CACHE_DIR = "fidelity_check"  # one JSON per trained run
BOOTSTRAP_RESAMPLES = 1000
TOP = 3


def draw_configurations(space: SearchSpace, target: RunConfig, k: int,
                        seed: int) -> list[dict]:
    """`k` parameter sets: the target's own values first (when the space holds them),
    then seeded random draws from the space."""
    if k < 2:
        raise ConfigError(f"--check-fidelity needs at least 2 configurations, got {k}")
    drawn, _ = base_params(space, target)
    params = [drawn] if drawn is not None else []
    draws = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    while len(params) < k:
        params.append(space.suggest(draws.ask()))
    return params


def _ranks_top(values: np.ndarray, minimize: bool, top: int) -> set[int]:
    order = np.argsort(values if minimize else -values, kind="stable")
    return set(order[:top].tolist())


@contextlib.contextmanager
def _quiet_ties():
    """Tied inputs make a correlation undefined (NaN); that is handled, not warned about."""
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        yield


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    return float(stats.spearmanr(x, y).statistic)


def _kendall(x: np.ndarray, y: np.ndarray) -> float:
    return float(stats.kendalltau(x, y).statistic)


def bootstrap_interval(x, y, statistic, resamples: int = BOOTSTRAP_RESAMPLES,
                       seed: int = 0) -> list[float] | None:
    """Percentile 95% interval of `statistic(x, y)` over `resamples` resamples of the
    pairs (with replacement, seeded). Resamples where the statistic is undefined (all
    values tied, which happens often with few pairs) are dropped, which is why this is
    not `scipy.stats.bootstrap` (its percentiles turn NaN). None when none is defined."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    rng = np.random.default_rng(seed)
    values = []
    with _quiet_ties():
        for _ in range(resamples):
            pick = rng.integers(0, len(x), len(x))
            value = statistic(x[pick], y[pick])
            if math.isfinite(value):
                values.append(value)
    if not values:
        return None
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


def rank_agreement(reduced, full, minimize: bool, *, resamples: int = BOOTSTRAP_RESAMPLES,
                   seed: int = 0, top: int = TOP) -> dict:
    """How well `reduced` values rank configurations as `full` values do (paired lists):
    Spearman and Kendall with bootstrap intervals, and the top-`top` overlap."""
    x, y = np.asarray(reduced, dtype=float), np.asarray(full, dtype=float)
    if len(x) != len(y) or len(x) < 2:
        raise ValueError("rank_agreement needs two paired lists of at least 2 values")
    with _quiet_ties():
        spearman, kendall = _spearman(x, y), _kendall(x, y)
    top = min(top, len(x))
    overlap = len(_ranks_top(x, minimize, top) & _ranks_top(y, minimize, top))
    return {"n": len(x), "spearman": spearman, "kendall": kendall,
            "spearman_95": bootstrap_interval(x, y, _spearman, resamples, seed),
            "kendall_95": bootstrap_interval(x, y, _kendall, resamples, seed),
            "top": top, "top_overlap": overlap}


def _run_name(study: str, kind: str, index: int, config: RunConfig) -> str:
    data = config_to_dict(config)
    data.pop("name")
    digest = hashlib.sha1(json.dumps(data, sort_keys=True).encode()).hexdigest()[:8]
    return f"{study}/fidelity_check/{kind}_{index:02d}_{digest}"


class FidelityCheck:
    """Trains the configurations (cached) and writes the report."""

    def __init__(self, settings: StudySettings, definition: StudyDefinition,
                 configurations: int):
        definition.check_machine()
        self.s = settings
        self.definition = definition
        self.configurations = configurations
        self.seed = driver_seed(settings, definition)  # draws of the configurations, the bootstrap
        self.out_dir = Path(settings.results_dir) / settings.study_name
        self.cache = self.out_dir / CACHE_DIR
        self.key = CALLBACK_KEYS[definition.metric]
        self.minimize = METRICS[definition.metric] == "minimize"
        # the rungs checked; a bad --min-epochs fails now, not after the training
        self.rungs = pruner_rungs(settings.pruner, definition.budget, settings.min_epochs)
        self._data: dict[str, PreparedData] = {}

    def _say(self, line: str) -> None:
        if self.s.show_progress:
            print(line, flush=True)

    def train(self, kind: str, index: int, base: RunConfig, params: dict, label: str) -> dict:
        """Train `base + params` (or read its cached result): the metric at every epoch."""
        config = self.definition.space.apply(base, params)
        config.train.best_metric = self.key
        config.train.save_last = True  # an interrupted check resumes the run
        config.name = _run_name(self.s.study_name, kind, index, config)
        cached = self.cache / f"{Path(config.name).name}.json"
        if cached.is_file():
            self._say(f"{label}: cached ({cached})")
            return json.loads(cached.read_text(encoding="utf-8"))
        self._say(f"{label}: training {config.train.epochs} epochs as run {config.name!r}")
        start = time.perf_counter()
        trainer = Trainer(config, data=self._data.get(data_key(config)), show_progress=False,
                          resume="auto", hparams_extra={"fidelity_check": kind, "index": index})
        self._data[data_key(config)] = trainer.prepare_data()
        trainer.fit()
        values = [m[self.key] for m in trainer.history]
        finite = [v for v in values if math.isfinite(v)] or [math.nan]
        result = {"params": params, "run": config.name, "values": values,
                  "best": (min if self.minimize else max)(finite),
                  "train_images": len(trainer.data.train),
                  "epochs": config.train.epochs, "seconds": time.perf_counter() - start}
        self.cache.mkdir(parents=True, exist_ok=True)
        write_atomic(cached, json.dumps(result, indent=2) + "\n")
        self._say(f"{label}: {self.definition.metric} {result['best']:.4f} "
                  f"({result['seconds']:.0f} s)")
        return result

    def run(self) -> dict:
        """Train every configuration at both fidelities; write and return the results."""
        d = self.definition
        drawn = draw_configurations(d.space, d.target, self.configurations, self.seed)
        rows = []
        for i, params in enumerate(drawn):
            head = f"fidelity check {i + 1}/{len(drawn)}"
            rows.append({
                "index": i, "params": params,
                "reduced": self.train("reduced", i, d.trial_base, params,
                                      f"{head}, trial fidelity"),
                "full": self.train("full", i, d.target, params, f"{head}, full fidelity"),
            })
        payload = self.summarize(rows)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.out_dir / f"{FIDELITY_CHECK}.json", json.dumps(payload, indent=2)
                          + "\n")
        write_atomic(self.out_dir / f"{FIDELITY_CHECK}.md", check_markdown(payload))
        return payload

    def summarize(self, rows: list[dict]) -> dict:
        """The agreement of the final value and of each rung with the full fidelity."""
        full = [r["full"]["best"] for r in rows]
        d = self.definition
        levels = {"final": [r["reduced"]["best"] for r in rows]}
        for rung in self.rungs:
            levels[f"epoch {rung}"] = [r["reduced"]["values"][rung - 1]
                                       if len(r["reduced"]["values"]) >= rung else math.nan
                                       for r in rows]
        agreement = {}
        for name, values in levels.items():
            keep = [i for i, v in enumerate(values) if math.isfinite(v) and math.isfinite(full[i])]
            if len(keep) >= 2:
                agreement[name] = rank_agreement([values[i] for i in keep],
                                                 [full[i] for i in keep], self.minimize,
                                                 seed=self.seed)
        return {
            "study": self.s.study_name, "metric": d.metric, "direction": METRICS[d.metric],
            "seed": self.seed, "pruner": self.s.pruner, "rungs": self.rungs,
            "reduced_fidelity": {"epochs": d.budget, "max_samples": d.fidelity.max_samples,
                                 "max_eval_samples": d.fidelity.max_eval_samples},
            "full_fidelity": {"target": d.target_path, "epochs": d.target.train.epochs,
                              "max_samples": d.target.data.max_samples},
            "configurations": rows, "agreement": agreement,
        }


def _interval(value: list[float] | None) -> str:
    return f"[{value[0]:+.2f}, {value[1]:+.2f}]" if value else "-"


def advice(payload: dict) -> list[str]:
    """What the check suggests, in words: a better trial fidelity, or a later first rung."""
    agreement = payload["agreement"]
    final = agreement.get("final")
    if final is None:
        return []
    if not final["spearman"] >= GOOD_SPEARMAN:  # also NaN: no ranking at all
        return [f"The trial fidelity ranks configurations poorly (Spearman "
                f"{final['spearman']:.2f} < {GOOD_SPEARMAN}): give the trials more data or "
                f"epochs (--max-samples, --epochs) before trusting a study's winner."]
    rungs = [(epoch, agreement[f"epoch {epoch}"]["spearman"]) for epoch in payload["rungs"]
             if f"epoch {epoch}" in agreement]
    poor = [(epoch, rho) for epoch, rho in rungs if not rho >= GOOD_SPEARMAN]
    if not poor:
        return [f"The trial fidelity and the pruner's rungs rank as the full run does "
                f"(Spearman >= {GOOD_SPEARMAN})."]
    good_after = [epoch for epoch, rho in rungs if epoch > poor[-1][0] and rho >= GOOD_SPEARMAN]
    text = (f"The rung(s) at epoch {', '.join(str(e) for e, _ in poor)} rank poorly (Spearman "
            f"{', '.join(f'{rho:.2f}' for _, rho in poor)} < {GOOD_SPEARMAN}): trials judged "
            f"there are pruned for starting slowly, not for being worse.")
    if good_after:
        text += (f" Epoch {good_after[0]} ranks well: the study's trials are judged from "
                 f"there on (`--pruner auto`, the default, reads this check; with another "
                 f"pruner `--min-epochs {good_after[0]}`): more compute per trial, fewer "
                 f"trials in the same time.")
    return [text]


def check_markdown(payload: dict) -> str:
    """The text of fidelity_check.md."""
    metric, red, full = payload["metric"], payload["reduced_fidelity"], payload["full_fidelity"]
    rungs = ", ".join(map(str, payload["rungs"])) or "none"
    out = [f"# Fidelity check of study `{payload['study']}`", "",
           f"{len(payload['configurations'])} configurations (seed {payload['seed']}) trained at "
           f"the trial fidelity ({red['epochs']} epochs, {red['max_samples'] or 'all'} training / "
           f"{red['max_eval_samples'] or 'all'} validation images) and at the target's full "
           f"fidelity (`{full['target']}`, {full['epochs']} epochs, "
           f"{full['max_samples'] or 'all'} training images); {metric} = the best validation "
           f"epoch. Pruner {payload['pruner']}, rungs at epoch(s) {rungs}.", "",
           "## How well the trial fidelity ranks the full one", "",
           "Correlations between the two rankings (1: the same order; 0: unrelated), with a "
           f"bootstrap 95% interval ({BOOTSTRAP_RESAMPLES} resamples of the pairs), and how "
           "many of the full fidelity's top configurations the trial fidelity also puts on top.",
           ""]
    out += table(["trial-fidelity value", "configs", "Spearman", "95% interval", "Kendall",
                  "95% interval", "top overlap"],
                 [[name, str(a["n"]), f"{a['spearman']:.2f}", _interval(a["spearman_95"]),
                   f"{a['kendall']:.2f}", _interval(a["kendall_95"]),
                   f"{a['top_overlap']}/{a['top']}"]
                  for name, a in payload["agreement"].items()])
    out += ["", *advice(payload)]
    rows = payload["configurations"]
    names = sorted({n for r in rows for n in r["params"]})
    out += ["", "## Configurations", "",
            *table(["#", *names, f"{metric} (trial)", f"{metric} (full)", "minutes (trial / full)"],
                   [[str(r["index"]), *(fmt(r["params"].get(n, "")) for n in names),
                     f"{r['reduced']['best']:.4f}", f"{r['full']['best']:.4f}",
                     f"{r['reduced']['seconds'] / 60:.1f} / {r['full']['seconds'] / 60:.1f}"]
                    for r in rows]), ""]
    return "\n".join(out)


def summary_lines(payload: dict) -> list[str]:
    """The check in a few console lines."""
    lines = [f"fidelity check: {len(payload['configurations'])} configurations, trial vs full "
             f"fidelity ({payload['metric']}):"]
    for name, a in payload["agreement"].items():
        lines.append(f"  {name}: Spearman {a['spearman']:.2f} {_interval(a['spearman_95'])}, "
                     f"Kendall {a['kendall']:.2f} {_interval(a['kendall_95'])}, "
                     f"top-{a['top']} overlap {a['top_overlap']}/{a['top']}")
    return lines + [f"  {line}" for line in advice(payload)]


def check_fidelity(settings: StudySettings, definition: StudyDefinition,
                   configurations: int) -> dict:
    """Run the fidelity check of `configurations` draws (see the module docstring) of the
    study `definition`; returns fidelity_check.json's content."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # our own lines say what happened
    return FidelityCheck(settings, definition, configurations).run()
