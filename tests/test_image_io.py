"""Image files in RGB, atomic writes, the tensor <-> uint8 conversion, and any user image (depth, alpha, EXIF)."""

from __future__ import annotations

import os
import stat
import struct
import zlib

import cv2
import numpy as np
import pytest
import torch
from exif_files import encode_with_orientation, exif_block, uncompressed_tiff

from utils.errors import UserError
from utils.files.image_io import (
    apply_orientation,
    exif_orientation,
    image_to_tensor,
    quantize,
    read_image,
    read_rgb,
    read_size,
    to_tensor,
    to_uint8,
    write_image,
    write_rgb,
)


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


# ------------------------------------------------------------------------------ read_image / write_image


@pytest.fixture
def bgr() -> np.ndarray:
    """Asymmetric content, so every orientation gives a different array."""
    img = np.random.default_rng(1).integers(0, 256, (12, 19, 3), dtype=np.uint8)
    img[:3, :5] = (0, 0, 255)
    return img


def cv2_upright(data: bytes) -> np.ndarray:
    """cv2's own EXIF handling, the oracle: IMREAD_ANYCOLOR | IMREAD_ANYDEPTH applies the orientation."""
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH)


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".webp"])
@pytest.mark.parametrize("endian", ["<", ">"])
def test_exif_orientation_is_found_in_each_container(suffix, endian, bgr):
    for orientation in range(1, 9):
        assert exif_orientation(encode_with_orientation(suffix, bgr, orientation, endian)) == orientation


def test_exif_orientation_defaults_to_upright(bgr):
    assert exif_orientation(cv2.imencode(".jpg", bgr)[1]) == 1  # no EXIF
    assert exif_orientation(b"not an image") == 1
    jpeg = cv2.imencode(".jpg", bgr)[1].tobytes()
    cut = b"Exif\0\0" + exif_block(6)[:16]  # the IFD entry ends before its value
    assert exif_orientation(jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(cut) + 2) + cut + jpeg[2:]) == 1
    assert exif_orientation(uncompressed_tiff(bgr, 3)) == 3


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".webp"])
def test_read_image_turns_pixels_upright_as_cv2_does(tmp_path, suffix, bgr):
    for orientation in range(1, 9):
        data = encode_with_orientation(suffix, bgr, orientation)
        path = tmp_path / f"o{orientation}{suffix}"
        path.write_bytes(data)
        image = read_image(path)
        expected = cv2_upright(data)[..., ::-1]
        assert image.rgb.shape == expected.shape, orientation
        np.testing.assert_array_equal(image.rgb, expected, err_msg=f"orientation {orientation}")


def test_read_image_orients_alpha_with_the_colour(tmp_path, bgr):
    alpha = np.arange(12 * 19, dtype=np.uint8).reshape(12, 19)
    data = encode_with_orientation(".png", np.dstack([bgr, alpha]), 6)
    (tmp_path / "a.png").write_bytes(data)
    image = read_image(tmp_path / "a.png")
    np.testing.assert_array_equal(image.rgb, cv2_upright(data)[..., ::-1])
    np.testing.assert_array_equal(image.alpha, np.rot90(alpha, -1))  # orientation 6: rotate 90 clockwise
    assert not image.grayscale


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_read_image_does_not_orient_tiff_twice(tmp_path, dtype, bgr):
    rgb = bgr[..., ::-1].astype(dtype) * (257 if dtype == np.uint16 else 1)
    for orientation in (1, 3, 6, 8):
        data = uncompressed_tiff(np.ascontiguousarray(rgb), orientation)
        (tmp_path / "a.tif").write_bytes(data)
        image = read_image(tmp_path / "a.tif")
        assert image.rgb.dtype == dtype
        np.testing.assert_array_equal(image.rgb, cv2_upright(data)[..., ::-1])
        np.testing.assert_array_equal(image.rgb, apply_orientation(rgb, orientation))


