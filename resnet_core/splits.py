"""Splits of a training set (docs/DESIGN.md, rules of evidence): validation carved first, then a subset.

Validation is carved from the training set *first*, seeded by ``split_seed`` and stratified by class,
so it is the same for every run seed and every ``subset`` (He et al. 2015 §4.2 used a 45k/5k split).
``subset`` then takes N of the remaining images, also stratified.
"""

from __future__ import annotations

import numpy as np
import torch

# DataConfig.val_size's default (He et al. 2015 §4.2: 45k/5k). Run ids leave a default out of the
# hash, so it stays 5000; on data too small for it the split adapts (effective_val_size).
DEFAULT_VAL_SIZE = 5000


def default_val_size(n: int) -> int:
    """The validation size a training set of ``n`` images gets by default: 10% of it, at most
    DEFAULT_VAL_SIZE (reached at 50,000: CIFAR-10 keeps its 45k/5k), at least 100 (about one batch:
    an error measured in 1% steps) but never more than half the images."""
    return min(DEFAULT_VAL_SIZE, max(n // 10, min(100, n // 2)))


def capped_val_size(ceiling: int, n: int) -> int:
    """A validation size chosen as a ceiling (a study budget's): ``ceiling``, or less on data whose
    default split (``default_val_size``) is smaller, so small data work with it as with the default."""
    return min(ceiling, default_val_size(n))


def capped_subset(ceiling: int, pool: int) -> int | None:
    """A training subset chosen as a ceiling (a budget's): ``ceiling``, or None (every image) on data
    whose ``pool`` of training images left after validation is smaller, so small data train on all
    they hold instead of failing. A subset the user gave is not a ceiling: it is kept as given."""
    return ceiling if pool >= ceiling else None


def effective_val_size(requested: int, n: int) -> int:
    """The validation images a run carves from ``n`` training images: as requested, except that the
    default (DEFAULT_VAL_SIZE) on data with no more images than it becomes ``default_val_size(n)``.

    Only where the default used to fail: a data set that held more than 5,000 training images was
    split 5,000 off under the same run id, and keeps that split (another would need a new run-id
    schema and a migration, docs/DESIGN.md "Run identity"). A record states the sizes it used.
    """
    return default_val_size(n) if requested == DEFAULT_VAL_SIZE and requested >= n else requested


def split_indices(
    labels: torch.Tensor, val_size: int, subset: int | None, split_seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Indices (train, val, pool) into a training set: val carved first, then a subset of the pool.

    Both draws are class-stratified and seeded by ``split_seed`` alone, so ``val`` does not depend
    on ``subset``. ``pool`` is everything not in val (the set normalisation statistics come from).
    All three are sorted.
    """
    n = len(labels)
    if val_size >= n:
        raise ValueError(f"val_size={val_size} leaves no training images: the training set has {n}; expected val_size < {n}")
    y = labels.cpu().numpy()
    val, pool = _stratified_take(y, np.arange(n), val_size, np.random.default_rng([split_seed, 0]))
    train = pool
    if subset is not None:
        if subset > len(pool):
            raise ValueError(
                f"subset={subset} is larger than the {len(pool)} training images left after val_size={val_size}: "
                f"expected subset <= {len(pool)}"
            )
        train, _ = _stratified_take(y[pool], pool, subset, np.random.default_rng([split_seed, 1]))
    return tuple(torch.from_numpy(np.sort(i)) for i in (train, val, pool))  # type: ignore[return-value]


def _stratified_take(y: np.ndarray, index: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Take ``n`` of ``index`` (labels ``y``) with per-class counts proportional to the class sizes
    (largest remainder), each class's picks drawn at random; returns (taken, rest)."""
    classes, counts = np.unique(y, return_counts=True)
    quota = _largest_remainder(counts, n)
    taken, rest = [], []
    for cls, k in zip(classes, quota):
        members = index[y == cls]
        order = rng.permutation(len(members))
        taken.append(members[order[:k]])
        rest.append(members[order[k:]])
    return np.concatenate(taken), np.concatenate(rest)


def _largest_remainder(counts: np.ndarray, n: int) -> np.ndarray:
    """Integer quotas summing to ``n`` proportional to ``counts`` (ties go to the lower class index)."""
    exact = counts * n / counts.sum()
    quota = np.floor(exact).astype(np.int64)
    extra = np.argsort(-(exact - quota), kind="stable")[: n - quota.sum()]
    quota[extra] += 1
    return quota
