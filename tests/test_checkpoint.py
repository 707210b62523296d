"""The one loader: every accepted wrapping, fusing on load, and one clear error for every bad file."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models import BUNDLED_CHECKPOINT, fuse_model, lkdn, lkdn_s
from utils.errors import UserError
from utils.files import convert
from utils.files.atomic_write import save_atomic
from utils.files.checkpoint import build_model_from_checkpoint, load_checkpoint, read_state_dict, save_weights


@pytest.fixture(scope="module")
def trained_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return lkdn_s().state_dict()


def _same_weights(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(value, state[key]) for key, value in model.state_dict().items())


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,
        lambda sd: {"params": {k: v + 1 for k, v in sd.items()}, "params_ema": sd},
        lambda sd: {"params": sd},
        lambda sd: {f"module.{k}": v for k, v in sd.items()},
        lambda sd: {"params_ema": {f"module.{k}": v for k, v in sd.items()}},
    ],
    ids=["plain", "prefers-params_ema", "params-only", "module-prefix", "ema-and-prefix"],
)
def test_accepted_wrappings(tmp_path, trained_state, wrap):
    path = tmp_path / "ckpt.pth"
    torch.save(wrap(trained_state), path)
    assert _same_weights(load_checkpoint(path, lkdn_s()), trained_state)


def test_training_checkpoint_loads_into_a_fused_model_by_fusing(tmp_path, trained_state):
    path = save_atomic({"params_ema": trained_state}, tmp_path / "train.pth")
    training = lkdn_s()
    training.load_state_dict(trained_state)
    loaded = load_checkpoint(path, lkdn_s(fused=True)).eval()
    x = torch.rand(1, 3, 9, 11, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():  # against the unfused branches: the fusion is checked, not reused
        torch.testing.assert_close(loaded(x), training.set_online_fusion(False).eval()(x), rtol=0, atol=1e-5)


def test_build_model_from_checkpoint_reads_the_configuration(tmp_path):
    torch.save(lkdn(scale=3, fused=True).state_dict(), tmp_path / "lkdn_x3.pth")
    model = build_model_from_checkpoint(tmp_path / "lkdn_x3.pth")
    assert (model.num_feat, model.num_blocks, model.scale, model.fused) == (56, 8, 3, True)


def test_wrong_configuration_names_both_networks_and_what_differs(tmp_path):
    torch.save({"params_ema": lkdn(fused=True).state_dict()}, tmp_path / "paper.pth")
    with pytest.raises(UserError) as err:
        load_checkpoint(tmp_path / "paper.pth", lkdn_s(fused=True))
    message = str(err.value)
    assert "paper.pth: holds LKDN x4, fused form, not LKDN-S x4, fused form" in message
    assert "num_feat 56 (wanted 42), num_blocks 8 (wanted 5)" in message and "\n" not in message


def test_wrong_scale_is_reported(tmp_path):
    torch.save(lkdn_s(scale=2, fused=True).state_dict(), tmp_path / "x2.pth")
    with pytest.raises(UserError, match=r"x2\.pth: holds LKDN-S x2, .*not LKDN-S x4.*scale 2 \(wanted 4\)"):
        load_checkpoint(tmp_path / "x2.pth", lkdn_s(fused=True))


def test_a_fused_checkpoint_loads_into_the_training_form_computing_the_same(tmp_path):
    """Fine-tuning can start from fused weights: the training form is re-created exactly (the zero 1x1
    branches and upsampler branches aside), and fusing it again gives the file's weights."""
    torch.manual_seed(0)
    fused = lkdn_s(fused=True).eval()
    with torch.no_grad():
        for p in fused.parameters():
            p.add_(0.05 * torch.randn_like(p))
    torch.save(fused.state_dict(), tmp_path / "fused.pth")
    training = load_checkpoint(tmp_path / "fused.pth", lkdn_s()).eval()
    x = torch.rand(1, 3, 13, 10, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        torch.testing.assert_close(training.set_online_fusion(False)(x), fused(x), rtol=0, atol=1e-5)
    for key, value in fuse_model(training).state_dict().items():
        torch.testing.assert_close(value, fused.state_dict()[key], rtol=0, atol=1e-6, msg=key)


def test_truncated_file(tmp_path, trained_state):
    whole = save_atomic(trained_state, tmp_path / "whole.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(UserError, match=r"cut\.pth: not a readable PyTorch checkpoint"):
        read_state_dict(tmp_path / "cut.pth")


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "notes.pth").write_text("hello")
    with pytest.raises(UserError, match=r"notes\.pth: not a readable PyTorch checkpoint"):
        read_state_dict(tmp_path / "notes.pth")
    torch.save({"lr": 0.1}, tmp_path / "options.pth")
    with pytest.raises(UserError, match=r"options\.pth: holds no state dict"):
        read_state_dict(tmp_path / "options.pth")
    torch.save({"weight": torch.ones(2)}, tmp_path / "other.pth")
    with pytest.raises(UserError, match=r"other\.pth: not an LKDN checkpoint"):
        load_checkpoint(tmp_path / "other.pth", lkdn_s())


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match=r"missing\.pth: checkpoint not found"):
        read_state_dict(tmp_path / "missing.pth")


