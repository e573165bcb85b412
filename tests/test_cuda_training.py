"""CUDA training: bf16 and fp16 + GradScaler steps, resume equal to an uninterrupted run,
also from a checkpoint holding the CUDA random states of more GPUs than this machine has."""

from __future__ import annotations

import math
import os

# cuBLAS reads this when CUDA starts (after collection): deterministic matmul workspaces
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import pytest  # noqa: E402
import torch  # noqa: E402
from test_trainer_resume import kill_after_first_epoch  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402
from trainer_helpers import tiny_config, weights  # noqa: E402

from cliptune.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from cliptune.trainer import Trainer  # noqa: E402

pytestmark = pytest.mark.cuda


def cuda_config(tmp_path, cache_dir, *extra):
    return tiny_config(tmp_path, cache_dir, "train.device=cuda", *extra)


@pytest.fixture
def deterministic():
    """Bit-reproducible CUDA kernels: deterministic algorithms where torch has them, and
    the math attention kernel (the fused ones accumulate their backward with atomics)."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    with sdpa_kernel(SDPBackend.MATH):
        yield
    torch.use_deterministic_algorithms(before)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_steps_train_like_fp32(tmp_path, cache_dir, data, precision):
    runs = {}
    for name in ("fp32", precision):
        config = cuda_config(tmp_path / name, cache_dir, f"train.precision={name}",
                             "train.epochs=1")
        trainer = Trainer(config, data=data, show_progress=False)
        trainer.fit()
        assert trainer.precision == name and trainer.device.type == "cuda"
        runs[name] = trainer
    low, full = runs[precision], runs["fp32"]
    assert low.step == full.step > 0
    for key in ("train_loss", "val_loss"):
        value = low.history[-1][key]
        assert math.isfinite(value) and abs(value - full.history[-1][key]) < 0.05, key
    # the low-precision run really ran in low precision: its weights are not fp32's
    assert any(not torch.equal(a, b) for a, b in zip(weights(low).values(),
                                                     weights(full).values(), strict=True))
    saved = load_checkpoint(low.checkpoint_dir / "last.pt")
    if precision == "fp16":
        scaler = low.state.scaler
        assert scaler is not None and scaler.is_enabled()
        assert math.isfinite(scaler.get_scale()) and scaler.get_scale() > 0
        assert saved["scaler"]["scale"] == scaler.get_scale()
    else:
        assert low.state.scaler is None and saved["scaler"] is None


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_resume_equals_uninterrupted_on_cuda(tmp_path, cache_dir, data, deterministic,
                                             precision):
    extra = f"train.precision={precision}"
    straight = Trainer(cuda_config(tmp_path / "a", cache_dir, extra), data=data,
                       show_progress=False)
    straight.fit()

    config = cuda_config(tmp_path / "b", cache_dir, extra)
    killed = kill_after_first_epoch(config, data)
    saved = load_checkpoint(killed.checkpoint_dir / "last.pt")
    assert "rng" not in saved  # each epoch seeds its own generators
    assert (saved["scaler"] is not None) == (precision == "fp16")
    torch.cuda.manual_seed_all(1234)  # whatever the process did since, resume restores it
    resumed = Trainer(config, data=data, show_progress=False)
    assert resumed.fit().epochs_completed == 2

    expected, got = weights(straight), weights(resumed)
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    assert [h["val_loss"] for h in resumed.history] == [h["val_loss"] for h in straight.history]


def test_resume_from_a_checkpoint_with_the_rng_states_of_more_gpus(tmp_path, cache_dir, data,
                                                                   deterministic):
    """What older versions saved, one CUDA random state per GPU of the writing machine (one
    more than here), does not stop a resume; it is not restored, and with dropout the run
    still ends where an uninterrupted one does."""
    straight = Trainer(cuda_config(tmp_path / "a", cache_dir, "model.dropout=0.2"), data=data,
                       show_progress=False)
    straight.fit()
    config = cuda_config(tmp_path / "b", cache_dir, "model.dropout=0.2")
    killed = kill_after_first_epoch(config, data)
    path = killed.checkpoint_dir / "last.pt"
    state = load_checkpoint(path)
    states = [torch.cuda.get_rng_state(0)] * (torch.cuda.device_count() + 1)
    state["rng"] = {"torch": torch.get_rng_state(), "cuda": states}
    save_checkpoint(state, path)
    torch.cuda.manual_seed_all(99)
    resumed = Trainer(config, data=data, show_progress=False)
    assert resumed.fit().epochs_completed == 2
    expected, got = weights(straight), weights(resumed)
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
