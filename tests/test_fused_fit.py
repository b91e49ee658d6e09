"""Fused groups in the engine (resnet_core.fused_fit): K seeds trained as one model give each seed the
record, checkpoint and numbers its run alone gives; a diverging member, an interrupted group and the
runner's jobs behave as separate runs do."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from resnet_core import engine, fused_fit, runner
from resnet_core.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from resnet_core.evaluation import unpack_wrong
from resnet_core.identity import run_id
from resnet_core.models import build_model
from resnet_core.store import checkpoint_path, find_record
from test_engine import gives_back_process_state

# 400 training images in batches of 20: 20 steps an epoch. fp32 and a small constant learning rate:
# fused and separate runs sum in another order (~1e-7), and at the default peak rate a net this small
# amplifies such noise past 1e-4 within 20 steps (as a run alone does between 1 and 2 threads).
BASE = RunConfig(
    model=ModelConfig(depth=8, widths=(8, 16, 32)),
    train=TrainConfig(epochs=2, batch_size=20, amp="off", channels_last=False, schedule="constant", lr=0.002,
                      eval_batch_size=200),
    data=DataConfig(source="synthetic", val_size=100, subset=400),
    seed=0, device="cpu",
)
SEEDS = (0, 1, 2)
METRICS = ("train_loss", "train_error", "val_loss", "val_error", "test_loss", "test_error")


def seeded(base: RunConfig = BASE, seeds=SEEDS) -> list[RunConfig]:
    return [dataclasses.replace(base, seed=s) for s in seeds]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def assert_same_numbers(a, b, tolerance: float, later: tuple[float, float] | None = None) -> None:
    """Every epoch's metrics within ``tolerance``; with ``later`` (loss, error tolerances) the epochs
    after the first within those (by then float noise may flip an image or two)."""
    assert len(a.history) == len(b.history)
    for ha, hb in zip(a.history, b.history):
        for key in METRICS:
            allowed = tolerance if ha["epoch"] == 1 or later is None else later[key.endswith("error")]
            assert ha[key] == pytest.approx(hb[key], abs=allowed), (key, ha["epoch"])


def interrupt_group_at(monkeypatch, call: int) -> None:
    """Ctrl-C at the ``call``-th group step (20 steps an epoch: 23 is step 3 of epoch 2)."""
    real_group_step, calls = fused_fit.group_step, {"n": 0}

    def interrupted(trainer, indices):
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt
        return real_group_step(trainer, indices)

    monkeypatch.setattr(fused_fit, "group_step", interrupted)


@pytest.mark.parametrize("residual", [True, False], ids=["residual", "plain"])
def test_each_member_of_a_fused_group_matches_its_run_alone_step_for_step(tmp_path, monkeypatch, residual):
    runs = seeded(dataclasses.replace(BASE, model=dataclasses.replace(BASE.model, residual=residual)))
    alone_losses: dict[int, list[float]] = {}
    real_step = engine.train_step

    def spy(trainer, images, labels):
        loss, correct = real_step(trainer, images, labels)
        alone_losses.setdefault(trainer.run.seed, []).append(loss.item() / len(labels))
        return loss, correct

    monkeypatch.setattr(engine, "train_step", spy)
    alone = [engine.fit(run, results_dir=tmp_path / "alone") for run in runs]
    fused_losses = []
    real_group_step = fused_fit.group_step

    def group_spy(trainer, indices):
        loss, correct = real_group_step(trainer, indices)
        fused_losses.append((loss / len(indices[0])).tolist())
        return loss, correct

    monkeypatch.setattr(fused_fit, "group_step", group_spy)
    together = fused_fit.fit_group(runs, results_dir=tmp_path / "fused")
    for k, run in enumerate(runs):
        steps = [step[k] for step in fused_losses]
        # The first epoch's 20 steps to 1e-5, then float noise may grow (it does between thread counts too).
        assert steps[:20] == pytest.approx(alone_losses[run.seed][:20], abs=1e-5)
        assert steps == pytest.approx(alone_losses[run.seed], abs=1e-4)
        assert together[k].run_id == alone[k].run_id == run_id(run)  # fusion is how, not what
        assert together[k].status == "completed"
        assert_same_numbers(together[k], alone[k], 1e-4, later=(1e-3, 0.5))  # 0.5: two of 400 images
        assert together[k].provenance["fused_group"] == {"size": 3, "member": k, "run_ids": [run_id(r) for r in runs]}
        assert together[k].params == alone[k].params and together[k].macs == alone[k].macs


def test_each_member_of_a_fused_group_records_which_test_images_it_got_wrong(tmp_path):
    runs = seeded(dataclasses.replace(BASE, train=dataclasses.replace(BASE.train, epochs=1, test_eval="end")), (0, 1))
    records = fused_fit.fit_group(runs, results_dir=tmp_path)
    flags = []
    for record in records:
        assert record.status == "completed" and all("test_wrong" not in epoch for epoch in record.history)
        flags.append(unpack_wrong(record.final["test_wrong"], record.provenance["test_size"]))
        assert 100 * flags[-1].mean() == pytest.approx(record.final["test_error"], abs=1e-4)
    assert (flags[0] != flags[1]).any()  # each member's own flags, not one copy


def test_a_member_checkpoint_is_a_runs_checkpoint(tmp_path, monkeypatch):
    """Stopped after one epoch, each member's checkpoint loads strictly into build_model, and the run
    resumed ALONE from it (engine.fit) ends where the uninterrupted fused group ends."""
    runs = seeded()
    real_group_step = fused_fit.group_step
    interrupt_group_at(monkeypatch, 23)
    with pytest.raises(KeyboardInterrupt):
        fused_fit.fit_group(runs, results_dir=tmp_path / "a")
    for run in runs:
        assert find_record(tmp_path / "a", run_id(run)).status == "stopped"
        state = torch.load(checkpoint_path(tmp_path / "a", run_id(run)), weights_only=True)
        assert state["iteration"] == 20 and len(state["history"]) == 1
        build_model(run.model, num_classes=10).load_state_dict(state["model"], strict=True)
    monkeypatch.setattr(fused_fit, "group_step", real_group_step)
    resumed_alone = engine.fit(runs[1], results_dir=tmp_path / "a")
    uninterrupted = fused_fit.fit_group(runs, results_dir=tmp_path / "b")
    assert resumed_alone.status == "completed"
    assert_same_numbers(resumed_alone, uninterrupted[1], 1e-4, later=(1e-3, 0.5))


def test_a_group_killed_mid_epoch_resumes_to_the_records_of_an_uninterrupted_one(tmp_path, monkeypatch):
    runs = seeded()
    uninterrupted = fused_fit.fit_group(runs, results_dir=tmp_path / "whole")
    real_group_step = fused_fit.group_step
    interrupt_group_at(monkeypatch, 27)
    with pytest.raises(KeyboardInterrupt):
        fused_fit.fit_group(runs, results_dir=tmp_path / "cut")
    monkeypatch.setattr(fused_fit, "group_step", real_group_step)
    # One member's checkpoint lost as if the kill came while the members' checkpoints were written:
    # that member starts again on its own, the others resume, and every record still matches.
    checkpoint_path(tmp_path / "cut", run_id(runs[2])).unlink()
    resumed = fused_fit.fit_group(runs, results_dir=tmp_path / "cut")
    for a, b in zip(resumed, uninterrupted):
        assert a.status == b.status == "completed"
        assert_same_numbers(a, b, 1e-6)
    assert not any(checkpoint_path(tmp_path / "cut", run_id(r)).exists() for r in runs)  # final: checkpoints go


def test_a_diverging_member_is_recorded_diverged_while_its_siblings_complete(tmp_path, monkeypatch):
    runs = seeded()
    undisturbed = fused_fit.fit_group(runs, results_dir=tmp_path / "calm")
    real_losses, calls = fused_fit.member_losses, {"n": 0}

    def member_one_blows_up(logits, labels, smoothing):
        calls["n"] += 1
        losses = real_losses(logits, labels, smoothing)
        if calls["n"] >= 25:  # epoch 2: member 1's loss becomes infinite
            return losses + torch.tensor([0.0, float("inf"), 0.0])
        return losses

    monkeypatch.setattr(fused_fit, "member_losses", member_one_blows_up)
    records = fused_fit.fit_group(runs, results_dir=tmp_path / "wild")
    assert [r.status for r in records] == ["completed", "diverged", "completed"]
    assert "training loss became inf" in records[1].error and len(records[1].history) == 1
    for k in (0, 2):
        assert_same_numbers(records[k], undisturbed[k], 1e-6)
    assert fused_fit.fit_group(runs, results_dir=tmp_path / "wild")[1].status == "diverged"  # final: not retrained


def test_only_runs_that_differ_in_their_seed_fuse():
    with pytest.raises(ValueError, match="differ in more than their seed"):
        fused_fit.check_fusable([BASE, dataclasses.replace(BASE, seed=1, train=dataclasses.replace(BASE.train, lr=0.05))])
    with pytest.raises(ValueError, match="twice"):
        fused_fit.check_fusable([BASE, BASE])
    other = dataclasses.replace(BASE, model=dataclasses.replace(BASE.model, residual=False))
    jobs = runner.fusion_jobs([*seeded(), *seeded(other, (0, 1))], fuse=True, max_members=2)
    assert [[r.seed for r in job] for job in jobs] == [[0, 1], [2], [0, 1]]
    assert runner.fusion_jobs(seeded(), fuse=False) == [[r] for r in seeded()]


def test_fusing_is_on_for_gpus_by_default_and_a_bad_setting_is_one_line():
    assert runner.fuses("auto", ("cpu",)) is False
    assert runner.fuses("on", ("cpu",)) is True and runner.fuses("off", ("cuda:0",)) is False
    with pytest.raises(ValueError, match="fuse='maybe' is invalid: expected one of auto, on, off"):
        runner.fuses("maybe", ("cpu",))


def test_the_runner_trains_a_cells_seeds_as_one_group_with_the_same_run_ids(tmp_path):
    runs = seeded(dataclasses.replace(BASE, train=dataclasses.replace(BASE.train, epochs=1)), (0, 1))
    fused = runner.run_all(runs, tmp_path / "on", workers=1, progress=False, threads=1, fuse="on")
    alone = runner.run_all(runs, tmp_path / "off", workers=1, progress=False, threads=1, fuse="off")
    assert [o.run_id for o in fused] == [o.run_id for o in alone] == [run_id(r) for r in runs]
    assert all(o.status == "completed" for o in fused + alone)
    for run in runs:
        assert find_record(tmp_path / "on", run_id(run)).provenance["fused_group"]["size"] == 2
        assert "fused_group" not in find_record(tmp_path / "off", run_id(run)).provenance


ONE_CELL = """
name = "seeds"
model = "resnet20"
seeds = 2
[axes]
depth = [8]
"""
FAST = ["--data", "synthetic:200", "--val-size", "40", "--subset", "120", "--epochs", "1", "--device", "cpu", "--threads", "1"]


def test_the_grid_command_says_how_seeds_train_and_refuses_a_bad_fuse_value(tmp_path, capsys):
    from resnet_core.cli import run_cli
    from resnet_core.commands import grid as grid_command

    grid = tmp_path / "seeds.toml"
    grid.write_text(ONE_CELL)
    argv = ["--grid", str(grid), *FAST, "--results", str(tmp_path / "r")]
    assert run_cli(grid_command.main, [*argv, "--dry-run"]) == 0
    assert "fusion: off (--fuse auto: not on a GPU): each run trains alone" in capsys.readouterr().out
    assert run_cli(grid_command.main, [*argv, "--fuse", "on", "--quiet"]) == 0
    assert "fusion: on (--fuse on): the 2 seeds of a cell train as one model" in capsys.readouterr().out
    records = [find_record(tmp_path / "r", p.stem) for p in (tmp_path / "r" / "runs").glob("*.json")]
    assert sorted(r.provenance["fused_group"]["member"] for r in records) == [0, 1]
    assert run_cli(grid_command.main, [*argv, "--fuse", "maybe", "--dry-run"]) == 2
    assert capsys.readouterr().err.strip() == "error: fuse='maybe' is invalid: expected one of auto, on, off"


def test_a_member_without_a_finite_sampled_gradient_gets_nan_norms_not_a_crash(tmp_path, monkeypatch):
    """As a run alone (an fp16 run whose sampled steps the GradScaler all skipped): its epoch's grad
    norms are NaN, the run and its siblings complete."""
    real_norms = fused_fit.member_grad_norms

    def member_one_never_finite(stages):
        norms = real_norms(stages)
        return torch.where(torch.arange(len(norms)).unsqueeze(1) == 1, torch.full_like(norms, float("inf")), norms)

    monkeypatch.setattr(fused_fit, "member_grad_norms", member_one_never_finite)
    runs = seeded(dataclasses.replace(BASE, train=dataclasses.replace(BASE.train, epochs=1)), (0, 1))
    records = fused_fit.fit_group(runs, results_dir=tmp_path)
    assert [r.status for r in records] == ["completed", "completed"]
    norms = [list(r.history[0]["grad_norm"].values()) for r in records]
    assert all(n == n for n in norms[0]) and all(n != n for n in norms[1])  # NaN only for member 1


def test_a_group_gives_the_caller_back_its_random_state_and_cudnn_benchmark(tmp_path, monkeypatch):
    runs = seeded(dataclasses.replace(BASE, train=dataclasses.replace(BASE.train, epochs=1)), (0, 1))
    records = gives_back_process_state(monkeypatch, fused_fit, lambda: fused_fit.fit_group(runs, results_dir=tmp_path))
    assert [r.status for r in records] == ["completed", "completed"]
