"""Images as uint8 tensors on the training device: sources, the data's identity, splits, statistics.

docs/DESIGN.md, "Data": images are decoded once into uint8 tensors, cached on disk
(``resnet_core.cache``), and kept on the training device; augmentation (``resnet_core.augment``)
then works on whole batches. A directory's identity in a run id is its content fingerprint
(:func:`data_identity`), not its path.

Sources (``DataConfig.source``), tried in this order:

- ``cifar10`` / ``cifar100``: torchvision's python pickles under ``DataConfig.root``, downloaded by
  torchvision when missing (``DataConfig.download``).
- ``synthetic`` or ``synthetic:N``: generated images with learnable class structure, for tests.
- a directory: ImageFolder (``train/<class>/*`` and ``test/<class>/*``), or one holding
  ``cifar-10-batches-py`` / ``cifar-100-python`` (or that directory itself).

Splits (``resnet_core.splits``): validation is carved first, seeded by ``split_seed``, then a
``subset`` of the rest, both stratified by class. Normalisation statistics come from the whole remaining training pool (not from the
subset), so changing ``subset`` never changes the preprocessing.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import hashlib
import logging
import multiprocessing
import os
import pickle
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from resnet_core import cache
from resnet_core.cache import CACHE_ENV_VAR, RawData  # noqa: F401 - CACHE_ENV_VAR: part of this module's API
from resnet_core.config import DATA_ENV_VAR, DataConfig
from resnet_core.devices import available_cpus
from resnet_core.splits import effective_val_size, split_indices

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
CIFAR_SIZE = 32
SYNTHETIC_TRAIN, SYNTHETIC_TEST, SYNTHETIC_CLASSES = 2000, 500, 10
POOL_MIN_FILES = 2048  # below this, decoding in-process is faster than starting worker processes
WAYS_OUT = f"use a local dataset directory as --data / DataConfig.source, or set the environment variable {DATA_ENV_VAR}"


# ------------------------------------------------------------------------------------ records

@dataclass(frozen=True)
class DataBundle:
    """The three splits as tensors on one device, with what a run record needs to know about them.

    Images are uint8 (N, C, H, W); labels int64 (N,). ``mean``/``std`` are per channel in [0, 1]
    units, computed on the training pool left after carving validation.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    fingerprint: str
    description: str
    config: DataConfig | None = None  # what it was loaded for (None: built by hand, e.g. random tensors)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to(self, device: torch.device | str) -> DataBundle:
        """The same bundle with every tensor on ``device`` (no copy where it already is)."""
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return dataclasses.replace(self, **moved)


@dataclass(frozen=True)
class Source:
    """A resolved ``DataConfig.source``: ``kind`` is a key of LOADERS; ``path`` is absolute."""

    kind: str
    path: Path | None = None
    name: str = ""  # torchvision dataset name, or the synthetic spec
    size: int = 0  # synthetic: number of training images


FileEntry = tuple[str, int, int, int]  # (absolute path, label, size in bytes, mtime in ns)


@dataclass(frozen=True)
class BatchLayout:
    """The files of a torchvision python-pickle CIFAR directory (Krizhevsky 2009's format)."""

    title: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    label_key: str
    meta: str
    names_key: str


BATCH_LAYOUTS = {
    "cifar-10-batches-py": BatchLayout(
        "CIFAR-10", tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), "labels", "batches.meta", "label_names"
    ),
    "cifar-100-python": BatchLayout("CIFAR-100", ("train",), ("test",), "fine_labels", "meta", "fine_label_names"),
}
# torchvision dataset name -> (torchvision class, the folder it unpacks into under root)
TORCHVISION_SOURCES = {"cifar10": ("CIFAR10", "cifar-10-batches-py"), "cifar100": ("CIFAR100", "cifar-100-python")}


# ------------------------------------------------------------------------------------ public API

