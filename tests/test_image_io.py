"""Image files in RGB, atomic writes, and the tensor <-> uint8 conversion."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from utils.errors import UserError
from utils.image_io import read_rgb, read_size, to_tensor, to_uint8, write_rgb


@pytest.fixture
def rgb() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (13, 17, 3), dtype=np.uint8)


def test_write_then_read_is_lossless_and_rgb(tmp_path, rgb):
    path = tmp_path / "a.png"
    write_rgb(path, rgb)
    np.testing.assert_array_equal(read_rgb(path), rgb)
    np.testing.assert_array_equal(cv2.imread(str(path))[..., ::-1], rgb)  # on disk: a normal (BGR) file
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]  # no temp file left behind


def test_write_replaces_and_creates_folders(tmp_path, rgb):
    path = tmp_path / "new" / "deeper" / "a.png"
    write_rgb(path, rgb)
    write_rgb(path, rgb[::-1].copy())
    np.testing.assert_array_equal(read_rgb(path), rgb[::-1])


def test_grayscale_becomes_three_channels(tmp_path):
    gray = np.arange(30, dtype=np.uint8).reshape(5, 6)
    cv2.imwrite(str(tmp_path / "g.png"), gray)
    img = read_rgb(tmp_path / "g.png")
    assert img.shape == (5, 6, 3)
    for c in range(3):
        np.testing.assert_array_equal(img[..., c], gray)


def test_read_size(tmp_path, rgb):
    write_rgb(tmp_path / "a.png", rgb)
    write_rgb(tmp_path / "a.jpg", rgb)
    assert read_size(tmp_path / "a.png") == (13, 17)
    assert read_size(tmp_path / "a.jpg") == (13, 17)


@pytest.mark.parametrize("content", [None, b"", b"not an image at all"])
def test_unreadable_image_names_the_file(tmp_path, content):
    path = tmp_path / "bad.png"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UserError, match="bad.png"):
        read_rgb(path)


def test_unwritable_folder_is_a_user_error(tmp_path, rgb):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(UserError, match="cannot write"):
        write_rgb(blocker / "a.png", rgb)


def test_write_rejects_wrong_arrays(tmp_path, rgb):
    with pytest.raises(ValueError):
        write_rgb(tmp_path / "a.png", rgb.astype(np.float32))
    with pytest.raises(ValueError):
        write_rgb(tmp_path / "a.png", rgb[..., 0])


def test_to_tensor_and_back(rgb):
    tensor = to_tensor(rgb)
    assert tensor.shape == (1, 3, 13, 17) and tensor.dtype == torch.float32
    torch.testing.assert_close(tensor[0, 1], torch.from_numpy(rgb[..., 1]).float() / 255, rtol=0, atol=0)
    np.testing.assert_array_equal(to_uint8(tensor), rgb)
    np.testing.assert_array_equal(to_uint8(tensor[0].half()), rgb)  # 3xHxW and half precision


def test_to_uint8_clamps_and_rounds_half_to_even():
    assert to_uint8(torch.tensor([-0.5, 1.5, 0.0]).view(3, 1, 1)).ravel().tolist() == [0, 255, 0]
    # values whose float32 product with 255 is exactly k + 0.5: the kit's numpy round goes to the even neighbour
    halves = [k for k in range(254) if np.float32((k + 0.5) / 255) * np.float32(255) == k + 0.5]
    assert halves
    for k in halves:
        value = torch.full((3, 1, 1), float(np.float32((k + 0.5) / 255)))
        assert to_uint8(value)[0, 0, 0] == (k if k % 2 == 0 else k + 1)


def test_to_uint8_rejects_batches():
    with pytest.raises(ValueError):
        to_uint8(torch.zeros(2, 3, 4, 4))
