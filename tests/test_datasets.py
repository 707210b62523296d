"""PatchDataset: a pure function of (seed, k), aligned, all 8 dihedral transforms; ValidationSet layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from data.datasets import VIRTUAL_LENGTH, PatchDataset, ValidationSet, dihedral, load_pair
from data.prepare import Pair, prepare_pairs
from utils.errors import UserError
from utils.files.image_io import write_rgb

SCALE = 4


def _write_pair(hr_path: Path, lr_path: Path, lr_shape: tuple[int, int], seed: int) -> np.ndarray:
    """LR random, HR its nearest-neighbour x4 upscale: every HR pixel of a block equals its LR pixel."""
    lr = np.random.default_rng(seed).integers(0, 256, (*lr_shape, 3), dtype=np.uint8)
    write_rgb(lr_path, lr)
    write_rgb(hr_path, np.repeat(np.repeat(lr, SCALE, axis=0), SCALE, axis=1))
    return lr


@pytest.fixture
def pairs(tmp_path):
    root = tmp_path / "train"
    for i, shape in enumerate([(12, 15), (20, 9), (10, 10)]):
        _write_pair(root / "HR" / f"im{i}.png", root / f"LR_bicubic_x{SCALE}" / f"im{i}.png", shape, seed=i)
    return prepare_pairs([root / "HR"], tmp_path / "cache", scale=SCALE)


def _make(pairs, **kwargs) -> PatchDataset:
    options = dict(lr_patch=6, scale=SCALE, seed=3) | kwargs
    return PatchDataset(pairs, **options)


INDICES = [0, 1, 2, 17, 1000, 2**40 + 5, VIRTUAL_LENGTH - 1]


def test_sample_k_is_the_same_in_every_instance(pairs):
    one, two, from_disk = _make(pairs), _make(pairs), _make(pairs, in_memory=False)
    for k in INDICES:
        lr, hr, _ = one[k]
        for other in (two, from_disk):
            lr2, hr2, _ = other[k]
            torch.testing.assert_close(lr2, lr, rtol=0, atol=0)
            torch.testing.assert_close(hr2, hr, rtol=0, atol=0)
    other_seed = _make(pairs, seed=4)
    assert any(not torch.equal(other_seed[k][1], one[k][1]) for k in range(5))
    assert len(one) == VIRTUAL_LENGTH


def test_sample_k_is_the_same_in_dataloader_workers(pairs):
    dataset = _make(pairs)
    loader = DataLoader(dataset, batch_size=3, sampler=INDICES[1:], num_workers=2)
    batches = list(loader)
    lr_batches = torch.cat([lr for lr, _, _ in batches])
    hr_batches = torch.cat([hr for _, hr, _ in batches])
    torch.testing.assert_close(lr_batches, torch.stack([dataset[k][0] for k in INDICES[1:]]), rtol=0, atol=0)
    torch.testing.assert_close(hr_batches, torch.stack([dataset[k][1] for k in INDICES[1:]]), rtol=0, atol=0)


def test_patches_are_aligned_and_well_formed(pairs):
    dataset = _make(pairs)
    for k in range(200):
        lr, hr, _ = dataset[k]
        assert lr.shape == (3, 6, 6) and hr.shape == (3, 24, 24)
        assert lr.dtype == hr.dtype == torch.float32
        assert float(lr.min()) >= 0 and float(lr.max()) <= 1
        expanded = lr.repeat_interleave(SCALE, dim=1).repeat_interleave(SCALE, dim=2)
        torch.testing.assert_close(hr, expanded, rtol=0, atol=0)  # HR block (i, j) <-> LR pixel (i, j)


def test_crop_is_taken_where_drawn(pairs):
    dataset = _make(pairs, augment=False)
    for k in range(50):
        image, top, left, _ = dataset.draw(k)
        lr_img = torch.from_numpy(load_pair(pairs[image], SCALE)[0]).permute(2, 0, 1).float() / 255
        torch.testing.assert_close(dataset[k][0], lr_img[:, top : top + 6, left : left + 6], rtol=0, atol=0)


def test_augmentation_covers_the_8_dihedral_transforms(pairs):
    plain, augmented = _make(pairs, augment=False), _make(pairs)
    seen = set()
    for k in range(100):
        base = (plain[k][0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        aug = (augmented[k][0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        matches = [t for t in range(8) if np.array_equal(dihedral(base, t), aug)]
        assert augmented.draw(k)[3] in matches  # same crop, the drawn transform applied
        seen.add(augmented.draw(k)[3])
    assert seen == set(range(8))
    distinct = {dihedral(np.arange(4).reshape(2, 2, 1), t).tobytes() for t in range(8)}
    assert len(distinct) == 8


def test_images_smaller_than_the_patch_are_refused(pairs):
    with pytest.raises(UserError, match="min_size=44"):
        _make(pairs, lr_patch=11)
    with pytest.raises(IndexError):
        _make(pairs)[-1]


def test_patch_from_a_bare_pair_list(pairs):
    bare = [Pair(hr=p.hr, lr=p.lr, lr_size=p.lr_size) for p in pairs]
    torch.testing.assert_close(_make(bare)[5][1], _make(pairs)[5][1], rtol=0, atol=0)


def test_validation_benchmark_layout(tmp_path):
    root = tmp_path / "Set2"
    lr_b = _write_pair(root / "HR" / "b.png", root / "LR_bicubic_x4" / "b.png", (4, 5), seed=1)
    _write_pair(root / "HR" / "a.png", root / "LR_bicubic_x4" / "a.png", (3, 3), seed=2)
    val = ValidationSet(root)
    assert val.name == "Set2" and len(val) == 2
    names = [name for name, _, _ in val]
    assert names == ["a", "b"]
    name, lr, hr = val[1]
    np.testing.assert_array_equal(lr, lr_b)
    assert hr.shape == (16, 20, 3) and hr.dtype == np.uint8


@pytest.mark.parametrize("lr_folder", ["DIV2K_valid_LR", "DIV2K_valid_LR_bicubic/X4"])
def test_validation_div2k_layout_crops_hr_to_a_multiple_of_the_scale(tmp_path, lr_folder):
    lr = np.random.default_rng(0).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    hr = np.random.default_rng(1).integers(0, 256, (22, 27, 3), dtype=np.uint8)  # 5x6 at x4, plus a margin
    write_rgb(tmp_path / "DIV2K_valid_HR" / "0801.png", hr)
    write_rgb(tmp_path / lr_folder / "0801x4.png", lr)
    [(name, lr_out, hr_out)] = list(ValidationSet(tmp_path))
    assert name == "0801"
    np.testing.assert_array_equal(lr_out, lr)
    np.testing.assert_array_equal(hr_out, hr[:20, :24])


def test_validation_errors_name_the_path(tmp_path):
    with pytest.raises(UserError, match="nowhere"):
        ValidationSet(tmp_path / "nowhere")
    (tmp_path / "odd").mkdir()
    with pytest.raises(UserError, match="odd"):
        ValidationSet(tmp_path / "odd")
    root = tmp_path / "Set1"
    _write_pair(root / "HR" / "a.png", root / "LR_bicubic_x4" / "a.png", (3, 3), seed=2)
    write_rgb(root / "LR_bicubic_x4" / "a.png", np.zeros((3, 4, 3), dtype=np.uint8))
    with pytest.raises(UserError, match=r"LR_bicubic_x4/a\.png"):
        ValidationSet(root)
    write_rgb(root / "HR" / "b.png", np.zeros((12, 12, 3), dtype=np.uint8))
    (root / "LR_bicubic_x4" / "a.png").unlink()
    with pytest.raises(UserError, match=r"a\.png: missing LR"):
        ValidationSet(root)


def test_validation_on_set14_gives_rgb(benchmark_dir):
    val = ValidationSet(benchmark_dir / "Set14")
    assert len(val) == 14
    for name, lr, hr in val:
        assert lr.ndim == 3 and lr.shape[2] == 3, name  # grayscale bridge.png comes back as RGB
        assert hr.shape == (lr.shape[0] * 4, lr.shape[1] * 4, 3), name
