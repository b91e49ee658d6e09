"""The decode-once cache: a decoded dataset stored as one torch file, trusted only while it matches
its source (docs/DESIGN.md, "Data").

Decoding 60,000 JPEGs takes minutes; reading the decoded uint8 tensors back takes a second. A cache
file is keyed by the source's files (names, sizes, modification times) and is rebuilt, never
trusted, when they differ, when it is unreadable, or when its tensors are inconsistent. Files are
written with the result store's atomic writer (temporary file, fsync, rename), so a reader never
sees half a cache file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from resnet_core.store import atomic_write_bytes

log = logging.getLogger(__name__)

CACHE_ENV_VAR = "RESNET_CORE_CACHE"
CACHE_FORMAT = 1  # bump when the cache file layout changes: old files are then rebuilt


@dataclass(frozen=True)
class RawData:
    """A decoded dataset before splitting: what the cache stores. ``fingerprint`` hashes the content."""

    train_x: torch.Tensor  # (N, 3, H, W) uint8
    train_y: torch.Tensor  # (N,) int64
    test_x: torch.Tensor  # (M, 3, H, W) uint8
    test_y: torch.Tensor  # (M,) int64
    classes: tuple[str, ...]
    fingerprint: str


def cache_root(cache_dir: str | None) -> Path:
    """Where decoded datasets are cached: ``cache_dir``, $RESNET_CORE_CACHE, else the user cache dir.

    Never beside the data: the data directory may be read-only (the shared copy is).
    """
    if cache_dir:
        return Path(cache_dir).expanduser().resolve()
    if os.environ.get(CACHE_ENV_VAR):
        return Path(os.environ[CACHE_ENV_VAR]).expanduser().resolve()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser().resolve() / "resnet_core"


def cached(kind: str, source: Path, resize: bool, root: Path, build: Callable[[], RawData],
           stamps: list[str] | None = None) -> RawData:
    """The decoded dataset from the cache when it matches its source; else ``build()`` and store it.

    One cache file per (source path, resize) under ``root``; inside it, a key over the source's
    files (names, sizes, mtimes: ``stamps``; default: the files directly in ``source``) that must
    match, or the file is rebuilt rather than trusted.
    """
    if stamps is None:
        stamps = [f"{p}|{p.stat().st_size}|{p.stat().st_mtime_ns}" for p in sorted(source.iterdir()) if p.is_file()]
    key = source_key(source, stamps, resize)
    name = hashlib.sha256(f"{source}|{resize}".encode()).hexdigest()[:16]
    path = root / f"{kind}-{source.name}-{name}.pt"
    raw = read_cache(path, key)
    if raw is None:
        raw = build()
        write_cache(path, key, raw)
    return raw


def source_key(root: Path, stamps: list[str], resize: bool) -> str:
    """Hash of the absolute source path, the resize flag and every file's name, size and mtime."""
    text = "\n".join([f"{CACHE_FORMAT}|{root}|{resize}", *stamps])
    return hashlib.sha256(text.encode()).hexdigest()


def read_cache(path: Path, key: str) -> RawData | None:
    """A RawData from ``path`` if it exists, is readable, has ``key`` and consistent shapes."""
    if not path.is_file():
        return None
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: rebuild it, do not trust it
        log.warning("ignoring unreadable data cache %s (%s)", path, exc)
        return None
    if not isinstance(stored, dict) or stored.get("format") != CACHE_FORMAT or stored.get("key") != key:
        log.info("data cache %s does not match its source: rebuilding", path)
        return None
    try:
        raw = RawData(**{f.name: stored[f.name] for f in dataclasses.fields(RawData)})
        raw = dataclasses.replace(raw, classes=tuple(raw.classes))
    except (KeyError, TypeError):
        return None
    return raw if consistent(raw) else None


def consistent(raw: RawData) -> bool:
    """Shapes, dtypes and label ranges a decoded dataset must have (a cache file is checked, not trusted)."""
    xs, ys = (raw.train_x, raw.test_x), (raw.train_y, raw.test_y)
    return (
        all(x.dtype == torch.uint8 and x.dim() == 4 and x.shape[1] == 3 and x.shape[2:] == xs[0].shape[2:] for x in xs)
        and all(y.dtype == torch.int64 and y.dim() == 1 for y in ys)
        and all(len(x) == len(y) for x, y in zip(xs, ys))
        and all(len(y) == 0 or 0 <= int(y.min()) and int(y.max()) < len(raw.classes) for y in ys)
    )


def write_cache(path: Path, key: str, raw: RawData) -> None:
    """Store ``raw`` under ``key`` with the store's atomic writer; an unwritable cache costs time
    (the images are decoded again next time), not correctness: a warning, not an error."""
    payload = {"format": CACHE_FORMAT, "key": key, **{f.name: getattr(raw, f.name) for f in dataclasses.fields(RawData)}}
    payload["classes"] = list(raw.classes)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    try:
        atomic_write_bytes(path, buffer.getbuffer())  # no copy of a large payload
    except OSError as exc:
        warnings.warn(f"cannot write the data cache {path} ({exc}); images will be decoded again next time", stacklevel=2)
