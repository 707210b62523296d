"""A weights file says which network it holds, every path serves every variant or says why, and weights that
would give garbage are refused, never run to a wrong image with exit code 0."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch
from test_bad_input import _one_line_error

import hubconf
import inference
import test_demo
from models import LKDN, fuse_model
from train import state as run_state
from train.config import TrainConfig
from train.trainer import Trainer
from utils.errors import UserError
from utils.files import convert
from utils.files.atomic_write import save_atomic
from utils.files.checkpoint import build_model_from_checkpoint, load_checkpoint, read_checkpoint, save_weights
from utils.image.imresize import matlab_imresize
from utils.runtime import onnx_export
from utils.runtime.backends import backend_support, make_runner

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "lka+rbsb": {},
    "esa_cca": {"attention": "esa_cca"},
    "none": {"attention": "none"},
    "bsconv_shortcut": {"shallow": "bsconv_shortcut"},
    "bsconv": {"shallow": "bsconv"},
}
SMALL = {"num_feat": 42, "num_blocks": 2}  # the native kernels' width, two blocks: every backend can serve it


def _x(*shape: int) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(0))


def _perturbed(model: LKDN) -> LKDN:
    """`model` with every parameter moved off its initialisation (zero-initialised branches included)."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    return model.eval()


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    """Training HR images, a validation folder and a DIV2K-layout folder, all large enough for ESA (LR >= 15)."""
    root = tmp_path_factory.mktemp("variant_data")
    rng = np.random.default_rng(0)

    def picture(size: int) -> np.ndarray:
        small = rng.random((size // 8, size // 8, 3))
        return (cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC).clip(0, 1) * 255).astype(
            np.uint8
        )

    (root / "hr").mkdir()
    for i in range(3):
        cv2.imwrite(str(root / "hr" / f"{i}.png"), picture(96))
    for sub in ("HR", "LR_bicubic_x4"):
        (root / "val" / sub).mkdir(parents=True)
    (root / "div2k" / "DIV2K_valid_HR").mkdir(parents=True)
    (root / "div2k" / "DIV2K_valid_LR").mkdir(parents=True)
    hr = picture(80)
    cv2.imwrite(str(root / "val" / "HR" / "a.png"), hr)
    cv2.imwrite(str(root / "val" / "LR_bicubic_x4" / "a.png"), matlab_imresize(hr, 1 / 4))
    cv2.imwrite(str(root / "div2k" / "DIV2K_valid_HR" / "0801.png"), hr)
    cv2.imwrite(str(root / "div2k" / "DIV2K_valid_LR" / "0801x4.png"), matlab_imresize(hr, 1 / 4))
    (root / "photos").mkdir()
    cv2.imwrite(str(root / "photos" / "p.png"), picture(24))
    return {**{k: root / k for k in ("hr", "val", "div2k", "photos")}, "cache": root / "cache"}


@pytest.fixture(scope="module", params=list(VARIANTS))
def trained(request, images, tmp_path_factory) -> dict:
    """A run of each variant, two steps: its training-form last.pth and its fused export."""
    run = tmp_path_factory.mktemp(f"run_{request.param}")
    config = TrainConfig(
        **SMALL, **VARIANTS[request.param], train_sources=[str(images["hr"])], cache_dir=str(images["cache"]),
        val_dirs=[str(images["val"])], run_dir=str(run), lr_patch=16, batch_size=2, total_iters=2,
        val_every=2, save_every=2, num_workers=0, in_memory=True, threads=1, log_every=1,
    )  # fmt: skip
    Trainer(config, resume=False).run()
    return {"name": request.param, "run": run, "last": run / "models" / "last.pth",
            "fused": run / "models" / "fused.pth", "safetensors": run / "models" / "fused.safetensors"}  # fmt: skip


def _training_form(path: Path) -> LKDN:
    return build_model_from_checkpoint(path, fused=False).eval().set_online_fusion(False)


# --- the identity travels with the weights ----------------------------------------------------------------


def test_every_file_a_run_writes_carries_the_network_it_holds(trained):
    expected = {**SMALL, **VARIANTS[trained["name"]]}
    run = trained["run"]
    iteration = run_state.latest_resumable(run)
    files = [
        trained["last"],
        run_state.weights_path(run, iteration),
        trained["fused"],
        trained["safetensors"],
    ]
    for path in files:
        declared = read_checkpoint(path).config
        assert declared is not None, path
        assert {k: declared[k] for k in expected} == expected, path
    assert read_checkpoint(trained["fused"]).config["fused"] is True
    assert read_checkpoint(trained["last"]).config["fused"] is False
    state = torch.load(run_state.state_path(run, iteration), weights_only=True)
    assert state["lkdn_config"] == read_checkpoint(trained["last"]).config


def test_a_fused_variant_reloads_as_itself_through_every_backend_that_serves_it(trained):
    training = _training_form(trained["last"])
    x = _x(1, 3, 17, 21)
    with torch.inference_mode():
        expected = training(x)
    for path in (trained["fused"], trained["safetensors"]):
        fused = build_model_from_checkpoint(path)
        assert fused.config() == {**training.config(), "fused": True, "upsampler": fused.config()["upsampler"],
                                  "online_fusion": fused.config()["online_fusion"]}  # fmt: skip
        served = [name for name, reason in backend_support(fused, "cpu", "fp32").items() if reason is None]
        assert {"reference", "fast"} <= set(served)
        for backend in served:
            out = make_runner(build_model_from_checkpoint(path), "cpu", backend)(x)
            torch.testing.assert_close(out, expected, rtol=0, atol=1e-5, msg=f"{path.name} via {backend}")


def test_auto_serves_every_variant_and_says_what_it_chose(trained):
    fused = build_model_from_checkpoint(trained["fused"])
    runner = make_runner(fused, "cpu", "auto")
    reasons = backend_support(fused, "cpu", "fp32")
    if reasons["native"] is None:
        assert runner.name == "native"
    else:  # the fastest that serves it, named with the reason native does not
        assert runner.name.startswith("fast (native unavailable: ") and reasons["native"] in runner.name


def test_every_entry_point_runs_every_variant_in_both_forms(trained, images, tmp_path):
    x = _x(1, 3, 16, 16)
    for form in ("last", "fused"):
        path = trained[form]
        expected = fuse_model(_training_form(trained["last"]))
        with torch.inference_mode():
            wanted = expected(x)
        save = tmp_path / form
        assert test_demo.main(["--data_dir", str(images["div2k"]), "--save_dir", str(save), "--model_path",
                               str(path), "--allow_partial"]) == 0  # fmt: skip
        (entry,) = json.loads((save / "results.json").read_text()).values()
        assert entry["valid_num_images"] == 1 and entry["valid_ave_psnr"] > 0
        assert (
            inference.main(["-i", str(images["photos"]), "-o", str(save / "up"), "--model_path", str(path)])
            == 0
        )
        assert (save / "up" / "p_x4.png").is_file()
        converted = convert.convert(path, save / "c.safetensors", fused=True)
        model = hubconf.from_checkpoint(str(converted))
        with torch.inference_mode():
            torch.testing.assert_close(model(x), wanted, rtol=0, atol=1e-5)
        assert (
            model.config()["attention"] == expected.attention
            and model.config()["shallow"] == expected.shallow
        )
    data, _ = onnx_export.export_onnx(build_model_from_checkpoint(trained["last"]))
    declared = {p.key: p.value for p in onnx.load_from_string(data).metadata_props}
    assert json.loads(declared["lkdn_config"])["attention"] == expected.attention


def test_the_loader_refuses_a_file_whose_declared_network_is_not_the_one_asked_for(trained):
    held = VARIANTS[trained["name"]].get("attention", "lka")
    wanted = LKDN(**SMALL, attention="none" if held == "lka" else "lka", fused=True)
    with pytest.raises(UserError) as refused:
        load_checkpoint(trained["fused"], wanted)
    message = str(refused.value)
    assert str(trained["fused"]) in message and "\n" not in message and "attention" in message


def test_a_declaration_that_does_not_fit_the_tensors_is_refused(tmp_path):
    state = LKDN(**SMALL, fused=True).state_dict()
    path = tmp_path / "lying.pth"
    torch.save(
        {"params": state, "lkdn_config": {**LKDN(**SMALL, fused=True).config(), "num_blocks": 3}}, path
    )
    with pytest.raises(UserError, match="lying.pth: .*num_blocks"):
        build_model_from_checkpoint(path)


def test_a_fused_file_without_a_declaration_is_guessed_exactly_or_refused(tmp_path):
    """Without a declaration the keys decide; a shortcut block's keys differ from a plain BSConv's, so the
    fused shortcut variant can never load as the plain network (whose output differs)."""
    shortcut = _perturbed(LKDN(**SMALL, shallow="bsconv_shortcut", fused=True))
    torch.save(shortcut.state_dict(), tmp_path / "bare.pth")  # no declaration: keys only
    loaded = build_model_from_checkpoint(tmp_path / "bare.pth")
    x = _x(1, 3, 12, 12)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), shortcut(x), rtol=0, atol=0)
    plain_keys = {k.replace(".body.", "."): v for k, v in shortcut.state_dict().items()}
    torch.save(plain_keys, tmp_path / "plain.pth")
    assert build_model_from_checkpoint(tmp_path / "plain.pth").shallow in ("rbsb", "bsconv")


