"""fit_group(): train runs that differ only in their seed as one fused model and write each member's
ordinary record and checkpoint. Fusion is how the runs were trained, not what: run ids, records and
checkpoints are those of separate runs, and each record's provenance names its group.

The equivalence with separate runs (docs/DESIGN.md, "Fused runs"): member k starts from the weights
a separate run of its seed starts from (:func:`resnet_core.fused.build_fused`), draws its data order
and augmentation from its own generator in the same sequence of calls as
:func:`resnet_core.engine.train_one_epoch`, and its loss is its own batch mean; the group's loss is
the sum of the members' losses, so each member's gradient is its own, and SGD's momentum and weight
decay act element-wise, so one optimizer over the stacked tensors is K optimizers.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from resnet_core import augment as augment_module
from resnet_core import engine
from resnet_core.checkpoints import checkpoint_if_due, load_checkpoint
from resnet_core.config import RunConfig
from resnet_core.data import DataBundle
from resnet_core.compiled import begin_graph_step, compiled_step_model
from resnet_core.evaluation import measure_group, split_metrics
from resnet_core.devices import (
    configure_backends, needs_grad_scaler, process_state_restored, resolve_amp, resolve_device, resolve_sync_every,
)
from resnet_core.fused import (
    FusedModel,
    build_fused,
    fused_stage_parameters,
    load_member_optimizer_state,
    member_grad_norms,
    member_optimizer_state,
    stack_inputs,
)
from resnet_core.identity import run_id
from resnet_core.models import build_model
from resnet_core.progress import progress_bar
from resnet_core.schedules import StepPlan, build_optimizer, make_budget
from resnet_core.store import FINAL_STATUSES, RunRecord, checkpoint_path, find_record, write_record


# ------------------------------------------------------------------------------- the group

def check_fusable(runs: Sequence[RunConfig]) -> None:
    """One-line ValueError unless ``runs`` are at least one run, of distinct seeds, equal in every other setting."""
    if not runs:
        raise ValueError("a fused group needs at least one run")
    first = dataclasses.replace(runs[0], seed=0)
    for run in runs[1:]:
        if dataclasses.replace(run, seed=0) != first:
            raise ValueError(f"runs {run_id(runs[0])} and {run_id(run)} differ in more than their seed: "
                             "only runs that differ in their seed alone train as one fused model")
    seeds = [run.seed for run in runs]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"a fused group lists seed(s) {sorted({s for s in seeds if seeds.count(s) > 1})} twice: "
                         "give each run once")


@dataclass
class Member:
    """One run of a group: its own random stream, history and fate."""

    run: RunConfig
    generator: torch.Generator
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    error: str | None = None  # why it diverged; a diverged member trains on masked, its record is final
    resumed_from: str | None = None
    previous_seconds: float = 0.0  # wall time of earlier, interrupted attempts (its stored record's)


@dataclass
class GroupTrainer(engine.StepContext):
    """What a fused group mutates while it trains: the members and the one model they share."""

    members: list[Member]
    device: torch.device
    model: FusedModel
    step_model: nn.Module
    optimizer: torch.optim.Optimizer
    data: DataBundle
    budget: StepPlan
    amp_dtype: torch.dtype | None
    train_transform: Callable
    eval_transform: Callable
    stages: dict[str, list[nn.Parameter]]
    alive: torch.Tensor  # (K,) bool on the device: members whose loss still trains the model
    scaler: torch.amp.GradScaler | None = None
    iteration: int = 0
    masks_diverged: bool = False  # hooks zero the diverged members' gradient slices
    sync_every: int = 0  # steps between host reads of the running losses; 0: epoch end only

    @property
    def run(self) -> RunConfig:
        """The settings the members share (all but the seed): what the engine's schedule helpers read."""
        return self.members[0].run


