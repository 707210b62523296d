"""Reading and writing RGB images, and the one tensor<->image conversion everything uses.

cv2 works in BGR; these helpers convert at the file boundary so the rest of the code only sees RGB. `to_uint8`
quantises exactly as the NTIRE kit does (clamp to [0, 1], * 255, round half to even in float32), so PSNR
computed on our outputs matches the organizers'.

`read_rgb`/`write_rgb` are the 8-bit RGB pair of the datasets and the challenge; `read_image`/`write_image`
take whatever a user's file holds (8 or 16 bits, grayscale, alpha) for inference.py. cv2 applies the EXIF
orientation only when it drops alpha and depth (IMREAD_COLOR), so `read_image` reads the EXIF orientation
itself (`exif_orientation`) and turns the pixels upright.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from utils.errors import UserError
from utils.files.atomic_write import write_bytes_atomic


def read_rgb(path: str | Path) -> np.ndarray:
    """Decode an image file to uint8 HxWx3 RGB; grayscale is repeated to 3 channels, alpha dropped."""
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)  # not cv2.imread: that fails silently on non-ASCII paths
    except OSError as err:
        raise UserError(f"{path}: cannot read the image ({err.strerror or err}); check the path") from err
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if img is None:
        raise UserError(f"{path}: not a readable image (empty or corrupt file); replace or remove it")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image file; reads only the header of a PNG, so listing many images is cheap."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(24)
    except OSError as err:
        raise UserError(f"{path}: cannot read the image ({err.strerror or err}); check the path") from err
    if len(head) == 24 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        return int.from_bytes(head[20:24], "big"), int.from_bytes(head[16:20], "big")
    return read_rgb(path).shape[:2]


def write_rgb(path: str | Path, img: np.ndarray) -> None:
    """Encode a uint8 HxWx3 RGB image (format from the suffix) atomically: never a half-written file."""
    path = Path(path)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"write_rgb: expected a uint8 HxWx3 image, got {img.dtype} {img.shape}")
    ok, encoded = cv2.imencode(path.suffix or ".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    if not ok:
        raise UserError(f"{path}: cannot encode an image as '{path.suffix}'; use .png")
    write_bytes_atomic(path, encoded.tobytes())


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """uint8 HxWx3 RGB -> float32 1x3xHxW in [0, 1]."""
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"to_tensor: expected a uint8 HxWx3 image, got {img.dtype} {img.shape}")
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float().div_(255.0).unsqueeze(0)


def to_uint8(tensor: torch.Tensor) -> np.ndarray:
    """1x3xHxW or 3xHxW float tensor in [0, 1], any device -> uint8 HxWx3, quantised as the NTIRE kit."""
    if tensor.dim() == 4 and tensor.shape[0] == 1:
        tensor = tensor[0]
    if tensor.dim() != 3 or tensor.shape[0] != 3:
        raise ValueError(f"to_uint8: expected a 1x3xHxW or 3xHxW tensor, got shape {tuple(tensor.shape)}")
    img = tensor.detach().float().clamp(0, 1).cpu().numpy().transpose(1, 2, 0)
    return np.uint8((img * 255.0).round())


# ------------------------------------------------------------------------------ any image file, for inference.py

SAMPLE_MAX = {np.dtype(np.uint8): 255, np.dtype(np.uint16): 65535}
HIGH_DEPTH_SUFFIXES = (".png", ".tif", ".tiff")  # cv2 silently saturates 16-bit data to 8 bits elsewhere
NO_ALPHA_SUFFIXES = (".jpg", ".jpeg", ".jpe")  # cv2 silently drops alpha there
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_ORIENTATION_TAG = 0x0112


@dataclass
class DecodedImage:
    """An image file's pixels, upright: RGB (grayscale repeated to three channels) and alpha, same dtype."""

    rgb: np.ndarray  # HxWx3, uint8 or uint16
    alpha: np.ndarray | None  # HxW, or None
    grayscale: bool  # the file held one colour channel


def _tiff_orientation(block: memoryview) -> int:
    """Tag 0x0112 of the first IFD of a TIFF (or EXIF) block; 1 (upright) when absent or malformed."""
    if bytes(block[:6]) == b"Exif\0\0":  # some writers keep JPEG's prefix in PNG and WebP too
        block = block[6:]
    endian = {b"II": "<", b"MM": ">"}.get(bytes(block[:2]))
    if endian is None or len(block) < 8:
        return 1
    ifd = struct.unpack_from(endian + "I", block, 4)[0]
    if ifd + 2 > len(block):
        return 1
    for i in range(struct.unpack_from(endian + "H", block, ifd)[0]):
        entry = ifd + 2 + 12 * i
        if entry + 12 > len(block):
            break
        tag, kind = struct.unpack_from(endian + "HH", block, entry)
        if tag == _ORIENTATION_TAG and kind == 3:  # SHORT
            value = struct.unpack_from(endian + "H", block, entry + 8)[0]
            return value if 1 <= value <= 8 else 1
    return 1


