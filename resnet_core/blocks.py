"""The parts of the CIFAR ResNet family (:mod:`resnet_core.models` assembles them): norm layers,
shortcuts and residual blocks, each chosen by name from a registry that fails loudly.

Module names are fixed (checkpoints depend on them): blocks hold ``conv1``/``bn1``/``conv2``/``bn2``
(bottlenecks add ``conv3``/``bn3``) and, where a projection exists, ``downsample`` =
``Sequential(conv, norm)``. See the models module's docstring for the decisions behind them.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

NormFactory = Callable[[int], nn.Module]

# --------------------------------------------------------------------------------------- norms


def no_norm(channels: int) -> nn.Module:
    """The ``norm="none"`` layer: nothing (an ablation of BatchNorm, Ioffe & Szegedy 2015)."""
    return nn.Identity()


NORMS: dict[str, NormFactory] = {"batch": nn.BatchNorm2d, "none": no_norm}


def lookup(registry: dict, key, what: str):
    """``registry[key]`` or a one-line ValueError listing the known keys."""
    if key not in registry:
        known = ", ".join(map(str, registry))
        raise ValueError(f"unknown {what} {key!r}: expected one of {known}")
    return registry[key]


def conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    # Bias-free: every conv is followed by a norm whose shift makes a bias redundant.
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False)


# ----------------------------------------------------------------------------------- shortcuts
# Every shortcut is called as shortcut(x, x_pre): x is the block input, x_pre its pre-activation
# (the same tensor in post-activation blocks). Identity paths read x; projections read x_pre.


class IdentityShortcut(nn.Module):
    def forward(self, x: torch.Tensor, x_pre: torch.Tensor) -> torch.Tensor:
        return x


class ZeroPadShortcut(nn.Module):
    """Option A, He et al. 2015 §4.1/§4.2: subsample by striding, pad new channels with zeros.

    No parameters, no multiply-accumulates; a strided view plus one ``F.pad`` (keeps channels_last).
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra = out_ch - in_ch

    def forward(self, x: torch.Tensor, x_pre: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]  # (N, C_in, H/s, W/s)
        return F.pad(x, (0, 0, 0, 0, 0, self.extra))  # (N, C_out, H/s, W/s)

    def extra_repr(self) -> str:
        return f"stride={self.stride}, pad_channels={self.extra}"


