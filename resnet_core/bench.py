"""Training throughput, three ways, in one process side by side.

    python -m resnet_core.bench --model resnet20 --device cpu [--batch-size 128] [--json]

(a) engine:  the engine's own step with its data path (uint8 images on the device, batch
             indexing, on-device pad-crop-flip, normalisation), at the engine's default settings
             for the device (memory format, autocast);
(b) model:   the same model step (same memory format, precision and batch) on float tensors
             already in memory: the ceiling for (a);
(c) classic: the tutorial's pipeline: a torchvision-style dataset with per-image PIL transforms
             through a DataLoader, the model in its default memory format and fp32.

Rounds alternate (a), (b), (c) so that drift in machine load hits all three alike; each figure is
the median over rounds. Performance claims come from here, never from timed tests.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from resnet_core.cli import run_cli
from resnet_core.config import DataConfig, RunConfig, TrainConfig
from resnet_core.devices import device_name, needs_grad_scaler, resolve_amp, resolve_device, sync
from resnet_core.engine import _random_bundle, make_trainer, train_one_epoch
from resnet_core.models import build_model, resolve_model
from resnet_core.schedules import StepPlan


def _rate(run_steps: Callable[[int], None], steps: int, batch: int, device: torch.device) -> float:
    """Images/s of ``run_steps(steps)`` (after the caller's warm-up)."""
    sync(device)
    start = time.perf_counter()
    run_steps(steps)
    sync(device)
    return steps * batch / (time.perf_counter() - start)


def engine_step_fn(run: RunConfig, pool: int) -> tuple[Callable[[int], None], torch.device]:
    """(a): the engine's own epoch loop (shuffle, batch indexing, augmentation, step, per-stage
    gradient norms, divergence checks) over uint8 images held on the device."""
    images = torch.randint(0, 256, (pool, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 10, (pool,))
    trainer = make_trainer(run, _random_bundle(images, labels, 10))

    def run_steps(n: int) -> None:
        trainer.budget = StepPlan(steps_per_epoch=min(n, pool // run.train.batch_size), total_iterations=n, epochs=1)
        trainer.iteration = 0
        while trainer.iteration < n:
            train_one_epoch(trainer)

    return run_steps, trainer.device


def model_step_fn(run: RunConfig) -> tuple[Callable[[int], None], torch.device]:
    """(b): the same model, memory format, precision and batch on ready float tensors."""
    device = resolve_device(run.device)
    fmt = torch.channels_last if run.train.channels_last else torch.contiguous_format
    model = build_model(run.model, num_classes=10).to(device=device, memory_format=fmt).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    amp = resolve_amp(run.train.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=needs_grad_scaler(amp))  # fp16: as the engine steps
    x = torch.randn(run.train.batch_size, 3, 32, 32, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (run.train.batch_size,), device=device)

    def run_steps(n: int) -> None:
        for _ in range(n):
            model_step()

    def model_step() -> None:
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return run_steps, device


class InMemoryCifarStyle(torch.utils.data.Dataset):
    """Like torchvision.datasets.CIFAR10: HWC uint8 array in memory, PIL image per item."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def classic_step_fn(run: RunConfig, pool: int) -> tuple[Callable[[int], None], torch.device]:
    """(c): per-image PIL transforms through a DataLoader; NCHW fp32 model (the tutorial's way)."""
    from torchvision import transforms

    device = resolve_device(run.device)
    transform = transforms.Compose([
        transforms.RandomCrop(32, padding=4),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    ])
    rng = np.random.default_rng(0)
    dataset = InMemoryCifarStyle(rng.integers(0, 256, (pool, 32, 32, 3), dtype=np.uint8),
                                 rng.integers(0, 10, pool), transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=run.train.batch_size, shuffle=True, drop_last=True)
    model = build_model(run.model, num_classes=10).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    batches = iter(())

    def run_steps(n: int) -> None:
        for _ in range(n):
            classic_step()

    def classic_step() -> None:
        nonlocal batches
        try:
            x, y = next(batches)
        except StopIteration:
            batches = iter(loader)
            x, y = next(batches)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return run_steps, device


def benchmark(model: str, device: str, batch_size: int, steps: int, rounds: int, warmup: int) -> dict:
    train = TrainConfig(epochs=1, batch_size=batch_size)  # the engine's defaults: channels_last, amp auto
    run = RunConfig(model=resolve_model(model), train=train, data=DataConfig(source="synthetic"), device=device)
    pool = max(4096, batch_size * 8)
    fns = {"engine": engine_step_fn(run, pool), "model": model_step_fn(run), "classic": classic_step_fn(run, pool)}
    for step, dev in fns.values():
        _rate(step, warmup, batch_size, dev)
    rates: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, (step, dev) in fns.items():
            rates[name].append(_rate(step, steps, batch_size, dev))
    resolved = resolve_device(device)
    amp = resolve_amp(train.amp, resolved)
    result = {f"{name}_ips": statistics.median(values) for name, values in rates.items()}
    result.update(
        engine_over_classic=result["engine_ips"] / result["classic_ips"],
        engine_over_model=result["engine_ips"] / result["model_ips"],
        model=model, batch_size=batch_size, device=str(resolved), device_name=device_name(resolved),
        amp=str(amp).replace("torch.", "") if amp else "fp32", channels_last=train.channels_last,
        threads=torch.get_num_threads(), torch=torch.__version__, steps=steps, rounds=rounds,
        rounds_ips={name: [round(v, 1) for v in values] for name, values in rates.items()},
    )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m resnet_core.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="steps per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; the median is reported")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    args = parser.parse_args(argv)
    if min(args.batch_size, args.steps, args.rounds) < 1 or args.warmup < 0:
        raise ValueError("--batch-size, --steps and --rounds must be >= 1 and --warmup >= 0")
    r = benchmark(args.model, args.device, args.batch_size, args.steps, args.rounds, args.warmup)
    print(f"{r['model']} batch {r['batch_size']} on {r['device_name']} ({r['amp']}, "
          f"channels_last={r['channels_last']}, {r['threads']} threads, torch {r['torch']})")
    print(f"(a) engine step with its data path : {r['engine_ips']:8.0f} img/s")
    print(f"(b) model step alone (ceiling)     : {r['model_ips']:8.0f} img/s")
    print(f"(c) classic PIL + DataLoader, fp32 : {r['classic_ips']:8.0f} img/s")
    print(f"a/c = {r['engine_over_classic']:.2f}   a/b = {r['engine_over_model']:.2f}")
    if args.json:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
