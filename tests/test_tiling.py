"""Tiled inference is seamless exactly when the overlap covers the receptive field, and that field is what we say."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models import LKDN, lkdn, lkdn_s
from utils.runtime.tiling import tiled_forward

WHOLE_TOL = 1e-5


@pytest.fixture(scope="module")
def random_lkdn_s() -> LKDN:
    """LKDN-S's depth and kernels (hence its receptive field, 63), narrowed to 8 channels to be cheap; the
    authors' LKDN-S itself is tiled in tests/test_test_demo.py."""
    torch.manual_seed(0)
    return LKDN(num_feat=8, num_blocks=5, fused=True).eval()


def test_receptive_radius_of_the_named_configurations():
    # 1 (fea_conv) + blocks * (4 x 3x3 + LKA 5x5 (2) + 5x5 dilation 3 (6)) + 1 (c2) + 1 (upsampler)
    assert lkdn_s(fused=True).receptive_radius() == 1 + 5 * 12 + 1 + 1 == 63
    assert lkdn_s().receptive_radius() == 63  # the training form has the same field
    assert lkdn(fused=True).receptive_radius() == 1 + 8 * 12 + 1 + 1
    assert lkdn_s(attention="none", fused=True).receptive_radius() == 1 + 5 * 4 + 1 + 1
    assert (
        lkdn_s(attention="esa_cca", fused=True).receptive_radius() is None
    )  # global pooling: no finite field


def test_receptive_radius_is_the_exact_support_of_the_gradient():
    """One output pixel depends on exactly the LR pixels within the radius (float64: no underflow to zero)."""
    torch.manual_seed(0)
    model = LKDN(num_feat=2, num_blocks=5, fused=True).double().eval()  # LKDN-S's depth, narrow to be cheap
    radius = model.receptive_radius()
    size, centre = 2 * radius + 3, radius + 1
    x = torch.rand(1, 3, size, size, dtype=torch.float64, requires_grad=True)
    model(x)[0, 0, centre * 4, centre * 4].backward()
    rows, cols = torch.nonzero(x.grad.abs().sum(dim=(0, 1)), as_tuple=True)
    assert (rows.min().item(), rows.max().item()) == (centre - radius, centre + radius)
    assert (cols.min().item(), cols.max().item()) == (centre - radius, centre + radius)


def test_tiled_equals_whole_with_the_receptive_radius_as_overlap(random_lkdn_s):
    assert random_lkdn_s.receptive_radius() == 63
    # width > tile + 2 * 63: interior tiles are cut on both sides, so their context really comes from the overlap
    x = torch.rand(1, 3, 16, 160, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        whole = random_lkdn_s(x)
        tiled = tiled_forward(random_lkdn_s, x, tile=32, overlap=random_lkdn_s.receptive_radius(), scale=4)
    torch.testing.assert_close(tiled, whole, atol=WHOLE_TOL, rtol=0)


def test_tiled_equals_whole_in_two_dimensions():
    torch.manual_seed(2)
    model = LKDN(num_feat=8, num_blocks=1, fused=True).eval()  # radius 15: tiles of 10 cut on both sides
    x = torch.rand(2, 3, 50, 56)
    with torch.inference_mode():
        whole = model(x)
        tiled = tiled_forward(model, x, tile=16, overlap=model.receptive_radius(), scale=4)
    torch.testing.assert_close(tiled, whole, atol=WHOLE_TOL, rtol=0)


def test_a_too_small_overlap_is_not_exact(random_lkdn_s):
    x = torch.rand(1, 3, 16, 160, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        whole = random_lkdn_s(x)
        tiled = tiled_forward(random_lkdn_s, x, tile=32, overlap=8, scale=4)
    assert (tiled - whole).abs().max().item() > 10 * WHOLE_TOL


def test_tile_geometry_with_a_local_operator():
    """A 3x3 conv + nearest x4: overlap 1 is exact, overlap 0 is not; every output pixel lands in its place."""
    torch.manual_seed(3)
    weight = torch.rand(3, 3, 3, 3)

    def op(t: torch.Tensor) -> torch.Tensor:
        return F.interpolate(F.conv2d(t, weight, padding=1), scale_factor=4, mode="nearest")

    x = torch.rand(1, 3, 23, 31)
    torch.testing.assert_close(tiled_forward(op, x, tile=5, overlap=1, scale=4), op(x), atol=1e-6, rtol=0)
    assert (tiled_forward(op, x, tile=5, overlap=0, scale=4) - op(x)).abs().max() > 0.1
    torch.testing.assert_close(tiled_forward(op, x, tile=100, overlap=0, scale=4), op(x), atol=0, rtol=0)


@pytest.mark.parametrize("tile, overlap", [(0, 4), (8, -1)])
def test_tiled_forward_rejects_bad_arguments(tile, overlap):
    with pytest.raises(ValueError):
        tiled_forward(lambda t: t, torch.zeros(1, 3, 4, 4), tile=tile, overlap=overlap, scale=1)


@pytest.mark.parametrize(("blocks", "radius"), [(1, 15), (5, 63)])
def test_the_radius_is_exactly_enough_in_float64(blocks, radius):
    """In float64 the tiles equal the whole image to rounding at the receptive radius, and visibly not one
    pixel short of it: an overlap (or a radius) of radius - 1 fails here, whatever float32 tolerances hide."""
    torch.manual_seed(blocks)
    model = LKDN(num_feat=8, num_blocks=blocks, fused=True).double().eval()
    with torch.no_grad():  # weights large enough that a pixel at the edge of the field moves the output
        for p in model.parameters():
            p.mul_(2.0)
    assert model.receptive_radius() == radius
    x = torch.rand(1, 3, 8, 3 * radius + 40, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with torch.inference_mode():
        whole = model(x)
        exact = tiled_forward(model, x, tile=20, overlap=model.receptive_radius(), scale=4)
        short = tiled_forward(model, x, tile=20, overlap=model.receptive_radius() - 1, scale=4)
    exact_diff, short_diff = ((t - whole).abs().max().item() for t in (exact, short))
    # measured: 3e-15 / 3e-3 for one block, 4e-14 / 8e-12 for five (the edge's influence fades with depth)
    assert exact_diff < 1e-12, f"tiled != whole at the radius: {exact_diff:.3g}"
    assert short_diff > 20 * max(exact_diff, 1e-15), (
        f"radius - 1 looks exact: {short_diff:.3g} vs {exact_diff:.3g}"
    )