def _jpeg_exif(data: memoryview) -> memoryview | None:
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xDA, 0xD9):  # start of scan, end of image: metadata comes before
            return None
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker == 0xE1 and bytes(data[pos + 4 : pos + 10]) == b"Exif\0\0":
            return data[pos + 10 : pos + 2 + length]
        pos += 2 + length
    return None


def _png_exif(data: memoryview) -> memoryview | None:
    pos = len(_PNG_SIGNATURE)
    while pos + 8 <= len(data):
        length, kind = int.from_bytes(data[pos : pos + 4], "big"), bytes(data[pos + 4 : pos + 8])
        if kind == b"eXIf":
            return data[pos + 8 : pos + 8 + length]
        if kind in (b"IDAT", b"IEND"):  # decoders read eXIf only before the image data
            return None
        pos += 12 + length
    return None


def _webp_exif(data: memoryview) -> memoryview | None:
    pos = 12
    while pos + 8 <= len(data):
        kind, length = bytes(data[pos : pos + 4]), int.from_bytes(data[pos + 4 : pos + 8], "little")
        if kind == b"EXIF":
            return data[pos + 8 : pos + 8 + length]
        pos += 8 + length + (length & 1)  # chunks are padded to an even size
    return None


def _is_tiff(data: memoryview) -> bool:
    return bytes(data[:4]) in (b"II*\0", b"MM\0*")


def exif_orientation(data: bytes | memoryview | np.ndarray) -> int:
    """The EXIF orientation (1-8) of an encoded JPEG, PNG, WebP or TIFF file; 1 (upright) when it has none."""
    view = memoryview(data).cast("B")
    if bytes(view[:2]) == b"\xff\xd8":
        block = _jpeg_exif(view)
    elif bytes(view[:8]) == _PNG_SIGNATURE:
        block = _png_exif(view)
    elif bytes(view[:4]) == b"RIFF" and bytes(view[8:12]) == b"WEBP":
        block = _webp_exif(view)
    elif _is_tiff(view):
        block = view
    else:
        block = None
    try:
        return _tiff_orientation(block) if block is not None else 1
    except struct.error:  # a truncated block: treat as no orientation, as viewers do
        return 1


def apply_orientation(img: np.ndarray, orientation: int) -> np.ndarray:
    """The upright image of pixels stored with an EXIF orientation (1-8), as a viewer displays it."""
    transforms = {
        1: lambda a: a,
        2: lambda a: a[:, ::-1],  # mirrored left-right
        3: lambda a: a[::-1, ::-1],  # rotated 180
        4: lambda a: a[::-1],  # mirrored top-bottom
        5: lambda a: a.swapaxes(0, 1),  # transposed
        6: lambda a: a[::-1].swapaxes(0, 1),  # to be rotated 90 degrees clockwise
        7: lambda a: a[::-1, ::-1].swapaxes(0, 1),  # transverse
        8: lambda a: a[:, ::-1].swapaxes(0, 1),  # to be rotated 90 degrees counter-clockwise
    }
    if orientation not in transforms:
        raise ValueError(f"apply_orientation: EXIF orientation is 1-8, got {orientation}")
    return np.ascontiguousarray(transforms[orientation](img))


def _frame_count(path: Path) -> int:
    """How many frames or pages a GIF, WebP or TIFF holds (1 for the formats that have one)."""
    if path.suffix.lower() not in (".gif", ".webp", ".tif", ".tiff"):
        return 1
    try:
        return int(cv2.imcount(str(path)))
    except cv2.error:
        return 1


