"""The default Optuna study, timed: `python src/optimize.py --trials 50` as a user runs it.

    python bench/bench_optimize.py                     # 50 trials, the CLI defaults
    python bench/bench_optimize.py --retrain-seeds 3   # then --trials 0 --retrain-best --seeds 3
    python bench/bench_optimize.py --trials 10 -- --epochs 4   # extra flags after --

Runs the CLI in a fresh working folder (`--workdir`, default a temporary one that is
kept: runs/, checkpoints/, optuna-results/ land there) and prints:

1. wall time of the whole command (target: <= 12 min for 50 trials on a 2-core CPU)
   and the 1-minute load average sampled during it (the machine may be shared);
2. trials complete / pruned / failed, epochs run against the same trials unpruned
   and the share pruning saved (target: >= 60%);
3. the best trial: val loss and val R-sum at its best epoch, against the baseline
   (the target's own settings, trial 0) and the worst complete trial;
4. the cost of one report rewrite on the finished study: cheap files only, and with
   all plots (and their size on disk);
5. with --retrain-seeds K: best and base config at full fidelity, K seeds each, test
   rsum mean +- std, and whether the difference is larger than the spread.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import optuna  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from cliptune.cli import optimize  # noqa: E402
from cliptune.hpo.report.files import ReportContext, StudyReporter, summarize  # noqa: E402
from cliptune.hpo.search_space import baseline_trial  # noqa: E402
from cliptune.hpo.study import make_storage  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--workdir", help="working folder (default: a new temporary one)")
    parser.add_argument("--retrain-seeds", type=int, default=0, metavar="K",
                        help="afterwards retrain best and base config with K seeds each")
    parser.add_argument("extra", nargs="*", help="more optimize.py flags, after --")
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_optimize_"))
    workdir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(REPO / "src" / "optimize.py"), "--trials", str(args.trials),
               *args.extra]
    print(f"$ (cd {workdir} && {' '.join(command[1:])})", flush=True)
    loads: list[float] = []
    done = threading.Event()

    def sample_load() -> None:
        while not done.wait(10.0):
            loads.append(os.getloadavg()[0])

    threading.Thread(target=sample_load, daemon=True).start()
    start = time.perf_counter()
    subprocess.run(command, cwd=workdir, check=True)
    wall = time.perf_counter() - start
    done.set()
    load = (f"1-min load average median {statistics.median(loads):.2f}, max {max(loads):.2f}"
            if loads else "load not sampled")

    storage = make_storage(None, workdir / "optuna-results", "clip-hpo")
    study = optuna.load_study(study_name="clip-hpo", storage=storage)
    budget = study.user_attrs["epochs"]
    summary = summarize(study, budget)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    best = study.best_trial
    worst = max(complete, key=lambda t: t.value)
    baseline = baseline_trial(study)

    print()
    print(f"1. wall time: {wall / 60:.1f} min for {len(study.trials)} trials "
          f"({wall / max(1, len(study.trials)):.1f} s per trial); {load}")
    print(f"2. trials: {summary.complete} complete, {summary.pruned} pruned, "
          f"{summary.failed} failed; epochs run {summary.epochs_run} of "
          f"{summary.epochs_unpruned} unpruned ({budget} per trial): pruning saved "
          f"{100 * summary.saved_fraction:.0f}%")
    metrics = best.user_attrs.get("metrics", {})
    print(f"3. best trial {best.number}: val_loss {best.value:.4f}, val rsum "
          f"{metrics.get('val_rsum', float('nan')):.1f} (epoch {best.user_attrs.get('best_epoch')}); "
          f"baseline (trial {baseline.number if baseline else '-'}) val_loss "
          f"{baseline.value if baseline and baseline.value is not None else float('nan'):.4f}; "
          f"worst complete trial val_loss {worst.value:.4f}")
    print(f"   params: {json.dumps(best.params)}")

    definition = optimize.build_plan(optimize.parse_args(args.extra))  # what the study ran
    ctx = ReportContext(definition, "clip-hpo", workdir / "bench-report")
    reporter = StudyReporter(ctx, plot_interval_s=float("inf"))
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # as optimize.py does
    timings = {}
    for plots in (False, True):
        t0 = time.perf_counter()
        reporter.write(study, plots=plots)
        timings[plots] = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in (ctx.out_dir / "plots").iterdir()) / 2**20
    print(f"4. report rewrite: {timings[False]:.2f} s cheap files only, {timings[True]:.2f} s "
          f"with all plots ({size:.1f} MiB of plots)")
    if args.retrain_seeds:
        retrain = [sys.executable, str(REPO / "src" / "optimize.py"), "--trials", "0",
                   "--retrain-best", "--seeds", str(args.retrain_seeds), "--quiet", *args.extra]
        print(f"$ (cd {workdir} && {' '.join(retrain[1:])})", flush=True)
        t0 = time.perf_counter()
        subprocess.run(retrain, cwd=workdir, check=True)
        minutes = (time.perf_counter() - t0) / 60
        results = json.loads((workdir / "optuna-results" / "clip-hpo" / "retrain_results.json")
                             .read_text())
        for name, config in results["configs"].items():
            rsums = [f"{run['test']['rsum']:.1f}" for run in config["runs"]]
            r1 = [f"{100 * run['test']['i2t_r1']:.1f}" for run in config["runs"]]
            print(f"5. {name} (trial {config['trial']}): test rsum {config['test_mean']['rsum']:.1f}"
                  f" +- {config['test_std']['rsum']:.1f} (seeds: {', '.join(rsums)}); "
                  f"i2t R@1 {', '.join(r1)}")
        print(f"   {results['verdict']} ({minutes:.1f} min, load now "
              f"{os.getloadavg()[0]:.2f})")
    print(f"workdir: {workdir}")


if __name__ == "__main__":
    main()
