"""The fidelity check: rank statistics on known numbers, rungs, and a tiny end-to-end check."""

from __future__ import annotations

import pytest
from hpo_tiny import SPACE, read_json, write_study_files

from cliptune.cli import optimize
from cliptune.errors import ConfigError
from cliptune.hpo.fidelity_check import (
    advice,
    bootstrap_interval,
    draw_configurations,
    rank_agreement,
)
from cliptune.hpo.search_space import search_space_from_dict
from cliptune.hpo.study import pruner_rungs


def test_rank_agreement_of_known_rankings():
    same = rank_agreement([1, 2, 3, 4, 5], [10, 20, 30, 40, 50], minimize=True)
    assert (same["spearman"], same["kendall"]) == pytest.approx((1.0, 1.0))
    assert same["top_overlap"] == 3
    # every defined resample is perfectly ordered
    assert same["spearman_95"] == pytest.approx([1.0, 1.0])
    reverse = rank_agreement([1, 2, 3, 4, 5], [5, 4, 3, 2, 1], minimize=True)
    assert (reverse["spearman"], reverse["kendall"]) == pytest.approx((-1.0, -1.0))
    assert reverse["top_overlap"] == 1  # only the middle one is in both top-3 sets
    # two swapped neighbours: sum d^2 = 4 -> 1 - 6*4/(5*24) = 0.8; 2 of 10 pairs discordant
    swapped = rank_agreement([1, 2, 3, 4, 5], [1, 3, 2, 5, 4], minimize=True)
    assert swapped["spearman"] == pytest.approx(0.8)
    assert swapped["kendall"] == pytest.approx(0.6)
    assert swapped["top_overlap"] == 3
    assert rank_agreement([1, 2, 3, 4, 5], [1, 3, 2, 5, 4], minimize=False)["top_overlap"] == 2


def test_bootstrap_interval_is_seeded_and_brackets_the_estimate():
    x, y = [1, 2, 3, 4, 5, 6, 7, 8], [2, 1, 4, 3, 6, 5, 8, 7]
    spearman = rank_agreement(x, y, minimize=True)
    low, high = spearman["spearman_95"]
    assert -1 <= low < spearman["spearman"] < high <= 1
    assert rank_agreement(x, y, minimize=True, seed=0)["spearman_95"] == [low, high]
    assert rank_agreement(x, y, minimize=True, seed=1)["spearman_95"] != [low, high]
    # all values tied: the statistic is never defined
    assert bootstrap_interval([1, 1, 1], [1, 2, 3], lambda a, b: float("nan")) is None


def test_rungs_follow_the_pruner():
    assert pruner_rungs("hyperband", 12) == [1, 5]  # the CPU study: 12 epochs, factor 5
    assert pruner_rungs("hyperband", 5) == [1]  # the GPU study: epoch 1, then the end
    assert pruner_rungs("sha", 30) == [1, 5, 25]
    assert pruner_rungs("median", 4) == [1, 2, 3]
    assert pruner_rungs("none", 12) == []
    assert pruner_rungs("hyperband", 12, min_epochs=5) == [5]  # --min-epochs 5
    assert pruner_rungs("sha", 30, min_epochs=2) == [2, 10]
    assert pruner_rungs("median", 4, min_epochs=2) == [2, 3]
    with pytest.raises(ConfigError, match="--min-epochs"):
        pruner_rungs("sha", 12, min_epochs=12)


def _agreement(**spearman: float) -> dict:
    """A fidelity_check.json payload with these Spearman values ("epoch_5": rung 5)."""
    return {"rungs": [int(name.split("_")[1]) for name in spearman if name != "final"],
            "agreement": {name.replace("_", " "): {"spearman": rho}
                          for name, rho in spearman.items()}}


def test_advice_names_the_first_rung_that_ranks_well():
    # the measured CPU study (docs/BENCHMARKS.md): epoch 1 ranks poorly, epoch 5 well
    (line,) = advice(_agreement(final=0.95, epoch_1=0.29, epoch_5=0.95))
    assert "rung(s) at epoch 1 rank poorly (Spearman 0.29 < 0.7)" in line
    assert "`--min-epochs 5`" in line
    (line,) = advice(_agreement(final=0.95, epoch_1=0.29, epoch_5=0.5))
    assert "epoch 1, 5 rank poorly" in line and "--min-epochs" not in line
    (line,) = advice(_agreement(final=0.95, epoch_1=0.8, epoch_5=0.5, epoch_25=0.9))
    assert "epoch 5 rank poorly" in line and "`--min-epochs 25`" in line
    (line,) = advice(_agreement(final=0.9, epoch_1=0.8, epoch_5=0.9))
    assert "rank as the full run does" in line
    (line,) = advice(_agreement(final=0.4, epoch_1=0.9))
    assert "--max-samples, --epochs" in line
    (line,) = advice(_agreement(final=float("nan")))
    assert "ranks configurations poorly" in line
    assert advice({"rungs": [], "agreement": {}}) == []


def test_configurations_start_with_the_target_and_are_seeded(tmp_path, cache_dir):
    from hpo_tiny import target_config

    space, target = search_space_from_dict(SPACE), target_config(tmp_path, cache_dir)
    drawn = draw_configurations(space, target, 4, seed=1)
    assert drawn[0] == {"lr": 5e-4, "depth": 1, "head_dim": 16}
    assert drawn == draw_configurations(space, target, 4, seed=1) != draw_configurations(
        space, target, 4, seed=2)
    with pytest.raises(ConfigError, match="--check-fidelity"):
        draw_configurations(space, target, 1, seed=1)


def test_check_fidelity_end_to_end_writes_resumes_and_is_linked(tmp_path, cache_dir, capsys):
    flags = write_study_files(tmp_path, cache_dir, trial_epochs=2, target_epochs=2,
                              max_samples=24) + [
        "--study-name", "fc", "--pruner", "sha"]
    assert optimize.run(flags + ["--check-fidelity", "3"]) == 0
    out = tmp_path / "results" / "fc"
    payload = read_json(out / "fidelity_check.json")
    assert payload["rungs"] == [1] and set(payload["agreement"]) == {"final", "epoch 1"}
    rows = payload["configurations"]
    assert len(rows) == 3 and rows[0]["params"]["lr"] == pytest.approx(5e-4)
    for row in rows:  # the trial fidelity saw the subset, the full one all 48 images
        assert (row["reduced"]["train_images"], row["full"]["train_images"]) == (24, 48)
        assert len(row["reduced"]["values"]) == 2 == len(row["full"]["values"])
        assert row["reduced"]["best"] == min(row["reduced"]["values"])
    final = payload["agreement"]["final"]
    assert final["n"] == 3 and -1 <= final["spearman"] <= 1 and final["top"] == 3
    text = (out / "fidelity_check.md").read_text()
    assert "| final | 3 |" in text and "| epoch 1 | 3 |" in text
    assert advice(payload) and all(line in text for line in advice(payload))
    assert "Spearman" in capsys.readouterr().out

    cached = {p: p.stat().st_mtime_ns for p in (out / "fidelity_check").glob("*.json")}
    assert len(cached) == 6  # 3 configurations x 2 fidelities
    assert optimize.run(flags + ["--check-fidelity", "3"]) == 0  # all six runs cached
    assert {p: p.stat().st_mtime_ns for p in cached} == cached
    assert read_json(out / "fidelity_check.json")["agreement"] == payload["agreement"]
    assert optimize.run(flags + ["--trials", "0"]) == 0
    assert "([fidelity_check.md](fidelity_check.md))" in (out / "report.md").read_text()
