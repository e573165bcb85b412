"""bench/bench_search.py's benchmark tasks: task files, their precedence, results per task
and pooled, the shipped tasks, and the --spread mode."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import yaml
from hpo_tiny import SPACE, write_study_files
from test_bench_search import _bench as load_bench_search

from cliptune.config import load_config
from cliptune.errors import ConfigError
from cliptune.hpo.definition import load_plan
from cliptune.hpo.search_space import base_params, load_search_space

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    return load_bench_search()


def _task(root: Path, cache_dir: Path, name: str = "tiny", space: dict | None = None,
          **fields) -> Path:
    """root/<name>.yaml naming root/<name>/{study,space}.yaml (the tiny study of hpo_tiny)."""
    write_study_files(root / name, cache_dir, trial_epochs=1, target_epochs=1, max_samples=32)
    if space is not None:
        (root / name / "space.yaml").write_text(yaml.safe_dump(space))
    data = {"study_config": f"{name}/study.yaml", "search_space": f"{name}/space.yaml",
            "budget": 2, "designs": ["random"], "seeds": 1, **fields}
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_tasks_run_in_quick_mode_keyed_by_task_and_pooled(bench, tmp_path, shapes_cache_dir):
    tiny = _task(tmp_path, shapes_cache_dir)
    lr_only = {"parameters": {"lr": SPACE["parameters"]["lr"]}}
    other = _task(tmp_path, shapes_cache_dir, "other", space=lr_only)
    out = tmp_path / "out"
    argv = ["--out", str(out), "--quick", "--task", f"{tiny},{other}", "--budget", "1", "--seeds", "1",
            "--epochs", "1", "--max-samples", "32", "--max-eval-samples", "16",
            "--retrain-seeds", "0"]
    result = bench.main(argv)

    assert set(result["tasks"]) == {"tiny", "other"}
    for name, params in (("tiny", {"lr", "depth", "head_dim"}), ("other", {"lr"})):
        task = result["tasks"][name]
        assert (out / name / "studies" / "random_seed0.json").is_file()  # keyed by task
        assert (out / name / "search_benchmark.md").is_file()
        settings = task["settings"]
        assert settings["search_space"] == str((tmp_path / name / "space.yaml").resolve())
        assert settings["study_config"] == str((tmp_path / name / "study.yaml").resolve())
        assert settings["designs"] == ["random"]  # the task's, not --quick's list
        assert set(task["studies"]["random"]) == {"0"}
        for record in task["studies"]["random"].values():
            trials = record["trials"]
            assert all(set(t["params"]) == params for t in trials)  # the task's space
            assert trials[0]["baseline"] and trials[0]["params"]["lr"] == 5e-4  # its target
            assert len(trials) == 1  # --budget 1 beats the task's: the baseline trial only
    pooled = result["pooled"]["random"]
    assert pooled["seeds"] == 2 and pooled["wins"] == 0 and pooled["speedup"] == 1.0
    text = (out / "search_benchmark.md").read_text()
    assert "2 task(s)" in text and "## Task `tiny`" in text and "## Task `other`" in text
    assert json.loads((out / "search_benchmark.json").read_text())["pooled"] == result["pooled"]

    again = bench.main(argv)
    assert [r["computed_this_run"]["studies"] for r in again["tasks"].values()] == [0, 0]


def test_flags_override_the_task_and_budget_units(bench, tmp_path, shapes_cache_dir):
    path = _task(tmp_path, shapes_cache_dir, budget="12.5x", designs="shipped", seeds=4)
    task = bench.load_task(path)
    assert task.name == "tiny"

    def settings(*flags):
        return bench.task_settings(bench.parse_args(["--out", "o", *flags]), task)

    plain = settings()
    assert plain.budget == bench.Budget(12.5, "trials") and plain.seeds == 4
    assert plain.designs == ["random", "shipped"]
    assert plain.study_config == str((tmp_path / "tiny" / "study.yaml").resolve())
    quick = settings("--quick")  # its reductions beat the task, its design list does not
    assert quick.seeds == 3 and quick.budget == bench.Budget(3.0, "trials")
    assert quick.epochs == 5 and quick.designs == ["random", "shipped"]
    space = tmp_path / "elsewhere.yaml"
    flags = settings("--budget", "3e12flop", "--seeds", "2", "--designs", "tpe",
                     "--search-space", str(space))
    assert flags.budget == bench.Budget(3e12, "FLOP") and flags.seeds == 2
    assert flags.designs == ["random", "tpe"] and flags.search_space == str(space)
    assert flags.study_config == plain.study_config  # what no flag set stays the task's
    assert settings("--budget", "89.4TFLOP").budget.flops(1.0) == pytest.approx(8.94e13)
    assert settings("--budget", "3").budget.flops(7.0) == 21.0
    assert bench.task_settings(bench.parse_args(["--out", "o"]), bench.Task(None, {})
                               ).study_config == str(REPO / "experiments" / "hpo.yaml")

    with pytest.raises(ConfigError, match=r"--budget: 3e15 would be .* write 3e15flop"):
        bench.parse_budget("3e15", "--budget")
    for bad in ("0", "ten", "5 trials", True):
        with pytest.raises(ConfigError, match="expected a positive number"):
            bench.parse_budget(bad, "--budget")


@pytest.mark.parametrize("change, message", [
    ({"budget": None}, r"tiny\.yaml: missing key\(s\) budget"),
    ({"fidelity": {"epochs": 3}}, r"tiny\.yaml: unknown key\(s\) fidelity"),
    ({"search_space": "nope.yaml"}, r"tiny\.yaml: search_space: file not found: .*nope\.yaml"),
    ({"designs": ["shipped", "bohb"]}, r"tiny\.yaml: designs: unknown design\(s\) bohb"),
    ({"seeds": 0}, r"tiny\.yaml: seeds: expected a positive whole number"),
])
def test_bad_task_file_names_file_and_key(bench, tmp_path, shapes_cache_dir, change, message):
    path = _task(tmp_path, shapes_cache_dir)
    data = {**yaml.safe_load(path.read_text()), **change}
    path.write_text(yaml.safe_dump({k: v for k, v in data.items() if v is not None}))
    with pytest.raises(ConfigError, match=message):
        bench.load_task(path)
    with pytest.raises(SystemExit, match="^error: .*" + message):  # the user's message
        bench.main(["--out", str(tmp_path / "out"), "--task", str(path)])


def test_missing_task_file_is_named(bench, tmp_path):
    with pytest.raises(ConfigError, match=r"--task: file not found: .*absent\.yaml"):
        bench.load_task(tmp_path / "absent.yaml")


def test_shipped_tasks_are_untuned_valid_and_cover_their_regimes(bench):
    tasks = {p.stem: bench.load_task(p) for p in sorted((REPO / "bench" / "tasks").glob("*.yaml"))}
    assert {"small-data", "larger-model", "recipe"} <= set(tasks)
    default = load_config(REPO / "experiments" / "default.yaml")
    plans, spaces = {}, {}
    for name, task in tasks.items():
        space = spaces[name] = load_search_space(task.settings["search_space"])
        plan = plans[name] = load_plan(task.settings["study_config"], space=space)  # checks it
        params, why = base_params(space, plan.target)
        assert params is not None, (name, why)  # the target is the baseline trial
        assert plan.target.data.source == "shapes"  # runs anywhere
        assert (plan.target.train.lr, plan.target.model.init_temperature) != (
            default.train.lr, default.model.init_temperature), name  # not the tuned default
    small = plans["small-data"].target
    assert 1000 <= small.data.max_samples <= 1500 and small.train.epochs >= 30
    large = plans["larger-model"].target.model
    assert large.image_size > default.model.image_size
    assert large.vision_width > default.model.vision_width
    levers = {key for p in spaces["recipe"].parameters for key in p.targets}
    assert {"train.loss", "model.patch_dropout", "train.accum_features",
            "train.grad_accum_steps", "data.crop_scale_min"} <= levers


def test_spread_mode_writes_its_table_and_reuses_its_runs(bench, tmp_path, shapes_cache_dir):
    path = _task(tmp_path, shapes_cache_dir)
    out = tmp_path / "out"
    argv = ["--out", str(out), "--task", str(path), "--spread", "2", "--spread-seeds", "2",
            "--retrain-epochs", "1"]
    result = bench.main(argv)["tasks"]["tiny"]

    configs = [r["test"]["rsum"] for r in result["configs"]]
    target = [r["test"]["rsum"] for r in result["target"]]
    assert len(configs) == 2 and [r["seed"] for r in result["target"]] == [0, 1]
    assert [r["params"] for r in result["configs"]] == bench.spread_configs(
        load_search_space(tmp_path / "tiny" / "space.yaml"), 2)
    assert result["configs"][0]["params"] != result["configs"][1]["params"]
    assert all(r["epochs"] == 1 for r in result["configs"] + result["target"])
    assert result["span"] == max(configs) - min(configs)
    assert result["target_std"] == pytest.approx(statistics.stdev(target))
    assert result["matters"] == (result["span"] >= 5 * result["target_std"])
    text = (out / "tiny" / "spread.md").read_text()
    for row in ("| random 1 |", "| random 2 |", "| target, seed 0 |", "| target, seed 1 |"):
        assert row in text
    assert f"{result['span']:.1f}" in text
    assert "| `tiny` | 2 |" in (out / "spread.md").read_text()
    assert result["computed_this_run"]["retrain"] == 4

    space = load_search_space(tmp_path / "tiny" / "space.yaml")
    assert bench.spread_configs(space, 3)[:2] == bench.spread_configs(space, 2)  # K grows
    again = bench.main(argv)["tasks"]["tiny"]
    assert again["computed_this_run"]["retrain"] == 0 and again["span"] == result["span"]
