"""Multi-fidelity studies by default and the final stage, on tiny synthetic data: successive halving
on the quick budget, validation measured only where the pruner reads it, the test set only by the
final stage, which re-trains the best config on the full training split and reports an interval."""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import threading
from pathlib import Path

import optuna
import pytest
import torch
from optuna.distributions import FloatDistribution
from scipy import stats
from statsmodels.stats.proportion import proportion_confint

from resnet_core.budgets import STUDY_BUDGETS
from resnet_core.cli import run_cli
from resnet_core.commands import study as run_driver
from resnet_core.schedules import make_budget
from resnet_core.study.common import FINAL_SEED_BASE
from resnet_core.study.final import FinalStage, final_config, final_interval, final_runs, train_final
from resnet_core.study.plan import plan
from resnet_core.study.pruners import bootstrap_for, describe_pruner, expected_work, make_pruner, prunable_epochs
from resnet_core.study.report import write_reports
from resnet_core.study.spec import base_run, budget, trial_config
from resnet_core.study.storage import open_storage
from resnet_core.study.pruners import simulated_work
from resnet_core.identity import run_id
from resnet_core.store import RunRecord, claim_run, find_record, load_runs, write_record
from study_helpers import side_by_side_fit, tiny_request

from test_study import _quiet_env, space  # noqa: F401  (fixtures: the tiny space, a per-session cache)
from test_study import _pruned_at
from test_study import tiny_args as study_args


def test_the_quick_and_standard_budgets_search_with_successive_halving_by_default(tmp_path, space):
    setup, _ = plan(tiny_request(tmp_path, space, pruner="auto", epochs=None))
    spec = setup.spec
    quick = STUDY_BUDGETS["quick"].search
    assert (spec.pruner, spec.first_rung, spec.reduction, spec.max_rungs) == ("sha", 1, 8, 1)
    assert spec.bootstrap == quick.hold_back == 0  # the budget's measured hold-back, whatever the study's size
    assert base_run("resnet20", STUDY_BUDGETS["quick"]).train.eval_batch_size == 128  # the budget's, CPU-sized
    assert plan(tiny_request(tmp_path, space, pruner="auto", epochs=None, trials=50))[0].spec.bootstrap == 0
    assert spec.budget_epochs == STUDY_BUDGETS["quick"].epochs == 10 and prunable_epochs(*spec.pruner_shape()) == [1]
    run = trial_config(spec, {"lr": 0.1})
    assert run.train.val_epochs == (1,) and run.train.test_eval == "never"  # rung 8 is never read: one rung
    assert STUDY_BUDGETS["standard"].search.pruner == "sha" and STUDY_BUDGETS["paper"].search.pruner == "median"
    explicit, _ = plan(tiny_request(tmp_path, space, pruner="median", epochs=None))
    assert explicit.spec.pruner == "median"  # --pruner still chooses


@pytest.mark.parametrize("name", ["quick", "standard"])
def test_the_default_geometry_leaves_at_least_four_complete_trials_of_fifty(name):
    # Trials of random quality (Optuna's own pruner on an in-memory study, ten seeds): every simulated
    # 50-trial study leaves at least 4 trials at the full length, not only on average.
    shape = STUDY_BUDGETS[name].search
    epochs = STUDY_BUDGETS[name].epochs
    work = simulated_work(50, shape.pruner, epochs, shape.first_rung, shape.reduction, shape.hold_back,
                             shape.max_rungs)
    assert work["min_complete"] >= 4 and work["complete"] >= 5
    assert work["epochs"] < 0.3 * 50 * epochs  # still mostly pruned


def test_max_rungs_stops_judging_after_the_first_rungs():
    assert prunable_epochs("sha", 30, 3, 3) == [3, 9, 27]
    assert prunable_epochs("sha", 30, 3, 3, 0, 2) == [3, 9] and prunable_epochs("sha", 10, 1, 8, 0, 1) == [1]
    assert "may prune at epoch 1 only" in describe_pruner("sha", 10, 1, 8, 0, 1)
    capped = simulated_work(50, "sha", 30, 3, 3, 0, 2)
    uncapped = simulated_work(50, "sha", 30, 3, 3, 0)
    assert capped["complete"] > uncapped["complete"]  # a rung fewer: more trials reach the full length
    with pytest.raises(ValueError, match="max_rungs 0"):
        make_pruner("sha", 10, 1, 8, 0, 0)


