"""fit(): train one RunConfig and return its RunRecord. Knows nothing of Optuna or grids.

One path (docs/DESIGN.md): config -> build_model / load_data -> fit -> RunRecord -> result store.
Data stay on the training device as uint8 tensors; each step indexes a batch, augments it on the
device, and runs the model under the configured precision and memory format.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from resnet_core import augment as augment_module
from resnet_core.checkpoints import checkpoint_if_due, load_checkpoint
from resnet_core.compiled import begin_graph_step, compiled_step_model
from resnet_core.config import RunConfig, to_dict
from resnet_core.identity import run_id
from resnet_core.data import DataBundle, load_data
from resnet_core.evaluation import TEST_WRONG, evaluate, measure, split_metrics
from resnet_core.devices import (
    configure_backends, needs_grad_scaler, process_state_restored, resolve_amp, resolve_device, resolve_sync_every,
    sync,
)
from resnet_core.models import build_model, count_macs, count_parameters, stage_parameters
from resnet_core.progress import progress_bar
from resnet_core.provenance import collect_provenance
from resnet_core.schedules import StepPlan, build_optimizer, lr_at, make_budget, momentum_at, set_lr, set_momentum
from resnet_core.store import FINAL_STATUSES, RunRecord, checkpoint_path, find_record, write_record

Callback = Callable[[dict[str, Any]], Any]
# Steps between samples of the per-stage gradient norms. A sample costs ~17 small kernel launches,
# as much as a launch-bound resnet20 step; every 10th step keeps the epoch mean at ~1/10 the cost.
GRAD_NORM_EVERY = 10


class Diverged(RuntimeError):
    """The training loss became NaN or infinite: a result (status "diverged"), not a crash."""


# ---------------------------------------------------------------------------- training state

class StepContext:
    """The memory format and autocast of a training step, read from ``run``, ``device`` and
    ``amp_dtype`` (a run's :class:`Trainer` and a fused group's trainer both have them)."""

    run: RunConfig
    device: torch.device
    amp_dtype: torch.dtype | None

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.run.train.channels_last else torch.contiguous_format

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)


@dataclass
class Trainer(StepContext):
    """Everything one run mutates while it trains: built once by :func:`make_trainer`."""

    run: RunConfig
    device: torch.device
    model: nn.Module
    step_model: nn.Module  # the compiled model when compile=True, else ``model``
    optimizer: torch.optim.Optimizer
    data: DataBundle
    budget: StepPlan
    amp_dtype: torch.dtype | None
    generator: torch.Generator
    train_transform: Callable
    eval_transform: Callable
    stages: dict[str, list[nn.Parameter]]
    scaler: torch.amp.GradScaler | None = None  # fp16 autocast only: loss scaling
    iteration: int = 0
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    resumed_from: str | None = None  # device type of a checkpoint written on another device type
    sync_every: int = 0  # steps between host reads of the running loss (finiteness check); 0: epoch end only
    pad_eval: bool = False  # pad a short last eval batch to full size (a compiled model sees one eval shape)



def make_trainer(run: RunConfig, data: DataBundle) -> Trainer:
    device = resolve_device(run.device)
    configure_backends(device)
    torch.manual_seed(run.seed)
    data = data.to(device)
    check_fits_data(run, data.num_classes, data.train_x.shape[1])
    model = build_model(run.model, num_classes=run.model.num_classes or data.num_classes)
    model = model.to(device=device, memory_format=torch.channels_last if run.train.channels_last else torch.contiguous_format)
    generator = torch.Generator(device=device)
    generator.manual_seed(run.seed)
    amp_dtype = resolve_amp(run.train.amp, device)
    return Trainer(
        run=run,
        device=device,
        model=model,
        step_model=compiled_step_model(model, run, device, amp_dtype, data.num_classes),
        optimizer=build_optimizer(model, run.train),
        data=data,
        budget=make_budget(run.train, len(data.train_y)),
        amp_dtype=amp_dtype,
        generator=generator,
        train_transform=augment_module.make_train_transform(run.train.augment, data.mean, data.std, run.train.normalize),
        eval_transform=augment_module.make_eval_transform(data.mean, data.std, run.train.normalize),
        stages=stage_parameters(model),
        scaler=torch.amp.GradScaler(device.type) if needs_grad_scaler(amp_dtype) else None,
        sync_every=resolve_sync_every(run.train.sync_every, device),
        pad_eval=run.train.compile,
    )


def check_fits_data(run: RunConfig, classes: int, channels: int) -> None:
    """Refuse, in one line, a model the data cannot train: fewer outputs than the data have classes
    (a label past the last output fails mid-epoch), or input channels other than the images' (every
    source gives RGB images). The commands call it where they first load the data, dry runs too."""
    if run.model.in_channels != channels:
        raise ValueError(f"in_channels={run.model.in_channels} is invalid: the data's images have {channels} "
                         f"channels; expected in_channels={channels} (or leave it out)")
    if run.model.num_classes is not None and run.model.num_classes < classes:
        raise ValueError(f"num_classes={run.model.num_classes} is invalid: the data have {classes} classes; "
                         f"expected num_classes >= {classes}, or none to follow the data")


# ------------------------------------------------------------------------------- one epoch

def _stage_grad_norms(stages: dict[str, list[nn.Parameter]]) -> torch.Tensor:
    """L2 norm of each stage's gradient, (n_stages,), computed on the device without a sync."""
    norms = []
    for params in stages.values():
        grads = [p.grad for p in params if p.grad is not None]
        norms.append(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))) if grads else None)
    reference = next(n for n in norms if n is not None)
    return torch.stack([n if n is not None else torch.zeros_like(reference) for n in norms])


