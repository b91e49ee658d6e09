"""Training-time augmentation on whole uint8 batches, on the training device (docs/DESIGN.md, "Data").

An augmentation maps uint8 images (N, C, H, W) and a ``torch.Generator`` to images in pixel units
(0..255, uint8 or float) of the same size; a :class:`PixelAffine` then turns them into float32,
normalised by the training mean/std or scaled to [0, 1]. Every random number comes from the
generator passed in, so a run is reproducible. No per-image Python work: one gather per batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

PAD = 4  # He et al. 2015 §4.2: "4 pixels are padded on each side, and a 32x32 crop is randomly sampled"
TUTORIAL_UPSCALE = 1.25  # the tutorial's Resize(40) before RandomCrop(32)


def _draw(high: int, n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """``n`` integers in [0, high) from ``generator`` (on its own device), moved to ``device``."""
    where = generator.device if generator is not None else device
    return torch.randint(0, high, (n,), generator=generator, device=where).to(device)


def random_crop_flip(x: torch.Tensor, size: tuple[int, int], generator: torch.Generator | None) -> torch.Tensor:
    """A random ``size`` crop of each image of ``x`` (N, C, H, W), mirrored left-right with p = 0.5.

    Each sample gets its own offsets: the crop is one advanced-indexing gather over a view of all
    possible windows (no copy), and the flip one arithmetic blend.
    """
    n, c, h, w = x.shape
    out_h, out_w = size
    top = _draw(h - out_h + 1, n, generator, x.device)  # (N,)
    left = _draw(w - out_w + 1, n, generator, x.device)  # (N,)
    flip = _draw(2, n, generator, x.device)  # (N,) 0 or 1
    windows = x.unfold(2, out_h, 1).unfold(3, out_w, 1)  # (N, C, H-h'+1, W-w'+1, h', w') view
    crops = windows.permute(0, 2, 3, 1, 4, 5)[torch.arange(n, device=x.device), top, left]  # (N, C, h', w')
    return _mirror_where(crops, flip)


def _mirror_where(x: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Mirror left-right the images of ``x`` (N, C, H, W) whose ``flip`` (N,) is 1.

    A blend rather than torch.where, which is several times slower on CPU with a per-sample mask.
    Both forms are exact: uint8 arithmetic wraps and unwraps, and lerp returns its end at weight 1.
    """
    mask = flip.view(-1, 1, 1, 1).to(x.dtype)  # (N, 1, 1, 1)
    if x.dtype.is_floating_point:
        return torch.lerp(x, x.flip(3), mask)
    return x + mask * (x.flip(3) - x)


def padcrop_flip(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Zero-pad 4, random crop back to H x W, horizontal flip p = 0.5 (He et al. 2015 §4.2)."""
    padded = F.pad(x, (PAD, PAD, PAD, PAD))  # (N, C, H+8, W+8), zeros: black borders as in the paper
    return random_crop_flip(padded, x.shape[2:], generator)


def tutorial_resize_crop_flip(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """The tutorial's augmentation: bilinear resize to 1.25x (32 -> 40), random 32 crop, flip.

    The resized pixels are rounded to integers as the tutorial's PIL resize does. On CPU torch
    resizes uint8 directly (about 3x faster than float); other devices resize float and round.
    """
    h, w = x.shape[2:]
    size = (round(h * TUTORIAL_UPSCALE), round(w * TUTORIAL_UPSCALE))
    if x.device.type == "cpu":
        big = F.interpolate(x, size=size, mode="bilinear", align_corners=False)  # (N, C, 40, 40) uint8
    else:
        big = F.interpolate(x.float(), size=size, mode="bilinear", align_corners=False).round_()
    return random_crop_flip(big, (h, w), generator)  # (N, C, H, W) in 0..255


def no_augment(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return x


AUGMENTATIONS: dict[str, Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]] = {
    "padcrop_flip": padcrop_flip,
    "none": no_augment,
    "tutorial": tutorial_resize_crop_flip,
}


@dataclass(frozen=True)
class PixelAffine:
    """Pixels (0..255) -> float32 ``x * scale + shift`` per channel; its tensors cached per device."""

    scale: tuple[float, ...]
    shift: tuple[float, ...]
    _tensors: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def of(cls, mean, std, normalize: bool, channels: int = 3) -> PixelAffine:
        """(x/255 - mean)/std when ``normalize``, else x/255 (mean and std in [0, 1] units)."""
        if not normalize:
            return cls((1 / 255,) * channels, (0.0,) * channels)
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise ValueError(f"mean={tuple(mean)} / std={tuple(std)} are invalid: expected one positive std per mean")
        return cls(tuple(1 / (255 * s) for s in std), tuple(-m / s for m, s in zip(mean, std)))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.device not in self._tensors:  # once per device: no host-to-device copy per step
            view = (len(self.scale), 1, 1)
            self._tensors[x.device] = tuple(
                torch.tensor(v, dtype=torch.float32, device=x.device).view(view) for v in (self.scale, self.shift)
            )
        scale, shift = self._tensors[x.device]
        return x.to(torch.float32).mul_(scale).add_(shift)  # (N, C, H, W) float32


@dataclass(frozen=True)
class TrainTransform:
    """``transform(x_uint8, generator)`` -> augmented float32 batch (see make_train_transform)."""

    augment: Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]
    affine: PixelAffine

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.affine(self.augment(x, generator))


def make_train_transform(name: str, mean, std, normalize: bool) -> TrainTransform:
    """The training transform ``name`` (a key of AUGMENTATIONS) followed by normalisation.

    Returns ``callable(x_uint8 (N, C, H, W), generator) -> float32 (N, C, H, W)``; normalised with
    the training mean/std when ``normalize``, else scaled to [0, 1].
    """
    if name not in AUGMENTATIONS:
        raise ValueError(f"augment={name!r} is invalid: expected one of {', '.join(AUGMENTATIONS)}")
    return TrainTransform(AUGMENTATIONS[name], PixelAffine.of(mean, std, normalize, len(mean)))


def make_eval_transform(mean, std, normalize: bool) -> PixelAffine:
    """``callable(x_uint8) -> float32``: the same normalisation as training, no augmentation."""
    return PixelAffine.of(mean, std, normalize, len(mean))