class Projection(nn.Sequential):
    """Options B/C and the tutorial's 3x3 variant: ``Sequential(conv, norm)`` on the pre-activation."""

    def forward(self, x: torch.Tensor, x_pre: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(x_pre)


def _projection(conv: nn.Conv2d, norm: NormFactory) -> Projection:
    return Projection(conv, norm(conv.out_channels))


def _option_a(in_ch: int, out_ch: int, stride: int, norm: NormFactory) -> nn.Module:
    if stride == 1 and in_ch == out_ch:
        return IdentityShortcut()
    if out_ch < in_ch:
        raise ValueError(
            f"shortcut='A' cannot go from {in_ch} to {out_ch} channels (zero-padding only adds "
            "channels): use shortcut B, C or conv3x3, or non-decreasing widths"
        )
    return ZeroPadShortcut(in_ch, out_ch, stride)


def _option_b(in_ch: int, out_ch: int, stride: int, norm: NormFactory) -> nn.Module:
    # Option B, He et al. 2015 §3.3: project only where the shape changes, identity elsewhere.
    if stride == 1 and in_ch == out_ch:
        return IdentityShortcut()
    return _projection(conv1x1(in_ch, out_ch, stride), norm)


def _option_c(in_ch: int, out_ch: int, stride: int, norm: NormFactory) -> nn.Module:
    # Option C, He et al. 2015 §4.1 (Table 3): every shortcut is a projection.
    return _projection(conv1x1(in_ch, out_ch, stride), norm)


def _option_conv3x3(in_ch: int, out_ch: int, stride: int, norm: NormFactory) -> nn.Module:
    # The tutorial network's shortcut: a 3x3 conv (padding 1) + BN where the shape changes.
    if stride == 1 and in_ch == out_ch:
        return IdentityShortcut()
    return _projection(conv3x3(in_ch, out_ch, stride), norm)


ShortcutBuilder = Callable[[int, int, int, NormFactory], nn.Module]
SHORTCUTS: dict[str, ShortcutBuilder] = {
    "A": _option_a,
    "B": _option_b,
    "C": _option_c,
    "conv3x3": _option_conv3x3,
}

# -------------------------------------------------------------------------------------- blocks
# Every block: Block(in_ch, width, stride, norm, shortcut); out channels = width * expansion.
# shortcut=None makes the plain twin (no addition at all).


class BasicBlock(nn.Module):
    """conv3x3-norm-relu-conv3x3-norm, add shortcut, relu (He et al. 2015 Fig. 2)."""

    expansion = 1
    preact = False

    def __init__(self, in_ch: int, width: int, stride: int, norm: NormFactory, shortcut: nn.Module | None) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_ch, width, stride)
        self.bn1 = norm(width)
        self.conv2 = conv3x3(width, width)
        self.bn2 = norm(width)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C_in, H, W) -> (N, width, H/s, W/s)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            out = out + self.downsample(x, x)
        return self.relu(out)

    def branch_end(self) -> tuple[nn.Module, nn.Conv2d]:
        return self.bn2, self.conv2


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carries the stride, as torchvision), 1x1 expand x4 (He et al. 2015 Fig. 5)."""

    expansion = 4
    preact = False

    def __init__(self, in_ch: int, width: int, stride: int, norm: NormFactory, shortcut: nn.Module | None) -> None:
        super().__init__()
        self.conv1 = conv1x1(in_ch, width)
        self.bn1 = norm(width)
        self.conv2 = conv3x3(width, width, stride)
        self.bn2 = norm(width)
        self.conv3 = conv1x1(width, width * self.expansion)
        self.bn3 = norm(width * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C_in, H, W) -> (N, 4*width, H/s, W/s)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            out = out + self.downsample(x, x)
        return self.relu(out)

    def branch_end(self) -> tuple[nn.Module, nn.Conv2d]:
        return self.bn3, self.conv3


class PreActBasicBlock(nn.Module):
    """Full pre-activation: norm-relu-conv3x3-norm-relu-conv3x3, add (He et al. 2016 Fig. 4e)."""

    expansion = 1
    preact = True

    def __init__(self, in_ch: int, width: int, stride: int, norm: NormFactory, shortcut: nn.Module | None) -> None:
        super().__init__()
        self.bn1 = norm(in_ch)
        self.conv1 = conv3x3(in_ch, width, stride)
        self.bn2 = norm(width)
        self.conv2 = conv3x3(width, width)
        # Not in-place: with norm="none" bn1 is the identity and x must survive for the shortcut.
        self.relu = nn.ReLU()
        self.downsample = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C_in, H, W) -> (N, width, H/s, W/s)
        x_pre = self.relu(self.bn1(x))
        out = self.conv1(x_pre)
        out = self.conv2(self.relu(self.bn2(out)))
        if self.downsample is not None:
            out = out + self.downsample(x, x_pre)
        return out

    def branch_end(self) -> tuple[nn.Module, nn.Conv2d]:
        return nn.Identity(), self.conv2  # the branch ends in a conv: no gamma to zero


class PreActBottleneck(nn.Module):
    """Pre-activation bottleneck of ResNet-164/1001 (He et al. 2016 Fig. 4e, Table 2)."""

    expansion = 4
    preact = True

    def __init__(self, in_ch: int, width: int, stride: int, norm: NormFactory, shortcut: nn.Module | None) -> None:
        super().__init__()
        self.bn1 = norm(in_ch)
        self.conv1 = conv1x1(in_ch, width)
        self.bn2 = norm(width)
        self.conv2 = conv3x3(width, width, stride)
        self.bn3 = norm(width)
        self.conv3 = conv1x1(width, width * self.expansion)
        self.relu = nn.ReLU()  # not in-place, see PreActBasicBlock
        self.downsample = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C_in, H, W) -> (N, 4*width, H/s, W/s)
        x_pre = self.relu(self.bn1(x))
        out = self.conv1(x_pre)
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.relu(self.bn3(out)))
        if self.downsample is not None:
            out = out + self.downsample(x, x_pre)
        return out

    def branch_end(self) -> tuple[nn.Module, nn.Conv2d]:
        return nn.Identity(), self.conv3


BLOCKS: dict[tuple[str, bool], type[nn.Module]] = {
    ("basic", False): BasicBlock,
    ("bottleneck", False): Bottleneck,
    ("basic", True): PreActBasicBlock,
    ("bottleneck", True): PreActBottleneck,
}