def _sampled_grad_norms(stages: dict[str, list[nn.Parameter]]) -> torch.Tensor:
    """(stage norms..., 1) of one sampled step, on the device: summed over an epoch's samples,
    the last entry counts them. A step whose gradients are not finite (an fp16 step the
    GradScaler skips) adds zeros, so the mean is over the steps that updated the weights."""
    norms = _stage_grad_norms(stages)
    finite = torch.isfinite(norms).all()
    return torch.cat([torch.where(finite, norms, torch.zeros_like(norms)), finite.to(norms.dtype).unsqueeze(0)])


def train_step(trainer: Trainer, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step on a uint8 batch; returns (summed loss, number correct) as device tensors."""
    begin_graph_step(trainer.run)
    x = trainer.train_transform(images, trainer.generator).contiguous(memory_format=trainer.memory_format)  # (N, C, 32, 32)
    with trainer.autocast():
        logits = trainer.step_model(x)
    loss = F.cross_entropy(logits.float(), labels, label_smoothing=trainer.run.train.label_smoothing)
    trainer.optimizer.zero_grad(set_to_none=True)
    _backward_and_step(trainer, loss)
    correct = (logits.argmax(dim=1) == labels).sum()
    return loss.detach() * len(labels), correct


def _backward_and_step(trainer: Trainer, loss: torch.Tensor) -> None:
    """Backward and optimizer step; under fp16 through the GradScaler (PyTorch AMP recipe).

    ``unscale_`` before ``step`` leaves true gradients in ``.grad`` for the stage norms ("Working
    with unscaled gradients", PyTorch AMP examples); ``step`` would unscale anyway, so it is free.
    """
    if trainer.scaler is None:
        loss.backward()
        trainer.optimizer.step()
        return
    trainer.scaler.scale(loss).backward()
    trainer.scaler.unscale_(trainer.optimizer)
    trainer.scaler.step(trainer.optimizer)  # skipped when the gradients hold inf/NaN
    trainer.scaler.update()


def apply_schedule(trainer: Trainer) -> float:
    """Set the optimizer's learning rate (and momentum, when it cycles) for the trainer's next iteration."""
    train, total = trainer.run.train, trainer.budget.total_iterations
    lr = lr_at(trainer.iteration, total, train)
    set_lr(trainer.optimizer, lr)
    if train.cycle_momentum:
        set_momentum(trainer.optimizer, momentum_at(trainer.iteration, total, train))
    return lr


def train_one_epoch(trainer: Trainer, bar=None) -> dict[str, Any]:
    """One pass (or the budget's remainder) over a fresh permutation of the training split.

    ``bar`` (a tqdm bar over iterations) is advanced each step and shows the running loss and
    images/s at each finiteness check, so the bar adds no device syncs of its own.
    """
    trainer.step_model.train()
    data, budget = trainer.data, trainer.budget
    steps = min(budget.steps_per_epoch, budget.total_iterations - trainer.iteration)
    order = torch.randperm(len(data.train_y), generator=trainer.generator, device=trainer.device)
    batch = trainer.run.train.batch_size
    loss_sum = torch.zeros((), device=trainer.device)
    correct = torch.zeros((), device=trainer.device, dtype=torch.long)
    grad_sum = torch.zeros(len(trainer.stages) + 1, device=trainer.device)  # sampled stage norms, then their count
    seen = 0  # images trained on: a split smaller than a batch gives one short step, not a full batch
    start = time.perf_counter()
    for step in range(steps):
        lr = apply_schedule(trainer)
        index = order[step * batch:(step + 1) * batch]
        step_loss, step_correct = train_step(trainer, data.train_x[index], data.train_y[index])
        seen += len(index)
        loss_sum += step_loss
        correct += step_correct
        if step % GRAD_NORM_EVERY == 0:
            grad_sum += _sampled_grad_norms(trainer.stages)
        trainer.iteration += 1
        if bar is not None:
            bar.update(1)
        if trainer.sync_every and (step + 1) % trainer.sync_every == 0:
            running_loss = loss_sum.item() / seen
            if not math.isfinite(running_loss):
                raise Diverged(f"training loss became {running_loss} at iteration {trainer.iteration}")
            if bar is not None:
                bar.set_postfix(epoch=len(trainer.history) + 1, loss=f"{running_loss:.3f}",
                                ips=f"{seen / (time.perf_counter() - start):.0f}", refresh=False)
    seconds = time.perf_counter() - start
    train_loss = loss_sum.item() / seen
    if not math.isfinite(train_loss):
        raise Diverged(f"training loss became {train_loss} at iteration {trainer.iteration}")
    grads = (grad_sum[:-1] / grad_sum[-1]).tolist()  # mean over the sampled steps
    return {
        "iteration": trainer.iteration,
        "train_loss": train_loss,
        "train_error": 100.0 * (1 - correct.item() / seen),
        "lr": lr,
        "seconds": seconds,
        "images_per_s": seen / seconds,
        "grad_norm": dict(zip(trainer.stages, grads)),
    }


def run_epoch(trainer: Trainer, bar=None) -> dict[str, Any]:
    """Train one epoch, then measure validation when ``val_epochs`` asks and test when ``test_eval``
    asks: one history entry (without val_* or test_* keys for a set that was not measured)."""
    metrics = {"epoch": len(trainer.history) + 1, **train_one_epoch(trainer, bar)}
    if _measures_val(trainer, metrics["epoch"]):
        metrics["val_loss"], metrics["val_error"] = evaluate(trainer, trainer.data.val_x, trainer.data.val_y)
    if _measures_test(trainer):
        measured = measure(trainer, trainer.data.test_x, trainer.data.test_y)
        metrics.update(split_metrics("test", *measured, keep_wrong=at_end(trainer)))
    return metrics


def _measures_val(trainer: Trainer, epoch: int) -> bool:
    """Whether this epoch measures validation: a listed epoch or the run's last (every one if unlisted)."""
    listed = trainer.run.train.val_epochs
    return listed is None or epoch in listed or at_end(trainer)


def _measures_test(trainer: Trainer) -> bool:
    """Whether this epoch measures the test set: every epoch, only the run's last, or never."""
    when = trainer.run.train.test_eval
    return when == "every_epoch" or (when == "end" and at_end(trainer))


def at_end(trainer: Trainer) -> bool:
    """Whether the trainer has taken its run's last step (the epoch just trained is the last)."""
    return trainer.iteration >= trainer.budget.total_iterations


# ------------------------------------------------------------------------------------ fit

def _final_metrics(history: list[dict[str, Any]], trainer: Trainer | None) -> dict[str, Any]:
    """Final-epoch numbers (docs/DESIGN.md: report the final epoch, not the best); test_loss,
    test_error and the per-image ``test_wrong`` flags only when the run's last epoch measured the
    test set (``TrainConfig.test_eval``)."""
    if not history:
        return {}
    last = history[-1]
    keys = ("train_loss", "train_error", "val_loss", "val_error", "test_loss", "test_error", TEST_WRONG)
    final = {k: last[k] for k in keys if k in last}
    final.update(epochs=last["epoch"], iterations=last["iteration"])
    return final


def _record(run: RunConfig, status: str, trainer: Trainer | None, started: float, data: DataBundle | None,
            error: str | None = None, stop_reason: str | None = None, previous_seconds: float = 0.0) -> RunRecord:
    history = trainer.history if trainer else []
    model = trainer.model if trainer else None
    return RunRecord(
        run_id=run_id(run),
        status=status,
        config=to_dict(run),
        history=[{k: v for k, v in entry.items() if k != TEST_WRONG} for entry in history],  # in final only
        final=_final_metrics(history, trainer),
        wall_seconds=previous_seconds + time.perf_counter() - started,
        params=count_parameters(model) if model is not None else 0,
        macs=count_macs(model, (1, data.train_x.shape[1], *data.train_x.shape[2:])) if model is not None else 0,
        provenance=collect_provenance(run, trainer.device if trainer else None, trainer.amp_dtype if trainer else None, data,
                                      resumed_from=trainer.resumed_from if trainer else None),
        error=error,
        stop_reason=stop_reason,
    )


def _progress_bar(trainer: Trainer, enabled: bool):
    return progress_bar(enabled, total=trainer.budget.total_iterations, initial=trainer.iteration,
                        desc=f"run {run_id(trainer.run)[:8]}", unit="it", leave=False)


def _epoch_line(m: dict[str, Any]) -> str:
    return (f"epoch {m['epoch']:>3}  it {m['iteration']:>6}  lr {m['lr']:.4g}  train loss {m['train_loss']:.3f}"
            f"  train err {m['train_error']:5.2f}%"
            + (f"  val err {m['val_error']:5.2f}%" if "val_error" in m else "")
            + (f"  test err {m['test_error']:5.2f}%" if "test_error" in m else "")
            + f"  {m['images_per_s']:.0f} img/s  {m['seconds']:.1f} s")


def _train_loop(trainer: Trainer, callbacks: Iterable[Callback], ckpt: Path, progress: bool) -> str | None:
    """Run the remaining epochs; returns a stop reason if a callback stopped the run."""
    with _progress_bar(trainer, progress) as bar:
        while trainer.iteration < trainer.budget.total_iterations:
            metrics = run_epoch(trainer, bar if progress else None)
            trainer.history.append(metrics)
            saved = checkpoint_if_due(trainer, ckpt, due=metrics["epoch"] % trainer.run.train.checkpoint_every == 0)
            if progress:
                bar.write(_epoch_line(metrics))
            stops = [bool(cb(metrics)) for cb in callbacks]  # every callback sees every epoch
            if any(stops):
                checkpoint_if_due(trainer, ckpt, due=not saved)  # a stopped run (a pruned trial) resumes from here
                return "callback"
    return None


@process_state_restored()
def fit(run: RunConfig, callbacks: Iterable[Callback] = (), results_dir: str | Path = "results",
        data: DataBundle | None = None, progress: bool = False) -> RunRecord:
    """Train ``run`` (or resume it, or return its finished record) and write its record.

    A completed or diverged record is returned as it is. Otherwise training resumes from the
    run's checkpoint if one exists. Divergence (NaN/inf loss) gives status ``diverged``; an
    exception gives ``failed`` with the message; a callback returning True gives ``stopped``.
    Ctrl-C or SystemExit writes a ``stopped`` record and re-raises; the checkpoint stays. The global
    RNG states and cuDNN settings the run sets are given back (``devices.process_state_restored``).
    """
    callbacks = list(callbacks)
    identity = run_id(run)
    existing = find_record(results_dir, identity)
    if existing is not None and existing.status in FINAL_STATUSES:
        return existing
    previous_seconds = existing.wall_seconds if existing is not None else 0.0
    ckpt = checkpoint_path(results_dir, identity)
    # Data errors (a missing directory, a split that leaves no training images) are the user's to
    # fix, not results: they raise here, before any record is written.
    data = _data_for(run, data)
    try:
        record = _train(run, data, callbacks, Path(results_dir), ckpt, progress, previous_seconds)
    finally:
        _release()  # _train has returned: its trainer (model, optimizer, device data) is unreferenced
    write_record(results_dir, record)
    if record.status in FINAL_STATUSES:
        ckpt.unlink(missing_ok=True)  # the record now holds everything the checkpoint did
    return record


def _data_for(run: RunConfig, data: DataBundle | None) -> DataBundle:
    """The run's data: the caller's bundle if it was loaded for ``run.data``, else loaded now.

    A bundle loaded for another DataConfig (another ``subset`` or ``val_size``) would train the
    run on data its record does not describe: that is a caller's bug, refused loudly.
    """
    if data is None:
        return load_data(run.data, resolve_device(run.device))
    if data.config is not None and data.config != run.data:
        raise ValueError(f"fit was given data loaded for {data.config}, not for this run's {run.data}")
    return data


def _train(run: RunConfig, data: DataBundle, callbacks: list[Callback], results_dir: Path, ckpt: Path,
           progress: bool, previous_seconds: float) -> RunRecord:
    """Train (or resume) the run and return its record; Ctrl-C and SystemExit write a stopped one and re-raise."""
    started = time.perf_counter()
    trainer = None
    try:
        trainer = _start(run, data, ckpt)
        stop_reason = _train_loop(trainer, callbacks, ckpt, progress)
        status = "stopped" if stop_reason else "completed"
        return _record(run, status, trainer, started, data, stop_reason=stop_reason, previous_seconds=previous_seconds)
    except Diverged as exc:
        return _record(run, "diverged", trainer, started, data, error=str(exc), previous_seconds=previous_seconds)
    except Exception as exc:  # noqa: BLE001 - a failed run is a recorded result
        return _record(run, "failed", trainer, started, data,
                       error=f"{type(exc).__name__}: {exc}", previous_seconds=previous_seconds)
    except BaseException as exc:  # Ctrl-C, SystemExit: keep what is known, then stop
        write_record(results_dir, _record(run, "stopped", trainer, started, data,
                                          stop_reason=type(exc).__name__, previous_seconds=previous_seconds))
        raise


def _start(run: RunConfig, data: DataBundle, ckpt: Path) -> Trainer:
    """A trainer at the checkpoint's state, else a fresh one: also when an unusable checkpoint
    was applied part-way (weights loaded, then the optimizer state refused)."""
    trainer = make_trainer(run, data)
    if load_checkpoint(trainer, ckpt) or not ckpt.exists():
        return trainer
    del trainer  # its memory goes before the fresh one is built
    return make_trainer(run, data)


def _release() -> None:
    """Give a finished run's memory back in a long-lived worker (studies, grids, the driver's rate
    measurement): collect what only reference cycles still hold, then return the CUDA caching
    allocator's now unused blocks (``torch.cuda.empty_cache`` frees only blocks no tensor holds,
    so it must run after the trainer is gone; it does nothing where CUDA was never initialised).
    """
    gc.collect()
    torch.cuda.empty_cache()


# ---------------------------------------------------------------------- rates and estimates

@process_state_restored()
def measure_step_rate(run: RunConfig, steps: int = 5, warmup: int = 2) -> float:
    """Training images/s of the engine's step for ``run``'s model and recipe, on random tensors.

    A short measurement for time estimates (dry runs, study plans), not a benchmark. The memory
    it used is released: the driver measures before its workers start on the same GPUs.
    """
    try:
        return _timed_steps(run, steps, warmup)
    finally:
        _release()  # _timed_steps has returned: its trainer and tensors are unreferenced


def _timed_steps(run: RunConfig, steps: int, warmup: int) -> float:
    device = resolve_device(run.device)
    channels = run.model.in_channels
    batch = run.train.batch_size
    n = batch * (steps + warmup)
    images = torch.randint(0, 256, (n, channels, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, run.model.num_classes or 10, (n,))
    data = _random_bundle(images, labels, run.model.num_classes or 10)
    trainer = make_trainer(run, data)
    trainer.step_model.train()
    x, y = trainer.data.train_x, trainer.data.train_y  # the trainer's copy on the device, not the host tensors
    for i in range(warmup):
        train_step(trainer, x[i * batch:(i + 1) * batch], y[i * batch:(i + 1) * batch])
    sync(device)
    start = time.perf_counter()
    for i in range(warmup, warmup + steps):
        train_step(trainer, x[i * batch:(i + 1) * batch], y[i * batch:(i + 1) * batch])
    sync(device)
    return steps * batch / (time.perf_counter() - start)


def _random_bundle(images: torch.Tensor, labels: torch.Tensor, num_classes: int) -> DataBundle:
    empty_x, empty_y = images[:0], labels[:0]
    channels = images.shape[1]
    return DataBundle(
        train_x=images, train_y=labels, val_x=empty_x, val_y=empty_y, test_x=empty_x, test_y=empty_y,
        classes=tuple(str(i) for i in range(num_classes)), mean=(0.5,) * channels, std=(0.25,) * channels,
        fingerprint="random", description="random tensors",
    )


def estimate_seconds(run: RunConfig, images_per_s: float, train_size: int, eval_size: int = 15000) -> float:
    """Wall-time estimate: training images over the measured rate, plus evaluation each epoch."""
    budget = make_budget(run.train, train_size)
    trained = budget.total_iterations * min(run.train.batch_size, train_size)  # a small split: one short batch
    evaluated = budget.epochs * eval_size
    return trained / images_per_s + evaluated / (3 * images_per_s)  # inference ~3x a training step