def test_the_quick_budgets_validation_size_is_a_ceiling_and_a_flag_replaces_it(tmp_path, space):
    quick = STUDY_BUDGETS["quick"].search
    sizes = dict(val_size=None, epochs=None)

    def validation(**changes) -> tuple[int, int]:
        setup, bundle = plan(tiny_request(tmp_path, space, **(sizes | changes)))
        return setup.spec.base.data.val_size, len(bundle.val_y)

    # 30,000 images: the default split would hold 3,000 out; the quick budget judges trials on 2,000
    assert validation(data="synthetic:30000") == (quick.val_size, quick.val_size) == (2000, 2000)
    assert validation(data="synthetic:3000") == (300, 300)  # data whose default split is smaller keep it
    assert validation(data="synthetic:30000", val_size=2500) == (2500, 2500)  # --val-size is kept as given
    settings = tiny_request(tmp_path, space).overrides + (("val_size", 2500),)
    assert validation(data="synthetic:30000", overrides=settings) == (2500, 2500)  # and so is --set val_size=
    assert base_run("resnet20", budget("standard")).data.val_size == 5000  # a budget without one: the default


def _judged_at(epochs: int, first_rung: int, reduction: int, bad_from: int) -> int | None:
    """test_study's constructed study (nine good trials, then one bad from ``bad_from``) under SHA."""
    return _pruned_at("sha", epochs, bad_from, first_rung, reduction)


def test_a_budgets_first_rung_is_where_successive_halving_first_judges():
    assert _judged_at(12, 1, 4, bad_from=1) == 1  # the short first rung most trials stop at
    assert _judged_at(12, 1, 4, bad_from=2) == 4  # promoted at 1, judged again only at the next rung
    assert _judged_at(12, 1, 4, bad_from=5) is None  # no rung after 4 before the last epoch
    assert prunable_epochs("sha", 12, 1, 4) == [1, 4] and prunable_epochs("hyperband", 30, 3, 3) == [3, 9, 27]
    text = describe_pruner("sha", 12, 1, 4)
    assert "no warm-up; may prune at epochs 1, 4 only" in text and "best 1/4" in text
    with pytest.raises(ValueError, match="reduction factor 1"):
        make_pruner("sha", 12, 1, 1)


def test_no_trial_goes_on_from_a_rung_before_reduction_trials_have_reached_it():
    # Each trial is the best so far at epoch 1: without a bootstrap Optuna promotes all of the first three.
    study = optuna.create_study(direction="minimize", pruner=make_pruner("sha", 12, 1, 4, bootstrap=4))
    stopped = []
    for index in range(6):
        trial = study.ask()
        trial.report(0.9 - 0.1 * index, 1)
        stopped.append(trial.should_prune())
        if stopped[-1]:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, 0.9 - 0.1 * index)
    assert stopped == [True, True, True, True, False, False]  # the 5th is the best 1/4 of 5, the 6th of 6
    assert "the first 4 trials at a rung stop there" in describe_pruner("sha", 12, 1, 4, 4)


def test_the_hold_back_grows_with_the_study_so_small_studies_still_complete_trials():
    # Rungs 1 and 4 (factor 4): the first trial completes after ~(4 + 1) x 4 = 20; held back from 40 trials.
    assert bootstrap_for(40, "sha", 12, 1, 4) == 4 and bootstrap_for(39, "sha", 12, 1, 4) == 0
    assert bootstrap_for(3, "sha", 4, 1, 4) == 0  # one rung: from 2 x 5 = 10 trials
    assert bootstrap_for(40, "sha", 30, 3, 3) == 0 and bootstrap_for(72, "sha", 30, 3, 3) == 3  # rungs 3, 9, 27
    assert bootstrap_for(500, "median", 12) == 0 and bootstrap_for(72, "hyperband", 30, 3, 3) == 3


def test_expected_work_comes_from_simulating_the_pruner():
    assert expected_work(5, "none", 3) == (15.0, 5.0)
    assert expected_work(20, "median", 2) == (40.0, 20.0)  # warm-up epoch 1, last never pruned: nothing
    epochs, passes = expected_work(50, "sha", 12, 1, 4)
    assert 50 < epochs < 0.4 * 50 * 12  # every trial trains its first rung; most stop there
    assert 50 <= passes < epochs  # validation at rungs and last epochs only


def tiny_args(results: Path, space: Path, *extra: str) -> list[str]:
    """test_study's tiny study, 4 epochs on a 100-image subset, with the budget's own pruner."""
    return study_args(results, space, "--epochs", "4", "--subset", "100", "--pruner", "auto", *extra)


