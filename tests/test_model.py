"""Tests for cliptune.model: shapes, causality, pooling, temperature, size, FLOPs, bf16."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from cliptune.config import ModelConfig, model_preset
from cliptune.model import CLIP
from cliptune.model.clip import PatchDropout, QuickGELU
from cliptune.model.flops import kept_patches, training_flops_per_sample, vision_flops

SMALL = ModelConfig(
    embed_dim=16,
    image_size=16,
    patch_size=8,
    vision_width=32,
    vision_layers=2,
    vision_heads=2,
    text_width=32,
    text_layers=2,
    text_heads=4,
    context_length=12,
    vocab_size=64,
)


def make_model(**changes) -> CLIP:
    torch.manual_seed(0)
    return CLIP(replace(SMALL, **changes)).eval()


def captions(lengths: list[int], context_length: int = 12, seed: int = 1) -> torch.Tensor:
    """Token rows `<start> words <end>` of the given lengths, padded with 0."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.zeros(len(lengths), context_length, dtype=torch.long)
    for row, length in enumerate(lengths):
        tokens[row, :length] = torch.randint(3, 64, (length,), generator=gen)
        tokens[row, 0], tokens[row, length - 1] = 1, 2
    return tokens


def images(n: int, seed: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def test_forward_shapes_and_unit_norms():
    model = make_model()
    image_emb, text_emb, logit_scale = model(images(3), captions([4, 12, 7, 2, 5]))
    assert image_emb.shape == (3, 16) and text_emb.shape == (5, 16)
    assert image_emb.dtype == text_emb.dtype == torch.float32
    torch.testing.assert_close(image_emb.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(text_emb.norm(dim=-1), torch.ones(5))
    assert logit_scale.ndim == 0
    torch.testing.assert_close(model.encode_image(images(3)), image_emb)


def test_text_tower_is_causal():
    model = make_model()
    tokens = captions([12, 12])
    changed = tokens.clone()
    changed[:, 7] = (changed[:, 7] + 1) % 64
    before = model.text.hidden_states(tokens)
    after = model.text.hidden_states(changed)
    torch.testing.assert_close(after[:, :7], before[:, :7])
    assert not torch.allclose(after[:, 7:], before[:, 7:])


def test_text_pools_end_token_regardless_of_padding():
    model = make_model()
    tokens = captions([5, 9])
    assert model.text.end_positions(tokens).tolist() == [4, 8]
    padded_less = tokens[:, :9]
    torch.testing.assert_close(model.encode_text(padded_less), model.encode_text(tokens))
    # The pooled token still sees every word of its caption.
    changed = tokens.clone()
    changed[0, 3] = (changed[0, 3] + 1) % 64
    assert not torch.allclose(model.encode_text(changed)[0], model.encode_text(tokens)[0])


def test_text_longer_than_context_is_rejected():
    model = make_model()
    with pytest.raises(ValueError, match="context_length"):
        model.encode_text(torch.ones(1, 13, dtype=torch.long))


def test_logit_scale_init_and_clamp():
    model = make_model(init_temperature=0.05)
    assert isinstance(model.logit_scale, nn.Parameter)
    assert model.logit_scale.item() == pytest.approx(math.log(20.0))
    with torch.no_grad():
        model.logit_scale.fill_(7.0)
    model.clamp_logit_scale()
    assert model.logit_scale.item() == pytest.approx(math.log(100.0))
    with torch.no_grad():
        model.logit_scale.fill_(-1.0)
    model.clamp_logit_scale()
    assert model.logit_scale.item() == 0.0


def test_fixed_temperature_is_a_buffer():
    model = make_model(learnable_temperature=False)
    names = {name for name, _ in model.named_parameters()}
    assert "logit_scale" not in names
    assert "logit_scale" in dict(model.named_buffers())
    assert model.num_parameters() == make_model().num_parameters() - 1
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07))


