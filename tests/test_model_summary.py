"""The challenge's complexity figures: the factsheet's numbers for fused LKDN-S, and first principles elsewhere."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models import LKDN, lkdn_s
from utils.measure.model_summary import (
    conv_activations,
    count_conv_macs,
    count_parameters,
    summarize,
    thop_macs,
)


@pytest.fixture(scope="module")
def lkdn_s_summary():
    torch.manual_seed(0)
    return summarize(lkdn_s(fused=True))


def test_fused_lkdn_s_matches_the_factsheet(lkdn_s_summary):
    s = lkdn_s_summary
    assert s.input_shape == (1, 3, 256, 256)
    assert s.num_parameters == 129_177  # 0.129 M
    assert s.conv_macs == 8_289_189_888  # 8.29 G, the NTIRE 2023 "FLOPs"
    assert s.activations == 202_702_848  # 202.70 M
    assert s.num_conv == 86


def test_other_counters_are_reported_apart(lkdn_s_summary):
    s = lkdn_s_summary
    # fvcore's total adds the five LayerNorms: 5 blocks x 42 channels x 256 x 256 x 5 (fvcore's per-element cost)
    assert s.fvcore_total_flops - s.conv_macs == 5 * 42 * 256 * 256 * 5
    assert s.thop_macs == s.conv_macs  # thop counts the convs only for this network


def _conv_macs_by_hand(model: nn.Module, x: torch.Tensor) -> tuple[int, int, int]:
    """(MACs, output elements, calls) of every Conv2d: out elements x in_channels / groups x kernel area."""
    totals = [0, 0, 0]

    def hook(m: nn.Conv2d, _inputs, out: torch.Tensor) -> None:
        totals[0] += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        totals[1] += out.numel()
        totals[2] += 1

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    return tuple(totals)


@pytest.mark.parametrize("shape", [(1, 3, 24, 40), (2, 3, 17, 9)])
def test_counts_follow_from_first_principles(shape):
    torch.manual_seed(1)
    model = LKDN(num_feat=8, num_blocks=2, scale=3, fused=True).eval()
    macs, elements, calls = _conv_macs_by_hand(model, torch.rand(shape))
    assert count_conv_macs(model, shape) == macs
    assert thop_macs(model, shape) == macs
    assert conv_activations(model, shape) == (elements, calls)
    assert count_parameters(model) == sum(p.numel() for p in model.parameters())


def test_training_form_counts_every_branch():
    """Measuring the training form instead of the fused one would overstate the figures: they differ."""
    torch.manual_seed(2)
    training, fused = LKDN(num_feat=8, num_blocks=1).eval(), LKDN(num_feat=8, num_blocks=1, fused=True).eval()
    training.set_online_fusion(False)
    shape = (1, 3, 16, 16)
    assert conv_activations(training, shape)[1] > conv_activations(fused, shape)[1]
    assert count_parameters(training) > count_parameters(fused)


def test_summarize_leaves_the_model_untouched():
    torch.manual_seed(3)
    model = LKDN(num_feat=8, num_blocks=1, fused=True).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    summarize(model, (1, 3, 16, 16))
    after = model.state_dict()
    assert after.keys() == before.keys()  # thop's total_ops / total_params buffers were added to a copy only
    for key, value in before.items():
        torch.testing.assert_close(after[key], value, atol=0, rtol=0)
    assert all(not m._forward_hooks for m in model.modules())
    assert next(model.parameters()).device.type == "cpu"