def test_a_default_study_reads_validation_at_rungs_and_its_final_stage_measures_test(tmp_path, space, capsys):
    code = run_cli(run_driver.main, tiny_args(tmp_path, space, "--trials", "3", "--final-seeds", "2",
                                              "--final-epochs", "2"))
    out = capsys.readouterr().out
    assert code == 0, out
    assert "rungs at epoch 1 of 4" in out and "epochs expected for 3 trials" in out
    assert "final    2 seeds of the best config on the full training split" in out
    study = optuna.load_study(study_name="tiny", storage=open_storage(str(tmp_path / "studies" / "tiny.log"), 600))
    assert study.user_attrs["pruner"] == "sha" and study.user_attrs["pruner_first_rung"] == 1
    for trial in study.trials:  # validation at the rung (1) and the last epoch (4) only; never the test set
        record = find_record(tmp_path, trial.user_attrs["run_id"])
        assert record.config["data"]["subset"] == 100
        measured = [e["epoch"] for e in record.history if "val_error" in e]
        assert measured == [e for e in (1, 4) if e <= len(record.history)]
        assert all("test_error" not in e for e in record.history) and "test_error" not in record.final
    best = json.loads((tmp_path / "studies" / "tiny" / "best.json").read_text())
    final = best["final"]
    assert final["trial"] == study.best_trial.number and final["seeds"] == [FINAL_SEED_BASE, FINAL_SEED_BASE + 1]
    records = [find_record(tmp_path, rid) for rid in final["run_ids"]]
    for record in records:  # the full training split (200 images), 2 epochs, test measured once, at the end
        assert record.config["data"]["subset"] is None and record.provenance["train_size"] == 200
        assert [("test_error" in e) for e in record.history] == [False, True]
        assert record.config["train"]["lr"] == pytest.approx(study.best_trial.params["lr"])
    errors = [r.final["test_error"] for r in records]
    mean = sum(errors) / 2
    half = stats.t.ppf(0.975, 1) * statistics.stdev(errors) / math.sqrt(2)
    assert final["test_errors"] == pytest.approx(errors) and final["test_error_mean"] == pytest.approx(mean)
    assert final["test_error_ci95"] == pytest.approx([mean - half, mean + half])
    assert "--epochs 2" in final["command"] and "--subset" not in final["command"]
    report = (tmp_path / "studies" / "tiny" / "report.md").read_text()
    assert "## Final stage (test error)" in report and f"Test error {mean:.2f}%" in report
    assert "| split | train 100 / validation 100 /" in report  # the trials' split; the final runs say theirs
    assert len(load_runs(tmp_path)) == len(study.trials) + 4  # and the baseline's two seeds
    baseline = [find_record(tmp_path, rid) for rid in study.user_attrs["baseline_run_ids"]]
    assert [r.config["seed"] for r in baseline] == final["seeds"] and final["baseline"]["seeds"] == final["seeds"]
    paired = final["paired"]  # two seeds with per-image flags: both terms in the interval
    assert paired["kind"] == "seeds and test set" and paired["diff"] == pytest.approx(
        mean - final["baseline"]["test_error_mean"])
    # The command's last lines: best validation error, test errors with intervals, the difference, the report.
    last = out.strip().splitlines()[-5:]
    assert last[0].startswith(f"best     trial {study.best_trial.number}: validation error {study.best_value:.2f}%")
    assert last[1].startswith(f"test     tuned (trial {study.best_trial.number}) {mean:.2f}% (95% CI {mean - half:.2f} to")
    assert f"baseline {final['baseline']['test_error_mean']:.2f}% (95% CI" in last[1]
    assert last[2].startswith(f"paired   tuned - baseline {paired['diff']:.2f} points (95% CI {paired['ci95'][0]:.2f} to")
    assert last[3] == f"verdict  {final['verdict']}" and final["verdict"] in report
    assert last[4] == f"report   {tmp_path / 'studies' / 'tiny' / 'report.md'}"


def test_the_final_stage_keeps_a_full_trials_steps_on_the_full_split(tmp_path, space):
    setup, _ = plan(tiny_request(tmp_path, space, subset=100, epochs=3))
    trial = trial_config(setup.spec, {"lr": 0.05})
    run = final_config(setup.spec, {"lr": 0.05}, FinalStage(1))
    assert run.data.subset is None and run.train.epochs is None and run.train.test_eval == "end"
    assert run.train.iterations == make_budget(trial.train, 100).total_iterations == 3 * 2  # 100 images, batch 50
    assert run.train.val_epochs is None and run.train.lr == 0.05
    assert final_config(setup.spec, {"lr": 0.05}, FinalStage(1, epochs=5)).train.epochs == 5
    with pytest.raises(ValueError, match="--final-seeds -1"):
        FinalStage(-1)


