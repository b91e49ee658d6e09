"""Data sources, the decode-once cache, the stratified split and the one-line errors."""

from __future__ import annotations

import os
import time
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnet_core import data
from resnet_core.config import DataConfig
from resnet_core.data import channel_stats, load_data, split_indices

README_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
README_MEAN = (0.4913, 0.4821, 0.4465)
README_STD = (0.2452, 0.2428, 0.2606)


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message, f"error is not one line: {message!r}"
    return message


def write_image(path: Path, label: int, size=(32, 32), mode="RGB", seed=0) -> None:
    """A PNG (lossless, so pixels can be checked) whose red channel's first pixel is ``label * 10``."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    pixels[0, 0, 0] = label * 10
    image = Image.fromarray(pixels)
    if mode != "RGB":
        image = image.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def make_imagefolder(root: Path, classes=("cat", "dog", "frog"), train=4, test=2, size=(32, 32)) -> Path:
    for split, count in (("train", train), ("test", test)):
        for label, name in enumerate(classes):
            for i in range(count):
                write_image(root / split / name / f"{i:04d}.png", label, size, seed=hash((split, name, i)) % 1000)
    return root


def tiny_cfg(source, tmp_path: Path, **kwargs) -> DataConfig:
    kwargs.setdefault("val_size", 0)
    return DataConfig(source=str(source), cache_dir=str(tmp_path / "cache"), **kwargs)


# ------------------------------------------------------------------------------------ synthetic

def test_synthetic_shapes_dtypes_and_determinism():
    a = load_data(DataConfig(source="synthetic", val_size=200))
    b = load_data(DataConfig(source="synthetic", val_size=200))
    assert a.train_x.shape == (1800, 3, 32, 32) and a.val_x.shape == (200, 3, 32, 32) and a.test_x.shape == (500, 3, 32, 32)
    assert a.train_x.dtype == torch.uint8 and a.train_y.dtype == torch.int64
    assert a.num_classes == 10 and isinstance(a.classes, tuple)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert a.fingerprint == b.fingerprint and len(a.fingerprint) == 16
    assert a.description.startswith("synthetic")


def test_synthetic_size_spec_and_split_seed_does_not_change_the_data():
    small = load_data(DataConfig(source="synthetic:400", val_size=40))
    assert len(small.train_y) + len(small.val_y) == 400 and len(small.test_y) == 100
    other_split = load_data(DataConfig(source="synthetic:400", val_size=40, split_seed=5))
    assert small.fingerprint == other_split.fingerprint
    assert not torch.equal(small.val_x, other_split.val_x)
    with pytest.raises(ValueError, match="synthetic:N") as exc:
        load_data(DataConfig(source="synthetic:lots"))
    one_line(exc)


def test_synthetic_classes_are_learnable():
    bundle = load_data(DataConfig(source="synthetic", val_size=0))
    x, y = bundle.train_x.float().flatten(1), bundle.train_y
    centroids = torch.stack([x[y == k].mean(0) for k in range(10)])  # (10, 3072)
    predicted = torch.cdist(bundle.test_x.float().flatten(1), centroids).argmin(1)
    assert (predicted == bundle.test_y).float().mean() > 0.9  # structure a model can find
    single_pixel = bundle.test_x[:, 0, 0, 0].float()  # but one pixel alone is not enough
    assert abs(torch.corrcoef(torch.stack([single_pixel, bundle.test_y.float()]))[0, 1]) < 0.5


# ------------------------------------------------------------------------------------ splits

def test_validation_is_stratified_and_independent_of_subset():
    labels = torch.arange(1000) % 10
    train_a, val_a, pool = split_indices(labels, 200, None, split_seed=0)
    train_b, val_b, _ = split_indices(labels, 200, 100, split_seed=0)
    assert torch.equal(val_a, val_b)  # the subset never moves validation images
    assert torch.bincount(labels[val_a]).tolist() == [20] * 10
    assert torch.bincount(labels[train_b]).tolist() == [10] * 10
    assert not set(val_a.tolist()) & set(train_a.tolist()) and not set(val_b.tolist()) & set(train_b.tolist())
    assert set(train_b.tolist()) <= set(pool.tolist()) and len(pool) == 800 and torch.equal(train_a, pool)
    _, val_c, _ = split_indices(labels, 200, None, split_seed=1)
    assert not torch.equal(val_a, val_c)


def test_split_of_unbalanced_classes_is_proportional():
    labels = torch.tensor([0] * 60 + [1] * 30 + [2] * 10)
    _, val, _ = split_indices(labels, 10, None, split_seed=0)
    assert torch.bincount(labels[val]).tolist() == [6, 3, 1]


def test_val_size_or_subset_too_big_is_a_one_line_error():
    labels = torch.arange(100) % 10
    with pytest.raises(ValueError, match="val_size=100 leaves no training images") as exc:
        split_indices(labels, 100, None, 0)
    one_line(exc)
    with pytest.raises(ValueError, match="subset=91 is larger than the 90") as exc:
        split_indices(labels, 10, 91, 0)
    one_line(exc)
    with pytest.raises(ValueError, match="val_size=2000") as exc:  # synthetic has 2,000 training images
        load_data(DataConfig(source="synthetic", val_size=2000))  # (the default 5000 adapts: test_small_data.py)
    one_line(exc)


def test_bundle_splits_are_disjoint_and_statistics_ignore_subset():
    full = load_data(DataConfig(source="synthetic", val_size=300))
    sub = load_data(DataConfig(source="synthetic", val_size=300, subset=500))
    assert len(sub.train_y) == 500 and torch.bincount(sub.train_y).tolist() == [50] * 10
    assert torch.equal(full.val_x, sub.val_x)
    assert full.mean == sub.mean and full.std == sub.std  # from the whole pool, not the subset
    val_rows = {bytes(row) for row in full.val_x.flatten(1).numpy()}
    assert not any(bytes(row) in val_rows for row in full.train_x.flatten(1).numpy())


def test_channel_stats_match_a_float_computation():
    x = torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8)
    mean, std = channel_stats(x)
    xf = x.double() / 255
    np.testing.assert_allclose(mean, xf.mean(dim=(0, 2, 3)).numpy(), rtol=1e-12)
    np.testing.assert_allclose(std, xf.std(dim=(0, 2, 3), unbiased=False).numpy(), rtol=1e-12)


def test_bundle_to_device_keeps_content():
    bundle = load_data(DataConfig(source="synthetic:100", val_size=10), device="cpu")
    moved = bundle.to("cpu")
    assert moved.train_x.device.type == "cpu" and torch.equal(moved.train_x, bundle.train_x)
    assert moved.classes == bundle.classes and moved.fingerprint == bundle.fingerprint


# ------------------------------------------------------------------------------------ cifar batches

@pytest.mark.parametrize("point_at", ["parent", "folder"])
def test_cifar_batches_directory(tiny_cifar_batches, tmp_path, point_at):
    folder = tiny_cifar_batches(per_class_train=6, per_class_test=2)
    source = folder.parent if point_at == "parent" else folder
    bundle = load_data(tiny_cfg(source, tmp_path, val_size=3))
    assert bundle.classes == ("cat", "dog", "ship")
    assert len(bundle.train_y) == 15 and len(bundle.val_y) == 3 and len(bundle.test_y) == 6
    assert torch.bincount(bundle.val_y).tolist() == [1, 1, 1]
    for x, y in ((bundle.train_x, bundle.train_y), (bundle.val_x, bundle.val_y), (bundle.test_x, bundle.test_y)):
        assert torch.equal(x[:, 0, 0, 0].long(), y)  # each image still carries its own label
    assert bundle.description == "CIFAR-10 (python batches)"


def test_cifar_batches_missing_file_names_it(tiny_cifar_batches, tmp_path):
    folder = tiny_cifar_batches()
    (folder / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3") as exc:
        load_data(tiny_cfg(folder, tmp_path))
    one_line(exc)


def test_cifar100_python_directory(tmp_path):
    import pickle

    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name, count in (("train", 8), ("test", 4)):
        labels = [i % 4 for i in range(count)]
        pixels = np.zeros((count, 3072), dtype=np.uint8)
        pixels[:, 0] = labels
        entry = {"data": pixels, "fine_labels": labels, "coarse_labels": [0] * count}
        (folder / name).write_bytes(pickle.dumps(entry))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": ["apple", "bee", "cup", "dish"]}))
    bundle = load_data(tiny_cfg(tmp_path, tmp_path, val_size=4))
    assert bundle.classes == ("apple", "bee", "cup", "dish") and bundle.num_classes == 4
    assert torch.bincount(bundle.val_y).tolist() == [1, 1, 1, 1] and len(bundle.test_y) == 4
    assert torch.equal(bundle.train_x[:, 0, 0, 0].long(), bundle.train_y)
    assert bundle.description.startswith("CIFAR-100 (python batches)")


# ------------------------------------------------------------------------------------ torchvision

def test_torchvision_offline_is_one_line_naming_the_ways_out(tmp_path, monkeypatch):
    import torchvision.datasets.cifar

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", offline)
    start = time.perf_counter()
    with pytest.raises(ValueError, match="cannot download cifar10") as exc:
        load_data(DataConfig(source="cifar10", root=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache")))
    message = one_line(exc)
    assert "--data" in message and "RESNET_CORE_DATA" in message
    assert time.perf_counter() - start < 10


def test_torchvision_without_download_names_the_ways_out(tmp_path):
    with pytest.raises(FileNotFoundError, match="download=false") as exc:
        load_data(DataConfig(source="cifar100", root=str(tmp_path), download=False, cache_dir=str(tmp_path / "c")))
    assert "RESNET_CORE_DATA" in one_line(exc)


def test_torchvision_cifar10_already_under_root_is_read_without_download(tiny_cifar_batches, tmp_path, monkeypatch):
    folder = tiny_cifar_batches()
    monkeypatch.setattr(data, "_download_torchvision", lambda *a: pytest.fail("must not download"))
    bundle = load_data(DataConfig(source="cifar10", root=str(folder.parent), val_size=0, cache_dir=str(tmp_path / "c")))
    assert bundle.classes == ("cat", "dog", "ship") and len(bundle.train_y) == 18
    assert bundle.description.startswith("CIFAR-10 (torchvision)")


# ------------------------------------------------------------------------------------ ImageFolder

def test_imagefolder_reads_classes_labels_and_pixels(tmp_path):
    root = make_imagefolder(tmp_path / "set")
    bundle = load_data(tiny_cfg(root, tmp_path))
    assert bundle.classes == ("cat", "dog", "frog")
    assert len(bundle.train_y) == 12 and len(bundle.test_y) == 6
    assert torch.equal(bundle.train_x[:, 0, 0, 0].long(), bundle.train_y * 10)  # pixels stay with labels
    first = np.array(Image.open(root / "train" / "cat" / "0000.png"))  # (H, W, 3)
    assert torch.equal(bundle.train_x[0], torch.from_numpy(first).permute(2, 0, 1))
    assert bundle.description == "set (ImageFolder)"


def test_imagefolder_converts_grayscale_and_rgba_to_rgb(tmp_path):
    root = make_imagefolder(tmp_path / "set", train=1, test=1)
    write_image(root / "train" / "cat" / "gray.png", 0, mode="L")
    write_image(root / "train" / "dog" / "alpha.png", 1, mode="RGBA")
    bundle = load_data(tiny_cfg(root, tmp_path))
    assert bundle.train_x.shape == (5, 3, 32, 32)
    gray = bundle.train_x[1]  # train/cat: 0000.png, gray.png
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])


def test_imagefolder_sizes_resize_and_mismatch(tmp_path):
    big = make_imagefolder(tmp_path / "big", size=(40, 40))
    assert load_data(tiny_cfg(big, tmp_path)).train_x.shape[2:] == (40, 40)  # agreed sizes are kept
    resized = load_data(tiny_cfg(big, tmp_path, resize=True))
    assert resized.train_x.shape[2:] == (32, 32) and "resized" in resized.description
    write_image(big / "train" / "dog" / "odd.png", 1, size=(48, 30))
    with pytest.raises(ValueError, match="resize=true") as exc:
        load_data(tiny_cfg(big, tmp_path))
    assert "odd.png" in one_line(exc)


def test_imagefolder_unreadable_image_names_the_file(tmp_path):
    root = make_imagefolder(tmp_path / "set")
    bad = root / "train" / "dog" / "broken.jpg"
    bad.write_bytes(b"this is not a jpeg")
    with pytest.raises(ValueError, match="cannot read image") as exc:
        load_data(tiny_cfg(root, tmp_path))
    assert str(bad) in one_line(exc)


def test_unreadable_image_in_worker_processes_names_the_file(tmp_path):
    root = make_imagefolder(tmp_path / "set", train=3, test=1)
    paths = sorted(str(p) for p in root.rglob("*.png"))
    (root / "bad.png").write_bytes(b"\x89PNG broken")
    data_pool = data._decode_files  # the pool path, forced with a low threshold
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(data, "POOL_MIN_FILES", 1)
        images = data_pool(paths, False, 2)
        assert len(images) == len(paths) and images[0].shape == (32, 32, 3)
        with pytest.raises(ValueError, match="bad.png") as exc:
            data_pool(paths + [str(root / "bad.png")], False, 2)
    one_line(exc)


def test_imagefolder_mismatched_classes(tmp_path):
    root = make_imagefolder(tmp_path / "set")
    write_image(root / "test" / "horse" / "0000.png", 3)
    with pytest.raises(ValueError, match=r"only in test \['horse'\]") as exc:
        load_data(tiny_cfg(root, tmp_path))
    assert str(root.resolve()) in one_line(exc)


def test_missing_empty_and_classless_directories(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such directory") as exc:
        load_data(tiny_cfg(tmp_path / "nowhere", tmp_path))
    assert str(tmp_path / "nowhere") in one_line(exc)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no dataset") as exc:
        load_data(tiny_cfg(tmp_path / "empty", tmp_path))
    one_line(exc)
    root = make_imagefolder(tmp_path / "set")
    (root / "train" / "cat").rename(tmp_path / "moved")
    (root / "train" / "cat").mkdir()
    with pytest.raises(ValueError, match="has no images") as exc:
        load_data(tiny_cfg(root, tmp_path))
    assert str(root.resolve() / "train" / "cat") in one_line(exc)
    (root / "test").rename(tmp_path / "test_moved")
    with pytest.raises(FileNotFoundError, match="test is missing"):
        load_data(tiny_cfg(root, tmp_path))


def test_jpeg_copy_readme_names_the_dataset(tmp_path):
    root = make_imagefolder(tmp_path / "somecopy")
    (root / "README.md").write_text("# CIFAR-10, JPEG copy (offline stand-in)\n\nText.\n")
    bundle = load_data(tiny_cfg(root, tmp_path))
    assert bundle.description == "CIFAR-10 (JPEG copy)"


# ------------------------------------------------------------------------------------ cache

def count_decodes(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = data._decode_files

    def counted(paths, *args):
        calls.append(len(paths))
        return real(paths, *args)

    monkeypatch.setattr(data, "_decode_files", counted)
    return calls


def test_cache_hit_miss_and_location(tmp_path, monkeypatch):
    root = make_imagefolder(tmp_path / "set")
    before = sorted(p.name for p in root.rglob("*"))
    calls = count_decodes(monkeypatch)
    first = load_data(tiny_cfg(root, tmp_path))
    second = load_data(tiny_cfg(root, tmp_path))
    assert calls == [18]  # decoded once, then read from the cache
    assert torch.equal(first.train_x, second.train_x) and first.fingerprint == second.fingerprint
    assert sorted(p.name for p in root.rglob("*")) == before  # nothing written beside the data
    assert len(list((tmp_path / "cache").glob("imagefolder-set-*.pt"))) == 1
    load_data(DataConfig(source=str(root), val_size=0, cache_dir=str(tmp_path / "other")))
    assert calls == [18, 18]  # another cache directory: a miss


def test_stale_cache_is_rebuilt(tmp_path, monkeypatch):
    root = make_imagefolder(tmp_path / "set")
    first = load_data(tiny_cfg(root, tmp_path))
    calls = count_decodes(monkeypatch)
    changed = root / "train" / "cat" / "0001.png"
    write_image(changed, 0, seed=999)
    os.utime(changed, ns=(time.time_ns(), time.time_ns() + 10**9))  # a different mtime, even on coarse clocks
    second = load_data(tiny_cfg(root, tmp_path))
    assert calls == [18]
    assert not torch.equal(first.train_x, second.train_x) and first.fingerprint != second.fingerprint
    write_image(root / "test" / "dog" / "extra.png", 1)
    assert len(load_data(tiny_cfg(root, tmp_path)).test_y) == 7 and calls == [18, 19]


def test_corrupt_or_inconsistent_cache_is_rebuilt_not_trusted(tmp_path, monkeypatch):
    root = make_imagefolder(tmp_path / "set")
    good = load_data(tiny_cfg(root, tmp_path))
    (cache_file,) = (tmp_path / "cache").glob("*.pt")
    calls = count_decodes(monkeypatch)
    cache_file.write_bytes(b"garbage")
    assert torch.equal(load_data(tiny_cfg(root, tmp_path)).train_x, good.train_x) and calls == [18]
    stored = torch.load(cache_file, weights_only=True)
    stored["train_y"] = stored["train_y"][:-1]  # right key, wrong shapes
    torch.save(stored, cache_file)
    assert len(load_data(tiny_cfg(root, tmp_path)).train_y) == 12 and calls == [18, 18]


def test_cache_directory_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv(data.CACHE_ENV_VAR, str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.cache_root(DataConfig(source="synthetic", cache_dir=str(tmp_path / "cfg"))) == tmp_path / "cfg"
    assert data.cache_root(DataConfig(source="synthetic")) == tmp_path / "env"
    monkeypatch.delenv(data.CACHE_ENV_VAR)
    assert data.cache_root(DataConfig(source="synthetic")) == tmp_path / "xdg" / "resnet_core"


# ------------------------------------------------------------------------------------ the real data

@pytest.fixture(scope="module")
def real_bundle(real_data_dir):
    """The shared CIFAR-10 JPEG copy with the default 45k/5k split (decoded once per cache)."""
    return load_data(DataConfig(source=str(real_data_dir)))


def test_real_data_classes_counts_and_statistics(real_bundle, real_data_dir):
    assert real_bundle.classes == README_CLASSES
    assert real_bundle.train_x.shape == (45000, 3, 32, 32) and real_bundle.val_x.shape == (5000, 3, 32, 32)
    assert real_bundle.test_x.shape == (10000, 3, 32, 32)
    assert torch.bincount(real_bundle.val_y).tolist() == [500] * 10
    assert torch.bincount(real_bundle.train_y).tolist() == [4500] * 10
    assert torch.bincount(real_bundle.test_y).tolist() == [1000] * 10
    np.testing.assert_allclose(real_bundle.mean, README_MEAN, atol=0.002)
    np.testing.assert_allclose(real_bundle.std, README_STD, atol=0.002)
    assert real_bundle.description == "CIFAR-10 (JPEG copy)"


def test_real_data_second_load_is_a_cache_hit(real_bundle, real_data_dir, monkeypatch):
    monkeypatch.setattr(data, "_decode_files", lambda *a: pytest.fail("a cache hit must not decode"))
    again = load_data(DataConfig(source=str(real_data_dir), val_size=5000, subset=1000))
    assert again.fingerprint == real_bundle.fingerprint
    assert torch.equal(again.val_x, real_bundle.val_x) and len(again.train_y) == 1000


# ------------------------------------------------------------------------------------ identity

def test_one_imagefolder_by_another_path_is_one_run(tmp_path, monkeypatch):
    from resnet_core.config import RunConfig
    from resnet_core.identity import run_id

    root = make_imagefolder(tmp_path / "set")
    (tmp_path / "link").symlink_to(root)
    copy = make_imagefolder(tmp_path / "copy")  # the same images (PNG is lossless) in another place
    for src in root.rglob("*.png"):
        (copy / src.relative_to(root)).write_bytes(src.read_bytes())
    monkeypatch.chdir(tmp_path)
    ids = {run_id(RunConfig(data=tiny_cfg(path, tmp_path))) for path in (root, "set", "./link", tmp_path / "link", copy)}
    assert len(ids) == 1
    other = make_imagefolder(tmp_path / "other", classes=("cat", "dog"))
    assert run_id(RunConfig(data=tiny_cfg(other, tmp_path))) not in ids
    assert run_id(RunConfig(data=tiny_cfg(root, tmp_path, resize=True))) not in ids  # resized pixels are other data


def test_data_identity_is_a_name_for_built_in_sources_and_the_content_for_a_directory(tmp_path):
    assert data.data_identity(DataConfig(source="cifar10", root=str(tmp_path / "nowhere"))) == "cifar10"
    assert data.data_identity(DataConfig(source="synthetic:300")) == "synthetic:300"
    root = make_imagefolder(tmp_path / "set")
    assert data.data_identity(tiny_cfg(root, tmp_path)) == "content:" + load_data(tiny_cfg(root, tmp_path)).fingerprint


def test_a_record_names_its_classes_and_their_number(tmp_path):
    from resnet_core.config import ModelConfig, RunConfig, TrainConfig
    from resnet_core.engine import fit
    from resnet_core.store import load_runs

    root = make_imagefolder(tmp_path / "set", classes=("ant", "bee", "wasp"))
    run = RunConfig(model=ModelConfig(depth=8), train=TrainConfig(epochs=1, batch_size=4, eval_batch_size=8),
                    data=tiny_cfg(root, tmp_path, val_size=3), device="cpu")
    record = fit(run, results_dir=tmp_path / "results")
    assert record.status == "completed"
    assert record.provenance["data_classes"] == ["ant", "bee", "wasp"] and record.provenance["data_num_classes"] == 3
    row = load_runs(tmp_path / "results").iloc[0]
    assert row["provenance.data_classes"] == ("ant", "bee", "wasp") and row["provenance.data_num_classes"] == 3