def make_group_trainer(runs: Sequence[RunConfig], data: DataBundle) -> GroupTrainer:
    run = runs[0]
    device = resolve_device(run.device)
    configure_backends(device)
    data = data.to(device)
    engine.check_fits_data(run, data.num_classes, data.train_x.shape[1])
    memory_format = torch.channels_last if run.train.channels_last else torch.contiguous_format
    model = build_fused(run.model, [r.seed for r in runs], run.model.num_classes or data.num_classes, device, memory_format)
    amp_dtype = resolve_amp(run.train.amp, device)
    return GroupTrainer(
        members=[Member(r, torch.Generator(device=device).manual_seed(r.seed)) for r in runs],
        device=device,
        model=model,
        step_model=compiled_step_model(model, run, device, amp_dtype, data.num_classes, "fused", len(runs)),
        optimizer=build_optimizer(model, run.train),
        data=data,
        budget=make_budget(run.train, len(data.train_y)),
        amp_dtype=amp_dtype,
        train_transform=augment_module.make_train_transform(run.train.augment, data.mean, data.std, run.train.normalize),
        eval_transform=augment_module.make_eval_transform(data.mean, data.std, run.train.normalize),
        stages=fused_stage_parameters(model),
        alive=torch.ones(len(runs), dtype=torch.bool, device=device),
        scaler=torch.amp.GradScaler(device.type) if needs_grad_scaler(amp_dtype) else None,
        sync_every=resolve_sync_every(run.train.sync_every, device),
    )


# ------------------------------------------------------------------------------- one epoch

def member_losses(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """(K,) mean cross-entropy of each member over its own batch: logits (K, N, classes), labels (K, N)."""
    per_image = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), reduction="none",
                                label_smoothing=label_smoothing)
    return per_image.view(labels.shape).mean(dim=1)


