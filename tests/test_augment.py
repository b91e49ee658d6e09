"""Batch augmentation: crops really move, flips really flip, seeds reproduce, normalisation is exact."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from resnet_core.augment import AUGMENTATIONS, make_eval_transform, make_train_transform

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


def noise_images(n: int = 256, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Random uint8 images (N, 3, size, size): every crop is unique, so crops can be identified."""
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def to_pixels(out: torch.Tensor) -> torch.Tensor:
    """Undo the x/255 scaling of an unnormalised transform."""
    return (out * 255).round().to(torch.uint8)


def identify_crops(source: torch.Tensor, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each sample, the (top, left, flipped) window of ``source`` (N, C, H, W) equal to ``out``.

    Fails if some sample matches no window (the output is not a crop of its own input).
    """
    h, w = out.shape[2:]
    windows = source.unfold(2, h, 1).unfold(3, w, 1)  # (N, C, oh, ow, h, w)
    target = out[:, :, None, None]  # (N, C, 1, 1, h, w)
    plain = (windows == target).all(dim=5).all(dim=4).all(dim=1)  # (N, oh, ow)
    mirrored = (windows.flip(5) == target).all(dim=5).all(dim=4).all(dim=1)
    matches = torch.stack([plain, mirrored], dim=1)  # (N, 2, oh, ow)
    found = matches.flatten(1).any(dim=1)
    assert found.all(), f"{int((~found).sum())} samples are not a crop of their input"
    index = matches.flatten(1).float().argmax(dim=1)
    per_flip = matches.shape[2] * matches.shape[3]
    flipped, rest = index // per_flip, index % per_flip
    return rest // matches.shape[3], rest % matches.shape[3], flipped.bool()


def test_registry_matches_config_choices_and_unknown_names_fail():
    from resnet_core.config import AUGMENTS

    assert set(AUGMENTATIONS) == set(AUGMENTS)
    with pytest.raises(ValueError, match="augment=.cutout.*padcrop_flip, none, tutorial"):
        make_train_transform("cutout", MEAN, STD, True)


@pytest.mark.parametrize("name", sorted(AUGMENTATIONS))
@pytest.mark.parametrize("normalize", [True, False])
def test_output_shape_and_dtype(name, normalize):
    x = noise_images(16)
    out = make_train_transform(name, MEAN, STD, normalize)(x, torch.Generator().manual_seed(0))
    assert out.shape == (16, 3, 32, 32)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_padcrop_flip_is_a_zero_padded_crop_that_moves_and_flips():
    x = noise_images(256)
    out = make_train_transform("padcrop_flip", MEAN, STD, normalize=False)(x, torch.Generator().manual_seed(1))
    padded = F.pad(x, (4, 4, 4, 4))  # zeros, as in He et al. 2015 §4.2
    top, left, flipped = identify_crops(padded, to_pixels(out))
    assert set(top.tolist()) == set(range(9)) and set(left.tolist()) == set(range(9))  # every offset occurs
    assert 0.35 < flipped.float().mean() < 0.65  # p = 0.5
    moved = (top != 4) | (left != 4)
    assert moved.float().mean() > 0.8  # most samples really shift
    assert not torch.equal(to_pixels(out), x)


def test_flip_mirrors_left_right():
    columns = torch.arange(32, dtype=torch.uint8) * 8  # brightness rises from left to right
    x = columns.expand(200, 3, 32, 32).contiguous()
    out = make_train_transform("padcrop_flip", MEAN, STD, normalize=False)(x, torch.Generator().manual_seed(2))
    middle = out[:, 0, 16, 4:28]  # a row away from the zero padding
    rising = (middle.diff(dim=1) > 0).all(dim=1)
    falling = (middle.diff(dim=1) < 0).all(dim=1)
    assert bool((rising | falling).all())  # every sample is the image or its mirror image
    assert 0.35 < falling.float().mean() < 0.65  # mirrored with p = 0.5


def test_same_generator_seed_same_batch_and_other_seed_other_batch():
    x = noise_images(32)
    for name in ("padcrop_flip", "tutorial"):
        transform = make_train_transform(name, MEAN, STD, True)
        a = transform(x, torch.Generator().manual_seed(7))
        b = transform(x, torch.Generator().manual_seed(7))
        c = transform(x, torch.Generator().manual_seed(8))
        assert torch.equal(a, b)
        assert not torch.equal(a, c)


def test_none_is_identity_apart_from_normalisation():
    x = noise_images(8)
    plain = make_train_transform("none", MEAN, STD, normalize=False)(x, torch.Generator())
    torch.testing.assert_close(plain, x.float() / 255)
    normed = make_train_transform("none", MEAN, STD, normalize=True)(x, torch.Generator())
    expected = (x.float() / 255 - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    torch.testing.assert_close(normed, expected)


def test_eval_transform_normalises_without_augmenting():
    x = noise_images(8)
    expected = (x.float() / 255 - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    torch.testing.assert_close(make_eval_transform(MEAN, STD, True)(x), expected)
    torch.testing.assert_close(make_eval_transform(MEAN, STD, False)(x), x.float() / 255)


def test_normalised_training_pixels_have_zero_mean_unit_std():
    x = noise_images(64)
    xf = x.float() / 255
    mean = tuple(xf.mean(dim=(0, 2, 3)).tolist())
    std = tuple(xf.std(dim=(0, 2, 3), unbiased=False).tolist())
    out = make_eval_transform(mean, std, True)(x)
    torch.testing.assert_close(out.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(out.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4, rtol=0)


def test_seed_augmentation_is_a_crop_of_the_40px_resize_and_not_normalised():
    x = noise_images(128)
    out = make_train_transform("tutorial", MEAN, STD, normalize=False)(x, torch.Generator().manual_seed(3))
    assert out.shape == (128, 3, 32, 32)
    assert out.min() >= 0 and out.max() <= 1
    resized = F.interpolate(x, size=(40, 40), mode="bilinear", align_corners=False)  # the tutorial's Resize(40)
    top, left, flipped = identify_crops(resized, to_pixels(out))
    assert len(set(top.tolist())) > 4 and flipped.any() and (~flipped).any()


def test_bad_normalisation_statistics_fail_in_one_line():
    with pytest.raises(ValueError, match="std"):
        make_eval_transform(MEAN, (0.2, 0.0, 0.2), True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["padcrop_flip", "tutorial"])
def test_cuda_batches_with_a_cuda_generator_are_crops_of_their_input(name):
    x = noise_images(128).cuda()
    transform = make_train_transform(name, MEAN, STD, normalize=False)
    out = transform(x, torch.Generator(device="cuda").manual_seed(0))
    again = transform(x, torch.Generator(device="cuda").manual_seed(0))
    assert out.device.type == "cuda" and out.dtype == torch.float32 and torch.equal(out, again)
    if name == "padcrop_flip":
        source = F.pad(x, (4, 4, 4, 4))
    else:  # on CUDA the resize runs in float and is rounded: allow the CPU uint8 kernel's rounding to differ
        source = F.interpolate(x.float(), size=(40, 40), mode="bilinear", align_corners=False).round().to(torch.uint8)
    top, left, flipped = identify_crops(source.cpu(), to_pixels(out).cpu())
    assert len(set(top.tolist())) > 4 and flipped.any() and (~flipped).any()