def load_data(cfg: DataConfig, device: torch.device | str = "cpu") -> DataBundle:
    """Decode (or load from the cache) the source of ``cfg``, split it, and put it on ``device``."""
    source = resolve_source(cfg)
    raw = LOADERS[source.kind](source, cfg)
    val_size = effective_val_size(cfg.val_size, len(raw.train_y))
    train_idx, val_idx, pool_idx = split_indices(raw.train_y, val_size, cfg.subset, cfg.split_seed)
    mean, std = channel_stats(raw.train_x[pool_idx])
    bundle = DataBundle(
        train_x=raw.train_x[train_idx], train_y=raw.train_y[train_idx],
        val_x=raw.train_x[val_idx], val_y=raw.train_y[val_idx],
        test_x=raw.test_x, test_y=raw.test_y,
        classes=raw.classes, mean=mean, std=std,
        fingerprint=raw.fingerprint, description=describe(source, cfg, raw), config=cfg,
    )
    return bundle.to(device)


def training_images(cfg: DataConfig) -> int:
    """Images of the source's training set before any split (validation is carved from them)."""
    return len(LOADERS[resolve_source(cfg).kind](resolve_source(cfg), cfg).train_y)


def pool_size(cfg: DataConfig, images: int | None = None) -> int:
    """Training images left after the validation split (what a ``subset`` draws from); ``images``: if read already."""
    images = training_images(cfg) if images is None else images
    return images - effective_val_size(cfg.val_size, images)


def resolve_source(cfg: DataConfig) -> Source:
    """Map ``cfg.source`` to a Source; a missing or unrecognisable directory is a one-line error."""
    spec = cfg.source
    if spec in TORCHVISION_SOURCES:
        return Source("torchvision", Path(cfg.root).expanduser().resolve(), spec)
    if spec == "synthetic" or spec.startswith("synthetic:"):
        return Source("synthetic", None, spec, _synthetic_size(spec))
    path = Path(spec).expanduser().resolve()
    if not path.exists():
        raise FileNotFoundError(f"data source {spec!r}: no such directory {path}: expected cifar10, cifar100, "
                                "synthetic[:N] or a dataset directory")
    if not path.is_dir():
        raise NotADirectoryError(f"data source {path} is not a directory: expected an ImageFolder or cifar-10-batches-py directory")
    return _detect_layout(path)


def cache_root(cfg: DataConfig) -> Path:
    """Where decoded datasets are cached: cfg.cache_dir, $RESNET_CORE_CACHE, else the user cache dir."""
    return cache.cache_root(cfg.cache_dir)


def data_identity(cfg: DataConfig) -> str:
    """What a run id records of its data: a built-in name (``cifar10``, ``synthetic:N``) as given,
    a directory's content fingerprint (decoded pixels, labels and class names) instead of its path.

    The same images reached by a relative or absolute path, a symlink or a copy give one identity;
    ``resize`` is part of it (resized pixels are other data). A directory is read through the decode
    cache (decoded once if it has no entry) and remembered per process: a run id is asked for often.
    """
    if named_source(cfg.source):
        return cfg.source
    return content_identity(_directory_fingerprint(resolve_source(cfg), cfg.resize, cache_root(cfg)))


def named_source(spec: str) -> bool:
    """True for a built-in dataset name (``cifar10``, ``cifar100``, ``synthetic[:N]``), not a directory."""
    return spec in TORCHVISION_SOURCES or spec == "synthetic" or spec.startswith("synthetic:")


def content_identity(fingerprint: str) -> str:
    """A directory's data identity from its content fingerprint (as records store it)."""
    return f"content:{fingerprint}"