def group_step(trainer: GroupTrainer, indices: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step of every member on its own uint8 batch; returns (K,) summed losses and (K,) numbers correct."""
    data = trainer.data
    begin_graph_step(trainer.run)
    x = stack_inputs([trainer.train_transform(data.train_x[index], member.generator)
                      for index, member in zip(indices, trainer.members)], trainer.memory_format)  # (K, N, C, 32, 32)
    labels = torch.stack([data.train_y[index] for index in indices])  # (K, N)
    with trainer.autocast():
        logits = trainer.step_model(x)  # (K, N, classes)
    losses = member_losses(logits, labels, trainer.run.train.label_smoothing)
    trainer.optimizer.zero_grad(set_to_none=True)
    # A diverged member's loss leaves the sum, so its NaNs cannot reach the others' update.
    engine._backward_and_step(trainer, torch.where(trainer.alive, losses, torch.zeros_like(losses)).sum())
    correct = (logits.argmax(dim=2) == labels).sum(dim=1)
    return losses.detach() * labels.shape[1], correct


def _sampled_member_grad_norms(stages: dict[str, list[nn.Parameter]]) -> torch.Tensor:
    """(K, stage norms..., 1) of one sampled step: a member whose gradients are not finite adds zeros
    and no count (as :func:`resnet_core.engine._sampled_grad_norms` does for one run)."""
    norms = member_grad_norms(stages)  # (K, n_stages)
    finite = torch.isfinite(norms).all(dim=1, keepdim=True)
    return torch.cat([torch.where(finite, norms, torch.zeros_like(norms)), finite.to(norms.dtype)], dim=1)


def _mark_diverged(trainer: GroupTrainer, running_losses: list[float]) -> None:
    """Members whose running loss is not finite become diverged: out of the loss, their grads zeroed."""
    for k, (member, loss) in enumerate(zip(trainer.members, running_losses)):
        if member.error is None and not math.isfinite(loss):
            member.error = f"training loss became {loss} at iteration {trainer.iteration}"
            trainer.alive[k] = False
            _zero_grads_of_diverged(trainer)


def _zero_grads_of_diverged(trainer: GroupTrainer) -> None:
    """From now on, zero the diverged members' slices of every gradient before the optimizer sees them:
    their NaNs stay out of a GradScaler's inf check, which would skip the step for every member."""
    if trainer.masks_diverged:
        return
    trainer.masks_diverged = True
    for p in trainer.model.parameters():
        p.register_hook(lambda grad, alive=trainer.alive: torch.where(
            alive.view(-1, *(1,) * (grad.dim() - 1)), grad, torch.zeros_like(grad)))


def train_group_epoch(trainer: GroupTrainer, bar=None) -> list[dict[str, Any] | None]:
    """One pass of every member over its own permutation of the training split; a metrics dict per
    member (as :func:`resnet_core.engine.train_one_epoch` returns), None for a diverged member."""
    trainer.step_model.train()
    data, budget, device, size = trainer.data, trainer.budget, trainer.device, len(trainer.members)
    steps = min(budget.steps_per_epoch, budget.total_iterations - trainer.iteration)
    orders = [torch.randperm(len(data.train_y), generator=m.generator, device=device) for m in trainer.members]
    batch = trainer.run.train.batch_size
    loss_sum = torch.zeros(size, device=device)
    correct = torch.zeros(size, device=device, dtype=torch.long)
    grad_sum = torch.zeros(size, len(trainer.stages) + 1, device=device)
    seen, start, lr = 0, time.perf_counter(), math.nan
    for step in range(steps):
        lr = engine.apply_schedule(trainer)
        indices = [order[step * batch:(step + 1) * batch] for order in orders]
        step_loss, step_correct = group_step(trainer, indices)
        seen += len(indices[0])
        loss_sum += step_loss
        correct += step_correct
        if step % engine.GRAD_NORM_EVERY == 0:
            grad_sum += _sampled_member_grad_norms(trainer.stages)
        trainer.iteration += 1
        if bar is not None:
            bar.update(1)
        if trainer.sync_every and (step + 1) % trainer.sync_every == 0:
            _mark_diverged(trainer, (loss_sum / seen).tolist())
    seconds = time.perf_counter() - start
    _mark_diverged(trainer, (loss_sum / seen).tolist())
    losses, errors = (loss_sum / seen).tolist(), (100.0 * (1 - correct / seen)).tolist()
    grads = (grad_sum[:, :-1] / grad_sum[:, -1:]).tolist()  # mean over the sampled steps (NaN: none finite)
    return [None if member.error else {
        "iteration": trainer.iteration, "train_loss": losses[k], "train_error": errors[k], "lr": lr,
        "seconds": seconds, "images_per_s": seen / seconds, "grad_norm": dict(zip(trainer.stages, grads[k])),
    } for k, member in enumerate(trainer.members)]


def run_group_epoch(trainer: GroupTrainer, bar=None) -> list[dict[str, Any] | None]:
    """Train one epoch, then measure validation and test where the runs ask (``engine.run_epoch``'s rules)."""
    epoch = 1 + max(len(member.history) for member in trainer.members)
    metrics = [None if m is None else {"epoch": epoch, **m} for m in train_group_epoch(trainer, bar)]
    measured = [("val", trainer.data.val_x, trainer.data.val_y, engine._measures_val(trainer, epoch)),
                ("test", trainer.data.test_x, trainer.data.test_y, engine._measures_test(trainer))]
    for name, images, labels, wanted in measured:
        if wanted and any(m is not None for m in metrics):
            for m, result in zip(metrics, measure_group(trainer, images, labels)):
                if m is not None:
                    m.update(split_metrics(name, *result, keep_wrong=name == "test" and engine.at_end(trainer)))
    return metrics


# ------------------------------------------------------------------------- member checkpoints

class _MemberModule:
    """Member k of the fused model as ``state_dict``/``load_state_dict`` see it (a separate run's keys)."""

    def __init__(self, model: FusedModel, k: int) -> None:
        self.model, self.k = model, k

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.member_state_dict(self.k)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_member_state_dict(self.k, state)


class _MemberOptimizer:
    """Slice k of the fused optimizer, in the format a separate run's optimizer saves."""

    def __init__(self, optimizer: torch.optim.Optimizer, k: int) -> None:
        self.optimizer, self.k = optimizer, k

    def state_dict(self) -> dict[str, Any]:
        return member_optimizer_state(self.optimizer.state_dict(), self.k)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_member_optimizer_state(self.optimizer, self.k, state)


@dataclass
class MemberView:
    """What :mod:`resnet_core.checkpoints` reads and writes of one run, for member k of a group: its
    checkpoint is the one a separate run writes, so either can resume the other."""

    run: RunConfig
    device: torch.device
    model: Any
    optimizer: Any
    generator: torch.Generator
    scaler: torch.amp.GradScaler | None
    iteration: int
    history: list[dict[str, Any]]
    resumed_from: str | None = None
    amp_dtype: torch.dtype | None = None


def member_view(trainer: GroupTrainer, k: int) -> MemberView:
    member = trainer.members[k]
    return MemberView(member.run, trainer.device, _MemberModule(trainer.model, k), _MemberOptimizer(trainer.optimizer, k),
                      member.generator, trainer.scaler, trainer.iteration, member.history, member.resumed_from,
                      trainer.amp_dtype)


def checkpoint_iteration(run: RunConfig, path: Path) -> int:
    """The iteration ``run``'s checkpoint at ``path`` resumes from; 0 when there is none it could use."""
    if not path.exists():
        return 0
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        return int(state["iteration"]) if state.get("run_id") == run_id(run) else 0
    except Exception:  # noqa: BLE001 - unreadable: load_checkpoint warns and the run starts again
        return 0


def _resume_members(trainer: GroupTrainer, ckpts: list[Path]) -> list[int]:
    """Load every member's checkpoint; returns the indices of members whose checkpoint was unusable."""
    failed = []
    for k, path in enumerate(ckpts):
        view = member_view(trainer, k)
        if not load_checkpoint(view, path):
            if path.exists():
                failed.append(k)
            continue
        trainer.iteration = view.iteration
        trainer.members[k].history, trainer.members[k].resumed_from = view.history, view.resumed_from
    return failed


def _save_members(trainer: GroupTrainer, ckpts: list[Path], epoch: int) -> None:
    """Every live member's checkpoint, every ``checkpoint_every`` epochs (as ``engine.fit`` saves a run's)."""
    due = epoch % trainer.run.train.checkpoint_every == 0
    for k, (member, path) in enumerate(zip(trainer.members, ckpts)):
        if member.error is None:
            checkpoint_if_due(member_view(trainer, k), path, due)


# ----------------------------------------------------------------------------------- records

def _member_record(trainer: GroupTrainer | None, k: int, run: RunConfig, status: str, started: float,
                   data: DataBundle, previous_seconds: float, error: str | None = None,
                   stop_reason: str | None = None, group: Sequence[RunConfig] = ()) -> RunRecord:
    """Member k's record, as engine._record writes a separate run's, its provenance naming the group."""
    view = None
    if trainer is not None:
        view = member_view(trainer, k)
        with torch.device("meta"):  # parameters and MACs are counted without weights or compute
            view.model = build_model(run.model, num_classes=run.model.num_classes or data.num_classes)
    record = engine._record(run, status, view, started, data, error=error, stop_reason=stop_reason,
                            previous_seconds=previous_seconds)
    record.provenance["fused_group"] = {"size": len(group), "member": k, "run_ids": [run_id(r) for r in group]}
    return record


def _group_records(trainer: GroupTrainer, started: float, data: DataBundle) -> list[RunRecord]:
    runs = [m.run for m in trainer.members]
    return [_member_record(trainer, k, m.run, "diverged" if m.error else "completed", started, data,
                           m.previous_seconds, error=m.error, group=runs)
            for k, m in enumerate(trainer.members)]


# --------------------------------------------------------------------------------- the fit

def _epoch_lines(trainer: GroupTrainer, metrics: list[dict[str, Any] | None]) -> str:
    return "\n".join(f"seed {m.run.seed}: " + (engine._epoch_line(x) if x is not None else f"diverged ({m.error})")
                     for m, x in zip(trainer.members, metrics))


def _group_loop(trainer: GroupTrainer, ckpts: list[Path], progress: bool) -> None:
    """Train the remaining epochs while any member is alive, checkpointing every member after each epoch."""
    desc = f"group of {len(trainer.members)} ({run_id(trainer.run)[:8]}...)"
    with progress_bar(progress, total=trainer.budget.total_iterations, initial=trainer.iteration, desc=desc,
                      unit="it", leave=False) as bar:
        while trainer.iteration < trainer.budget.total_iterations and bool(trainer.alive.any()):
            metrics = run_group_epoch(trainer, bar if progress else None)
            for member, m in zip(trainer.members, metrics):
                if m is not None:
                    member.history.append(m)
            _save_members(trainer, ckpts, max(len(member.history) for member in trainer.members))
            if progress:
                bar.write(_epoch_lines(trainer, metrics))


def _start_group(runs: list[RunConfig], data: DataBundle, ckpts: list[Path]) -> tuple[GroupTrainer, list[int]]:
    """A group trainer at its members' checkpoints (all at one iteration: see :func:`_partitions`),
    and the indices of members whose checkpoint could not be used (they must start again, apart)."""
    trainer = make_group_trainer(runs, data)
    failed = _resume_members(trainer, ckpts)
    if failed and trainer.iteration == 0:
        return make_group_trainer(runs, data), []  # a member half-loaded: everyone starts from scratch
    return trainer, failed


def _train_group(runs: list[RunConfig], data: DataBundle, results_dir: Path, previous: dict[str, float],
                 progress: bool) -> list[RunRecord]:
    """Train one partition (members resuming from one iteration); Ctrl-C writes stopped records and re-raises."""
    started, trainer = time.perf_counter(), None
    ckpts = [checkpoint_path(results_dir, run_id(run)) for run in runs]
    try:
        trainer, failed = _start_group(runs, data, ckpts)
        if failed:  # these restart from scratch as a group of their own; the rest resume
            keep = [r for k, r in enumerate(runs) if k not in failed]
            for k in failed:
                ckpts[k].unlink(missing_ok=True)
            return (_train_group(keep, data, results_dir, previous, progress)
                    + _train_group([runs[k] for k in failed], data, results_dir, previous, progress))
        for member in trainer.members:
            member.previous_seconds = previous.get(run_id(member.run), 0.0)
        _group_loop(trainer, ckpts, progress)
        return _group_records(trainer, started, data)
    except Exception as exc:  # noqa: BLE001 - a failed group is a recorded result for every member
        return [_member_record(trainer, k, run, "failed", started, data, previous.get(run_id(run), 0.0),
                               error=f"{type(exc).__name__}: {exc}", group=runs) for k, run in enumerate(runs)]
    except BaseException as exc:  # Ctrl-C, SystemExit: keep what is known, then stop
        for k, run in enumerate(runs):
            write_record(results_dir, _member_record(trainer, k, run, "stopped", started, data,
                                                     previous.get(run_id(run), 0.0), stop_reason=type(exc).__name__,
                                                     group=runs))
        raise


def _partitions(runs: list[RunConfig], results_dir: Path) -> list[list[RunConfig]]:
    """Runs grouped by the iteration their checkpoints resume from: a group killed while it wrote its
    members' checkpoints may leave them one epoch apart, and a fused model steps all members at once."""
    parts: dict[int, list[RunConfig]] = {}
    for run in runs:
        parts.setdefault(checkpoint_iteration(run, checkpoint_path(results_dir, run_id(run))), []).append(run)
    return list(parts.values())


@process_state_restored()
def fit_group(runs: Sequence[RunConfig], results_dir: str | Path = "results", data: DataBundle | None = None,
              progress: bool = False) -> list[RunRecord]:
    """Train ``runs`` (equal but for their seeds) as one fused model and return their records in order.

    Each run's record and checkpoint are what :func:`resnet_core.engine.fit` writes for it (the same
    run id, resumable by either); a run whose record is final is returned as it is; a member that
    diverges is recorded ``diverged`` while the others go on; Ctrl-C writes ``stopped`` records and
    re-raises, the checkpoints stay. The global RNG states and cuDNN settings are given back, as by ``fit``.
    """
    runs = list(runs)
    check_fusable(runs)
    results, records, previous, todo = Path(results_dir), {}, {}, []
    for run in runs:
        existing = find_record(results, run_id(run))
        if existing is not None and existing.status in FINAL_STATUSES:
            records[run_id(run)] = existing
        else:
            todo.append(run)
            previous[run_id(run)] = existing.wall_seconds if existing is not None else 0.0
    if todo:
        data = engine._data_for(todo[0], data)
        try:
            for part in _partitions(todo, results):
                for record in _train_group(part, data, results, previous, progress):
                    write_record(results, record)
                    if record.status in FINAL_STATUSES:
                        checkpoint_path(results, record.run_id).unlink(missing_ok=True)
                    records[record.run_id] = record
        finally:
            engine._release()
    return [records[run_id(run)] for run in runs]