def test_apply_orientation_inverts_what_each_tag_means():
    img = np.arange(6).reshape(2, 3)
    assert apply_orientation(img, 6).tolist() == np.rot90(img, -1).tolist()
    assert apply_orientation(img, 8).tolist() == np.rot90(img, 1).tolist()
    assert apply_orientation(img, 3).tolist() == np.rot90(img, 2).tolist()
    with pytest.raises(ValueError):
        apply_orientation(img, 9)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_write_then_read_image_keeps_16_bits_grayscale_and_alpha(tmp_path, suffix, channels):
    shape = (9, 14) if channels == 1 else (9, 14, channels)
    pixels = np.random.default_rng(channels).integers(0, 65536, shape, dtype=np.uint16)
    write_image(tmp_path / f"a{suffix}", pixels)
    image = read_image(tmp_path / f"a{suffix}")
    assert image.grayscale == (channels == 1)
    if channels == 1:
        np.testing.assert_array_equal(image.rgb, np.repeat(pixels[..., None], 3, axis=2))
    else:
        np.testing.assert_array_equal(image.rgb, pixels[..., :3])
    np.testing.assert_array_equal(image.alpha, pixels[..., 3] if channels == 4 else None)
    assert [p.name for p in tmp_path.iterdir()] == [f"a{suffix}"]


def _png(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "empty file"),
        (b"not an image at all", "not a readable image"),
        (_png(0, 0), "not a readable image"),  # libpng rejects a zero-size header
        (cv2.imencode(".tif", np.zeros((4, 4, 3), np.float32))[1].tobytes(), "float32 samples"),
    ],
)
def test_read_image_names_the_file_and_the_problem(tmp_path, content, message):
    path = tmp_path / "bad.tif"
    path.write_bytes(content)
    with pytest.raises(UserError, match=f"bad.tif: {message}"):
        read_image(path)
    with pytest.raises(UserError, match="missing.png"):
        read_image(tmp_path / "missing.png")


def test_write_image_refuses_what_cv2_would_degrade(tmp_path, rgb):
    with pytest.raises(UserError, match="16-bit"):
        write_image(tmp_path / "a.jpg", rgb.astype(np.uint16))
    with pytest.raises(UserError, match="alpha"):
        write_image(tmp_path / "a.jpg", np.dstack([rgb, rgb[..., 0]]))
    with pytest.raises(UserError, match="cannot write '.xyz'"):
        write_image(tmp_path / "a.xyz", rgb)
    with pytest.raises(ValueError):
        write_image(tmp_path / "a.png", rgb.astype(np.float32))
    assert list(tmp_path.iterdir()) == []


def test_image_to_tensor_and_quantize(rgb):
    torch.testing.assert_close(image_to_tensor(rgb), to_tensor(rgb), rtol=0, atol=0)
    deep = rgb.astype(np.uint16) * 257 + 3
    torch.testing.assert_close(
        image_to_tensor(deep),
        torch.from_numpy(deep.transpose(2, 0, 1)[None] / 65535).float(),
        rtol=0,
        atol=1e-7,
    )
    assert (
        quantize(image_to_tensor(deep), np.uint16).numpy().transpose(0, 2, 3, 1)[0].tolist() == deep.tolist()
    )
    values = torch.rand(1, 3, 40, 40, generator=torch.Generator().manual_seed(0)) * 1.2 - 0.1
    np.testing.assert_array_equal(quantize(values, np.uint8)[0].permute(1, 2, 0).numpy(), to_uint8(values))
    assert (
        quantize(values, np.uint8).dtype == torch.uint8 and quantize(values, np.uint16).dtype == torch.int32
    )
    assert quantize(torch.tensor([-1.0, 0.5, 2.0]), np.uint16).tolist() == [
        0,
        32768,
        65535,
    ]  # 32767.5: half to even


def test_written_files_get_ordinary_permissions(tmp_path, rgb):
    umask = os.umask(0o022)
    os.umask(umask)
    write_image(tmp_path / "a.png", rgb)
    write_rgb(tmp_path / "b.png", rgb)
    for name in ("a.png", "b.png"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask
