"""Reading and writing RGB images, and the one tensor<->image conversion everything uses.

cv2 works in BGR; these helpers convert at the file boundary so the rest of the code only sees RGB. `to_uint8`
quantises exactly as the NTIRE kit does (clamp to [0, 1], * 255, round half to even in float32), so PSNR
computed on our outputs matches the organizers'.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch

from utils.errors import UserError


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
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(encoded.tobytes())
        os.replace(tmp, path)
    except OSError as err:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        reason = err.strerror or err
        raise UserError(f"{path}: cannot write the image ({reason}); choose a writable folder") from err


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
