"""bench/bench_search.py end to end on a tiny study: files, curves, speed-up, cache reuse."""

from __future__ import annotations

import importlib.util
import math
import statistics
import sys
from pathlib import Path

from hpo_tiny import write_study_files

REPO = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_search", REPO / "bench" / "bench_search.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_search"] = module
    spec.loader.exec_module(module)
    return module


def _value_at(curve, flops):
    best = None
    for point in curve:
        if point["flops"] <= flops:
            best = point["best"]
    return best


def _reach(curve, target, budget):
    hits = [p["flops"] for p in curve
            if p["flops"] <= budget and p["best"] is not None and p["best"] <= target]
    return min(hits) if hits else math.inf


def test_quick_benchmark_writes_monotone_curves_and_reuses_its_cache(tmp_path, shapes_cache_dir):
    root = tmp_path / "study"
    write_study_files(root, shapes_cache_dir, trial_epochs=3, target_epochs=1, max_samples=32)
    out = tmp_path / "out"
    argv = ["--out", str(out), "--quick", "--seeds", "2", "--designs", "shipped",
            "--budget", "3", "--epochs", "3", "--max-samples", "32", "--max-eval-samples", "16",
            "--retrain-seeds", "1", "--retrain-epochs", "1",
            "--study-config", str(root / "study.yaml"), "--search-space", str(root / "space.yaml")]
    bench = _bench()
    result = bench.main(argv)

    for name in ("search_benchmark.json", "search_benchmark.md", "anytime.html", "anytime.png"):
        assert (out / name).stat().st_size > 0, name
    assert set(result["studies"]) == {"random", "shipped"}  # random is always the reference
    winners = {bench.params_key(r["params"]) for r in result["retrain"].values()}
    assert len(result["retrain"]) == 3  # both designs' winners and the target's own config
    assert result["computed_this_run"] == {"budget": 1, "studies": 4, "retrain": len(winners)}
    budget = result["budget_flops"]
    for name, by_seed in result["curves"].items():
        assert set(by_seed) == {"0", "1"}
        for seed, curve in by_seed.items():
            trials = result["studies"][name][seed]["trials"]
            assert len(curve) == len(trials)
            flops = [p["flops"] for p in curve]
            assert flops == [sum(t["flops"] for t in trials[:i + 1]) for i in range(len(trials))]
            assert all(t["flops"] == t["pairs"] * t["flops_per_pair"] and t["pairs"] ==
                       t["epochs"] * 32 for t in trials)  # 32 images, one caption each
            assert all(0 < t["run_s"] <= t["wall_s"] for t in trials if t["epochs"])
            assert flops[-2] < budget <= flops[-1]  # stopped once the budget was reached
            bests = [p["best"] for p in curve if p["best"] is not None]
            assert bests == sorted(bests, reverse=True)  # val loss: never increases
            assert bests[-1] == min(t["value"] for t in trials if t["value"] is not None)
    shipped = result["studies"]["shipped"]
    assert any(t["state"] == "PRUNED" for r in shipped.values() for t in r["trials"])
    assert all(t["epochs"] == 3 for r in result["studies"]["random"].values()
               for t in r["trials"])  # no pruning

    curves = result["curves"]
    random_final = {s: _value_at(c, budget) for s, c in curves["random"].items()}
    random_reach = statistics.median(_reach(c, random_final[s], budget)
                                     for s, c in curves["random"].items())
    for name, row in result["summary"].items():
        reach = statistics.median(_reach(c, random_final[s], budget)
                                  for s, c in curves[name].items())
        expected = random_reach / reach if math.isfinite(reach) else None
        assert row["speedup"] == expected, name
        assert row["wins"] == sum(_value_at(c, budget) < random_final[s]
                                  for s, c in curves[name].items())
    assert result["summary"]["random"]["speedup"] == 1.0
    for name, row in result["summary_searched_only"].items():  # the baseline's value left out
        for seed, record in result["studies"][name].items():
            trials = record["trials"]
            assert trials[0]["baseline"] and not any(t["baseline"] for t in trials[1:])
            within = [t for i, t in enumerate(trials)
                      if sum(u["flops"] for u in trials[:i + 1]) <= budget]
            values = [t["value"] for t in within[1:] if t["value"] is not None]
            assert row["final_best"][seed] == (min(values) if values else None), (name, seed)
    assert result["retrain"]["shipped"]["runs"][0]["test"]["rsum"] >= 0

    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.json") if p.parent != out}
    again = bench.main(argv)
    assert again["computed_this_run"] == {"budget": 0, "studies": 0, "retrain": 0}
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert again["summary"] == result["summary"]

    (out / "studies" / "shipped_seed1.json").unlink()  # as if another process had not finished
    partial = bench.main(argv + ["--cached-only"])
    assert partial["computed_this_run"]["studies"] == 0
    assert set(partial["curves"]["shipped"]) == {"0"} and set(partial["curves"]["random"]) == {"0", "1"}
    row = partial["summary"]["shipped"]
    assert row["seeds"] == 1 and set(row["final_best"]) == {"0"}  # paired on the seed both have
    assert row["final_best"]["0"] == result["summary"]["shipped"]["final_best"]["0"]
