"""The baseline of the study side-by-side: the Optuna study a user writes by hand with torchvision.

Per-image PIL transforms through a DataLoader (the PyTorch CIFAR-10 tutorial's pipeline, two loader
workers), fp32, TPE + median pruner, validation measured after every epoch. The network is the
harness's resnet20 and the split is the harness's (the same validation and training images), so the
comparison measures the pipeline and the search, not the model or the draw of images. Run it
right before `resnet-study` with the same trials, epochs, subset and validation size:

    python benchmarks/handwritten_study.py --data ../shared/datasets/cifar10-jpeg \\
        --trials 20 --epochs 3 --subset 8000 --val-size 2000 --out handwritten.json
    time python studies/run.py --trials 20 --epochs 3 --subset 8000 --val-size 2000 --final-seeds 0 \\
        --data ../shared/datasets/cifar10-jpeg --results side-by-side

It prints and writes (``--out``) its wall time and best validation error.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import optuna
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, transforms

from resnet_core.models import build_model
from resnet_core.splits import split_indices

MEAN, STD = (0.4913, 0.4821, 0.4465), (0.2452, 0.2428, 0.2606)  # the JPEG copy's README


def loaders(root: Path, subset: int, val_size: int, batch_size: int, split_seed: int = 0) -> tuple[DataLoader, DataLoader]:
    """Training and validation loaders over the harness's split of the training folder (``split_indices``)."""
    normalize = transforms.Normalize(MEAN, STD)
    augment = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                  transforms.ToTensor(), normalize])
    plain = transforms.Compose([transforms.ToTensor(), normalize])
    train_set = datasets.ImageFolder(str(root / "train"), transform=augment)
    val_set = datasets.ImageFolder(str(root / "train"), transform=plain)
    # The harness's own split (the same validation and training images as `resnet-study`):
    # both studies' best errors are then measured on the same images. On two independent random
    # splits a 2,000-image validation error near 50% differs by about 1.6 points (two binomial
    # standard errors of 1.1 combined) without any difference in method.
    train_idx, val_idx, _ = split_indices(torch.tensor(train_set.targets), val_size, subset, split_seed)
    train = DataLoader(Subset(train_set, train_idx.tolist()), batch_size=batch_size, shuffle=True, num_workers=2,
                       drop_last=False, persistent_workers=False)
    val = DataLoader(Subset(val_set, val_idx.tolist()), batch_size=1000, shuffle=False, num_workers=2)
    return train, val


def val_error(model: torch.nn.Module, loader: DataLoader) -> float:
    model.eval()
    wrong = total = 0
    with torch.no_grad():
        for x, y in loader:
            wrong += (model(x).argmax(1) != y).sum().item()
            total += len(y)
    return 100.0 * wrong / total


def objective(trial: optuna.Trial, args: argparse.Namespace) -> float:
    lr = trial.suggest_float("lr", 0.01, 0.5, log=True)
    weight_decay = trial.suggest_float("weight_decay", 1e-5, 1e-3, log=True)
    momentum = trial.suggest_float("momentum", 0.8, 0.95)
    batch_size = trial.suggest_categorical("batch_size", [64, 128, 256])
    smoothing = trial.suggest_float("label_smoothing", 0.0, 0.2)
    torch.manual_seed(0)
    train, val = loaders(args.data, args.subset, args.val_size, batch_size)
    model = build_model("resnet20", num_classes=10)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=True)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, epochs=args.epochs, steps_per_epoch=len(train))
    error = 100.0
    for epoch in range(1, args.epochs + 1):
        model.train()
        for x, y in train:
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y, label_smoothing=smoothing).backward()
            optimizer.step()
            schedule.step()
        error = val_error(model, val)
        trial.report(error, epoch)
        if epoch < args.epochs and trial.should_prune():
            raise optuna.TrialPruned()
    return error


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="ImageFolder root with train/ and test/")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--subset", type=int, default=8000)
    parser.add_argument("--val-size", type=int, default=2000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=0),
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1))
    started = time.perf_counter()
    study.optimize(lambda trial: objective(trial, args), n_trials=args.trials)
    wall = time.perf_counter() - started
    pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)
    result = {"wall_seconds": wall, "best_val_error": study.best_value, "best_params": study.best_params,
              "trials": len(study.trials), "pruned": pruned, "epochs": args.epochs, "subset": args.subset,
              "val_size": args.val_size, "torch_threads": torch.get_num_threads()}
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
