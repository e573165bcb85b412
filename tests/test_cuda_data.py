"""CUDA data paths deliver what the CPU path does: training batches prefetched on a side
stream from pinned memory (with and without reader processes) and pinned evaluation reads."""

from __future__ import annotations

import pytest
import torch
from trainer_helpers import tiny_config

from cliptune.data import TrainLoader, device_batches, eval_batches
from cliptune.evaluation import embed_split
from cliptune.model import CLIP

pytestmark = pytest.mark.cuda
CUDA = torch.device("cuda")


def train_loader(data, augment: bool, **kwargs) -> TrainLoader:
    return TrainLoader(data.train, batch_size=16, seed=3, epoch=2, augment=augment, flip=True,
                       crop_scale=data.crop_scale, **kwargs)


@pytest.mark.parametrize("augment", [True, False])
@pytest.mark.parametrize("num_workers", [0, 2])
def test_prefetched_batches_equal_the_cpu_path(data, no_tf32, augment, num_workers):
    expected = list(device_batches(train_loader(data, augment), "cpu"))
    loader = train_loader(data, augment, num_workers=num_workers, pin_memory=True)
    assert loader.pin_memory
    if num_workers == 0:  # read straight into page-locked memory (else the DataLoader pins)
        assert loader.batch(0).images.is_pinned() and loader.batch(0).tokens.is_pinned()
    got = list(device_batches(loader, CUDA))
    assert len(got) == len(expected) == len(loader) >= 2
    for (cpu_images, cpu_tokens), (images, tokens) in zip(expected, got, strict=True):
        assert images.device.type == tokens.device.type == "cuda"
        assert images.dtype == torch.float32 and images.shape == cpu_images.shape
        assert torch.equal(tokens.cpu(), cpu_tokens)
        if augment:  # the same grid_sample on other hardware: equal up to float rounding
            torch.testing.assert_close(images.cpu(), cpu_images, rtol=0, atol=1e-4)
        else:  # normalisation alone is one multiply and one add: exact everywhere
            assert torch.equal(images.cpu(), cpu_images)


def test_pinned_eval_reads_equal_plain_reads(data):
    plain = list(eval_batches(data.val, 5))
    pinned = list(eval_batches(data.val, 5, pin_memory=True))
    assert len(pinned) == len(plain) == -(-len(data.val) // 5)
    for a, b in zip(plain, pinned, strict=True):
        assert b.is_pinned() and not a.is_pinned()
        assert torch.equal(a, b)


def test_embeddings_on_cuda_equal_the_cpu(tmp_path, cache_dir, data, no_tf32):
    """embed_split reads pinned batches and copies them asynchronously: the embeddings are
    the CPU's (fp32, no TF32) up to float rounding, returned on the CPU, in order."""
    torch.manual_seed(0)
    model = CLIP(tiny_config(tmp_path, cache_dir).model)
    expected = embed_split(model, data.val, batch_size=5, device="cpu", precision="fp32")
    got = embed_split(model.to(CUDA), data.val, batch_size=5, device=CUDA, precision="fp32")
    for a, b in zip(expected, got, strict=True):
        assert b.device.type == "cpu" and b.shape == a.shape
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
