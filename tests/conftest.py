"""Shared fixtures: the real dataset (RESNET_CORE_DATA), a session data cache, tiny CIFAR pickles."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from resnet_core.config import DATA_ENV_VAR
from resnet_core.data import CACHE_ENV_VAR


@pytest.fixture(scope="session", autouse=True)
def _session_data_cache(tmp_path_factory):
    """Tests never write to the user's cache: without RESNET_CORE_CACHE, use one directory per
    session (so the real data is decoded once per test run, not once per test). A cache the user
    set is kept, so repeated local runs decode once in all."""
    if os.environ.get(CACHE_ENV_VAR):
        yield Path(os.environ[CACHE_ENV_VAR])
        return
    with pytest.MonkeyPatch.context() as patch:
        path = tmp_path_factory.mktemp("resnet_core_cache")
        patch.setenv(CACHE_ENV_VAR, str(path))
        yield path


@pytest.fixture
def one_thread():
    """torch on one thread for the test: CPU kernels repeat bit for bit, and tests that compare runs
    do not race the machine's other work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """The dataset directory named by RESNET_CORE_DATA (absolute). Unset: skip, but fail under CI."""
    value = os.environ.get(DATA_ENV_VAR)
    if not value:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{DATA_ENV_VAR} is not set: CI must point it at the dataset directory")
        pytest.skip(f"{DATA_ENV_VAR} is not set")
    path = Path(value).expanduser().resolve()
    if not path.is_dir():
        pytest.fail(f"{DATA_ENV_VAR}={value} is not a directory")
    return path


def write_cifar_batches(
    root: Path, per_class_train: int = 6, per_class_test: int = 2, classes: tuple[str, ...] = ("cat", "dog", "ship"), seed: int = 0
) -> Path:
    """A tiny ``cifar-10-batches-py`` in torchvision's pickle format under ``root``; returns its path.

    Training images are spread over the five data batches; each image's pixels encode its label
    (channel 0 filled with the label index) so tests can check that labels stay with their images.
    """
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)

    def images(per_class: int) -> tuple[np.ndarray, list[int]]:
        labels = [k for k in range(len(classes)) for _ in range(per_class)]
        data = rng.integers(0, 256, (len(labels), 3, 32, 32), dtype=np.uint8)
        data[:, 0] = np.asarray(labels, dtype=np.uint8)[:, None, None]
        return data.reshape(len(labels), 3072), labels

    train, train_labels = images(per_class_train)
    for i, part in enumerate(np.array_split(np.arange(len(train_labels)), 5), start=1):
        batch = {"batch_label": f"training batch {i} of 5", "data": train[part], "labels": [train_labels[j] for j in part]}
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch))
    test, test_labels = images(per_class_test)
    (folder / "test_batch").write_bytes(pickle.dumps({"data": test, "labels": test_labels}))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": list(classes), "num_vis": 3072}))
    return folder


@pytest.fixture
def tiny_cifar_batches(tmp_path):
    """Factory: ``tiny_cifar_batches(**kwargs)`` writes a tiny cifar-10-batches-py; returns its path."""
    counter = iter(range(1_000_000))
    return lambda **kwargs: write_cifar_batches(tmp_path / f"batches{next(counter)}", **kwargs)


@pytest.fixture(scope="session")
def postgres_url():
    """Yields the URL (with the test role's password) of a throwaway PostgreSQL server on 127.0.0.1, started
    once per session from Debian's binaries (tests/pg.py) and removed at the end. Binaries or the
    Python driver missing: skip, but fail under CI; a server that does not start: fail."""
    import pg

    missing = pg.driver_missing() or (None if pg.bin_dir() else "PostgreSQL's initdb was not found")
    if missing:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{missing}: CI must install PostgreSQL (.ci/run does) and psycopg2-binary")
        pytest.skip(missing)
    server = pg.start_server()
    try:
        yield server.url
    finally:
        pg.remove(server)
