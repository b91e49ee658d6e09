"""Measuring a split after an epoch, for one run (:mod:`resnet_core.engine`) and for a fused group
(:mod:`resnet_core.fused_fit`): the mean loss, the error in percent and which images were wrong.

A run's last test measurement keeps its per-image wrong flags (``TEST_WRONG``: hex of
``numpy.packbits`` of a bool vector in test-set order), so two runs measured on one test set can be
compared image by image: the paired test of a study's final stage (docs/DESIGN.md, "Rules of
evidence"). One test image costs one bit; no metric is computed from the flags, so none moves.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

TEST_WRONG = "test_wrong"


@torch.no_grad()
def evaluate(trainer, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """(mean loss, error in percent) over a split; (nan, nan) for an empty split."""
    loss, error, _ = measure(trainer, images, labels)
    return loss, error


@torch.no_grad()
def measure(trainer, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, float, torch.Tensor]:
    """(mean loss, error in percent, (N,) bool wrong flags on the device) of one run over a split."""
    if len(labels) == 0:
        return math.nan, math.nan, torch.zeros(0, dtype=torch.bool)
    trainer.step_model.eval()
    loss_sum, wrong = torch.zeros((), device=trainer.device), []
    size = trainer.run.train.eval_batch_size
    for start in range(0, len(labels), size):
        x = trainer.eval_transform(images[start:start + size]).contiguous(memory_format=trainer.memory_format)
        y = labels[start:start + size]
        logits = _eval_logits(trainer, x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
        wrong.append(logits.argmax(dim=1) != y)
    flags = torch.cat(wrong)
    correct = (~flags).sum()
    return loss_sum.item() / len(labels), 100.0 * (1 - correct.item() / len(labels)), flags


def _eval_logits(trainer, x: torch.Tensor) -> torch.Tensor:
    """Logits of one evaluation batch. Under ``pad_eval`` a short last batch is padded with zero
    images to the full ``eval_batch_size`` and their rows dropped, so a compiled model meets one
    evaluation shape in every run and split. In eval mode every layer treats each image alone
    (BatchNorm uses its running statistics), so the padding changes no image's logits."""
    rows, size = len(x), trainer.run.train.eval_batch_size
    if trainer.pad_eval and rows < size:
        x = torch.cat([x, x.new_zeros((size - rows, *x.shape[1:]))]).contiguous(memory_format=trainer.memory_format)
    with trainer.autocast():
        return trainer.step_model(x)[:rows]


@torch.no_grad()
def measure_group(trainer, images: torch.Tensor, labels: torch.Tensor) -> list[tuple[float, float, torch.Tensor]]:
    """(mean loss, error in percent, (N,) wrong flags) of every member of a fused group over one
    split, each member seeing every image."""
    size = len(trainer.members)
    if len(labels) == 0:
        return [(math.nan, math.nan, torch.zeros(0, dtype=torch.bool))] * size
    trainer.step_model.eval()
    loss_sum, wrong = torch.zeros(size, device=trainer.device), []
    step = trainer.run.train.eval_batch_size
    for start in range(0, len(labels), step):
        x = trainer.eval_transform(images[start:start + step])  # (N, C, 32, 32)
        y = labels[start:start + step]
        with trainer.autocast():
            logits = trainer.model.forward_shared(x.contiguous(memory_format=trainer.memory_format))  # (K, N, classes)
        loss_sum += F.cross_entropy(logits.float().flatten(0, 1), y.repeat(size), reduction="none").view(size, -1).sum(1)
        wrong.append(logits.argmax(dim=2) != y)  # (K, N)
    flags = torch.cat(wrong, dim=1)
    correct = (~flags).sum(dim=1)
    return list(zip((loss_sum / len(labels)).tolist(), (100.0 * (1 - correct / len(labels))).tolist(), flags))


def split_metrics(name: str, loss: float, error: float, wrong: torch.Tensor, keep_wrong: bool) -> dict[str, Any]:
    """A history entry's ``<name>_loss`` and ``<name>_error``, plus ``TEST_WRONG`` when ``keep_wrong``
    (the run's last test measurement: the one its record's final metrics hold)."""
    metrics: dict[str, Any] = {f"{name}_loss": loss, f"{name}_error": error}
    if keep_wrong:
        metrics[TEST_WRONG] = pack_wrong(wrong)
    return metrics


def pack_wrong(wrong: torch.Tensor) -> str:
    """(N,) bool flags as hex of ``numpy.packbits`` (big-endian bits, the last byte zero-padded)."""
    return np.packbits(wrong.detach().cpu().numpy().astype(bool)).tobytes().hex()


def unpack_wrong(text: str, images: int) -> np.ndarray:
    """The (``images``,) bool flags :func:`pack_wrong` wrote; ValueError if ``text`` holds another count."""
    packed = np.frombuffer(bytes.fromhex(text), dtype=np.uint8)
    if len(packed) != (images + 7) // 8:
        raise ValueError(f"{TEST_WRONG} holds {len(packed)} bytes, not the {(images + 7) // 8} of {images} images")
    return np.unpackbits(packed, count=images).astype(bool)