@functools.lru_cache(maxsize=16)  # the data under a path are taken as fixed while a process runs
def _directory_fingerprint(source: Source, resize: bool, root: Path) -> str:
    return DIRECTORY_READERS[source.kind](source, resize, root).fingerprint


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images (N, C, H, W), in [0, 1] units, over all pixels.

    Exact and memory-light: a 256-bin histogram per channel instead of a float copy of the data.
    """
    means, stds = [], []
    values = torch.arange(256, dtype=torch.float64, device=x.device) / 255.0
    for c in range(x.shape[1]):
        counts = torch.bincount(x[:, c].reshape(-1), minlength=256).to(torch.float64)  # (256,)
        mean = (counts * values).sum() / counts.sum()
        var = (counts * (values - mean) ** 2).sum() / counts.sum()
        means.append(float(mean))
        stds.append(float(var.sqrt()))
    return tuple(means), tuple(stds)


def make_synthetic(n_train: int, n_test: int, num_classes: int = SYNTHETIC_CLASSES, seed: int = 0) -> RawData:
    """Images with learnable structure for fast tests: per class a fixed low-frequency colour
    pattern, plus strong per-pixel noise, so a classifier must pool over space to tell classes apart.

    The content depends only on the sizes and ``seed`` (not on ``split_seed``): changing the split
    seed changes the split, never the data.
    """
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randn(num_classes, 3, 4, 4, generator=gen)  # (K, 3, 4, 4)
    patterns = F.interpolate(coarse, size=(CIFAR_SIZE, CIFAR_SIZE), mode="bilinear", align_corners=False)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = (torch.arange(n) % num_classes)[torch.randperm(n, generator=gen)]  # balanced classes
        noise = torch.randn(n, 3, CIFAR_SIZE, CIFAR_SIZE, generator=gen)
        x = (128 + 40 * patterns[y] + 48 * noise).round().clamp(0, 255).to(torch.uint8)  # (n, 3, 32, 32)
        return x, y

    train_x, train_y = draw(n_train)
    test_x, test_y = draw(n_test)
    classes = tuple(f"class{k}" for k in range(num_classes))
    return RawData(train_x, train_y, test_x, test_y, classes, content_fingerprint(train_x, train_y, test_x, test_y, classes))


def content_fingerprint(train_x, train_y, test_x, test_y, classes) -> str:
    """A 16-hex hash of the decoded pixels, labels and class names: the data's identity.

    It does not depend on the path, file dates or the split, so the same images anywhere give the
    same fingerprint (the split is recorded by the config).
    """
    digest = hashlib.sha256("\n".join(classes).encode())
    for t in (train_x, train_y, test_x, test_y):
        digest.update(str(tuple(t.shape)).encode())
        digest.update(memoryview(t.contiguous().numpy()).cast("B"))
    return digest.hexdigest()[:16]


def describe(source: Source, cfg: DataConfig, raw: RawData) -> str:
    """A human-readable name for reports, e.g. ``CIFAR-10 (JPEG copy)``.

    No path: reports name the data as the user did (``provenance.data_name``) plus its fingerprint,
    never an absolute path of the machine that made them.
    """
    if source.kind == "synthetic":
        return f"synthetic ({len(raw.train_y)} train + {len(raw.test_y)} test images, {len(raw.classes)} classes)"
    if source.kind == "torchvision":
        return f"{BATCH_LAYOUTS[TORCHVISION_SOURCES[source.name][1]].title} (torchvision)"
    if source.kind == "batches":
        return f"{BATCH_LAYOUTS[source.path.name].title} (python batches)"
    resized = " resized to 32x32" if cfg.resize else ""
    return f"{_imagefolder_title(source.path)}{resized}"


# ------------------------------------------------------------------------------------ sources

def _synthetic_size(spec: str) -> int:
    if spec == "synthetic":
        return SYNTHETIC_TRAIN
    text = spec.split(":", 1)[1]
    if not text.isdigit() or int(text) < SYNTHETIC_CLASSES:
        raise ValueError(f"source={spec!r} is invalid: expected synthetic or synthetic:N with N >= {SYNTHETIC_CLASSES} training images")
    return int(text)


def _detect_layout(path: Path) -> Source:
    if path.name in BATCH_LAYOUTS:
        return Source("batches", path)
    for name in BATCH_LAYOUTS:
        if (path / name).is_dir():
            return Source("batches", path / name)
    if (path / "train").is_dir() or (path / "test").is_dir():
        return Source("imagefolder", path)
    raise ValueError(f"{path} holds no dataset: expected train/<class>/ and test/<class>/ image folders, "
                     "or cifar-10-batches-py")


def _load_synthetic(source: Source, cfg: DataConfig) -> RawData:
    return make_synthetic(source.size, max(SYNTHETIC_CLASSES, source.size * SYNTHETIC_TEST // SYNTHETIC_TRAIN))


def _load_torchvision(source: Source, cfg: DataConfig) -> RawData:
    cls_name, folder = TORCHVISION_SOURCES[source.name]
    folder_path = source.path / folder
    if not folder_path.is_dir():
        _download_torchvision(source.name, cls_name, source.path, cfg.download)
    return _cached_batches(Source("batches", folder_path), cfg.resize, cache_root(cfg))


def _download_torchvision(name: str, cls_name: str, root: Path, download: bool) -> None:
    """Let torchvision fetch the archive; offline, say so in one line with the ways out."""
    if not download:
        raise FileNotFoundError(f"{name} is not under {root} and download=false: set download=true, or {WAYS_OUT}")
    import torchvision.datasets  # deferred: importing torchvision costs time most runs do not need

    try:
        getattr(torchvision.datasets, cls_name)(root=str(root), train=True, download=True)
    except (OSError, RuntimeError, ValueError) as exc:  # URLError is an OSError
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"cannot download {name} into {root} ({reason}); offline? {WAYS_OUT}") from None


def _load_batches(source: Source, cfg: DataConfig) -> RawData:
    return _cached_batches(source, cfg.resize, cache_root(cfg))


def _cached_batches(source: Source, resize: bool, root: Path) -> RawData:
    return cache.cached(source.kind, source.path, resize, root, lambda: _read_batches(source.path))


def _read_batches(folder: Path) -> RawData:
    """Read torchvision's pickled CIFAR batches the way torchvision does (latin1 pickles)."""
    layout = BATCH_LAYOUTS[folder.name]
    train_x, train_y = _read_batch_files(folder, layout.train, layout.label_key)
    test_x, test_y = _read_batch_files(folder, layout.test, layout.label_key)
    classes = tuple(_unpickle(folder / layout.meta)[layout.names_key])
    return RawData(train_x, train_y, test_x, test_y, classes, content_fingerprint(train_x, train_y, test_x, test_y, classes))