def test_final_intervals():
    one = final_interval([40.0], 10000)  # one seed: the test set's sampling only
    low, high = proportion_confint(4000, 10000, alpha=0.05, method="wilson")
    assert one["ci95"] == pytest.approx([100 * low, 100 * high]) and "Wilson" in one["interval"]
    assert one["ci95"][0] < 40 < one["ci95"][1] and one["ci95"][1] - one["ci95"][0] < 2
    three = final_interval([40.0, 42.0, 44.0], 10000)
    assert three["ci95"] == pytest.approx([42 - stats.t.ppf(0.975, 2) * 2 / math.sqrt(3),
                                           42 + stats.t.ppf(0.975, 2) * 2 / math.sqrt(3)])
    assert final_interval([], 10000)["mean"] is None


def test_final_stage_flags_are_checked_before_any_work(tmp_path, space, capsys):
    for flag, value in (("--final-seeds", "-1"), ("--final-epochs", "0"), ("--final-top", "0")):
        assert run_cli(run_driver.main, tiny_args(tmp_path, space, "--trials", "1", flag, value)) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {flag} {value}") and err.count("\n") == 1
    assert not (tmp_path / "runs").exists()


def test_auto_goes_on_with_the_pruner_a_study_began_with(tmp_path, space, capsys):
    args = tiny_args(tmp_path, space, "--final-seeds", "0")
    assert run_cli(run_driver.main, args + ["--trials", "1", "--pruner", "median"]) == 0
    assert run_cli(run_driver.main, args + ["--trials", "2"]) == 0  # --pruner auto: not refused as a change
    assert "pruner median" in capsys.readouterr().out
    study = optuna.load_study(study_name="tiny", storage=open_storage(str(tmp_path / "studies" / "tiny.log"), 600))
    assert study.user_attrs["pruner"] == "median" and "search_history" not in study.user_attrs
    assert len(study.trials) == 2
    assert run_cli(run_driver.main, args + ["--trials", "3", "--pruner", "sha"]) == 2  # a named change is refused
    assert "--pruner median in the study, sha now" in capsys.readouterr().err


def test_the_handwritten_baseline_runs_on_a_small_imagefolder(tmp_path):
    from test_small_data import imagefolder_1500

    root = imagefolder_1500(tmp_path / "folder")
    out = tmp_path / "handwritten.json"
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(repo / "benchmarks" / "handwritten_study.py"), "--data", str(root),
                           "--trials", "2", "--epochs", "1", "--subset", "200", "--val-size", "100", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(repo)})
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["trials"] == 2 and 0 <= result["best_val_error"] <= 100 and result["wall_seconds"] > 0


def test_a_better_trial_after_the_final_stage_is_the_one_best_trial_and_the_report_says_what_was_trained(tmp_path,
                                                                                                        space):
    stage = ["--final-seeds", "1", "--final-epochs", "1"]
    assert run_driver.main(study_args(tmp_path, space, "--trials", "1", *stage)) == 0
    storage = open_storage(str(tmp_path / "studies" / "tiny.log"), 600)
    study = optuna.load_study(study_name="tiny", storage=storage)
    first = study.best_trial  # what a later --add 1 --final-seeds 0 leaves when it finds a better trial:
    study.add_trial(optuna.trial.create_trial(value=first.value - 1, params={"lr": 0.05, "momentum": 0.7},
                                              distributions=first.distributions))
    write_reports("tiny", str(tmp_path / "studies" / "tiny.log"), str(tmp_path), figures=False)
    report = (tmp_path / "studies" / "tiny" / "report.md").read_text()
    best = json.loads((tmp_path / "studies" / "tiny" / "best.json").read_text())
    assert "Trial 1: validation error" in report and "The best trial (trial 0)" not in report
    assert best["trial"] == 1 and best["final"]["trial"] == 0
    assert best["final"]["best_trial"] == 1 and best["final"]["outdated"] is True
    assert ("The final stage trained trial 0; the best trial is now 1, so the final test error is trial 0's: "
            "re-run without --final-seeds 0 to train trial 1.") in report

    assert run_driver.main(study_args(tmp_path, space, "--trials", "1", *stage)) == 0  # as the report says
    report = (tmp_path / "studies" / "tiny" / "report.md").read_text()
    best = json.loads((tmp_path / "studies" / "tiny" / "best.json").read_text())
    assert best["final"]["trial"] == 1 and best["final"]["outdated"] is False
    assert "The best trial (trial 1) re-trained" in report and "the best trial is now" not in report
    assert find_record(tmp_path, best["final"]["run_ids"][0]).config["train"]["lr"] == pytest.approx(0.05)


