"""The shipped experiments load, and the hardware picks the default one."""

import pytest
import torch

from cliptune.config import load_config
from cliptune.hpo.definition import load_plan
from cliptune.hpo.search_space import SearchSpace, load_search_space
from cliptune.resources import EXPERIMENTS_DIR, default_experiment


@pytest.fixture
def fake_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU 80GB")


@pytest.mark.parametrize("path", sorted(EXPERIMENTS_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_experiment_loads(path):
    if "search" in path.name:
        assert load_search_space(path).parameters
    elif "hpo" in path.name:
        plan = load_plan(path, space=SearchSpace(()))
        assert plan.trial_base.train.epochs == plan.fidelity.epochs
    else:
        assert load_config(path).name == path.stem


def test_gpu_search_space_fits_its_study():
    space = load_search_space(EXPERIMENTS_DIR / "gpu-search-space.yaml")
    plan = load_plan(EXPERIMENTS_DIR / "gpu-hpo.yaml", space=space)  # checks the space
    assert plan.target.model.image_size == 224
    space.check_against(plan.trial_base)


def test_cpu_machine_gets_the_cpu_experiments(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    choice = default_experiment("train")
    assert choice.path == EXPERIMENTS_DIR / "default.yaml"
    assert "no CUDA GPU" in choice.reason
    assert default_experiment("hpo").path.name == "hpo.yaml"
    assert default_experiment("search-space").path.name == "search_space.yaml"


def test_a_gpu_gets_the_gpu_experiments(fake_gpu):
    choice = default_experiment("train")
    assert choice.path.name == "gpu-flickr30k.yaml"
    assert "Fake GPU 80GB" in choice.line()
    assert load_config(choice.path).model.image_size == 224
    assert default_experiment("train", data="shapes").path.name == "gpu-shapes.yaml"
    assert default_experiment("hpo").path.name == "gpu-hpo.yaml"
    assert default_experiment("search-space").path.name == "gpu-search-space.yaml"


def test_device_cpu_on_a_gpu_machine_keeps_the_cpu_experiment(fake_gpu):
    choice = default_experiment("train", device="cpu")
    assert choice.path.name == "default.yaml"
    assert choice.reason == "--device cpu"
