"""Inference throughput of a model by evaluation batch size, side by side in one process.

The quick study budget's evaluation batch (resnet_core/budgets.py) comes from this:

    python benchmarks/eval_batch.py --model resnet20 --threads 2 --sizes 1000 500 250 128 --repeats 3

It prints images/s per batch size (median of the repeats) for 5,000 random CIFAR-sized images, the
size of a study's validation split. A batch's size changes no result in eval mode, only speed.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from resnet_core.models import build_model, resolve_model


def images_per_s(model: torch.nn.Module, images: torch.Tensor, batch: int) -> float:
    with torch.no_grad():
        model(images[:batch])  # warm-up: kernels chosen, buffers allocated
        start = time.perf_counter()
        for first in range(0, len(images), batch):
            model(images[first:first + batch])
        return len(images) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 500, 250, 128])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = build_model(resolve_model(args.model)).eval().to(memory_format=torch.channels_last)
    images = torch.randn(args.images, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    rates: dict[int, list[float]] = {size: [] for size in args.sizes}
    for _ in range(args.repeats):  # interleaved, so a slow spell of the machine hits every size
        for size in args.sizes:
            rates[size].append(images_per_s(model, images, size))
    for size in args.sizes:
        print(f"{args.model}  eval batch {size:>5}  {statistics.median(rates[size]):7.0f} images/s  "
              f"({args.threads} threads, {args.images} images, median of {args.repeats})")


if __name__ == "__main__":
    main()