def test_the_bundled_checkpoint_declares_its_network():
    from models import BUNDLED_CHECKPOINT

    for path in (BUNDLED_CHECKPOINT, BUNDLED_CHECKPOINT.with_suffix(".safetensors")):
        declared = read_checkpoint(path).config
        assert declared is not None and declared["num_feat"] == 42 and declared["fused"] is True, path


# --- weights and outputs checked where they are produced ---------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.int32, torch.bool, torch.int64])
def test_a_non_floating_tensor_is_refused_naming_it(tmp_path, dtype):
    state = LKDN(num_feat=8, num_blocks=1, fused=True).state_dict()
    state["B1.c6.bias"] = torch.ones(state["B1.c6.bias"].shape, dtype=dtype)
    for suffix in (".safetensors", ".pth"):
        path = tmp_path / f"ints{suffix}"
        save_weights(state, path)
        with pytest.raises(
            UserError, match=f"ints{suffix}: tensor 'B1.c6.bias' is {str(dtype).split('.')[-1]}"
        ):
            read_checkpoint(path)


def _huge(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = LKDN(num_feat=8, num_blocks=1, fused=True)
    state = model.state_dict()
    state["c1.bias"] = state["c1.bias"] * 1e37  # finite, and the output is finite too: but far outside [0, 1]
    return save_atomic(state, tmp_path / "huge.pth")


@pytest.mark.parametrize("tensor", ["c1.bias", "fea_conv.pw.weight"])
def test_a_runner_refuses_to_return_garbage(tmp_path, tensor):
    model = LKDN(num_feat=8, num_blocks=1, fused=True).eval()
    with torch.no_grad():
        model.state_dict()[tensor].mul_(1e37)
    for backend in ("reference", "fast"):
        with pytest.raises(ValueError, match="NaN|Inf|far outside"):
            make_runner(model, "cpu", backend)(_x(1, 3, 8, 8))


def test_huge_weights_stop_test_demo_and_inference_with_one_line_and_nothing_written(tmp_path, images):
    bad = _huge(tmp_path)
    done = subprocess.run([sys.executable, "test_demo.py", "--data_dir", str(images["div2k"]), "--save_dir",
                           str(tmp_path / "r"), "--model_path", str(bad), "--allow_partial"], cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    assert "huge.pth" in _one_line_error(done)
    assert not (tmp_path / "r" / "results.json").exists() and not list((tmp_path / "r").rglob("*.png"))
    done = subprocess.run([sys.executable, "inference.py", "-i", str(images["photos"]), "-o", str(tmp_path / "up"),
                           "--model_path", str(bad)], cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    assert "huge.pth" in _one_line_error(done)
    assert not list(tmp_path.glob("up/*.png"))


# --- backends say what they serve ---------------------------------------------------------------------------


def test_an_explicit_backend_that_cannot_serve_the_model_is_one_line(tmp_path, images):
    path = save_weights(LKDN(**SMALL, attention="esa_cca", fused=True).state_dict(), tmp_path / "esa.pth")
    done = subprocess.run([sys.executable, "inference.py", "-i", str(images["photos"]), "-o", str(tmp_path / "up"),
                           "--model_path", str(path), "--backend", "native"], cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    assert "attention" in _one_line_error(done)


def test_an_image_too_small_for_esa_is_one_line_naming_it(tmp_path, capsys):
    model = LKDN(num_feat=8, num_blocks=1, attention="esa_cca", fused=True)
    path = save_weights(model.state_dict(), tmp_path / "esa.pth")
    photos = tmp_path / "photos"
    photos.mkdir()
    cv2.imwrite(str(photos / "tiny.png"), np.zeros((8, 9, 3), np.uint8))
    assert inference.main(["-i", str(photos), "-o", str(tmp_path / "up"), "--model_path", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{photos / 'tiny.png'}: " in err and "15" in err and "Traceback" not in err


# --- results, inputs, memory ---------------------------------------------------------------------------------


def _write_rows(path: str, first: int, count: int) -> None:
    for i in range(first, first + count):
        test_demo.update_results(Path(path), f"model{i}", {"i": i})


def test_concurrent_runs_keep_every_results_row(tmp_path):
    import multiprocessing

    path = tmp_path / "results.json"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_write_rows, args=(str(path), 40 * w, 40)) for w in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert len(json.loads(path.read_text())) == 120


def test_a_glob_over_a_symlink_loop_ends_and_finds_each_image_once(tmp_path):
    folder = tmp_path / "dir"
    (folder / "sub").mkdir(parents=True)
    cv2.imwrite(str(folder / "sub" / "a.png"), np.zeros((4, 4, 3), np.uint8))
    (folder / "sub" / "loop").symlink_to(folder, target_is_directory=True)
    done = subprocess.run(
        [sys.executable, "-c", "import inference; print(len(inference.collect_inputs([__import__('sys').argv[1]])))",
         f"{folder}/**/*.png"], cwd=ROOT, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0 and done.stdout.split() == ["1"], done.stderr


def test_a_fifo_as_input_is_refused_not_waited_on(tmp_path):
    import os

    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(UserError, match="pipe.png: not a regular file"):
        inference.collect_inputs([str(fifo)])


def test_a_memory_refusal_names_the_file(tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    cv2.imwrite(str(photos / "big.png"), np.zeros((1200, 1300, 3), np.uint8))
    torch.manual_seed(0)
    path = save_weights(LKDN(num_feat=8, num_blocks=1, fused=True).state_dict(), tmp_path / "w.pth")
    code = inference.main(
        ["-i", str(photos), "-o", str(tmp_path / "up"), "--model_path", str(path), "--max-memory", "64M"]
    )
    assert code == 2
    assert f"{photos / 'big.png'}: " in capsys.readouterr().err
