"""The CIFAR ResNet family: one factory from a :class:`ModelConfig` (or a preset name) to a module.

Variants are composed, not branched (docs/DESIGN.md, "Models"): the block class is chosen by
``(block, preact)`` from :data:`BLOCKS`, the shortcut by name from :data:`SHORTCUTS` and the norm
layer from :data:`NORMS`. ``forward()`` holds no flags; the one test left in a block is whether it
has a shortcut at all (plain nets, He et al. 2015 §4.2, have none, so they pay for no addition).

Module names are fixed for every model (checkpoint compatibility with the tutorial network):
stem ``conv``/``bn``, stages ``layer1..layerK`` of blocks with ``conv1``/``bn1``/``conv2``/``bn2``
(bottlenecks add ``conv3``/``bn3``) and, where a projection exists, ``downsample`` =
``Sequential(conv, norm)``; pool ``avg_pool``; head ``fc``.

Decisions worth knowing:

- ``norm="none"`` puts ``nn.Identity`` where the norms were; convolutions stay bias-free (so
  parameter counts differ from the BN net only by the BN affine terms) and projections are a bare
  conv. Such nets still train at CIFAR depths with the usual small learning rates.
- Pre-activation nets (He et al. 2016, Fig. 4e): the stem is a conv alone, each block starts with
  norm + ReLU, and a final norm + ReLU (``final_bn``) comes before the pool. Projection shortcuts
  read the pre-activated input and are a bare conv, as in the authors' code (the next block's
  pre-activation normalises the sum); identity and option-A shortcuts read the raw input so the
  identity path stays clean.
- ``zero_init_residual`` zeroes the last norm's gamma of every residual branch (Goyal et al. 2017).
  Where the branch ends in a conv instead (pre-activation, or ``norm="none"``) that conv's weight is
  zeroed: zeroing a gamma that a ReLU follows would leave it with no gradient. Plain nets ignore
  the flag: they have no residual branch, and zeroing would cut the signal.
- Option A (zero-padding) pads the missing channels with zeros at the end, whatever the ratio of
  widths, so it also serves bottleneck and four-stage layouts; it cannot shrink channels.
"""

from __future__ import annotations

if __name__ == "__main__":  # `python -m resnet_core.models`: its flags are parsed before torch is imported
    from resnet_core.commands.parsers import models

    models()

import dataclasses

import torch
import torch.nn as nn

from resnet_core.blocks import BLOCKS, NORMS, SHORTCUTS, conv3x3, lookup, no_norm
from resnet_core.config import ModelConfig, current_name


# ------------------------------------------------------------------------------------- network


class GlobalAvgPool(nn.Module):
    """Mean over the spatial dims, ``(N, C, H, W) -> (N, C)``: ``AdaptiveAvgPool2d(1)`` then flatten,
    written as a mean because ``torch.func.vmap`` (fused runs) batches a mean in one kernel but runs
    the adaptive pool's ``as_strided_`` on channels_last input member by member, with a warning."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


class ResNet(nn.Module):
    """Stem, stages ``layer1..layerK``, (final norm for pre-activation), global pool, linear head."""

    def __init__(
        self,
        stem: tuple[nn.Module, nn.Module, nn.Module],
        stages: list[nn.Sequential],
        final: tuple[nn.Module, nn.Module],
        fc: nn.Linear,
    ) -> None:
        super().__init__()
        self.conv, self.bn, self.relu = stem
        self.stage_names = tuple(f"layer{i}" for i in range(1, len(stages) + 1))
        for name, stage in zip(self.stage_names, stages):
            self.add_module(name, stage)
        self.final_bn, self.final_relu = final
        self.avg_pool = GlobalAvgPool()  # = AvgPool2d(8) at 32x32 input
        self.fc = fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (N, classes)
        x = self.relu(self.bn(self.conv(x)))  # (N, C0, H, W)
        for name in self.stage_names:
            x = getattr(self, name)(x)  # (N, C_k, H / 2^(k-1), W / 2^(k-1))
        x = self.final_relu(self.final_bn(x))
        x = self.avg_pool(x)  # (N, C_K)
        return self.fc(x)


def _build_stage(cfg: ModelConfig, in_ch: int, width: int, n_blocks: int, stride: int) -> tuple[nn.Sequential, int]:
    """One stage of ``n_blocks`` blocks; the first carries the stride. Returns (stage, out channels)."""
    block_cls = lookup(BLOCKS, (cfg.block, cfg.preact), "block (kind, preact)")
    norm = lookup(NORMS, cfg.norm, "norm")
    # He et al. 2016's code: a pre-activation projection is a bare conv (the next block normalises).
    shortcut_norm = no_norm if block_cls.preact else norm
    make_shortcut = lookup(SHORTCUTS, cfg.shortcut, "shortcut")
    out_ch = width * block_cls.expansion
    blocks = []
    for i in range(n_blocks):
        s = stride if i == 0 else 1
        shortcut = make_shortcut(in_ch, out_ch, s, shortcut_norm) if cfg.residual else None
        blocks.append(block_cls(in_ch, width, s, norm, shortcut))
        in_ch = out_ch
    return nn.Sequential(*blocks), out_ch


def _build_stem(cfg: ModelConfig, width: int) -> tuple[nn.Module, nn.Module, nn.Module]:
    """3x3 conv + norm + ReLU; a conv alone for pre-activation nets (the first block normalises)."""
    conv = conv3x3(cfg.in_channels, width)
    if cfg.preact:
        return conv, nn.Identity(), nn.Identity()
    return conv, NORMS[cfg.norm](width), nn.ReLU(inplace=True)


def _build_final(cfg: ModelConfig, channels: int) -> tuple[nn.Module, nn.Module]:
    """Pre-activation nets end with norm + ReLU before the pool (He et al. 2016); others need none."""
    if cfg.preact:
        return NORMS[cfg.norm](channels), nn.ReLU(inplace=True)
    return nn.Identity(), nn.Identity()


def _init_weights(model: nn.Module, zero_init_residual: bool) -> None:
    """Kaiming normal (fan_out, relu) convs, unit-gamma norms, as torchvision does."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    if zero_init_residual:
        _zero_init_branches(model)


