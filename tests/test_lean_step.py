"""The lean step (issue 24): host reads at a per-device interval, checkpoints every N epochs, compiled
code kept across the runs of one shape, and a padded last evaluation batch. Tiny synthetic runs."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from resnet_core import checkpoints, compiled, engine
from resnet_core.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from resnet_core.data import load_data
from resnet_core.engine import fit
from resnet_core.identity import run_id
from resnet_core.store import checkpoint_path, read_record, record_path

TINY_DATA = DataConfig(source="synthetic", val_size=200, subset=600)  # 600 images / batch 64: 9 steps an epoch
TINY_MODEL = ModelConfig(depth=8, widths=(4, 8, 16))


# One thread: bitwise-repeatable CPU kernels (the resume comparison). tests/conftest.py
pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_run(model: ModelConfig = TINY_MODEL, **train_changes) -> RunConfig:
    train = dataclasses.replace(TrainConfig(epochs=2, batch_size=64, lr=0.05, eval_batch_size=500), **train_changes)
    return RunConfig(model=model, train=train, data=TINY_DATA, seed=0, device="cpu")


# ------------------------------------------------------------------------------- host reads

def host_reads_by_step(monkeypatch, run: RunConfig) -> list[int]:
    """The number of steps taken at each ``Tensor.item()`` of one training epoch."""
    trainer = engine.make_trainer(run, load_data(run.data, "cpu"))
    steps, reads = [0], []
    real_step, real_item = engine.train_step, torch.Tensor.item
    monkeypatch.setattr(engine, "train_step", lambda *a: steps.append(steps[-1] + 1) or real_step(*a))
    monkeypatch.setattr(torch.Tensor, "item", lambda self: reads.append(steps[-1]) or real_item(self))
    engine.train_one_epoch(trainer)
    monkeypatch.undo()
    return reads


def test_sync_every_0_reads_nothing_to_the_host_inside_an_epoch(monkeypatch):
    assert engine.make_trainer(tiny_run(), load_data(TINY_DATA, "cpu")).sync_every == 20  # the CPU's default
    inside = [step for step in host_reads_by_step(monkeypatch, tiny_run(sync_every=3)) if step < 9]
    assert inside == [3, 6]  # and one at step 9, the epoch's end
    reads = host_reads_by_step(monkeypatch, tiny_run(sync_every=0))
    assert reads and all(step == 9 for step in reads)  # only after the last step


def test_with_sync_every_0_divergence_is_found_at_the_epochs_end(tmp_path):
    run = tiny_run(dataclasses.replace(TINY_MODEL, norm="none"), lr=1e4, sync_every=0)
    record = fit(run, results_dir=tmp_path)
    assert record.status == "diverged" and "at iteration 9" in record.error  # the end of epoch 1


# ------------------------------------------------------------------------------ checkpoints

def saved_epochs(monkeypatch) -> list[int]:
    """The epochs after which a checkpoint is written (``len(history)`` at each save)."""
    saved: list[int] = []
    real = checkpoints.save_checkpoint
    monkeypatch.setattr(checkpoints, "save_checkpoint", lambda trainer, path: saved.append(len(trainer.history))
                        or real(trainer, path))
    return saved


def test_checkpoints_are_written_every_n_epochs_and_when_a_callback_stops_the_run(tmp_path, monkeypatch):
    saved = saved_epochs(monkeypatch)
    assert fit(tiny_run(epochs=4, checkpoint_every=2), results_dir=tmp_path / "a").status == "completed"
    assert saved == [2, 4]
    saved.clear()
    stopped = fit(tiny_run(epochs=4, checkpoint_every=2), callbacks=[lambda m: m["epoch"] == 3],
                  results_dir=tmp_path / "b")
    assert stopped.status == "stopped" and saved == [2, 3]  # the stopped run resumes from its last epoch


def test_a_run_resumed_from_an_every_2_epochs_checkpoint_matches_an_uninterrupted_run(tmp_path):
    run = tiny_run(epochs=3, checkpoint_every=2)
    reference = fit(run, results_dir=tmp_path / "reference")

    def kill_after_epoch_3(metrics):
        if metrics["epoch"] == 3:
            raise SystemExit("killed")

    with pytest.raises(SystemExit):
        fit(run, callbacks=[kill_after_epoch_3], results_dir=tmp_path / "killed")
    assert len(read_record(record_path(tmp_path / "killed", run_id(run))).history) == 3
    saved = torch.load(checkpoint_path(tmp_path / "killed", run_id(run)), weights_only=True)
    assert saved["iteration"] == 18  # epoch 2's: epoch 3 was lost with the kill
    resumed = fit(run, results_dir=tmp_path / "killed")
    assert resumed.status == "completed"
    for got, want in zip(resumed.history, reference.history, strict=True):
        assert got["train_loss"] == want["train_loss"] and got["test_error"] == want["test_error"]


# ----------------------------------------------------------------------------- evaluation

class BatchSizes(nn.Module):
    """Calls ``model``, noting the size of each batch it is given."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.sizes = model, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(len(x))
        return self.model(x)


