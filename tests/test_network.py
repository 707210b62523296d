"""The network is exact: the authors' golden outputs, exact fusion on random weights, parameter counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from models import LKDN, fuse_model, lkdn, lkdn_s
from utils.files.checkpoint import load_checkpoint, read_state_dict

GOLDEN_TOL = 1e-5


def _golden(reference_dir, name: str) -> torch.Tensor:
    return torch.from_numpy(np.load(reference_dir / name))


@pytest.fixture(scope="module")
def golden_input(reference_dir) -> torch.Tensor:
    return _golden(reference_dir, "golden_input_1x3x37x53.npy")


def _max_diff(model: nn.Module, x: torch.Tensor, expected: torch.Tensor) -> float:
    with torch.inference_mode():
        return (model.eval()(x) - expected).abs().max().item()


@pytest.mark.parametrize("online_fusion", [True, False], ids=["online-fused", "multi-branch"])
@pytest.mark.parametrize("key", ["params_ema", "params"])
def test_lkdn_s_training_form_matches_golden(reference_dir, golden_input, key, online_fusion):
    model = lkdn_s(online_fusion=online_fusion)
    state = torch.load(reference_dir / "LKDN-S_x4.pth", weights_only=True)[key]
    model.load_state_dict(state, strict=True)
    expected = _golden(reference_dir, f"golden_LKDN-S_x4_train_form_{key}.npy")
    assert _max_diff(model, golden_input, expected) <= GOLDEN_TOL


def test_lkdn_s_fused_checkpoint_matches_golden(reference_dir, golden_input):
    model = lkdn_s(fused=True)
    model.load_state_dict(torch.load(reference_dir / "LKDN-S_del_rep_x4.pth", weights_only=True), strict=True)
    assert _max_diff(model, golden_input, _golden(reference_dir, "golden_LKDN-S_x4_deploy.npy")) <= GOLDEN_TOL


def test_fusing_the_authors_training_checkpoint_gives_their_fused_one(reference_dir, golden_input):
    model = load_checkpoint(reference_dir / "LKDN-S_x4.pth", lkdn_s(fused=True))
    assert _max_diff(model, golden_input, _golden(reference_dir, "golden_LKDN-S_x4_deploy.npy")) <= GOLDEN_TOL
    released = read_state_dict(reference_dir / "LKDN-S_del_rep_x4.pth")
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, released[key], rtol=0, atol=1e-5)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_lkdn_fused_matches_golden(reference_dir, golden_input, scale):
    model = lkdn(scale=scale, fused=True)
    state = torch.load(reference_dir / f"LKDN_x{scale}.pth", weights_only=True)["params_ema"]
    model.load_state_dict(state, strict=True)
    expected = _golden(reference_dir, f"golden_LKDN_x{scale}_deploy_params_ema.npy")
    assert _max_diff(model, golden_input, expected) <= GOLDEN_TOL


def _trained_a_little(model: LKDN, steps: int = 5) -> LKDN:
    """Random init moved by a few Adam steps towards an upscaler, so every branch matters and outputs are
    image-like (in about [0, 1], where the 1e-5 tolerance is meaningful)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        lr = torch.rand(2, 3, 12, 12, generator=generator)
        hr = torch.nn.functional.interpolate(lr, scale_factor=model.scale, mode="bicubic")
        loss = (model(lr) - hr).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.mark.parametrize(
    ("factory", "scale"),
    [(lkdn_s, 4), (lkdn, 2), (lkdn, 3), (lkdn, 4)],
    ids=["LKDN-S-x4", "LKDN-x2", "LKDN-x3", "LKDN-x4"],
)
def test_fusion_is_exact_on_random_weights(factory, scale):
    torch.manual_seed(0)
    model = _trained_a_little(factory(scale=scale, online_fusion=False))
    fused = fuse_model(model)
    assert fused.fused and not any(hasattr(m, "fused_module") for m in fused.modules())
    x = torch.rand(2, 3, 19, 23, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        torch.testing.assert_close(fused(x), model(x), rtol=0, atol=1e-5)


def test_fuse_model_leaves_the_training_model_untouched():
    model = lkdn_s()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fuse_model(model)
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_online_fusion_gives_the_same_outputs_and_gradients():
    torch.manual_seed(0)
    multi = _trained_a_little(lkdn_s(online_fusion=False)).train()
    multi.zero_grad(set_to_none=True)
    online = lkdn_s(online_fusion=True)
    online.load_state_dict(multi.state_dict())
    x = torch.rand(2, 3, 17, 15, generator=torch.Generator().manual_seed(3))
    out_multi, out_online = multi(x), online(x)
    torch.testing.assert_close(out_online, out_multi, rtol=0, atol=1e-5)
    out_multi.square().mean().backward()
    out_online.square().mean().backward()
    grads_online = dict(online.named_parameters())
    for name, param in multi.named_parameters():
        torch.testing.assert_close(grads_online[name].grad, param.grad, rtol=0, atol=1e-5, msg=name)


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (lambda: lkdn_s(fused=True), 129_177),
        (lambda: lkdn_s(), 172_449),
        (lambda: lkdn(scale=2, fused=True), 303_812),
        (lambda: lkdn(scale=3, fused=True), 311_387),
        (lambda: lkdn(scale=4, fused=True), 321_992),
    ],
    ids=["LKDN-S-fused", "LKDN-S-training", "LKDN-x2", "LKDN-x3", "LKDN-x4"],
)
def test_parameter_counts(model, expected):
    assert _num_params(model()) == expected


def test_fused_lkdn_s_has_86_convs():
    assert sum(isinstance(m, nn.Conv2d) for m in lkdn_s(fused=True).modules()) == 86


@pytest.mark.parametrize("attention", ["lka", "esa_cca", "none"])
@pytest.mark.parametrize("shallow", ["rbsb", "bsconv_shortcut", "bsconv"])
def test_ablation_variants_run_and_fuse(attention, shallow):
    torch.manual_seed(0)
    model = LKDN(num_feat=24, num_blocks=2, attention=attention, shallow=shallow).eval()
    x = torch.rand(1, 3, 20, 18)
    with torch.inference_mode():
        fused = fuse_model(model)(x)
        out = model.set_online_fusion(False)(x)  # the branches as they are: fusion checked, not reused
        assert out.shape == (1, 3, 80, 72)
        torch.testing.assert_close(fused, out, rtol=0, atol=1e-5)


def test_ablation_variants_differ_in_structure():
    keys = {
        (a, s): set(LKDN(num_feat=16, num_blocks=1, attention=a, shallow=s).state_dict())
        for a in ("lka", "esa_cca", "none")
        for s in ("rbsb", "bsconv")
    }
    assert "B1.atten.pointwise.weight" in keys["lka", "rbsb"]
    assert "B1.atten.esa.conv1.weight" in keys["esa_cca", "rbsb"]
    assert not any(k.startswith("B1.atten") for k in keys["none", "rbsb"])
    assert (
        "B1.c1_r.rep1x1.weight" in keys["lka", "rbsb"]
        and "B1.c1_r.rep1x1.weight" not in keys["lka", "bsconv"]
    )


def test_unknown_ablation_names_are_rejected():
    with pytest.raises(ValueError, match="attention"):
        LKDN(attention="sa")
    with pytest.raises(ValueError, match="shallow"):
        LKDN(shallow="rep")
