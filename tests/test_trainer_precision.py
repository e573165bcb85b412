"""Precision from the device (faked capabilities), TF32, and metrics.json == evaluate.py."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from trainer_helpers import TINY, tiny_config, tiny_data

from cliptune import runtime
from cliptune.cli.common import run_cli
from cliptune.config import RunConfig, apply_overrides
from cliptune.errors import ConfigError
from cliptune.runtime import configure_matmul, resolve_precision
from cliptune.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
CUDA, CPU = torch.device("cuda"), torch.device("cpu")


def fake_gpu(monkeypatch, capability: tuple[int, int]) -> None:
    monkeypatch.setattr(runtime, "cuda_capability", lambda device: capability)


@pytest.mark.parametrize(
    ("capability", "expected"),
    [((9, 0), "bf16"), ((8, 0), "bf16"), ((8, 6), "bf16"), ((7, 5), "fp16"), ((7, 0), "fp16")],
)
def test_auto_on_cuda_follows_the_compute_capability(monkeypatch, capability, expected):
    fake_gpu(monkeypatch, capability)
    assert resolve_precision("auto", CUDA) == expected


@pytest.mark.parametrize(("has_bf16", "expected"), [(True, "bf16"), (False, "fp32")])
def test_auto_on_cpu_follows_the_instruction_set(monkeypatch, has_bf16, expected):
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: has_bf16)
    assert resolve_precision("auto", CPU) == expected


def test_explicit_values_are_respected(monkeypatch):
    fake_gpu(monkeypatch, (9, 0))
    assert [resolve_precision(p, CUDA) for p in ("bf16", "fp16", "fp32")] == [
        "bf16", "fp16", "fp32"]
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: False)
    assert resolve_precision("bf16", CPU) == "bf16"  # emulated, slow, but it runs
    assert resolve_precision("fp32", CPU) == "fp32"


def test_impossible_requests_are_clear_errors(monkeypatch):
    fake_gpu(monkeypatch, (7, 0))
    with pytest.raises(ConfigError, match=r"compute capability 7\.0.*use train.precision=auto"):
        resolve_precision("bf16", CUDA)
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        resolve_precision("fp16", CPU)
    with pytest.raises(ConfigError, match="expected one of auto, bf16, fp16, fp32"):
        resolve_precision("fp8", CPU)
    with pytest.raises(ConfigError, match="train.precision: expected one of auto"):
        apply_overrides(RunConfig(), ["train.precision=fp8"])


def test_the_trainer_refuses_fp16_on_the_cpu(tmp_path):
    config = tiny_config(tmp_path, tmp_path / "cache", "train.precision=fp16",
                         "train.device=cpu")
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        Trainer(config)


def test_auto_is_the_default_and_resolves_in_the_trainer(tmp_path):
    assert RunConfig().train.precision == "auto"
    config = apply_overrides(RunConfig(), [o for o in TINY if "precision" not in o])
    config.train.device = "cpu"
    trainer = Trainer(config)
    assert trainer.precision == resolve_precision("auto", CPU)
    assert trainer.hparams()["train.precision"] == trainer.precision  # TensorBoard's value


def test_tf32_on_cuda_only():
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    before = matmul.allow_tf32, cudnn.allow_tf32
    try:
        matmul.allow_tf32 = cudnn.allow_tf32 = False
        configure_matmul(CPU)
        assert not matmul.allow_tf32 and not cudnn.allow_tf32
        configure_matmul(CUDA)
        assert matmul.allow_tf32 and cudnn.allow_tf32
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = before


def test_metrics_json_equals_evaluate_py(tmp_path, capsys):
    """The default (auto) precision: metrics.json at the end of training and evaluate.py on
    best.pt print the same numbers."""
    cache = tmp_path / "cache"
    config = tiny_config(tmp_path, cache, "train.precision=auto", "train.device=cpu")
    trainer = Trainer(config, data=tiny_data(tmp_path / "prep", cache), show_progress=False)
    trainer.fit()
    trainer.evaluate_best(("val", "test"))
    saved = json.loads((trainer.checkpoint_dir / "metrics.json").read_text())
    assert saved["precision"] == resolve_precision("auto", CPU)

    spec = importlib.util.spec_from_file_location("evaluate_cli", REPO / "src" / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for split in ("val", "test"):
        out = tmp_path / f"{split}.json"
        with pytest.raises(SystemExit) as done:
            run_cli(lambda split=split, out=out: module.main(
                ["--checkpoint", str(trainer.checkpoint_dir / "best.pt"), "--device", "cpu",
                 "--split", split, "--json", str(out)]))
        assert done.value.code == 0
        assert json.loads(out.read_text())["metrics"] == saved[split]
