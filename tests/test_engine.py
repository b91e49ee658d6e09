"""fit(): records, statuses, resume, schedules. Tiny synthetic data unless a test says otherwise."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from resnet_core import checkpoints, engine
from resnet_core.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from resnet_core.identity import run_id
from resnet_core.recipes import recipe
from resnet_core.data import DataBundle, load_data
from resnet_core.engine import fit
from resnet_core.evaluation import unpack_wrong
from resnet_core.schedules import StepPlan, lr_at, make_budget, momentum_at
from resnet_core.store import checkpoint_path, load_histories, load_runs, read_record, record_path

TINY_MODEL = ModelConfig(depth=8)
TINY_DATA = DataConfig(source="synthetic", val_size=200, subset=600)


def tiny_run(**train_changes) -> RunConfig:
    train = dataclasses.replace(TrainConfig(epochs=2, batch_size=64, lr=0.05, eval_batch_size=500), **train_changes)
    return RunConfig(model=TINY_MODEL, train=train, data=TINY_DATA, seed=0, device="cpu")


RECORD_KEYS = {"run_id", "status", "config", "history", "final", "wall_seconds", "params", "macs", "provenance",
               "error", "stop_reason", "format"}
EPOCH_KEYS = {"epoch", "iteration", "train_loss", "train_error", "val_loss", "val_error", "test_loss", "test_error",
              "lr", "seconds", "images_per_s", "grad_norm"}
PROVENANCE_KEYS = {"git_commit", "torch", "cuda", "device", "device_name", "amp", "hostname", "python",
                   "data_source", "data_fingerprint", "data_description", "created_utc", "device_type",
                   "grad_scaler", "tf32_conv", "tf32_matmul", "cudnn_benchmark", "resumed_from_device"}


def test_completed_run_writes_a_full_record(tmp_path):
    record = fit(tiny_run(), results_dir=tmp_path)
    assert record.status == "completed", record.error
    stored = json.loads(record_path(tmp_path, record.run_id).read_text())
    assert RECORD_KEYS <= set(stored)
    assert len(stored["history"]) == 2
    for epoch in stored["history"]:
        assert EPOCH_KEYS <= set(epoch)
        assert set(epoch["grad_norm"]) >= {"stem", "stage1", "stage2", "stage3", "head"}
        assert all(v > 0 for v in epoch["grad_norm"].values())
    assert PROVENANCE_KEYS <= set(stored["provenance"])
    assert stored["provenance"]["device_type"] == "cpu" and stored["provenance"]["resumed_from_device"] is None
    assert stored["provenance"]["cudnn_benchmark"] is False and stored["provenance"]["tf32_conv"] is False
    assert stored["final"]["test_error"] == stored["history"][-1]["test_error"]  # final epoch, not best
    assert stored["params"] > 0 and stored["macs"] > 0
    assert not checkpoint_path(tmp_path, record.run_id).exists()  # a finished run keeps no checkpoint


@pytest.mark.parametrize("when", ["end", "never"])
def test_the_test_set_is_measured_only_when_test_eval_says(tmp_path, when):
    assert run_id(tiny_run(test_eval="every_epoch")) == run_id(tiny_run())  # the default: ids unchanged
    record = fit(tiny_run(test_eval=when), results_dir=tmp_path)
    assert record.status == "completed", record.error
    first, last = record.history
    assert "test_error" not in first and "test_loss" not in first and "val_error" in first
    assert ("test_error" in last) == ("test_error" in record.final) == (when == "end")
    if when == "end":
        assert record.final["test_error"] == last["test_error"] < 100
    row = load_runs(tmp_path).iloc[0]  # tables cope with a run that has no test error
    assert (when == "never") == (pd_isna(row.get("final.test_error")))
    assert "test err" not in engine._epoch_line(first) and "val err" in engine._epoch_line(first)


@pytest.mark.parametrize("when", ["end", "every_epoch", "never"])
def test_a_run_records_which_test_images_its_last_epoch_got_wrong(tmp_path, one_thread, when):
    record = fit(tiny_run(test_eval=when), results_dir=tmp_path)
    assert record.status == "completed", record.error
    stored = json.loads(record_path(tmp_path, record.run_id).read_text())
    assert all("test_wrong" not in epoch for epoch in stored["history"])  # once, in the final metrics
    if when == "never":
        assert "test_wrong" not in stored["final"]
        return
    wrong = unpack_wrong(stored["final"]["test_wrong"], stored["provenance"]["test_size"])
    assert wrong.shape == (stored["provenance"]["test_size"],) and 0 < wrong.sum() < len(wrong)
    assert 100 * wrong.mean() == pytest.approx(stored["final"]["test_error"], abs=1e-9)


def pd_isna(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def test_training_learns_synthetic_data(tmp_path):
    record = fit(tiny_run(epochs=3), results_dir=tmp_path)
    errors = [h["val_error"] for h in record.history]
    assert errors[-1] < 75 and errors[-1] < errors[0], errors  # chance is 90% on 10 classes


def test_a_complete_record_is_returned_without_training(tmp_path, monkeypatch):
    first = fit(tiny_run(epochs=1), results_dir=tmp_path)

    def must_not_train(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(engine, "make_trainer", must_not_train)
    again = fit(tiny_run(epochs=1), results_dir=tmp_path)
    assert again.status == "completed"
    assert again.history == json.loads(json.dumps(first.history))


def test_device_does_not_change_the_identity():
    assert run_id(tiny_run()) == run_id(dataclasses.replace(tiny_run(), device="auto"))
    assert run_id(tiny_run()) != run_id(dataclasses.replace(tiny_run(), seed=1))


def test_forced_divergence_is_a_diverged_record(tmp_path):
    run = dataclasses.replace(tiny_run(lr=1e4, momentum=0.9), model=ModelConfig(depth=8, norm="none"))
    record = fit(run, results_dir=tmp_path)
    assert record.status == "diverged"
    assert "loss became" in record.error
    assert read_record(record_path(tmp_path, record.run_id)).status == "diverged"


def test_an_exception_is_a_failed_record(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(engine, "train_step", boom)
    record = fit(tiny_run(epochs=1), results_dir=tmp_path)
    assert record.status == "failed"
    assert "CUDA out of memory (simulated)" in record.error
    assert record_path(tmp_path, record.run_id).exists()


def test_killed_run_resumes_and_matches_an_uninterrupted_run(tmp_path):
    torch.set_num_threads(1)  # bitwise-repeatable CPU kernels for the comparison below
    reference = fit(tiny_run(epochs=3), results_dir=tmp_path / "reference")

    def kill_after_first_epoch(metrics):
        if metrics["epoch"] == 1:
            raise SystemExit("killed")

    with pytest.raises(SystemExit):
        fit(tiny_run(epochs=3), callbacks=[kill_after_first_epoch], results_dir=tmp_path / "killed")
    identity = run_id(tiny_run(epochs=3))
    stopped = read_record(record_path(tmp_path / "killed", identity))
    assert stopped.status == "stopped" and len(stopped.history) == 1
    assert checkpoint_path(tmp_path / "killed", identity).exists()
    saved = torch.load(checkpoint_path(tmp_path / "killed", identity), weights_only=True)
    assert saved["rng"]["device_type"] == "cpu"  # stored beside the generator state it describes

    resumed = fit(tiny_run(epochs=3), results_dir=tmp_path / "killed")
    assert resumed.status == "completed"
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    for got, want in zip(resumed.history, reference.history):
        assert got["train_loss"] == pytest.approx(want["train_loss"], rel=1e-5)
        assert got["test_error"] == pytest.approx(want["test_error"], abs=1e-9)


def test_callback_stop_gives_stopped_then_resumes(tmp_path):
    record = fit(tiny_run(epochs=2), callbacks=[lambda m: True], results_dir=tmp_path)
    assert record.status == "stopped" and record.stop_reason == "callback"
    assert len(record.history) == 1
    finished = fit(tiny_run(epochs=2), results_dir=tmp_path)
    assert finished.status == "completed" and len(finished.history) == 2


def test_corrupt_checkpoint_restarts_from_scratch_with_a_warning(tmp_path):
    run = tiny_run(epochs=1)
    path = checkpoint_path(tmp_path, run_id(run))
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a checkpoint")
    with pytest.warns(UserWarning, match="unusable"):
        record = fit(run, results_dir=tmp_path)
    assert record.status == "completed" and len(record.history) == 1


def test_seed_recipe_runs(tmp_path):
    train = dataclasses.replace(recipe("tutorial"), epochs=1)
    run = RunConfig(model=ModelConfig(depth=14, shortcut="conv3x3"), train=train, data=TINY_DATA, device="cpu")
    record = fit(run, results_dir=tmp_path)
    assert record.status == "completed", record.error
    # Adam at 1e-3, divided by 3 at each quarter of the budget: the last step runs at 1e-3 / 27.
    assert record.history[0]["lr"] == pytest.approx(1e-3 / 27)


def test_iteration_budget_stops_mid_epoch(tmp_path):
    record = fit(tiny_run(epochs=None, iterations=13), results_dir=tmp_path)
    assert record.final["iterations"] == 13
    assert [h["iteration"] for h in record.history] == [9, 13]  # 600 images / 64 = 9 steps an epoch


def test_paper_schedule_and_warmup():
    paper = recipe("paper")
    assert lr_at(0, 64000, paper) == pytest.approx(0.1)
    assert lr_at(31999, 64000, paper) == pytest.approx(0.1)
    assert lr_at(32000, 64000, paper) == pytest.approx(0.01)
    assert lr_at(48000, 64000, paper) == pytest.approx(0.001)
    warm = dataclasses.replace(paper, warmup_iterations=400)
    assert lr_at(399, 64000, warm) == pytest.approx(0.01)
    assert lr_at(400, 64000, warm) == pytest.approx(0.1)


@pytest.mark.parametrize("schedule", ["cosine", "onecycle", "constant"])
def test_schedules_stay_positive_and_peak_at_lr(schedule):
    cfg = dataclasses.replace(recipe("paper"), schedule=schedule)
    lrs = [lr_at(i, 1000, cfg) for i in range(1000)]
    assert all(0 < lr <= cfg.lr + 1e-12 for lr in lrs)
    assert max(lrs) == pytest.approx(cfg.lr, rel=1e-2)
    if schedule != "constant":
        assert lrs[-1] < 0.05 * cfg.lr


def test_cycle_momentum_mirrors_the_lr_and_needs_sgd():
    cfg = TrainConfig(epochs=1, schedule="onecycle", cycle_momentum=True)
    lrs = [lr_at(i, 1000, cfg) for i in range(1000)]
    moms = [momentum_at(i, 1000, cfg) for i in range(1000)]
    peak = lrs.index(max(lrs))
    assert peak == 300 and moms.index(min(moms)) == peak  # Smith 2018: lowest momentum at the lr's peak
    assert moms[0] == pytest.approx(0.95, abs=0.005) and moms[peak] == pytest.approx(0.85)
    assert moms[-1] == pytest.approx(0.95, abs=1e-4)
    assert all(a >= b for a, b in zip(moms[:peak], moms[1:peak + 1]))  # falls while the lr rises
    assert all(a <= b for a, b in zip(moms[peak:], moms[peak + 1:]))  # rises while the lr anneals
    cosine = dataclasses.replace(cfg, schedule="cosine")  # any schedule: the momentum rises as the lr falls
    assert momentum_at(0, 1000, cosine) == pytest.approx(0.85) and momentum_at(999, 1000, cosine) == pytest.approx(0.95)
    assert momentum_at(500, 1000, dataclasses.replace(cfg, cycle_momentum=False)) == cfg.momentum
    with pytest.raises(ValueError, match="cycle_momentum=True is invalid: it cycles SGD's momentum and optimizer='adam'"):
        dataclasses.replace(cfg, optimizer="adam")


def test_a_run_with_cycle_momentum_sets_the_optimizers_momentum_each_step():
    run = tiny_run(epochs=1, schedule="onecycle", cycle_momentum=True)
    trainer = engine.make_trainer(run, load_data(run.data))
    plan = trainer.budget
    engine.train_one_epoch(trainer)
    last = momentum_at(plan.total_iterations - 1, plan.total_iterations, run.train)
    assert [g["momentum"] for g in trainer.optimizer.param_groups] == [last] * len(trainer.optimizer.param_groups)
    assert last != run.train.momentum


def test_budget_drops_the_last_partial_batch():
    assert make_budget(TrainConfig(epochs=2, batch_size=128), 1000) == StepPlan(7, 14, 2)
    with pytest.raises(ValueError, match="training split is empty"):
        make_budget(TrainConfig(epochs=1), 0)


def test_load_runs_and_histories_are_flat(tmp_path):
    fit(tiny_run(epochs=1), results_dir=tmp_path)
    fit(dataclasses.replace(tiny_run(epochs=1), seed=1), results_dir=tmp_path)
    runs = load_runs(tmp_path)
    assert len(runs) == 2
    assert {"model.depth", "train.lr", "data.source", "final.test_error", "params", "seed"} <= set(runs.columns)
    histories = load_histories(tmp_path)
    assert len(histories) == 2 and "grad_norm.stage1" in histories.columns


def test_non_finite_values_are_stored_as_null(tmp_path):
    run = dataclasses.replace(tiny_run(epochs=1), data=dataclasses.replace(TINY_DATA, val_size=0))
    record = fit(run, results_dir=tmp_path)
    assert math.isnan(record.final["val_error"])
    text = record_path(tmp_path, record.run_id).read_text()
    assert "NaN" not in text and '"val_error": null' in text


@pytest.mark.slow
def test_one_epoch_on_2000_real_images(tmp_path, real_data_dir):
    run = RunConfig(
        model=ModelConfig(depth=20),
        train=dataclasses.replace(recipe("quick"), epochs=1),
        data=DataConfig(source=str(real_data_dir), subset=2000, val_size=5000),
        device="cpu",
    )
    record = fit(run, results_dir=tmp_path)
    assert record.status == "completed", record.error
    stored = json.loads(record_path(tmp_path, record.run_id).read_text())
    assert RECORD_KEYS <= set(stored) and PROVENANCE_KEYS <= set(stored["provenance"])
    assert EPOCH_KEYS <= set(stored["history"][0])
    assert stored["provenance"]["train_size"] == 2000 and stored["provenance"]["val_size"] == 5000
    assert stored["provenance"]["test_size"] == 10000
    assert "CIFAR-10" in stored["provenance"]["data_description"]
    assert stored["history"][0]["iteration"] == 2000 // 128
    assert stored["final"]["test_error"] < 85  # one short epoch already beats chance (90%)


# ------------------------------------------------------------------ checkpoints across devices

def stopped_after_one_epoch(tmp_path, run: RunConfig):
    """A run stopped by its callback after epoch 1: its record says stopped, its checkpoint stays."""
    record = fit(run, callbacks=[lambda m: True], results_dir=tmp_path)
    assert record.status == "stopped" and len(record.history) == 1
    return checkpoint_path(tmp_path, run_id(run))


class OnAnotherDevice:
    """Stands in for a tensor that torch.load put on a GPU: only ``.cpu()`` gives the bytes back
    (``Generator.set_state`` rejects anything but a CPU ByteTensor)."""

    device = torch.device("cuda")

    def __init__(self, tensor: torch.Tensor):
        self._tensor = tensor

    def cpu(self) -> torch.Tensor:
        return self._tensor


def test_rng_states_on_another_device_are_restored_from_cpu_tensors(tmp_path, monkeypatch):
    run = tiny_run()
    ckpt = stopped_after_one_epoch(tmp_path, run)
    saved = torch.load(ckpt, weights_only=True)["rng"]
    real_load = torch.load

    def load_onto_a_gpu(*args, **kwargs):
        state = real_load(*args, **kwargs)
        state["rng"] = {k: OnAnotherDevice(v) if isinstance(v, torch.Tensor) else v for k, v in state["rng"].items()}
        return state

    monkeypatch.setattr(torch, "load", load_onto_a_gpu)
    trainer = engine.make_trainer(run, load_data(run.data, "cpu"))
    assert checkpoints.load_checkpoint(trainer, ckpt)
    assert trainer.iteration == 9 and torch.equal(trainer.generator.get_state(), saved["generator"])
    assert torch.equal(torch.get_rng_state(), saved["torch"]) and trainer.resumed_from is None


def test_a_checkpoint_is_loaded_onto_the_cpu_and_another_device_type_reseeds_with_a_warning(tmp_path):
    run = tiny_run()
    ckpt = stopped_after_one_epoch(tmp_path, run)
    saved = torch.load(ckpt, weights_only=True)
    trainer = engine.make_trainer(run, load_data(run.data, "cpu"))
    trainer.device = torch.device("cuda")  # the run now resumes on a GPU (mapping the file there needs CUDA)
    with pytest.warns(UserWarning, match="comes from a cpu device and this run resumes on a cuda device"):
        assert checkpoints.load_checkpoint(trainer, ckpt)
    assert trainer.iteration == 9 and trainer.resumed_from == "cpu"
    assert torch.equal(trainer.model.state_dict()["conv.weight"], saved["model"]["conv.weight"])
    reseeded = torch.Generator().manual_seed(checkpoints.resume_seed(run.seed, 9)).get_state()
    assert torch.equal(trainer.generator.get_state(), reseeded)  # reproducible: (seed, iteration)
    assert checkpoints.resume_seed(0, 9) != checkpoints.resume_seed(0, 18) != checkpoints.resume_seed(1, 9)


def test_a_run_resumed_from_another_device_types_checkpoint_completes(tmp_path):
    run = tiny_run()
    ckpt = stopped_after_one_epoch(tmp_path, run)
    state = torch.load(ckpt, weights_only=True)
    state["rng"]["device_type"] = "cuda"  # as a GPU worker wrote it: a 16-byte Philox state
    state["rng"]["generator"] = torch.zeros(16, dtype=torch.uint8)
    state["rng"]["cuda"] = torch.zeros(16, dtype=torch.uint8)
    torch.save(state, ckpt)
    with pytest.warns(UserWarning, match="comes from a cuda device and this run resumes on a cpu device"):
        record = fit(run, results_dir=tmp_path)
    assert record.status == "completed", record.error
    assert [h["epoch"] for h in record.history] == [1, 2]
    assert record.provenance["resumed_from_device"] == "cuda"


# ------------------------------------------------------------------------------- fp16 on CPU

TINIER = dataclasses.replace(TINY_MODEL, widths=(4, 8, 16))


def test_fp16_trains_with_a_grad_scaler_and_resumes_exactly(tmp_path, monkeypatch):
    # CPU autocast runs fp16 too (torch >= 2.x), so the GPU's fp16 path runs here.
    monkeypatch.setattr(engine, "resolve_amp", lambda mode, device: torch.float16)
    torch.set_num_threads(1)  # bitwise-repeatable CPU kernels for the comparison below
    run = dataclasses.replace(tiny_run(epochs=3), model=TINIER)
    trainer = engine.make_trainer(run, load_data(run.data, "cpu"))
    assert trainer.amp_dtype == torch.float16 and isinstance(trainer.scaler, torch.amp.GradScaler)
    reference = fit(run, results_dir=tmp_path / "reference")
    assert reference.status == "completed", reference.error
    assert reference.provenance["amp"] == "float16" and reference.provenance["grad_scaler"] is True

    def kill_after_first_epoch(metrics):
        if metrics["epoch"] == 1:
            raise SystemExit("killed")

    with pytest.raises(SystemExit):
        fit(run, callbacks=[kill_after_first_epoch], results_dir=tmp_path / "killed")
    saved = torch.load(checkpoint_path(tmp_path / "killed", run_id(run)), weights_only=True)
    assert saved["scaler"]["scale"] > 0  # the loss scale travels with the checkpoint
    resumed = fit(run, results_dir=tmp_path / "killed")
    for got, want in zip(resumed.history, reference.history, strict=True):
        assert got["train_loss"] == want["train_loss"] and got["grad_norm"] == want["grad_norm"]


# ---------------------------------------------------------------------------- speed switches

def test_stage_gradient_norms_are_sampled_every_n_steps_and_averaged(tmp_path, monkeypatch):
    monkeypatch.setattr(engine, "GRAD_NORM_EVERY", 4)
    sampled = []
    real = engine._stage_grad_norms
    monkeypatch.setattr(engine, "_stage_grad_norms", lambda stages: sampled.append(real(stages)) or sampled[-1])
    record = fit(tiny_run(epochs=1), results_dir=tmp_path)  # 600 images / 64 = 9 steps: steps 0, 4 and 8 sampled
    assert len(sampled) == 3
    mean = torch.stack(sampled).mean(dim=0).tolist()
    assert list(record.history[0]["grad_norm"].values()) == pytest.approx(mean, rel=1e-6)


def test_memory_is_released_after_the_trainer_is_gone(tmp_path, monkeypatch):
    import weakref

    trainers = []
    real = engine.make_trainer

    def tracked(run, data):
        trainer = real(run, data)
        trainers.append(weakref.ref(trainer))
        return trainer

    monkeypatch.setattr(engine, "make_trainer", tracked)
    alive_at_release = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: alive_at_release.append(trainers[-1]() is not None))
    assert fit(tiny_run(epochs=1), results_dir=tmp_path).status == "completed"
    engine.measure_step_rate(tiny_run(), steps=1, warmup=1)  # the driver's estimate, before its workers start
    assert alive_at_release == [False, False]


def test_the_step_rate_trains_on_the_trainers_device_copy(monkeypatch):
    # On a GPU, make_trainer moves the data to the device; the rate measurement must step on that
    # copy (stepping on the host tensors failed on CUDA: "Input type (torch.FloatTensor) and weight
    # type (CUDABFloat16Type) should be the same"). On the CPU the move is a no-op, so copy instead.
    def moved_copy(bundle, device):
        return dataclasses.replace(bundle, train_x=bundle.train_x.clone(), train_y=bundle.train_y.clone())

    monkeypatch.setattr(DataBundle, "to", moved_copy)
    real_step = engine.train_step
    fed_the_copy = []

    def spy(trainer, images, labels):
        fed_the_copy.append(images.untyped_storage().data_ptr() == trainer.data.train_x.untyped_storage().data_ptr())
        return real_step(trainer, images, labels)

    monkeypatch.setattr(engine, "train_step", spy)
    assert engine.measure_step_rate(tiny_run(), steps=1, warmup=1) > 0
    assert fed_the_copy == [True, True]


def test_fit_refuses_data_loaded_for_another_data_config(tmp_path):
    data = load_data(TINY_DATA, "cpu")
    assert data.config == TINY_DATA
    run = dataclasses.replace(tiny_run(epochs=1), data=dataclasses.replace(TINY_DATA, subset=300))
    with pytest.raises(ValueError, match="fit was given data loaded for"):
        fit(run, results_dir=tmp_path, data=data)


def gives_back_process_state(monkeypatch, module, train):
    """``train()`` (a fit whose ``module.configure_backends`` turns cuDNN's benchmark on, as on a GPU)
    leaves the caller's torch random state and cuDNN benchmark switch as it found them; its result."""
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    monkeypatch.setattr(module, "configure_backends", lambda device: setattr(torch.backends.cudnn, "benchmark", True))
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    result = train()
    assert torch.equal(torch.get_rng_state(), before), "the caller's torch RNG state changed"
    assert torch.backends.cudnn.benchmark is False, "cudnn.benchmark was left on"
    return result


def test_fit_gives_the_caller_back_its_random_state_and_cudnn_benchmark(tmp_path, monkeypatch):
    seen = []
    run = tiny_run(epochs=1)
    record = gives_back_process_state(monkeypatch, engine, lambda: fit(
        run, callbacks=[lambda m: seen.append(torch.backends.cudnn.benchmark)], results_dir=tmp_path))
    assert record.status == "completed" and seen == [True]  # the run itself trained with it on
    assert gives_back_process_state(monkeypatch, engine, lambda: engine.measure_step_rate(run, steps=1, warmup=0)) > 0