def one_trial_study() -> optuna.Study:
    """In memory: one COMPLETE trial to re-train."""
    study = optuna.create_study()
    study.add_trial(optuna.trial.create_trial(value=10.0, params={"lr": 0.1, "momentum": 0.9}, distributions={
        "lr": FloatDistribution(0.01, 0.2, log=True), "momentum": FloatDistribution(0.5, 0.9)}))
    return study


def test_a_second_driver_waits_for_the_final_run_the_first_is_training_and_reads_its_record(tmp_path, space):
    setup, _ = plan(tiny_request(tmp_path, space, epochs=1))
    study = one_trial_study()
    stage = FinalStage(1, epochs=1)
    (run,) = final_runs(setup.spec, study, stage)
    trained, answer = [], {}

    def counting_fit(config, **kwargs):  # the second driver's fit: it must not be asked to train the run
        trained.append(run_id(config))  # (only the baseline's run, which nobody else is training)
        return RunRecord(run_id(config), "completed", {}, final={"test_error": 50.0})

    second = threading.Thread(target=lambda: answer.update(records=train_final(
        setup.spec, study, stage, "cpu", progress=False, fit=counting_fit)))
    with claim_run(tmp_path, run_id(run)) as claimed:  # the first driver is training the final run
        assert claimed
        second.start()
        second.join(timeout=1)
        assert second.is_alive() and run_id(run) not in trained  # waiting, not training the same run at once
        write_record(tmp_path, RunRecord(run_id(run), "completed", {}, final={"test_error": 9.0}))
    second.join(timeout=60)
    assert not second.is_alive() and run_id(run) not in trained
    assert [r.final["test_error"] for r in answer["records"]] == [9.0]  # the first driver's record
    assert study.user_attrs["final_run_ids"] == [run_id(run)]


def test_the_final_stage_trains_with_the_threads_of_the_study_workers(tmp_path, space, capsys):
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the driver's own count, which the final runs must not take
    try:
        code = run_cli(run_driver.main, tiny_args(tmp_path, space, "--trials", "1", "--final-seeds", "1",
                                                  "--final-epochs", "1", "--threads", "1"))
    finally:
        torch.set_num_threads(threads)
    assert code == 0, capsys.readouterr().err
    study = optuna.load_study(study_name="tiny", storage=open_storage(str(tmp_path / "studies" / "tiny.log"), 600))
    (final,) = study.user_attrs["final_run_ids"]
    trial = study.trials[0].user_attrs["run_id"]
    assert find_record(tmp_path, trial).provenance["threads"] == 1
    assert find_record(tmp_path, final).provenance["threads"] == 1  # the workers' setting, as the trials had


def test_the_final_seeds_train_side_by_side_in_worker_processes(tmp_path, space):
    setup, _ = plan(tiny_request(tmp_path, space, epochs=1))
    study = one_trial_study()
    records = train_final(setup.spec, study, FinalStage(2, epochs=1), ["cpu", "cpu"], threads=1, progress=False,
                             fit=side_by_side_fit)  # returns only once two processes were in it at the same time
    pids = {record.provenance["pid"] for record in records}
    assert len(pids) == 2 and os.getpid() not in pids
    assert [record.provenance["threads"] for record in records] == [1, 1]
    assert [record.config["seed"] for record in records] == [FINAL_SEED_BASE, FINAL_SEED_BASE + 1]
    assert study.user_attrs["final_run_ids"] == [record.run_id for record in records]


def test_the_final_seeds_train_as_one_fused_group_under_fuse_on(tmp_path, space, capsys):
    code = run_cli(run_driver.main, tiny_args(tmp_path, space, "--trials", "1", "--final-seeds", "2",
                                              "--final-epochs", "1", "--threads", "1", "--fuse", "on"))
    assert code == 0, capsys.readouterr().err
    study = optuna.load_study(study_name="tiny", storage=open_storage(str(tmp_path / "studies" / "tiny.log"), 600))
    finals = [find_record(tmp_path, rid) for rid in study.user_attrs["final_run_ids"]]
    assert [r.status for r in finals] == ["completed", "completed"]
    assert [r.provenance["fused_group"]["member"] for r in finals] == [0, 1]
    assert finals[0].provenance["fused_group"]["run_ids"] == [r.run_id for r in finals]
    assert run_cli(run_driver.main, tiny_args(tmp_path, space, "--trials", "1", "--fuse", "maybe")) == 2
    assert "fuse='maybe' is invalid" in capsys.readouterr().err
