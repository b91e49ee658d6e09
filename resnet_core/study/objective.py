"""The objective: one trial is one ``fit`` of the trial's config (the fit function is passed in);
its value is the final epoch's VALIDATION error, pruning and the heartbeat ride on fit's callback.
A run that diverges is a result the sampler learns from (:meth:`Objective._diverged`), not a failure."""

from __future__ import annotations

import math
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import optuna

from resnet_core.config import DataConfig
from resnet_core.identity import run_id
from resnet_core.data import load_data
from resnet_core.devices import resolve_device
from resnet_core.engine import fit as engine_fit
from resnet_core.gpu_memory import fit_retrying_oom
from resnet_core.schedules import make_budget
from resnet_core.store import checkpoint_path
from resnet_core.study.common import TrialFailed, say
from resnet_core.study.spec import StudySpec, trial_config


@dataclass
class Objective:
    """Trains one trial's config with ``fit`` (:func:`resnet_core.engine.fit` unless another is
    passed in: a test's fake, a wrapped fit); pruning and the heartbeat ride on its callback."""

    spec: StudySpec
    device: str = "cpu"
    data: Any = None  # a DataBundle the caller loaded; used for the trials whose DataConfig it was loaded for
    fit: Callable[..., Any] = engine_fit  # fit(run, callbacks=, results_dir=, data=) -> RunRecord
    current: optuna.Trial | None = None  # the trial being trained (for Ctrl-C re-queueing)
    _data_cache: dict = field(default_factory=dict)

    def __call__(self, trial: optuna.Trial) -> float:
        try:
            return self._run(trial)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: fit has written a "stopped" record and kept the checkpoint
            trial.set_user_attr("fail_reason", "interrupted (Ctrl-C or SIGTERM); re-queued")
            raise

    def _run(self, trial: optuna.Trial) -> float:
        self._mark(trial)  # first: until it is marked, a killed worker's trial waits out UNMARKED_GRACE_S
        params = self.spec.space.suggest(trial)
        try:
            run = trial_config(self.spec, params, self.device)
        except ValueError as exc:  # a combination the config rejects (e.g. depth 8 with bottlenecks)
            return self._fail(trial, f"invalid config: {exc}")
        trial.set_user_attr("run_id", run_id(run))
        try:
            data = self._load(run.data)
        except (OSError, RuntimeError, ValueError) as exc:  # e.g. no memory left for the data on this device
            return self._fail(trial, f"data could not be loaded: {type(exc).__name__}: {exc}")
        epochs = make_budget(run.train, len(data.train_y)).epochs
        trial.set_user_attr("budget_epochs", epochs)
        record = fit_retrying_oom(self.fit, run, callbacks=[self._callback(trial, epochs)],
                                  results_dir=self.spec.results, data=data)
        return self._outcome(trial, record, run.model.num_classes or getattr(data, "num_classes", 10))

    def _mark(self, trial: optuna.Trial) -> None:
        """Who runs this trial: lets another worker tell a dead trial from a slow one."""
        self.current = trial
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        trial.set_user_attr("heartbeat", time.time())

    def _load(self, cfg: DataConfig):
        """The data of the trial's own DataConfig: the caller's bundle only if it was loaded for
        it (a --compare subset or val_size sub-study asks for other data than the base study)."""
        if matching_data(self.data, cfg) is not None:
            return self.data
        if cfg not in self._data_cache:
            self._data_cache.clear()  # one bundle per worker: the device need not hold every config's data
            self._data_cache[cfg] = load_data(cfg, resolve_device(self.device))
        return self._data_cache[cfg]

    @staticmethod
    def _callback(trial: optuna.Trial, epochs: int) -> Callable[[dict], bool]:
        def report(metrics: dict) -> bool:
            trial.set_user_attr("heartbeat", time.time())
            value = metrics.get("val_error")  # absent at epochs the pruner does not read (val_epochs)
            if value is None or not math.isfinite(value):
                return False
            trial.report(value, metrics["epoch"])
            # Stopping at the last epoch saves nothing and would hide a finished run as "pruned".
            return metrics["epoch"] < epochs and trial.should_prune()

        return report

    def _outcome(self, trial: optuna.Trial, record, classes: int) -> float:
        """The trial's value, or how it ended (pruned, diverged, failed); ``classes``: the data's."""
        trial.set_user_attr("epochs_done", len(record.history))
        trial.set_user_attr("run_status", record.status)
        if record.status == "diverged":
            self._diverged(trial, record, classes)
        if record.status == "stopped" and record.stop_reason == "callback":
            # A pruned run is not resumed; its checkpoint would only fill the disk.
            checkpoint_path(self.spec.results, record.run_id).unlink(missing_ok=True)
            raise optuna.TrialPruned(f"pruned after epoch {len(record.history)}")
        if record.status == "completed":
            value = record.final.get("val_error")
            if value is not None and math.isfinite(value):
                return float(value)
            return self._fail(trial, "the run has no finite validation error")
        reason = record.error or record.stop_reason or "no reason recorded"
        return self._fail(trial, f"run {record.status}: {reason}")

    @staticmethod
    def _diverged(trial: optuna.Trial, record, classes: int) -> None:
        """End the trial PRUNED, with chance error at the epoch it diverged in and a violated constraint.

        A FAIL trial is invisible to every sampler, so a region of learning rates that diverges kept
        being proposed. Optuna 5.1's TPESampler (samplers/_tpe/sampler.py, ``_split_trials``) reads
        COMPLETE and PRUNED trials; it ranks PRUNED ones by their deepest step first, then their value
        (``_get_pruned_trial_score``: key (-step, value)), so chance error alone at epoch 3 would rank
        a diverged trial above every trial pruned at epoch 1. Trials with a constraint > 0 (infeasible,
        ``Trial.set_constraint``) are ranked after all feasible ones, whatever their step: that puts a
        diverged trial among the bad trials. GPSampler reads COMPLETE trials only, CmaEsSampler no
        PRUNED ones (consider_pruned_trials off), random and QMC read none: to them it is what FAIL was.
        PRUNED (never COMPLETE) keeps it from being the best trial and from the final stage.
        """
        epoch = len(record.history) + 1  # the epochs in its history finished; it diverged in the next
        reason = (record.error or "training loss not finite")[:500]
        chance = 100.0 * (1.0 - 1.0 / classes)
        trial.set_user_attr("diverged", True)
        trial.set_user_attr("diverged_epoch", epoch)
        trial.set_user_attr("diverged_reason", reason)
        trial.report(chance, epoch)  # the trial's value in reports: a bad one, at the epoch it got to
        trial.set_constraint("diverged", 1.0)
        say(f"trial {trial.number} diverged in epoch {epoch} ({reason}): told to the sampler as a bad trial")
        raise optuna.TrialPruned(f"diverged in epoch {epoch}: {reason}")

    @staticmethod
    def _fail(trial: optuna.Trial, reason: str) -> float:
        trial.set_user_attr("fail_reason", reason[:500])
        raise TrialFailed(reason)


def matching_data(data: Any, cfg: DataConfig) -> Any:
    """``data`` if it is a DataBundle loaded for ``cfg``, else None (the caller loads the right one)."""
    return data if data is not None and getattr(data, "config", None) == cfg else None
