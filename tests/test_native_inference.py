"""The native CPU kernels compute the reference module form's function, and fail over to `fast` with a reason."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch
from sanitized import run_sanitized
from test_fast_inference import ATOL, ODD_SHAPES, perturbed, reference_output

from models import LKDN, lkdn, lkdn_s
from train import native_conv_grad
from utils.files.checkpoint import build_model_from_checkpoint
from utils.files.image_io import read_rgb, to_tensor
from utils.native import build as native_build
from utils.runtime import native as native_lkdn
from utils.runtime.backends import make_runner
from utils.runtime.native import KernelUnavailable, NativeLKDN, native_available

needs_kernels = pytest.mark.skipif(
    native_available() is not None, reason=f"native kernels unavailable: {native_available()}"
)


def native_output(
    model: LKDN, x: torch.Tensor, threads: int | None = None, build: tuple[str, ...] = ()
) -> torch.Tensor:
    module = NativeLKDN(model, build).eval()
    previous = torch.get_num_threads()
    try:
        if threads:
            torch.set_num_threads(threads)
        with torch.inference_mode():
            return module(x)
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def random_lkdn_s() -> LKDN:
    torch.manual_seed(10)
    return perturbed(lkdn_s(fused=True), seed=11)


@needs_kernels
@pytest.mark.parametrize("shape", ODD_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_native_equals_reference_random_weights(random_lkdn_s, shape):
    x = torch.rand(shape, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(
        native_output(random_lkdn_s, x), reference_output(random_lkdn_s, x), atol=ATOL, rtol=0
    )


@needs_kernels
def test_native_equals_reference_for_the_papers_lkdn():
    """56 channels and 8 blocks: the other width the kernels are built for."""
    torch.manual_seed(2)
    model = perturbed(lkdn(fused=True), seed=3)
    x = torch.rand(2, 3, 19, 23, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(native_output(model, x), reference_output(model, x), atol=ATOL, rtol=0)


@needs_kernels
def test_wide_images_run_in_column_strips_with_the_same_result(random_lkdn_s):
    """Rows wider than 256 pixels are cut into column strips (3 here) that hand on the columns their steps read
    beside their own."""
    x = torch.rand(1, 3, 14, 520, generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(
        native_output(random_lkdn_s, x), reference_output(random_lkdn_s, x), atol=ATOL, rtol=0
    )


@needs_kernels
@pytest.mark.slow
def test_narrow_strips_give_the_bits_of_one_strip(random_lkdn_s):
    """Strips of 32-38 columns (the narrowest the kernels cut: each hands on up to 12 columns a step reads left
    of the next strip's) compute every column once, as one strip does: the same bits, for one thread, for a team
    sharing each strip's rows and for one taking the strips in turn, on widths that do not divide evenly and a
    batch of two."""
    g = torch.Generator().manual_seed(9)
    narrow, whole = ("-DLKDN_STRIP=32",), ("-DLKDN_STRIP=4096",)
    in_turn = ("-DLKDN_STRIP=32", "-DLKDN_TEAM_COLUMNS=1")  # a team's members take the strips in turn
    for shape in ((2, 3, 9, 150), (1, 3, 23, 97), (1, 3, 5, 64)):
        x = torch.rand(shape, generator=g)
        one = native_output(random_lkdn_s, x, threads=1, build=whole)
        for threads, build in ((1, narrow), (2, narrow), (2, in_turn), (3, in_turn)):
            torch.testing.assert_close(
                native_output(random_lkdn_s, x, threads=threads, build=build), one, atol=0, rtol=0
            )
    torch.testing.assert_close(one, reference_output(random_lkdn_s, x), atol=ATOL, rtol=0)


@needs_kernels
@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("shape", [(2, 3, 13, 53), (1, 3, 7, 530)], ids=["2x13x53", "7x530-strips"])
def test_threads_share_each_row_and_give_the_same_output_as_one(random_lkdn_s, threads, shape):
    """Threads split every step's columns (at least 16 each, so 53 columns take 3) and meet at a barrier per
    row: the result is bit-identical to one thread's, also across column strips."""
    x = torch.rand(shape, generator=torch.Generator().manual_seed(5))
    one = native_output(random_lkdn_s, x, threads=1)
    torch.testing.assert_close(native_output(random_lkdn_s, x, threads=threads), one, atol=0, rtol=0)
    torch.testing.assert_close(one, reference_output(random_lkdn_s, x), atol=ATOL, rtol=0)


@needs_kernels
def test_workspace_is_reused_across_sizes_and_never_returned(random_lkdn_s):
    module = NativeLKDN(random_lkdn_s).eval()
    g = torch.Generator().manual_seed(6)
    inputs = [torch.rand(1, 3, h, w, generator=g) for h, w in ((24, 20), (9, 31), (24, 20), (30, 30))]
    with torch.inference_mode():
        outputs = [module(x) for x in inputs]
    for x, out in zip(inputs, outputs, strict=True):  # earlier outputs untouched by later calls
        torch.testing.assert_close(out, reference_output(random_lkdn_s, x), atol=ATOL, rtol=0)
    module.release_workspace()
    assert module._workspace == {}


@needs_kernels
def test_the_rings_memory_kept_between_calls_never_leaks_into_a_result(random_lkdn_s):
    """The kernels keep their row rings' memory between calls and zero only the columns outside the image: a
    small image gives the same bits before and after a wide one (whose column strips write those columns'
    places) and one run by a team of threads (other ring sizes)."""
    g = torch.Generator().manual_seed(12)
    small, wide = torch.rand(1, 3, 9, 20, generator=g), torch.rand(1, 3, 6, 530, generator=g)
    module = NativeLKDN(random_lkdn_s).eval()
    with torch.inference_mode():
        first = module(small)
        module(wide)
        torch.testing.assert_close(module(small), first, atol=0, rtol=0)
        native_output(random_lkdn_s, wide, threads=2)
        torch.testing.assert_close(module(small), first, atol=0, rtol=0)
    torch.testing.assert_close(first, reference_output(random_lkdn_s, small), atol=ATOL, rtol=0)


@needs_kernels
def test_native_equals_reference_authors_checkpoint(reference_dir, benchmark_dir):
    model = build_model_from_checkpoint(reference_dir / "LKDN-S_del_rep_x4.pth").eval()
    x = torch.from_numpy(np.load(reference_dir / "golden_input_1x3x37x53.npy"))
    golden = torch.from_numpy(np.load(reference_dir / "golden_LKDN-S_x4_deploy.npy"))
    torch.testing.assert_close(native_output(model, x), golden, atol=ATOL, rtol=0)
    lr = benchmark_dir / "Set5" / "LR_bicubic_x4"
    crops = [to_tensor(read_rgb(lr / name))[..., :61, :47] for name in ("baby.png", "butterfly.png")]
    real = torch.cat(crops)
    torch.testing.assert_close(native_output(model, real), reference_output(model, real), atol=ATOL, rtol=0)


@needs_kernels
def test_runner_choice_and_names(random_lkdn_s):
    assert make_runner(random_lkdn_s, "cpu").name == "native"
    assert make_runner(random_lkdn_s, "cpu", "native").name == "native"
    assert make_runner(random_lkdn_s, "cpu", precision="bf16").name == "fast+bf16"  # native is float32 only
    with pytest.raises(ValueError, match="float32 only"):
        make_runner(random_lkdn_s, "cpu", "native", precision="bf16")
    small = perturbed(LKDN(num_feat=10, num_blocks=2, fused=True))
    with pytest.raises(ValueError, match="42 or 56 channels, not 10"):
        make_runner(small, "cpu", "native")
    runner = make_runner(small, "cpu")
    assert runner.name == "fast (native unavailable: the C++ kernels are built for 42 or 56 channels, not 10)"
    x = torch.rand(1, 3, 7, 9, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(runner(x), reference_output(small, x), atol=ATOL, rtol=0)


def test_native_is_cpu_only(random_lkdn_s):
    with pytest.raises(ValueError, match="CPU only"):
        make_runner(random_lkdn_s, "meta", "native")


@pytest.fixture
def fresh_kernel_build(tmp_path, monkeypatch):
    """An empty kernel cache and no loaded kernel (restored afterwards)."""
    monkeypatch.setenv("LKDN_KERNEL_CACHE", str(tmp_path))
    native_lkdn.KERNEL.forget()
    yield tmp_path
    native_lkdn.KERNEL.forget()


def test_without_a_compiler_auto_falls_back_and_says_why(fresh_kernel_build, monkeypatch, random_lkdn_s):
    monkeypatch.setenv("CXX", str(fresh_kernel_build / "no-such-compiler"))
    reason = native_available()
    assert reason is not None and "no-such-compiler" in reason
    with pytest.raises(KernelUnavailable):
        NativeLKDN(random_lkdn_s)
    assert make_runner(random_lkdn_s, "cpu").name == f"fast (native unavailable: {reason})"
    with pytest.raises(ValueError, match="backend 'native'"):
        make_runner(random_lkdn_s, "cpu", "native")


def test_a_failed_build_leaves_no_library_behind(fresh_kernel_build, monkeypatch):
    monkeypatch.setenv("CXX", "false")  # a "compiler" that exits 1
    assert "false failed" in native_available()
    assert list(fresh_kernel_build.iterdir()) == []


@needs_kernels
def test_a_build_is_cached_by_source_compiler_and_cpu(fresh_kernel_build):
    assert native_available() is None
    (library,) = fresh_kernel_build.glob("lkdn_cpu_*.so")
    stamp = library.stat().st_mtime_ns
    native_lkdn.KERNEL.forget()
    assert native_available() is None
    assert [p.name for p in fresh_kernel_build.iterdir()] == [library.name]
    assert library.stat().st_mtime_ns == stamp


@needs_kernels
def test_a_changed_header_rebuilds_the_library(tmp_path, monkeypatch):
    """The cache key covers the headers beside a source (vector.h), not only the source."""
    monkeypatch.setenv("LKDN_KERNEL_CACHE", str(tmp_path / "cache"))
    source, header = tmp_path / "k.cpp", tmp_path / "lanes.h"
    source.write_text('#include "lanes.h"\nextern "C" int lanes() { return LANES; }\n')
    header.write_text("#define LANES 16\n")
    assert native_build.build_and_load(source).lanes() == 16
    header.write_text("#define LANES 8\n")
    assert native_build.build_and_load(source).lanes() == 8
    assert len(list((tmp_path / "cache").glob("k_*.so"))) == 2


@needs_kernels
def test_the_portable_build_computes_the_same_function(fresh_kernel_build, monkeypatch, random_lkdn_s):
    """The build without -march=native (the fallback for compilers that lack it): generic vector code."""
    monkeypatch.setattr(native_build, "FLAG_SETS", (["-O3"],))
    x = torch.rand(2, 3, 19, 27, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(
        native_output(random_lkdn_s, x), reference_output(random_lkdn_s, x), atol=ATOL, rtol=0
    )


# the kernels' two GELUs: the rational erf, and the table of quartics (AVX-512 builds; elsewhere the rational again)
GELUS = {"rational": (), "table": ("-DLKDN_GELU_TABLE=1",)}


@needs_kernels
@pytest.mark.parametrize("gelu", GELUS)
def test_the_kernels_gelu_is_torchs_exact_gelu(gelu):
    """The kernels' GELU against torch's exact-erf GELU, on a dense grid."""
    x = torch.linspace(-12, 12, 2**20)
    y = torch.empty_like(x)
    native_lkdn.load_kernel(GELUS[gelu]).lkdn_gelu(x.data_ptr(), y.data_ptr(), x.numel())
    error = (y - torch.nn.functional.gelu(x)).abs()
    assert (error / x.abs().clamp(min=1)).max() < 5e-7  # a few float32 ulps of max(1, |x|)


@needs_kernels
@pytest.mark.parametrize("gelu", GELUS)
def test_the_kernels_gelu_is_exactly_zero_and_x_far_out(gelu):
    """Where erf(x / sqrt 2) is -1 or 1 to float precision, GELU is 0 or x exactly: an erf a few ulps from -1
    there would leave x times those ulps (6e-6 at x = -100), growing with |x|."""
    far = torch.logspace(0.8, 4, 4096)  # 6.3 .. 10^4
    x = torch.cat([-far, far])
    y = torch.empty_like(x)
    native_lkdn.load_kernel(GELUS[gelu]).lkdn_gelu(x.data_ptr(), y.data_ptr(), x.numel())
    assert torch.equal(y[: far.numel()], torch.zeros_like(far))
    assert torch.equal(y[far.numel() :], far)


def test_the_kernels_gelu_table_is_the_scripts_fit():
    """lkdn_cpu.cpp's kGeluTable holds what scripts/gelu_table.py fits (to float32, whatever LAPACK's last bits)."""
    text = native_lkdn.SOURCE.read_text()
    body = text[text.index("float kGeluTable[") :]
    body = body[: body.index("};")]
    committed = np.array([float(v) for v in re.findall(r"(-?[0-9.]+e[-+][0-9]+)f", body)], dtype=np.float32)
    spec = importlib.util.spec_from_file_location(
        "gelu_table", native_lkdn.SOURCE.parents[3] / "scripts" / "gelu_table.py"
    )
    gelu_table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gelu_table)
    fitted = gelu_table.fit().astype(np.float32).ravel()
    assert committed.shape == fitted.shape
    np.testing.assert_allclose(committed, fitted, rtol=1e-5, atol=1e-10)


@needs_kernels
def test_the_kernels_refuse_tensors_they_cannot_read(random_lkdn_s):
    module = NativeLKDN(random_lkdn_s)
    x = torch.rand(1, 6, 5, 42)
    with pytest.raises(ValueError, match="contiguous float32 CPU"):
        native_lkdn.lkdb_forward(x.transpose(1, 2), module.packed0, 1e-6)
    with pytest.raises(ValueError, match="contiguous float32 CPU"):
        native_lkdn.lkdb_forward(x.double(), module.packed0, 1e-6)
    with pytest.raises(ValueError, match="contiguous float32 CPU"):
        native_lkdn.lkdb_forward(x, module.packed_tail, 1e-6)  # the wrong weights
    with pytest.raises(ValueError, match="contiguous float32 CPU"):
        native_lkdn.lkdn_tail([x] * 4 + [x[:, :3]], x, module.packed_tail)


# the upsampler as Winograd F(2,3) (its own reads of the rings), strips of 64 columns (up to 8 on 530, each
# handing on columns to the next) and a team that takes the strips in turn (each waiting for the one before)
WINOGRAD = ("-DLKDN_WINOGRAD=1", "-DLKDN_STRIP=64", "-DLKDN_TEAM_COLUMNS=1")


@pytest.mark.parametrize(
    "threads, upsampler",
    [("std::thread", ()), ("OpenMP", ()), ("std::thread", WINOGRAD)],
    ids=["threads", "openmp", "winograd-strips64-columns"],
)
def test_the_kernels_stay_in_bounds_under_address_sanitizer(tmp_path, threads, upsampler):
    """The whole network at 42 and 56 channels on odd sizes (1x1 to 3x530, batch 1-3, 1-3 threads), built with
    ASan and UBSan: the kernels read raw memory through row rings and masked vector moves."""
    flags = ("-pthread",) if threads == "std::thread" else ("-pthread", "-fopenmp")
    run_sanitized("lkdn_cpu_bounds.cpp", native_lkdn.SOURCE, tmp_path, flags + upsampler)


@pytest.mark.parametrize("upsampler", [(), WINOGRAD], ids=["direct", "winograd-strips64-columns"])
def test_the_threads_share_rings_without_a_data_race(tmp_path, upsampler):
    """The same harness under ThreadSanitizer: a team's threads write and read the same rings, ordered only by
    their barrier, or (team=columns) read the columns another thread's strip hands on, ordered by its count of
    rows done (OpenMP's runtime is not instrumented, so the std::thread build is the one checked)."""
    run_sanitized(
        "lkdn_cpu_bounds.cpp", native_lkdn.SOURCE, tmp_path, ("-pthread", *upsampler), sanitizers="thread"
    )


@pytest.mark.parametrize("march", ["skylake-avx512", "sandybridge"])
@pytest.mark.parametrize("kernel", ["lkdn_cpu", "conv_grad"])
def test_the_kernels_compile_for_other_x86_targets(tmp_path, kernel, march):
    """The AVX-512 build (16-lane vectors and its intrinsics) and the AVX-without-AVX2 one compile on any machine
    with GCC or Clang; a CPU without those cannot run them, so this is what is checked there. This CPU's build
    and the portable one run in the tests above."""
    compiler = shutil.which("g++") or shutil.which("clang++")
    if compiler is None:
        pytest.skip("no C++ compiler")
    source = native_lkdn.SOURCE if kernel == "lkdn_cpu" else native_conv_grad.SOURCE
    cmd = [compiler, "-O1", "-std=c++17", f"-march={march}", "-fopenmp", "-pthread",
           f"-I{native_build.INCLUDE}", "-c", str(source), "-o", str(tmp_path / "kernel.o")]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