def test_siglip_bias_is_a_learnable_parameter_returned_after_the_scale():
    plain, siglip = make_model(), make_model(init_logit_bias=-10.0, init_temperature=0.1)
    assert plain.logit_bias is None and "logit_bias" not in plain.state_dict()
    assert len(plain(images(2), captions([4, 5]))) == 3
    assert isinstance(siglip.logit_bias, nn.Parameter) and siglip.logit_bias.item() == -10.0
    assert siglip.logit_scale.item() == pytest.approx(math.log(10.0))
    assert siglip.num_parameters() == plain.num_parameters() + 1
    *_, scale, bias = siglip(images(2), captions([4, 5]))
    assert scale is siglip.logit_scale and bias is siglip.logit_bias
    with torch.no_grad():
        siglip.logit_scale.fill_(7.0)
        siglip.logit_bias.fill_(-20.0)
    siglip.clamp_logit_scale()  # the scale's clamp only: the bias is free, as in OpenCLIP
    assert siglip.logit_scale.item() == pytest.approx(math.log(100.0))
    assert siglip.logit_bias.item() == -20.0


def test_parameter_naming_contract():
    model = make_model()
    names = dict(model.named_parameters())
    assert isinstance(model.text.token_embedding, nn.Embedding)
    assert "text.token_embedding.weight" in names
    assert "text.positional_embedding" in names
    assert "visual.positional_embedding" in names
    assert "visual.class_embedding" in names
    assert "logit_scale" in names
    assert model.visual.patch_conv.bias is None
    # Every matrix except the embeddings gets weight decay in the Trainer; check that the
    # projections and block weights are plain 2-D parameters without "embedding".
    decayed = {n for n, p in names.items() if p.ndim >= 2 and "embedding" not in n}
    assert {"visual.projection", "text.text_projection", "visual.patch_conv.weight"} <= decayed


def test_initialisation_follows_openclip():
    torch.manual_seed(0)
    model = CLIP(model_preset("tiny"))
    width, layers = 128, 4
    block = model.text.transformer.blocks[0]
    assert block.attn.qkv.weight.std().item() == pytest.approx(width**-0.5, rel=0.05)
    proj_std = width**-0.5 * (2 * layers) ** -0.5
    assert block.attn.out_proj.weight.std().item() == pytest.approx(proj_std, rel=0.05)
    assert block.mlp.c_fc.weight.std().item() == pytest.approx((2 * width) ** -0.5, rel=0.05)
    assert model.text.token_embedding.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.text.positional_embedding.std().item() == pytest.approx(0.01, rel=0.05)
    assert model.text.text_projection.std().item() == pytest.approx(width**-0.5, rel=0.05)
    assert torch.all(block.attn.qkv.bias == 0)


def test_quick_gelu_option():
    model = make_model(activation="quick_gelu")
    assert isinstance(model.visual.transformer.blocks[0].mlp.act, QuickGELU)
    x = torch.linspace(-3, 3, 7)
    torch.testing.assert_close(QuickGELU()(x), x * torch.sigmoid(1.702 * x))


def test_dropout_is_active_only_in_training():
    model = make_model(dropout=0.5)
    tokens = captions([6, 8])
    torch.testing.assert_close(model.encode_text(tokens), model.encode_text(tokens))
    model.train()
    assert not torch.allclose(model.encode_text(tokens), model.encode_text(tokens))


def test_vit_b_32_has_paper_size():
    with torch.device("meta"):
        model = CLIP(model_preset("vit-b-32"))
    assert model.num_parameters() == pytest.approx(151.3e6, rel=0.01)


def test_flops_match_torch_flop_counter():
    model = make_model()
    # The math backend runs attention as visible matmuls the flop counter can see.
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model.encode_image(images(1))
        model.encode_text(captions([12]))
    assert model.flops_per_sample() == pytest.approx(3 * counter.get_total_flops())


# ----------------------------------------------------------------- patch dropout

PATCHES_32 = dict(image_size=32)  # 16 patches of 8 px