def read_image(path: str | Path) -> DecodedImage:
    """Decode any 8- or 16-bit image opencv reads (grayscale, RGB, RGBA), upright per its EXIF orientation."""
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as err:
        raise UserError(f"{path}: cannot read the file ({err.strerror or err}); check the path") from err
    if data.size == 0:
        raise UserError(f"{path}: empty file (0 bytes); replace or remove it")
    try:
        img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    except cv2.error:  # some malformed headers raise instead of returning None
        img = None
    if img is None:
        raise UserError(
            f"{path}: not a readable image (corrupt, truncated, or not PNG/JPEG/BMP/TIFF/WebP); "
            "replace or remove it"
        )
    if img.size == 0:
        raise UserError(
            f"{path}: zero-size image ({img.shape[1]}x{img.shape[0]} pixels); replace or remove it"
        )
    frames = _frame_count(path)
    if frames > 1:
        raise UserError(
            f"{path}: an animated or multi-page image ({frames} frames); only one would be upscaled, so export "
            "the frame you want as a PNG first"
        )
    if img.dtype not in SAMPLE_MAX:
        raise UserError(
            f"{path}: {img.dtype} samples are not supported; convert it to 8 or 16 bits per channel"
        )
    if not _is_tiff(memoryview(data)):  # the TIFF decoder applies the Orientation tag itself
        img = apply_orientation(img, exif_orientation(data))
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim == 2:
        return DecodedImage(cv2.cvtColor(img, cv2.COLOR_GRAY2RGB), None, grayscale=True)
    if img.shape[2] == 3:
        return DecodedImage(cv2.cvtColor(img, cv2.COLOR_BGR2RGB), None, grayscale=False)
    if img.shape[2] == 4:
        return DecodedImage(cv2.cvtColor(img, cv2.COLOR_BGRA2RGB), img[..., 3].copy(), grayscale=False)
    raise UserError(f"{path}: {img.shape[2]} channels are not supported; convert it to RGB or RGBA")


def write_image(path: str | Path, pixels: np.ndarray, params: tuple[int, ...] = ()) -> None:
    """Encode an HxW (grayscale), HxWx3 (RGB) or HxWx4 (RGBA) uint8 or uint16 image (format from the suffix)
    atomically; refuses what opencv would silently degrade (16 bits outside PNG/TIFF, alpha in JPEG). `params`
    go to cv2.imencode (e.g. (cv2.IMWRITE_PNG_COMPRESSION, 9))."""
    path = Path(path)
    channels = 1 if pixels.ndim == 2 else pixels.shape[2] if pixels.ndim == 3 else 0
    if pixels.dtype not in SAMPLE_MAX or channels not in (1, 3, 4):
        raise ValueError(
            f"write_image: expected a uint8/uint16 HxW, HxWx3 or HxWx4 image, got {pixels.dtype} {pixels.shape}"
        )
    suffix = path.suffix.lower() or ".png"
    if pixels.dtype == np.uint16 and suffix not in HIGH_DEPTH_SUFFIXES:
        raise UserError(f"{path}: '{suffix}' cannot hold 16-bit samples; use .png or .tif")
    if channels == 4 and suffix in NO_ALPHA_SUFFIXES:
        raise UserError(f"{path}: '{suffix}' cannot hold an alpha channel; use .png, .tif or .webp")
    if channels > 1:
        pixels = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR if channels == 3 else cv2.COLOR_RGBA2BGRA)
    try:
        ok, encoded = cv2.imencode(suffix, pixels, list(params))
    except cv2.error:  # no encoder for this suffix
        ok = False
    if not ok:
        raise UserError(f"{path}: opencv cannot write '{suffix}' images; use .png")
    write_bytes_atomic(path, encoded.tobytes())


def image_to_tensor(img: np.ndarray) -> torch.Tensor:
    """uint8 or uint16 HxWxC -> float32 1xCxHxW in [0, 1] (divided by the dtype's maximum; equals `to_tensor` on
    uint8)."""
    if img.dtype not in SAMPLE_MAX or img.ndim != 3:
        raise ValueError(f"image_to_tensor: expected a uint8/uint16 HxWxC image, got {img.dtype} {img.shape}")
    scaled = img.transpose(2, 0, 1).astype(np.float32) / np.float32(SAMPLE_MAX[img.dtype])
    return torch.from_numpy(scaled).unsqueeze(0)


def quantize(tensor: torch.Tensor, dtype: np.dtype | type) -> torch.Tensor:
    """Float tensor in [0, 1] -> integer samples of `dtype` (uint8 or uint16), on the tensor's device, rounded as
    `to_uint8` (clamp, scale in float32, half to even); uint8 comes back as torch.uint8, uint16 as torch.int32."""
    top = SAMPLE_MAX[np.dtype(dtype)]
    samples = tensor.detach().float().clamp(0, 1).mul(float(top)).round()
    return samples.to(torch.uint8 if top == 255 else torch.int32)