def _read_batch_files(folder: Path, names: tuple[str, ...], label_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for name in names:
        entry = _unpickle(folder / name)
        xs.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, CIFAR_SIZE, CIFAR_SIZE))  # (n, 3, 32, 32)
        ys.append(np.asarray(entry[label_key], dtype=np.int64))
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


def _unpickle(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: a {path.parent.name} directory needs it")
    try:
        with open(path, "rb") as handle:
            return pickle.load(handle, encoding="latin1")
    except (pickle.UnpicklingError, EOFError, ValueError, KeyError, AttributeError) as exc:
        raise ValueError(f"cannot read {path}: not a CIFAR python batch ({exc})") from None


def _load_imagefolder(source: Source, cfg: DataConfig) -> RawData:
    return _cached_imagefolder(source, cfg.resize, cache_root(cfg))


def _cached_imagefolder(source: Source, resize: bool, root: Path) -> RawData:
    classes, train, test = _scan_imagefolder(source.path)
    stamps = [f"{path}|{size}|{mtime}" for path, _, size, mtime in train + test]
    build = lambda: _decode_imagefolder(source.path, classes, train, test, resize)  # noqa: E731
    return cache.cached(source.kind, source.path, resize, root, build, stamps)


LOADERS: dict[str, Callable[[Source, DataConfig], RawData]] = {
    "synthetic": _load_synthetic,
    "torchvision": _load_torchvision,
    "batches": _load_batches,
    "imagefolder": _load_imagefolder,
}
# The directory kinds, read through the decode cache: (source, resize, cache root) -> RawData.
DIRECTORY_READERS: dict[str, Callable[[Source, bool, Path], RawData]] = {
    "batches": _cached_batches,
    "imagefolder": _cached_imagefolder,
}


# ------------------------------------------------------------------------------------ ImageFolder

def _scan_imagefolder(root: Path) -> tuple[tuple[str, ...], list[FileEntry], list[FileEntry]]:
    """Class names (sorted folder names, torchvision's rule) and the image files of each split."""
    splits = {}
    for split in ("train", "test"):
        folder = root / split
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} is missing: an ImageFolder dataset needs train/<class>/ and test/<class>/")
        names = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
        if not names:
            raise ValueError(f"{folder} has no class folders: expected {folder}/<class>/<image files>")
        splits[split] = names
    if splits["train"] != splits["test"]:
        only_train = sorted(set(splits["train"]) - set(splits["test"]))
        only_test = sorted(set(splits["test"]) - set(splits["train"]))
        raise ValueError(f"train and test classes differ under {root}: only in train {only_train}, only in test {only_test}")
    classes = tuple(splits["train"])
    if len(classes) < 2:  # every label the same: any classifier scores 0% error, and learns nothing
        raise ValueError(f"{root} holds 1 class ({classes[0]}): a classifier needs at least 2 class folders")
    return classes, _image_files(root / "train", classes), _image_files(root / "test", classes)


