"""What spandrel's LaMa and RestoreFormer import; unusable on purpose (see the package's docstring)."""

import enum


class InterpolationMode(enum.Enum):
    NEAREST = "nearest"
    BILINEAR = "bilinear"


def _unavailable(*_args: object, **_kwargs: object) -> None:
    raise RuntimeError("torchvision stand-in: not for use (tests/stubs/torchvision)")


rotate = normalize = _unavailable
