"""The fast inference path computes the reference module form's function, and make_runner picks and names paths."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models import LKDN, fuse_model, lkdn_s
from utils.device import cuda_float32
from utils.files.checkpoint import build_model_from_checkpoint
from utils.files.image_io import read_rgb, to_tensor
from utils.runtime.backends import BACKENDS, default_backend, default_precision, make_runner
from utils.runtime.fast import CPU_FUSIONS, FastLKDN
from utils.runtime.native import native_available

ATOL = 2e-5  # max abs difference from the module form, float32: the contract is 1e-4, measured at most 1.1e-5

# (label, cpu_fusions): the oneDNN-fused variant (what `fast` runs on a CPU) and the plain-op variant (elsewhere)
VARIANTS = [pytest.param(True, id="onednn-fused"), pytest.param(False, id="plain-ops")]
ODD_SHAPES = [(1, 3, 13, 17), (2, 3, 21, 10), (3, 3, 5, 7), (1, 3, 1, 1)]


def perturbed(model: LKDN, seed: int = 0, scale: float = 0.2) -> LKDN:
    """`model` with every parameter moved away from its initial value (LayerNorm's 1 and 0 included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale * (p.abs().mean() + 0.1))
    return model.eval()


def reference_output(model: LKDN, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(x)


def fast_output(model: LKDN, x: torch.Tensor, cpu_fusions: bool) -> torch.Tensor:
    with torch.inference_mode():
        return FastLKDN(model, cpu_fusions=cpu_fusions).eval()(x)


@pytest.fixture(scope="module")
def random_lkdn_s() -> LKDN:
    torch.manual_seed(0)
    return perturbed(lkdn_s(fused=True))


@pytest.fixture(scope="module")
def authors_fused(reference_dir) -> LKDN:
    return build_model_from_checkpoint(reference_dir / "LKDN-S_del_rep_x4.pth").eval()


@pytest.mark.parametrize("cpu_fusions", VARIANTS)
@pytest.mark.parametrize("shape", ODD_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_fast_equals_reference_random_weights(random_lkdn_s, cpu_fusions, shape):
    x = torch.rand(shape, generator=torch.Generator().manual_seed(1))
    expected = reference_output(random_lkdn_s, x)
    torch.testing.assert_close(fast_output(random_lkdn_s, x, cpu_fusions), expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("cpu_fusions", VARIANTS)
@pytest.mark.parametrize(
    "config",
    [
        dict(num_feat=56, num_blocks=8, scale=2),  # the paper's LKDN
        dict(num_feat=10, num_blocks=2, scale=3),  # small, odd scale
        dict(num_feat=14, num_blocks=1, scale=4, in_ch=1, out_ch=1),  # one block, gray in and out
    ],
    ids=["lkdn-x2", "c10-b2-x3", "c14-b1-gray"],
)
def test_fast_equals_reference_other_configurations(cpu_fusions, config):
    torch.manual_seed(1)
    model = perturbed(LKDN(**config, fused=True), seed=2)
    x = torch.rand(2, config.get("in_ch", 3), 11, 9, generator=torch.Generator().manual_seed(3))
    expected = reference_output(model, x)
    torch.testing.assert_close(fast_output(model, x, cpu_fusions), expected, atol=ATOL, rtol=0)


def test_fast_from_a_fused_training_form_model():
    """The fast path is built from fuse_model's output: training form -> fused -> fast, one function."""
    torch.manual_seed(2)
    training = perturbed(lkdn_s(fused=False), seed=3)
    x = torch.rand(1, 3, 16, 12, generator=torch.Generator().manual_seed(4))
    fast = fast_output(fuse_model(training), x, CPU_FUSIONS)
    expected = reference_output(training.set_online_fusion(False), x)  # the unfused branches, independently
    torch.testing.assert_close(fast, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("cpu_fusions", VARIANTS)
def test_fast_equals_reference_authors_checkpoint_golden_input(authors_fused, reference_dir, cpu_fusions):
    x = torch.from_numpy(np.load(reference_dir / "golden_input_1x3x37x53.npy"))
    golden = torch.from_numpy(np.load(reference_dir / "golden_LKDN-S_x4_deploy.npy"))
    out = fast_output(authors_fused, x, cpu_fusions)
    torch.testing.assert_close(out, reference_output(authors_fused, x), atol=ATOL, rtol=0)
    torch.testing.assert_close(out, golden, atol=ATOL, rtol=0)


@pytest.mark.parametrize("cpu_fusions", VARIANTS)
def test_fast_equals_reference_authors_checkpoint_real_images(authors_fused, benchmark_dir, cpu_fusions):
    """Real LR images, batch of 2 (odd-sized crops of two Set5 images)."""
    lr = benchmark_dir / "Set5" / "LR_bicubic_x4"
    crops = [to_tensor(read_rgb(lr / name))[..., :61, :47] for name in ("baby.png", "butterfly.png")]
    x = torch.cat(crops)
    expected = reference_output(authors_fused, x)
    torch.testing.assert_close(fast_output(authors_fused, x, cpu_fusions), expected, atol=ATOL, rtol=0)


def test_fast_needs_the_fused_form():
    with pytest.raises(ValueError, match="fused model"):
        FastLKDN(lkdn_s(fused=False))


@pytest.mark.parametrize("cpu_fusions", VARIANTS)
@pytest.mark.parametrize(
    "variant", [{"attention": "esa_cca"}, {"attention": "none"}, {"shallow": "bsconv_shortcut"}], ids=str
)
def test_fast_runs_every_variant_of_the_block(variant, cpu_fusions):
    """The fast path's blocks are the network's own dataflow with other steps: each ablation runs and equals
    the module form."""
    torch.manual_seed(0)
    model = LKDN(num_feat=12, num_blocks=2, fused=True, **variant).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = torch.rand(2, 3, 17, 19, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(
        fast_output(model, x, cpu_fusions), reference_output(model, x), atol=ATOL, rtol=0
    )


def test_fast_copies_the_weights(random_lkdn_s):
    """The fast module holds its own copy: changing the model afterwards does not change it."""
    model = lkdn_s(fused=True).eval()
    model.load_state_dict(random_lkdn_s.state_dict())
    fast = FastLKDN(model).eval()
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    before = fast(x)
    with torch.no_grad():
        model.c1.bias.add_(1.0)
    torch.testing.assert_close(fast(x), before, atol=0, rtol=0)


def test_auto_picks_the_fastest_exact_path_on_a_cpu(random_lkdn_s):
    runner = make_runner(random_lkdn_s, "cpu")
    assert runner.name == (
        "native" if native_available() is None else f"fast (native unavailable: {native_available()})"
    )
    x = torch.rand(2, 3, 9, 14, generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(runner(x), reference_output(random_lkdn_s, x), atol=ATOL, rtol=0)


def test_auto_on_other_devices_is_the_module_form():
    """No CPU-only trick reaches a GPU by default: auto is the reference form there (no device needed)."""
    assert default_backend("cpu") == "native"
    assert default_backend("cuda") == "reference"
    assert default_backend(torch.device("cuda", 1)) == "reference"


def test_runner_names_say_which_path_ran(random_lkdn_s):
    assert make_runner(random_lkdn_s, "cpu", "reference").name == "reference"
    assert make_runner(random_lkdn_s, "cpu", "fast").name == "fast"
    assert make_runner(random_lkdn_s, "cpu", "fast", precision="bf16").name == "fast+bf16"


def test_unknown_backend_or_precision_is_a_clear_error(random_lkdn_s):
    with pytest.raises(ValueError, match="unknown backend 'tensorrt'; choose one of auto, reference, fast"):
        make_runner(random_lkdn_s, "cpu", "tensorrt")
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        make_runner(random_lkdn_s, "cpu", "fast", precision="fp8")
    with pytest.raises(ValueError, match="float32 only"):
        make_runner(random_lkdn_s, "cpu", "onnxruntime", precision="bf16")
    with pytest.raises(ValueError, match="cuda_graph backend runs float32 .* on a CUDA GPU only"):
        make_runner(random_lkdn_s, "cpu", "cuda_graph")
    with pytest.raises(ValueError, match="fused model"):
        make_runner(lkdn_s(fused=False), "cpu", "fast")
    assert set(BACKENDS) >= {"auto", "reference", "fast", "native", "cuda_graph", "onnxruntime"}


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("backend", ["reference", "fast"])
def test_half_widths_run_and_stay_close(backend, precision):
    """bf16 / fp16 are opt-in approximations: float32 out, close to (not equal to) the float32 output."""
    torch.manual_seed(3)
    model = perturbed(LKDN(num_feat=8, num_blocks=1, fused=True), seed=4)
    x = torch.rand(1, 3, 8, 6, generator=torch.Generator().manual_seed(7))
    runner = make_runner(model, "cpu", backend, precision=precision)
    out = runner(x)
    assert out.dtype == torch.float32 and runner.name == f"{backend}+{precision}"
    expected = reference_output(model, x)
    assert 0 < (out - expected).abs().max() < (0.1 if precision == "bf16" else 0.01)


def test_precision_auto_is_pytorchs_default_and_tf32_needs_a_gpu(random_lkdn_s):
    """auto: float32 on a CPU, TF32 convolutions on CUDA (what the kit's script got unasked); tf32 on a CPU is
    refused rather than silently run as float32."""
    assert default_precision("cpu") == "fp32" and default_precision(torch.device("cuda", 1)) == "tf32"
    assert make_runner(random_lkdn_s, "cpu", "reference", precision="auto").name == "reference"
    with pytest.raises(ValueError, match="'tf32' is a mode of NVIDIA GPUs' tensor cores; on a CPU use fp32"):
        make_runner(random_lkdn_s, "cpu", "fast", precision="tf32")


@pytest.mark.parametrize("tf32", [False, True])
def test_cuda_float32_sets_the_flags_for_its_block_only(tf32):
    """The runners' float32 mode on CUDA (no CUDA needed to read the flags): set inside, every flag still readable
    by the older and the newer API (torch.compile reads the older), the caller's setting back afterwards."""
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    before = conv.fp32_precision, torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision()
    with cuda_float32(tf32):
        assert torch.backends.cudnn.allow_tf32 is tf32 and torch.backends.cuda.matmul.allow_tf32 is tf32
        assert (conv.fp32_precision == "tf32") is tf32 and (matmul.fp32_precision == "tf32") is tf32
        assert torch.get_float32_matmul_precision() == ("high" if tf32 else "highest")
    after = conv.fp32_precision, torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision()
    assert after == before