def _image_files(folder: Path, classes: tuple[str, ...]) -> list[FileEntry]:
    """(path, label, size, mtime_ns) of every image file, sorted by class then name.

    Plain strings and DirEntry.stat(): 60,000 files take a fraction of a second, which keeps a
    cache hit fast (the cache key needs every file's size and date).
    """
    files = []
    for label, name in enumerate(classes):
        found = []
        for entry in os.scandir(folder / name):
            if entry.name.startswith(".") or not entry.name.lower().endswith(IMAGE_EXTENSIONS) or not entry.is_file():
                continue
            stat = entry.stat()
            found.append((entry.path, label, stat.st_size, stat.st_mtime_ns))
        if not found:
            raise ValueError(f"class folder {folder / name} has no images: expected files ending in {', '.join(IMAGE_EXTENSIONS)}")
        files.extend(sorted(found))
    return files


def _decode_imagefolder(root, classes, train: list[FileEntry], test: list[FileEntry], resize: bool) -> RawData:
    log.info("decoding %d images under %s (once: the result is cached)", len(train) + len(test), root)
    paths = [entry[0] for entry in train + test]
    images = _decode_files(paths, resize, _worker_count())
    _check_sizes(images, paths)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()  # (N, H, W, 3) -> (N, 3, H, W)
    y = torch.tensor([entry[1] for entry in train + test], dtype=torch.int64)
    n = len(train)
    return RawData(x[:n], y[:n], x[n:], y[n:], classes, content_fingerprint(x[:n], y[:n], x[n:], y[n:], classes))


def _decode_files(paths: list[str], resize: bool, workers: int) -> list[np.ndarray]:
    """Decode image files to RGB uint8 arrays (H, W, 3), in chunks over worker processes.

    JPEG decoding holds the GIL between tiny images, so processes (not threads) use the cores.
    """
    if workers <= 1 or len(paths) < POOL_MIN_FILES:
        return _decode_chunk(paths, resize)
    size = -(-len(paths) // (workers * 8))  # several chunks per worker balance the load
    chunks = [paths[i:i + size] for i in range(0, len(paths), size)]
    # fork on Linux: the workers need only PIL and numpy, and skip re-importing torch (seconds).
    context = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        parts = pool.map(_decode_chunk, chunks, [resize] * len(chunks))
        return [image for part in parts for image in part]


def _decode_chunk(paths: list[str], resize: bool) -> list[np.ndarray]:
    from PIL import Image, UnidentifiedImageError

    images = []
    for path in paths:
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")  # grayscale, palette and RGBA (alpha dropped) become RGB
                if resize and im.size != (CIFAR_SIZE, CIFAR_SIZE):
                    im = im.resize((CIFAR_SIZE, CIFAR_SIZE), Image.BILINEAR)
                images.append(np.asarray(im, dtype=np.uint8))
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ValueError(f"cannot read image {path}: {reason}") from None
    return images


def _check_sizes(images: list[np.ndarray], paths: list[str]) -> None:
    """Without resize, images of other sizes than 32x32 are kept, but they must all agree."""
    first = {}
    for image, path in zip(images, paths):
        first.setdefault(image.shape[:2], path)
        if len(first) > 1:
            (a, pa), (b, pb) = list(first.items())[:2]
            raise ValueError(
                f"images differ in size ({a[1]}x{a[0]} at {pa}, {b[1]}x{b[0]} at {pb}): set resize=true to resize all to 32x32"
            )


def _worker_count() -> int:
    """The CPUs this process may use; 1 inside a daemonic process, which may not start children
    (as in some parallel study workers)."""
    if multiprocessing.current_process().daemon:
        return 1
    return available_cpus()


def _imagefolder_title(root: Path) -> str:
    """``CIFAR-10 (JPEG copy)`` when the directory's README says it is a JPEG copy of a dataset."""
    readme = root / "README.md"
    text = readme.read_text(errors="replace") if readme.is_file() else ""
    if re.search(r"jpeg copy", text, re.IGNORECASE):
        heading = next((line.lstrip("# ").strip() for line in text.splitlines() if line.startswith("#")), root.name)
        return f"{heading.split(',')[0].strip()} (JPEG copy)"
    return f"{root.name} (ImageFolder)"
