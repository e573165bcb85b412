"""bench/bench_recipe.py in its smallest setting: every (variant, seed) run trains and is
scored, the table compares the variants, and a second call reuses the results."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_recipe", REPO / "bench" / "bench_recipe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_recipe_quick(tmp_path, capsys):
    bench = load_bench()
    argv = ["--quick", "--seeds", "0", "--workdir", str(tmp_path), "--variant", "infonce:",
            "--variant", "siglip:train.loss=siglip"]
    bench.main(argv)
    records = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "results").glob("*.json")}
    assert set(records) == {"infonce-seed0", "siglip-seed0"}
    assert records["siglip-seed0"]["overrides"] == ["train.loss=siglip"]
    for record in records.values():
        assert 0 <= record["test"]["rsum"] <= 600 and record["wall_s"] > 0
    table = (tmp_path / "table.md").read_text().splitlines()
    assert table[2].startswith("| infonce | 1 | ") and table[3].startswith("| siglip | 1 | ")
    assert table[2].split("|")[6].strip() == "+0.0"  # the reference against itself

    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "results").glob("*.json")}
    capsys.readouterr()
    bench.main(argv)  # everything measured: nothing trains again
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert "seed0: test rsum" not in capsys.readouterr().out
