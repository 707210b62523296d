"""Training patches that are a pure function of (seed, index), and the validation pairs.

Sample k of `PatchDataset` draws its image, crop and dihedral transform from
`np.random.default_rng([seed, k])` and nothing else, so it is identical in any worker, process or rank, and
after a resume: the trainer's sampler only hands out the global indices it needs (e.g. step * batch + i,
split across ranks). The length is huge on purpose; never pair the dataset with a shuffling sampler (it would
build a permutation of 2**62 indices).

An image that fails to decode does not end a run: the sample is redrawn (from `[seed, k, attempt]`, so still a
pure function of its index) and the item carries the failure's message for the trainer to log and count.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from data.prepare import Pair, PairList
from utils.errors import UserError
from utils.files.image_io import read_rgb, read_size, to_tensor

VIRTUAL_LENGTH = 2**62
MAX_REDRAWS = 16  # unreadable images in a row before a sample gives up
VALIDATION_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def dihedral(img: np.ndarray, transform: int) -> np.ndarray:
    """One of the 8 flips/rotations of an HxWxC image: bit 0 flips left-right, bits 1-2 rotate by 90°."""
    if transform & 1:
        img = img[:, ::-1]
    return np.rot90(img, transform >> 1)


def load_pair(pair: Pair, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """(LR, HR cropped to LR size * scale) as uint8 HxWx3 RGB; UserError if the files do not match."""
    lr, hr = read_rgb(pair.lr), read_rgb(pair.hr)
    lr_h, lr_w = pair.lr_size
    if lr.shape[:2] != (lr_h, lr_w):
        raise UserError(
            f"{pair.lr}: size {lr.shape[:2]}, expected {pair.lr_size}; it changed, prepare the pairs again"
        )
    if hr.shape[0] < lr_h * scale or hr.shape[1] < lr_w * scale:
        raise UserError(
            f"{pair.hr}: size {hr.shape[:2]} too small for its LR {pair.lr} at x{scale}; prepare pairs again"
        )
    return lr, hr[: lr_h * scale, : lr_w * scale]


class PatchDataset(Dataset):
    """Aligned (LR, HR) float32 CHW RGB patches in [0, 1]; item k depends only on (seed, k)."""

    def __init__(
        self,
        pairs: PairList | Sequence[Pair],
        lr_patch: int,
        scale: int,
        seed: int,
        augment: bool = True,
        in_memory: bool = True,
    ) -> None:
        if isinstance(pairs, PairList) and pairs.scale != scale:
            raise ValueError(f"PatchDataset: pairs prepared at x{pairs.scale}, dataset asked for x{scale}")
        if lr_patch < 1 or seed < 0:
            raise ValueError(f"PatchDataset: need lr_patch >= 1 and seed >= 0, got {lr_patch} and {seed}")
        self.pairs = list(pairs)
        if not self.pairs:
            raise UserError("no training pairs; check the HR sources")
        too_small = [p for p in self.pairs if min(p.lr_size) < lr_patch]
        if too_small:
            first = too_small[0]
            raise UserError(
                f"{first.hr}: LR size {first.lr_size} is below the {lr_patch}-pixel LR patch "
                f"({len(too_small)} such images); prepare pairs with min_size={lr_patch * scale} to skip them"
            )
        self.lr_patch, self.scale, self.seed, self.augment = lr_patch, scale, seed, augment
        self.unreadable: dict[int, str] = {}  # image index -> why it could not be read (in memory only)
        self._images = [self._load_or_note(i) for i in range(len(self.pairs))] if in_memory else None

    def _load_or_note(self, image: int) -> tuple[np.ndarray, np.ndarray] | None:
        try:
            return load_pair(self.pairs[image], self.scale)
        except UserError as err:
            self.unreadable[image] = str(err)
            return None

    def _pair(self, image: int) -> tuple[np.ndarray, np.ndarray]:
        """The decoded pair of image `image`; UserError when it cannot be read."""
        if self._images is None:
            return load_pair(self.pairs[image], self.scale)
        if self._images[image] is None:
            raise UserError(self.unreadable[image])
        return self._images[image]

    def __len__(self) -> int:
        return VIRTUAL_LENGTH

    def draw(self, k: int, attempt: int = 0) -> tuple[int, int, int, int]:
        """(image index, LR top, LR left, dihedral transform) of sample k (redrawn after `attempt` unreadable
        images).

        The transform is drawn even when not augmenting, so crops are the same with and without augmentation.
        """
        rng = np.random.default_rng([self.seed, k] if attempt == 0 else [self.seed, k, attempt])
        image = int(rng.integers(len(self.pairs)))
        lr_h, lr_w = self.pairs[image].lr_size
        top = int(rng.integers(lr_h - self.lr_patch + 1))
        left = int(rng.integers(lr_w - self.lr_patch + 1))
        transform = int(rng.integers(8))
        return image, top, left, transform

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor, str]:
        """(LR patch, HR patch, the messages of images that could not be read on the way, one per line)."""
        k = int(k)
        if k < 0:
            raise IndexError(f"PatchDataset: index must be non-negative, got {k}")
        failures = []
        for attempt in range(MAX_REDRAWS):
            image, top, left, transform = self.draw(k, attempt)
            try:
                lr, hr = self._pair(image)
            except UserError as err:
                failures.append(str(err))
                continue
            p, s = self.lr_patch, self.scale
            lr = lr[top : top + p, left : left + p]
            hr = hr[top * s : (top + p) * s, left * s : (left + p) * s]
            if self.augment:
                lr, hr = dihedral(lr, transform), dihedral(hr, transform)
            return to_tensor(lr)[0], to_tensor(hr)[0], "\n".join(failures)
        raise UserError(f"{MAX_REDRAWS} unreadable training images in a row, e.g. {failures[0]}")


def _find_layout(folder: Path, scale: int) -> tuple[Path, Path, str]:
    """(HR folder, LR folder, LR name pattern) of a benchmark-layout or DIV2K-layout folder."""
    if (folder / "HR").is_dir():
        return folder / "HR", folder / f"LR_bicubic_x{scale}", "{stem}{suffix}"
    hr_dir = folder / "DIV2K_valid_HR"
    if hr_dir.is_dir():
        lr_dirs = [folder / "DIV2K_valid_LR", folder / "DIV2K_valid_LR_bicubic" / f"X{scale}"]
        lr_dir = next((d for d in lr_dirs if d.is_dir()), lr_dirs[0])
        return hr_dir, lr_dir, f"{{stem}}x{scale}{{suffix}}"
    raise UserError(
        f"{folder}: no HR/ (benchmark layout) nor DIV2K_valid_HR/ (DIV2K layout) inside; "
        "point to a folder such as benchmark/Set5 or the DIV2K root"
    )


class ValidationSet(Sequence):
    """(name, LR uint8, HR uint8) RGB triples of a validation folder, in name order.

    Layouts: benchmark (HR/ and LR_bicubic_x4/, same names) or DIV2K (DIV2K_valid_HR/0801.png with
    DIV2K_valid_LR/0801x4.png or DIV2K_valid_LR_bicubic/X4/0801x4.png). An HR whose size is not a multiple of
    the scale is cropped top-left to LR size * scale, as in the benchmarks.
    """

    def __init__(self, folder: Path, scale: int = 4) -> None:
        folder = Path(folder)
        if not folder.is_dir():
            raise UserError(
                f"{folder}: no such validation folder; python -m data.download_div2k --data_dir data/ puts DIV2K "
                "valid where the recipe looks (data/), or pass --val_dirs"
            )
        hr_dir, lr_dir, lr_name = _find_layout(folder, scale)
        if not lr_dir.is_dir():
            raise UserError(f"{lr_dir}: missing LR folder for {hr_dir}; add the x{scale} LR images")
        self.name, self.scale = folder.name, scale
        self.items: list[tuple[str, Path, Path]] = []
        for hr in sorted(p for p in hr_dir.iterdir() if p.suffix.lower() in VALIDATION_SUFFIXES):
            lr = lr_dir / lr_name.format(stem=hr.stem, suffix=hr.suffix)
            if not lr.is_file():
                raise UserError(f"{lr}: missing LR for {hr}; add it or remove the HR")
            hr_h, hr_w = read_size(hr)
            lr_size = read_size(lr)
            if lr_size != (hr_h // scale, hr_w // scale):
                raise UserError(
                    f"{lr}: size {lr_size} does not match its HR {hr} ({hr_h}, {hr_w}) at x{scale}; "
                    "regenerate it"
                )
            self.items.append((hr.stem, lr, hr))
        if not self.items:
            raise UserError(f"{hr_dir}: no images; check the validation folder")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[str, np.ndarray, np.ndarray]:
        name, lr_path, hr_path = self.items[index]
        lr, hr = read_rgb(lr_path), read_rgb(hr_path)
        return name, lr, hr[: lr.shape[0] * self.scale, : lr.shape[1] * self.scale]

    def __iter__(self) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        return (self[i] for i in range(len(self)))