def images_32(n: int, seed: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("p", "kept"), [(0.25, 12), (0.5, 8), (0.7, 5), (0.9, 2), (0.99, 1)])
def test_patch_dropout_keeps_the_class_token_and_round_1_minus_p_of_the_patches(p, kept):
    assert kept_patches(16, p) == kept
    tokens = torch.arange(6 * 17, dtype=torch.float32).view(6, 17, 1).expand(6, 17, 4)
    dropout = PatchDropout(p).train()
    out = dropout(tokens)
    assert out.shape == (6, 1 + kept, 4)
    assert torch.equal(out[:, 0], tokens[:, 0])  # the class token, first
    ids = out[:, 1:, 0].long()
    for image in range(6):  # distinct patch tokens of the image itself
        row = ids[image].tolist()
        assert len(set(row)) == kept
        assert all(image * 17 + 1 <= i < (image + 1) * 17 for i in row)
    if kept < 16:  # each image draws its own subset
        assert len({frozenset((ids[i] % 17).tolist()) for i in range(6)}) > 1
    assert torch.equal(dropout.eval()(tokens), tokens)


def test_patch_dropout_in_the_image_tower_only_in_training():
    model = make_model(patch_dropout=0.5, **PATCHES_32)
    plain = make_model(**PATCHES_32)  # the same weights, no patch dropout
    lengths = []
    model.visual.transformer.register_forward_pre_hook(
        lambda _, args: lengths.append(args[0].shape[1]))
    x = images_32(3)
    torch.testing.assert_close(model.encode_image(x), plain.encode_image(x), rtol=0, atol=0)
    model.train(), plain.train()
    masked = model.encode_image(x)
    assert not torch.allclose(masked, plain.encode_image(x))
    model.set_patch_dropout(False)  # an unmasked epoch: every patch again
    torch.testing.assert_close(model.encode_image(x), plain.encode_image(x), rtol=0, atol=0)
    assert lengths == [17, 9, 17]


def test_patch_dropout_flops_count_the_tokens_kept():
    config = replace(SMALL, patch_dropout=0.5, **PATCHES_32)
    # by hand: 16 patches, 8 kept + the class token = 9 tokens, width 32, MLP 128, 2 layers
    qkv, attention, out, mlp = 2 * 9 * 32 * 96, 2 * 2 * 9 * 9 * 32, 2 * 9 * 32 * 32, 2 * 2 * 9 * 32 * 128
    conv = 2 * 16 * (3 * 8 * 8) * 32  # the patch conv still sees all 16 patches
    expected = conv + 2 * (qkv + attention + out + mlp) + 2 * 32 * 16
    assert expected == 660_736 == vision_flops(config, masked=True)
    assert vision_flops(config) == vision_flops(replace(config, patch_dropout=0.0), masked=True)

    model = make_model(patch_dropout=0.5, **PATCHES_32).train()
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model.encode_image(images_32(1))
        model.encode_text(captions([12]))
    assert model.flops_per_sample() == pytest.approx(3 * counter.get_total_flops())
    assert model.flops_per_sample() == training_flops_per_sample(config)
    model.set_patch_dropout(False)
    assert model.flops_per_sample() == training_flops_per_sample(config, masked=False)
    assert training_flops_per_sample(config, masked=False) > training_flops_per_sample(config)


def test_grad_checkpointing_gives_same_gradients():
    def grads(model: CLIP) -> dict[str, torch.Tensor]:
        model.train()
        image_emb, text_emb, scale = model(images(4), captions([3, 5, 7, 12]))
        (scale.exp() * image_emb @ text_emb.T).logsumexp(0).sum().backward()
        return {n: p.grad for n, p in model.named_parameters()}

    plain = grads(make_model())
    model = make_model(grad_checkpointing=True)
    assert model.visual.transformer.grad_checkpointing and model.text.transformer.grad_checkpointing
    checkpointed = grads(model)
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, msg=name)
    model.set_grad_checkpointing(False)
    assert not model.text.transformer.grad_checkpointing


def test_bf16_autocast_forward_backward_on_cpu():
    model = make_model().train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        image_emb, text_emb, scale = model(images(4), captions([3, 5, 7, 12]))
        logits = scale.exp() * image_emb @ text_emb.T
    assert image_emb.dtype == torch.float32
    logits.logsumexp(0).sum().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
    assert model.text.token_embedding.weight.grad.abs().sum() > 0