def _zero_init_branches(model: nn.Module) -> None:
    """Each residual branch starts as zero, so each block starts as its shortcut (Goyal et al. 2017)."""
    for m in model.modules():
        if getattr(m, "downsample", None) is None or not hasattr(m, "branch_end"):
            continue  # plain blocks have no residual branch
        last_norm, last_conv = m.branch_end()
        if getattr(last_norm, "weight", None) is not None:
            nn.init.zeros_(last_norm.weight)
        else:
            nn.init.zeros_(last_conv.weight)


# ------------------------------------------------------------------------------------- presets


def _four_stage(blocks: tuple[int, ...], block: str, depth: int) -> ModelConfig:
    # The CIFAR adaptation of ImageNet ResNet-18/34/50: 3x3 stem, no max-pool, projection "B".
    return ModelConfig(depth=depth, blocks=blocks, widths=(64, 128, 256, 512), shortcut="B", block=block)


_CIFAR = ModelConfig()  # depth 20, widths 16/32/64, option A: He et al. 2015 §4.2
_RESNET18 = _four_stage((2, 2, 2, 2), "basic", 18)
_RESNET34 = _four_stage((3, 4, 6, 3), "basic", 34)

PRESETS: dict[str, ModelConfig] = {
    **{f"resnet{d}": dataclasses.replace(_CIFAR, depth=d) for d in (20, 32, 44, 56, 110, 1202)},
    **{f"plain{d}": dataclasses.replace(_CIFAR, depth=d, residual=False) for d in (20, 32, 44, 56, 110)},
    # Option A like resnet110, so the pair differs only in where the activations sit.
    "preact-resnet110": dataclasses.replace(_CIFAR, depth=110, preact=True),
    # He et al. 2016 Table 2: bottleneck widths 16/32/64 (outputs 64/128/256), projection "B".
    "preact-resnet164": dataclasses.replace(_CIFAR, depth=164, block="bottleneck", preact=True, shortcut="B"),
    "preact-resnet1001": dataclasses.replace(_CIFAR, depth=1001, block="bottleneck", preact=True, shortcut="B"),
    "resnet18": _RESNET18,
    "resnet34": _RESNET34,
    "resnet50": _four_stage((3, 4, 6, 3), "bottleneck", 50),
    "plain18": dataclasses.replace(_RESNET18, residual=False),
    "plain34": dataclasses.replace(_RESNET34, residual=False),
    # The tutorial network this project grew from: 3x(2 basic blocks), 3x3-conv shortcuts.
    "tutorial": dataclasses.replace(_CIFAR, depth=14, shortcut="conv3x3"),
}


def resolve_model(spec: ModelConfig | str) -> ModelConfig:
    """A ModelConfig as is, or the preset of that name (unknown names list the known ones)."""
    if isinstance(spec, ModelConfig):
        return spec
    if isinstance(spec, str):
        return lookup(PRESETS, current_name(spec, "model preset"), "model preset")
    raise ValueError(f"model spec {spec!r} is invalid: expected a ModelConfig or one of {', '.join(PRESETS)}")


def build_model(spec: ModelConfig | str, num_classes: int | None = None) -> ResNet:
    """The network for ``spec``. ``num_classes`` wins over ``spec.num_classes``; both None -> 10."""
    cfg = resolve_model(spec)
    classes = num_classes or cfg.num_classes or 10
    widths = cfg.stage_widths
    stem = _build_stem(cfg, widths[0])
    stages, channels = [], widths[0]
    for i, (width, n_blocks) in enumerate(zip(widths, cfg.blocks_per_stage)):
        stage, channels = _build_stage(cfg, channels, width, n_blocks, stride=1 if i == 0 else 2)
        stages.append(stage)
    model = ResNet(stem, stages, _build_final(cfg, channels), nn.Linear(channels, classes))
    _init_weights(model, cfg.zero_init_residual and cfg.residual)
    return model


# ------------------------------------------------------------------------------- introspection


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _device_of(model: nn.Module) -> torch.device:
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def count_macs(model: nn.Module, input_size: tuple[int, ...] = (1, 3, 32, 32)) -> int:
    """Forward multiply-accumulates per image of Conv2d and Linear layers (biases and norms excluded).

    Runs one no-grad forward in eval mode (running statistics untouched; a model built under
    ``torch.device("meta")`` is counted without computing anything). Option A adds 0.
    """
    total = 0

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            k = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            total += output.numel() * k
        else:
            total += output.numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(input_size, device=_device_of(model)))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total // input_size[0]


def stage_parameters(model: ResNet) -> dict[str, list[nn.Parameter]]:
    """Parameters grouped as ``stem``, ``stage1..stageK``, ``head`` (for per-stage gradient norms)."""
    groups = {"stem": [*model.conv.parameters(), *model.bn.parameters()]}
    for i, name in enumerate(model.stage_names, 1):
        groups[f"stage{i}"] = list(getattr(model, name).parameters())
    groups["head"] = [*model.final_bn.parameters(), *model.fc.parameters()]
    return groups


def summarize(cfg: ModelConfig) -> dict[str, int]:
    """Params and MACs per 32x32 image, counted on a meta-device build (no memory, no compute)."""
    with torch.device("meta"):
        model = build_model(cfg)
    return {"params": count_parameters(model), "macs": count_macs(model, (1, cfg.in_channels, 32, 32))}