def test_untrusted_pickles_are_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("executed",))

    torch.save({"params": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(UserError, match="not a readable PyTorch checkpoint"):
        read_state_dict(tmp_path / "evil.pth")


def test_authors_checkpoints_load_strictly(reference_dir):
    """Every released checkpoint loads strictly and computes the golden outputs on the golden input."""
    x = torch.from_numpy(np.load(reference_dir / "golden_input_1x3x37x53.npy"))
    cases = [
        ("LKDN-S_x4.pth", lkdn_s(), "golden_LKDN-S_x4_train_form_params_ema.npy"),
        ("LKDN-S_del_rep_x4.pth", lkdn_s(fused=True), "golden_LKDN-S_x4_deploy.npy"),
        *[
            (f"LKDN_x{s}.pth", lkdn(scale=s, fused=True), f"golden_LKDN_x{s}_deploy_params_ema.npy")
            for s in (2, 3, 4)
        ],
    ]
    for checkpoint, model, golden in cases:
        loaded = load_checkpoint(reference_dir / checkpoint, model).eval()
        with torch.inference_mode():
            out = loaded(x).numpy()
        np.testing.assert_allclose(
            out, np.load(reference_dir / golden), rtol=0, atol=1e-5, err_msg=checkpoint
        )


@pytest.mark.parametrize("fused", [False, True], ids=["training-form", "fused"])
def test_safetensors_round_trip_is_strict_and_exact(tmp_path, trained_state, fused):
    model = lkdn_s()
    model.load_state_dict(trained_state)
    model = fuse_model(model) if fused else model
    path = save_weights(model.state_dict(), tmp_path / "weights.safetensors")
    assert [p.name for p in tmp_path.iterdir()] == ["weights.safetensors"]  # no temporary file left
    back = build_model_from_checkpoint(path, fused=fused)
    assert back.fused == fused and _same_weights(back, model.state_dict())
    assert read_state_dict(path).keys() == model.state_dict().keys()


def test_the_bundled_weights_are_the_same_in_both_formats():
    pth, tensors = (
        read_state_dict(BUNDLED_CHECKPOINT),
        read_state_dict(BUNDLED_CHECKPOINT.with_suffix(".safetensors")),
    )
    assert pth.keys() == tensors.keys()
    assert all(torch.equal(pth[k], tensors[k]) for k in pth)


def test_convert_fuses_a_training_checkpoint_into_safetensors(tmp_path, trained_state):
    source = tmp_path / "train.pth"
    torch.save({"params_ema": trained_state}, source)
    assert (
        convert.main(["--model_path", str(source), "-o", str(tmp_path / "fused.safetensors"), "--fused"]) == 0
    )
    model = lkdn_s()
    model.load_state_dict(trained_state)
    expected = fuse_model(model).state_dict()
    assert _same_weights(build_model_from_checkpoint(tmp_path / "fused.safetensors"), expected)
    with pytest.raises(UserError, match="should end in .safetensors or .pth"):
        convert.main(["--model_path", str(source), "-o", str(tmp_path / "weights.bin")])


def test_a_corrupt_safetensors_file_is_one_clear_error(tmp_path, trained_state):
    path = save_weights(trained_state, tmp_path / "w.safetensors")
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(UserError, match="w.safetensors: not a readable safetensors file"):
        read_state_dict(path)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path, trained_state, bad, suffix):
    state = {k: v.clone() for k, v in trained_state.items()}
    state["B3.c5.weight"][0, 0, 0, 0] = bad
    path = save_weights(state, tmp_path / f"w{suffix}")
    with pytest.raises(UserError, match="tensor 'B3.c5.weight' holds NaN or Inf"):
        build_model_from_checkpoint(path)


def test_a_folder_as_checkpoint_says_so(tmp_path):
    with pytest.raises(UserError, match="is a folder; pass the checkpoint file in it"):
        read_state_dict(tmp_path)
