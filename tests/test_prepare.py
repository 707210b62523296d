"""LR preparation: made once with matlab_imresize, official LR used when present, sub-images aligned."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data.prepare import crop_subimages, prepare_pairs
from utils.errors import UserError
from utils.files.image_io import read_rgb, write_rgb
from utils.image.imresize import matlab_imresize

ROOT = Path(__file__).resolve().parents[1]


def _random_image(shape: tuple[int, int], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)


@pytest.fixture
def hr_folder(tmp_path) -> Path:
    folder = tmp_path / "hr"
    write_rgb(folder / "b_large.png", _random_image((50, 43), 1))  # not a multiple of 4: cropped to 48x40
    write_rgb(folder / "a_small.png", _random_image((20, 24), 2))
    write_rgb(folder / "c_wide.png", _random_image((33, 64), 3))
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_makes_lr_with_matlab_imresize_from_the_cropped_hr(hr_folder, tmp_path):
    pairs = prepare_pairs([hr_folder], tmp_path / "cache")
    assert [p.hr.name for p in pairs] == ["a_small.png", "b_large.png", "c_wide.png"]  # sorted: stable order
    assert (pairs.generated, pairs.reused, pairs.official, pairs.skipped_small) == (3, 0, 0, 0)
    large = pairs[1]
    assert large.lr_size == (12, 10) and large.lr.parent == tmp_path / "cache"
    expected = matlab_imresize(read_rgb(large.hr)[:48, :40], 1 / 4)
    np.testing.assert_array_equal(read_rgb(large.lr), expected)


def test_cached_lr_is_reused_until_the_hr_changes(hr_folder, tmp_path):
    first = prepare_pairs([hr_folder], tmp_path / "cache")
    again = prepare_pairs([hr_folder], tmp_path / "cache")
    assert (again.generated, again.reused) == (0, 3)
    assert [p.lr for p in again] == [p.lr for p in first]
    changed = hr_folder / "c_wide.png"
    write_rgb(changed, _random_image((33, 64), 4))
    os.utime(changed, ns=(10**18, 10**18))  # a distinct mtime even on coarse-clock file systems
    third = prepare_pairs([hr_folder], tmp_path / "cache")
    assert (third.generated, third.reused) == (1, 2)
    assert third[2].lr != first[2].lr
    np.testing.assert_array_equal(read_rgb(third[2].lr), matlab_imresize(read_rgb(changed)[:32], 1 / 4))


def test_small_images_are_skipped_and_counted(hr_folder, tmp_path):
    pairs = prepare_pairs([hr_folder], tmp_path / "cache", min_size=32)
    assert [p.hr.name for p in pairs] == ["b_large.png", "c_wide.png"]
    assert pairs.skipped_small == 1
    with pytest.raises(UserError, match="smaller than 100"):
        prepare_pairs([hr_folder], tmp_path / "cache", min_size=100)


def test_uses_official_div2k_lr(tmp_path):
    hr = _random_image((24, 32), 5)
    lr = _random_image((6, 8), 6)  # deliberately not bicubic: proves the file is used, not remade
    write_rgb(tmp_path / "DIV2K_train_HR" / "0001.png", hr)
    write_rgb(tmp_path / "DIV2K_train_LR_bicubic" / "X4" / "0001x4.png", lr)
    pairs = prepare_pairs([tmp_path / "DIV2K_train_HR"], tmp_path / "cache")
    assert pairs.official == 1 and pairs.generated == 0
    assert pairs[0].lr == tmp_path / "DIV2K_train_LR_bicubic" / "X4" / "0001x4.png"
    assert not (tmp_path / "cache").exists()


def test_official_lr_of_the_wrong_size_is_a_user_error(tmp_path):
    write_rgb(tmp_path / "DIV2K_train_HR" / "0001.png", _random_image((24, 32), 5))
    write_rgb(tmp_path / "DIV2K_train_LR_bicubic" / "X4" / "0001x4.png", _random_image((6, 7), 6))
    with pytest.raises(UserError, match="0001x4.png"):
        prepare_pairs([tmp_path / "DIV2K_train_HR"], tmp_path / "cache")


def test_file_lists_and_duplicates(hr_folder, tmp_path):
    listing = tmp_path / "train.txt"
    listing.write_text(f"# training images\nhr/c_wide.png\n\n{hr_folder / 'a_small.png'}\nhr/c_wide.png\n")
    pairs = prepare_pairs([listing, hr_folder], tmp_path / "cache")
    assert [p.hr.name for p in pairs] == ["c_wide.png", "a_small.png", "b_large.png"]
    listing.write_text("hr/missing.png\n")
    with pytest.raises(UserError, match=r"train.txt:1"):
        prepare_pairs([listing], tmp_path / "cache")


def test_no_images_names_the_sources(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="empty"):
        prepare_pairs([tmp_path / "empty"], tmp_path / "cache")
    with pytest.raises(UserError, match="nowhere"):
        prepare_pairs([tmp_path / "nowhere"], tmp_path / "cache")


def test_subimages_are_aligned_and_cover_the_image(hr_folder, tmp_path):
    pairs = prepare_pairs([hr_folder], tmp_path / "cache")
    list_file = crop_subimages(pairs, tmp_path / "sub", crop_size=16, step=8)
    subs = prepare_pairs([list_file], tmp_path / "unused")
    assert subs.official == len(subs) and not (tmp_path / "unused").exists()
    large = pairs[1]  # LR 12x10 -> LR crops of 4 at steps of 2: 5 x 4 positions
    large_subs = [p for p in subs if p.hr.name.startswith("b_large")]
    assert len(large_subs) == 20
    hr, lr = read_rgb(large.hr)[:48, :40], read_rgb(large.lr)
    covered = np.zeros(hr.shape[:2], dtype=bool)
    for sub in large_subs:
        sub_hr, sub_lr = read_rgb(sub.hr), read_rgb(sub.lr)
        assert sub_hr.shape == (16, 16, 3) and sub_lr.shape == (4, 4, 3)
        positions = [(y, x) for y in range(9) for x in range(7)]
        y, x = next((y, x) for y, x in positions if np.array_equal(lr[y : y + 4, x : x + 4], sub_lr))
        np.testing.assert_array_equal(sub_hr, hr[4 * y : 4 * y + 16, 4 * x : 4 * x + 16])
        covered[4 * y : 4 * y + 16, 4 * x : 4 * x + 16] = True
    assert covered.all()
    again = crop_subimages(pairs, tmp_path / "sub", crop_size=16, step=8)
    assert again.read_text() == list_file.read_text()


def test_images_smaller_than_the_crop_are_kept_whole(hr_folder, tmp_path):
    pairs = prepare_pairs([hr_folder / "a_small.png"], tmp_path / "cache")  # 20x24 HR
    subs = prepare_pairs([crop_subimages(pairs, tmp_path / "sub", crop_size=24, step=12)], tmp_path / "cache")
    assert len(subs) == 1 and subs[0].lr_size == (5, 6)
    np.testing.assert_array_equal(read_rgb(subs[0].hr), read_rgb(hr_folder / "a_small.png"))


def test_cli_reports_and_fails_cleanly(hr_folder, tmp_path):
    cmd = [sys.executable, "-m", "data.prepare", "--hr", str(hr_folder), "--cache", str(tmp_path / "cache")]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
    assert "3 pairs at x4" in done.stdout and "3 LR made" in done.stdout
    cmd[4] = str(tmp_path / "nowhere")
    failed = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert failed.returncode == 2 and "nowhere" in failed.stderr and "Traceback" not in failed.stderr