def test_padding_the_last_eval_batch_changes_no_loss_or_error():
    run = tiny_run(eval_batch_size=128, amp="off")  # 200 validation images: batches of 128 and 72
    trainer = engine.make_trainer(run, load_data(run.data, "cpu"))
    engine.train_one_epoch(trainer)  # running statistics of its own, so BatchNorm's eval mode matters
    trainer.step_model = BatchSizes(trainer.model)
    plain = engine.evaluate(trainer, trainer.data.val_x, trainer.data.val_y)
    trainer.pad_eval = True
    padded = engine.evaluate(trainer, trainer.data.val_x, trainer.data.val_y)
    assert trainer.step_model.sizes == [128, 72, 128, 128]
    assert padded[0] == pytest.approx(plain[0], rel=1e-6) and padded[1] == plain[1]


# ---------------------------------------------------------------------------------- compile

@pytest.fixture
def fresh_dynamo():
    """Empty Dynamo caches before and after: code compiled by a test's backend must not serve later tests."""
    compiled._dynamo_caches_for.cache_clear()
    torch._dynamo.reset()
    yield
    compiled._dynamo_caches_for.cache_clear()
    torch._dynamo.reset()


def test_dynamo_is_reset_only_when_the_compiled_shape_changes(monkeypatch, fresh_dynamo):
    calls = []
    monkeypatch.setattr(torch._dynamo, "reset", lambda: calls.append("reset"))
    monkeypatch.setattr(torch, "compile", lambda model, **options: calls.append(options) or model)
    data = engine._random_bundle(torch.randint(0, 256, (128, 3, 32, 32), dtype=torch.uint8), torch.randint(0, 10, (128,)), 10)
    for width in (1.0, 1.0, 1.5, 1.0):  # a continuous width_multiplier: a new shape per trial
        model = dataclasses.replace(TINY_MODEL, width_multiplier=width)
        engine.make_trainer(tiny_run(model, compile=True, compile_mode="max-autotune"), data)
    options = {"mode": "max-autotune", "dynamic": False}
    assert calls == ["reset", options, options, "reset", options, "reset", options]
    assert engine.make_trainer(tiny_run(), data).pad_eval is False  # eager runs evaluate as they are


def test_a_second_compiled_run_of_one_shape_compiles_nothing(tmp_path, monkeypatch, fresh_dynamo):
    from torch._dynamo.testing import CompileCounter

    counter, real_compile = CompileCounter(), torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, mode, dynamic: real_compile(model, backend=counter, dynamic=dynamic))
    frames = []
    for seed, width in ((0, 1.0), (1, 1.0), (0, 2.0)):
        model = dataclasses.replace(TINY_MODEL, width_multiplier=width)
        run = dataclasses.replace(tiny_run(model, epochs=1, compile=True, eval_batch_size=128), seed=seed)
        assert fit(run, results_dir=tmp_path).status == "completed"
        frames.append(counter.frame_count)
    # One training and one evaluation graph (the 72-image last batch is padded to 128), compiled once
    # for both seeds; the wider net is a new shape.
    assert frames[0] == 2 and frames[1] == frames[0] and frames[2] == 4, frames


def test_a_cuda_graphs_run_marks_each_training_step_and_others_do_not(monkeypatch):
    marks = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    for mode, compile_on, expected in (("reduce-overhead", True, 1), ("default", True, 0), ("reduce-overhead", False, 0)):
        marks.clear()
        compiled.begin_graph_step(RunConfig(train=TrainConfig(compile=compile_on, compile_mode=mode)))
        assert len(marks) == expected, (mode, compile_on)


def test_every_training_step_of_a_run_and_of_a_fused_group_begins_with_the_graph_mark(tmp_path, monkeypatch):
    from resnet_core import fused_fit

    run = RunConfig(model=ModelConfig(depth=8, widths=(4, 8, 16)),
                    train=TrainConfig(epochs=1, batch_size=20, amp="off", channels_last=False),
                    data=DataConfig(source="synthetic", val_size=20, subset=40), device="cpu")
    steps = []
    monkeypatch.setattr(engine, "begin_graph_step", steps.append)
    monkeypatch.setattr(fused_fit, "begin_graph_step", steps.append)
    fit(run, results_dir=tmp_path / "alone")
    fused_fit.fit_group([run, dataclasses.replace(run, seed=1)], results_dir=tmp_path / "group")
    assert len(steps) == 4 and steps[0] == run  # two steps alone, two steps of the group
