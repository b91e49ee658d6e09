"""What a study's plan says before any trial (one console line a concern, one a searched parameter)
and how long it should take: a short measured step rate, the pruner's simulated work, workers
sharing a GPU at a benchmark's measured speed-up, the final stage's runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from resnet_core.devices import parallel_throughput
from resnet_core.engine import estimate_seconds, measure_step_rate
from resnet_core.reports import plural
from resnet_core.slots import worker_threads
from resnet_core.study.plan import Setup
from resnet_core.study.pruners import (
    RUNG_PRUNERS, describe_pruner, expected_work, prunable_epochs, rung_rule, simulated_work,
)
from resnet_core.study.search import describe_sampler
from resnet_core.study.spec import StudySpec, trial_config
from resnet_core.study.storage import describe_storage


def plan_lines(setup: Setup, spec: StudySpec, target: int, done: int, devices: list[str],
               timing: Mapping[str, Any] | None, why: str = "") -> list[str]:
    """What will run, for the console before training starts; ``why``: why this budget was chosen."""
    base = spec.base
    length = plural(base.train.epochs, "epoch") if base.train.epochs else plural(base.train.iterations, "iteration")
    val_size = setup.val_size or base.data.val_size
    lines = [
        f"budget   {spec.budget}{f' ({why})' if why else ''}: trials of up to {length} on {setup.train_size:,} "
        f"training images, judged on {val_size:,} validation images",
        f"study    {spec.name}  on {describe_storage(spec.storage)}",
        *_labelled("space", spec.space.describe_lines(trial_config(spec, {}, "cpu"))),
        f"model    {spec.model}, recipe {spec.recipe}",
        f"data     {setup.data_description}; the validation images are the objective; "
        "trials never evaluate the test set",
        f"search   sampler {describe_sampler(spec.sampler, spec.seed)}; "
        f"pruner {describe_pruner(*spec.pruner_shape())}",
        rung_line(spec, max(0, target - done)),
        f"trials   target {target} finished (COMPLETE + PRUNED): {done} done, {max(0, target - done)} to run "
        f"on {len(devices)} worker(s) [{', '.join(devices)}]",
    ]
    if timing:
        lines.append(f"time     measured {timing['images_per_s']:,.0f} training images/s -> "
                     f"~{timing['per_trial_s']:.0f} s per full trial, ~{timing['total_s'] / 60:.1f} min expected "
                     f"for the trials to run (~{timing['full_s'] / 60:.1f} min if none were pruned)"
                     + (f", ~{timing['final_s'] / 60:.1f} min for the final stage's {timing['final_runs']} runs"
                        if timing.get("final_runs") else "")
                     + (f"; {timing['sharing']}" if timing.get("sharing") else ""))
    return lines


def _labelled(label: str, lines: list[str]) -> list[str]:
    """``lines`` under a console label: the label on the first, the others indented to match."""
    return [f"{label if i == 0 else '':<8} {line}" for i, line in enumerate(lines)]


def rung_line(spec: StudySpec, trials: int) -> str:
    """How the pruner spends the budget: where trials are judged and the epochs expected in all."""
    work = simulated_work(trials, *spec.pruner_shape())
    epochs, full = work["epochs"], trials * spec.budget_epochs
    judged = prunable_epochs(*spec.pruner_shape())
    if spec.pruner in RUNG_PRUNERS and judged:
        where = (f"rungs at epoch{'s' * (len(judged) > 1)} {', '.join(map(str, judged))} of {spec.budget_epochs} "
                 f"({rung_rule(spec.reduction, spec.bootstrap)})")
    else:
        where = f"judged at {len(judged)} of {plural(spec.budget_epochs, 'epoch')}"
    return (f"pruning  {where}; ~{epochs:.0f} epochs expected for {trials} trials "
            f"({epochs / max(1, full):.0%} of {full} without pruning) and ~{work['complete']:.0f} trials reaching "
            f"the full length, simulated with trials of random quality: a sampler that keeps finding better trials "
            f"trains more")


def estimate(spec: StudySpec, train_size: int, eval_size: int, devices: Sequence[str], trials: int,
             threads: int | None = None, concurrency: Mapping[int, float] | None = None,
             final_runs: int = 0, test_size: int = 0) -> dict[str, Any]:
    """Seconds per trial and in all from a short measured step rate (pruning makes it shorter),
    measured on ``devices[0]`` with the threads one worker will have (this process's own thread
    count is restored). Workers sharing a GPU count as that GPU's throughput times its measured
    ``concurrency`` (:func:`resnet_core.devices.parallel_throughput`). ``final_runs``: the final
    stage's runs, each as many steps as a full trial and a measurement of ``test_size`` images.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(worker_threads(len(devices), threads))
    try:
        run = trial_config(spec, {}, devices[0])
        rate = measure_step_rate(run, steps=5)
    finally:
        torch.set_num_threads(previous)
    per_trial = estimate_seconds(run, rate, train_size, 0)
    epochs, passes = expected_work(trials, *spec.pruner_shape())
    per_epoch = per_trial / max(1, spec.budget_epochs)
    evaluation = eval_size / (3 * rate)  # one validation pass; inference ~3x a training step
    parallel, sharing = parallel_throughput(devices, concurrency)
    at_once = max(1.0, min(parallel, trials))
    expected = epochs * per_epoch + passes * evaluation
    full = trials * (per_trial + evaluation * len(set(run.train.val_epochs or ()) | {spec.budget_epochs}))
    final = final_runs * (per_trial + (eval_size + test_size) / (3 * rate)) / max(1.0, min(parallel, final_runs))
    return {"images_per_s": rate, "per_trial_s": per_trial, "total_s": expected / at_once, "full_s": full / at_once,
            "parallel": parallel, "sharing": sharing, "final_s": final, "final_runs": final_runs}


def concurrency_from_bench(path: str | Path, batch: int) -> dict[int, float]:
    """``{n: speed-up}`` of n worker processes sharing one device over one process, from a benchmark
    result (``python -m resnet_core.bench --processes 1,2,4 --json PATH``) at its batch size nearest
    ``batch``: the aggregate images/s of its ``processes`` rows over the one-process row (the
    in-process eager row where ``--processes`` did not include 1). A file that is not such a result
    is a one-line ValueError."""
    try:
        rows = [r for r in json.loads(Path(path).read_text())["rows"] if r.get("aggregate_ips")]
        measured = {r["batch"] for r in rows if r["mode"] == "processes"}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"--concurrency-from {path}: not a benchmark result with --processes rows "
                         f"({type(exc).__name__}: {exc})") from None
    if not measured:
        raise ValueError(f"--concurrency-from {path}: the benchmark measured no --processes rows")
    nearest = min(measured, key=lambda b: (abs(b - batch), b))
    at = {(r["mode"], r["k"]): r["aggregate_ips"] for r in rows if r["batch"] == nearest}
    one = at.get(("processes", 1)) or at.get(("eager", 1))
    if not one:
        raise ValueError(f"--concurrency-from {path}: no one-process figure at batch {nearest} to compare with")
    return {k: ips / one for (mode, k), ips in sorted(at.items()) if mode == "processes"}
