"""The default Optuna study, timed: `python src/optimize.py --trials 50` as a user runs it.

    python bench/bench_optimize.py                     # 50 trials, the CLI defaults
    python bench/bench_optimize.py --trials 10 -- --epochs 4   # extra flags after --

Runs the CLI in a fresh working folder (`--workdir`, default a temporary one that is
kept: runs/, checkpoints/, optuna-results/ land there) and prints:

1. wall time of the whole command (target: <= 20 min for 50 trials on a 2-core CPU);
2. trials complete / pruned / failed, epochs run against the same trials unpruned
   and the share pruning saved (target: >= 50%);
3. the best trial: val loss and val R-sum at its best epoch, against the worst complete
   trial and the first epoch of every trial (is the search finding something?);
4. the cost of one report rewrite on the finished study: cheap files only, and with
   all plots.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import optuna  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from cliptune.hpo.reports import ReportContext, StudyReporter, summarize  # noqa: E402
from cliptune.hpo.study import make_storage  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--workdir", help="working folder (default: a new temporary one)")
    parser.add_argument("extra", nargs="*", help="more optimize.py flags, after --")
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_optimize_"))
    workdir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(REPO / "src" / "optimize.py"), "--trials", str(args.trials),
               *args.extra]
    print(f"$ (cd {workdir} && {' '.join(command[1:])})", flush=True)
    start = time.perf_counter()
    subprocess.run(command, cwd=workdir, check=True)
    wall = time.perf_counter() - start

    storage = make_storage(None, workdir / "optuna-results", "clip-hpo")
    study = optuna.load_study(study_name="clip-hpo", storage=storage)
    budget = study.user_attrs["epochs"]
    summary = summarize(study, budget)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    best = study.best_trial
    worst = max(complete, key=lambda t: t.value)
    first_epoch = [t.intermediate_values[1] for t in study.trials if 1 in t.intermediate_values]

    print()
    print(f"1. wall time: {wall / 60:.1f} min for {len(study.trials)} trials "
          f"({wall / max(1, len(study.trials)):.1f} s per trial)")
    print(f"2. trials: {summary.complete} complete, {summary.pruned} pruned, "
          f"{summary.failed} failed; epochs run {summary.epochs_run} of "
          f"{summary.epochs_unpruned} unpruned ({budget} per trial): pruning saved "
          f"{100 * summary.saved_fraction:.0f}%")
    metrics = best.user_attrs.get("metrics", {})
    print(f"3. best trial {best.number}: val_loss {best.value:.4f}, val rsum "
          f"{metrics.get('val_rsum', float('nan')):.1f} (epoch {best.user_attrs.get('best_epoch')}); "
          f"worst complete trial val_loss {worst.value:.4f}; epoch-1 val_loss of all trials "
          f"{min(first_epoch):.3f}..{max(first_epoch):.3f}")
    print(f"   params: {json.dumps(best.params)}")

    ctx = ReportContext(study_name="clip-hpo", out_dir=workdir / "bench-report", metric="val_loss",
                        budget=budget)
    reporter = StudyReporter(ctx, plot_interval_s=float("inf"))
    timings = {}
    for plots in (False, True):
        t0 = time.perf_counter()
        reporter.write(study, plots=plots)
        timings[plots] = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in (ctx.out_dir / "plots").iterdir()) / 2**20
    print(f"4. report rewrite: {timings[False]:.2f} s cheap files only, {timings[True]:.2f} s "
          f"with all plots ({size:.0f} MiB of plots)")
    print(f"workdir: {workdir}")


if __name__ == "__main__":
    main()
