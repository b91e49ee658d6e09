"""Studies end to end on tiny synthetic data: targets, re-runs, pruning, failures, a killed worker,
parallel workers on the default journal store, --compare, reports and bad spaces."""

from __future__ import annotations

import datetime
import json
import math
import re
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from resnet_core.cli import run_cli
from resnet_core.config import apply_overrides
from resnet_core.identity import run_id
from resnet_core.store import RunRecord, checkpoint_path, find_record, load_runs
from resnet_core.study.common import FINISHED, TrialFailed
from resnet_core.study.final import FinalStage, final_runs
from resnet_core.study.objective import Objective
from resnet_core.study import estimate as study_estimate
from resnet_core.study.estimate import concurrency_from_bench, estimate, plan_lines
from resnet_core.study.plan import plan
from resnet_core.study.pruners import PRUNERS, RUNG_PRUNERS, describe_pruner, make_pruner, prunable_epochs
from resnet_core.study.recovery import stale_reason, unmarked_reason
from resnet_core.study.report import write_reports
from resnet_core.study.search import SAMPLERS, create_study, make_sampler
from resnet_core.study.space import read_space, validate_space
from resnet_core.study.spec import StudySpec, base_run, budget, spec_from_study, trial_config
from resnet_core.study.storage import default_storage, open_storage
from resnet_core.study.workers import WorkerJob, resumed_seed, run_study, run_worker
from study_helpers import fake_error, fake_fit, tiny_request

REPO = Path(__file__).resolve().parents[1]
from resnet_core.commands import study as run_driver  # resnet-study (studies/run.py in a checkout)
from resnet_core.commands import study_report as report_driver  # resnet-study-report

TINY_SPACE = """
description = "tiny test space"
[params.lr]
type = "float"
low = 0.01
high = 0.2
log = true
[params.momentum]
type = "float"
low = 0.5
high = 0.9
"""


@pytest.fixture(autouse=True)
def _quiet_env(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("RESNET_CORE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture()
def space(tmp_path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_SPACE)
    return path


def tiny_args(results: Path, space: Path, *extra: str) -> list[str]:
    """A 2-epoch depth-8 study on 200 synthetic images, one CPU thread budget, no figures."""
    return ["--space", str(space), "--data", "synthetic:300", "--subset", "200", "--val-size", "100", "--epochs", "2",
            "--set", "depth=8", "--set", "widths=4,8,16", "--set", "batch_size=50", "--set", "eval_batch_size=500", "--device", "cpu",
            "--results", str(results), "--study-name", "tiny", "--quiet", "--no-figures", "--sampler", "random",
            "--threads", "1", "--pruner", "median", "--final-seeds", "0", "--set", "cycle_momentum=false",
            *extra]  # one thread: two on a busy 2-core machine stall. Median at 2 epochs prunes nothing.
    # (cycle_momentum off: the tiny space searches the momentum, which the quick budget's cycle would set)


def load(results: Path, name: str = "tiny", group: str = "tiny") -> optuna.Study:
    """A study of the journal file ``<results>/studies/<group>.log`` (a --compare group shares one)."""
    return optuna.load_study(study_name=name, storage=open_storage(default_storage(results, group)))


def states(study: optuna.Study) -> list[str]:
    return [t.state.name for t in study.trials]


# ---------------------------------------------------------------------------- spaces


def test_builtin_spaces_parse_and_validate():
    base = base_run("resnet20", budget("quick"))
    recipe = read_space("recipe")
    assert {p.dotted for p in recipe.params} == {"train.lr", "train.weight_decay", "train.momentum", "train.batch_size",
                                                 "train.label_smoothing", "train.warmup_fraction"}
    assert recipe.param("lr").log and recipe.param("batch_size").values() == (64, 128, 256)
    arch = read_space("architecture")
    assert {"model.depth", "model.residual", "model.shortcut", "model.norm", "model.preact",
            "model.width_multiplier"} <= {p.dotted for p in arch.params}
    assert validate_space(arch, base) == base
    assert arch.without("residual").param("residual") is None and arch.param("model.residual").values() == (True, False)



def test_the_recipe_space_sets_warm_up_and_momentum_aside_under_the_quick_budgets_one_cycle_only():
    recipe = read_space("recipe")
    quick_base = base_run("resnet20", budget("quick"))
    assert quick_base.train.schedule == "onecycle" and quick_base.train.cycle_momentum
    quick = recipe.applicable_to(quick_base)  # one-cycle ramps up by itself and cycles the momentum
    assert [p.name for p in quick.params] == ["lr", "weight_decay", "batch_size", "label_smoothing"]
    assert [name for name, _ in quick.inactive] == ["momentum", "warmup_fraction"]
    assert "not searched: momentum (searched only when cycle_momentum is one of [False]" in quick.describe()
    assert "here schedule = 'onecycle', so warmup_fraction stays 0.0" in quick.describe()
    assert "here cycle_momentum = True, so momentum is not used (cycle_momentum = true (the quick budget's) sets " \
           "the momentum from the lr)" in quick.describe()
    standard = recipe.applicable_to(base_run("resnet20", budget("standard")))  # the paper's step schedule
    assert standard.params == recipe.params and standard.inactive == ()
    assert not base_run("resnet20", budget("standard")).train.cycle_momentum


def test_a_when_value_is_checked_on_its_own_not_against_the_studys_other_settings(tmp_path):
    base = base_run("resnet20", budget("quick"))  # cycle_momentum: optimizer = "adam" alone is invalid here
    good = tmp_path / "good.toml"
    good.write_text('[params.lr]\ntype = "float"\nlow = 0.1\nhigh = 0.2\nwhen = { optimizer = ["sgd", "adam"] }\n')
    validate_space(read_space(str(good)), base)
    bad = tmp_path / "bad.toml"
    bad.write_text('[params.lr]\ntype = "float"\nlow = 0.1\nhigh = 0.2\nwhen = { cycle_momentum = ["maybe"] }\n')
    with pytest.raises(ValueError, match="when: cycle_momentum='maybe' is invalid: expected true or false"):
        validate_space(read_space(str(bad)), base)


def test_a_momentum_the_quick_budgets_cycle_would_override_is_refused(tmp_path):
    base = base_run("resnet20", budget("quick"))
    path = tmp_path / "momentum.toml"
    for text, where in ((TINY_SPACE, "params.momentum"), ('[params.lr]\ntype = "float"\nlow = 0.1\nhigh = 0.2\n'
                                                          '[fixed]\nmomentum = 0.5\n', "[fixed] momentum")):
        path.write_text(text)
        with pytest.raises(ValueError, match=rf"{re.escape(where)} would not be used: cycle_momentum = true"):
            validate_space(read_space(str(path)), base)
    off = apply_overrides(base, {"cycle_momentum": False})
    path.write_text(TINY_SPACE)
    assert validate_space(read_space(str(path)), off) == off


TINY_WARMUP_SPACE = TINY_SPACE + """
[params.warmup_fraction]
type = "float"
low = 0.0
high = 0.2
when = { schedule = ["step", "cosine"] }
"""


def test_a_parameter_outside_its_when_is_not_searched_and_the_plan_and_report_say_so(tmp_path, capsys):
    path = tmp_path / "warm.toml"
    path.write_text(TINY_WARMUP_SPACE)
    args = [a for a in tiny_args(tmp_path, path, "--trials", "2") if a != "--quiet"]
    assert run_driver.main(args) == 0  # the quick budget's one-cycle schedule
    out = capsys.readouterr().out
    assert "not searched: warmup_fraction (searched only when schedule is one of ['step', 'cosine']" in out
    assert all(set(t.params) == {"lr", "momentum"} for t in load(tmp_path).trials)
    assert all(find_record(tmp_path, t.user_attrs["run_id"]).config["train"]["warmup_fraction"] == 0.0
               for t in load(tmp_path).trials)
    out_dir = tmp_path / "rebuilt"  # the report rebuilt from the study alone still names it
    assert report_driver.main(["--study-name", "tiny", "--results", str(tmp_path), "--out", str(out_dir),
                               "--no-figures"]) == 0
    assert "not searched: warmup_fraction" in (out_dir / "report.md").read_text()

    assert run_driver.main(tiny_args(tmp_path, path, "--trials", "2", "--set", "schedule=cosine",
                                     "--study-name", "cosine")) == 0
    cosine = load(tmp_path, "cosine", "cosine")
    assert all(set(t.params) == {"lr", "momentum", "warmup_fraction"} for t in cosine.trials)


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry run", "run"])
def test_a_set_of_a_field_the_space_searches_or_fixes_is_refused_not_ignored(tmp_path, space, capsys, dry_run):
    fixing = tmp_path / "fixing.toml"
    fixing.write_text(TINY_SPACE.replace("[params.momentum]", "[fixed]\nweight_decay = 0.001\n[params.momentum]"))
    cases = {"lr=0.05": (space, "--set lr=0.05: the space tiny searches lr (lr float [0.01, 0.2] log)"),
             "train.lr=0.05": (space, "--set train.lr=0.05: the space tiny searches lr"),
             "weight_decay=0.01": (fixing, "--set weight_decay=0.01: the space fixing fixes weight_decay = 0.001")}
    for setting, (path, message) in cases.items():
        args = tiny_args(tmp_path / "res", path, "--trials", "1", "--set", setting, *(["--dry-run"] * dry_run))
        assert run_cli(run_driver.main, args) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {message}") and err.count("\n") == 1, err
        assert "drop the --set" in err
    assert not (tmp_path / "res" / "runs").exists() and not (tmp_path / "res" / "studies").exists()


@pytest.mark.parametrize("total", [1, 7, 125, 390, 64000])
def test_the_recipe_space_warms_up_over_a_fraction_of_any_run_length(total):
    from resnet_core.config import TrainConfig
    from resnet_core.schedules import lr_at, warmup_length

    param = read_space("recipe").param("warmup_fraction")
    assert read_space("recipe").param("warmup_iterations") is None  # an absolute count outlasted short runs
    for fraction in (param.low, 0.05, 0.1, param.high):
        cfg = TrainConfig(schedule="constant", lr=0.1, warmup_fraction=fraction)
        ramp = warmup_length(cfg, total)
        assert ramp <= total and (ramp == 0 if fraction == 0 else ramp == max(1, round(fraction * total)))
        if ramp:  # ramps up to the schedule's lr at the end of the warm-up, never beyond the run
            assert lr_at(ramp - 1, total, cfg) == pytest.approx(0.1)
            assert lr_at(0, total, cfg) == pytest.approx(0.1 / ramp)
    assert warmup_length(TrainConfig(warmup_fraction=param.high), 125) == 25  # the quick budget's 125 iterations

BAD_SPACES = {
    "unknown field": ('[params.learning_rate]\ntype = "float"\nlow = 0.1\nhigh = 0.2', "unknown config field 'learning_rate'"),
    "unknown type": ('[params.lr]\ntype = "gaussian"\nlow = 0.1\nhigh = 0.2', "unknown distribution type 'gaussian'"),
    "low >= high": ('[params.lr]\ntype = "float"\nlow = 0.2\nhigh = 0.2', "low=0.2 must be < high=0.2"),
    "log low <= 0": ('[params.weight_decay]\ntype = "float"\nlow = 0.0\nhigh = 0.1\nlog = true', "log=true needs low > 0"),
    "empty choices": ('[params.batch_size]\ntype = "categorical"\nchoices = []', "non-empty list of choices"),
    "config rejects": ('[params.shortcut]\ntype = "categorical"\nchoices = ["A", "Z"]', "shortcut='Z' is invalid"),
    "float on int field": ('[params.batch_size]\ntype = "float"\nlow = 32.0\nhigh = 64.0', "integer field"),
    "unknown key": ('[params.lr]\ntype = "float"\nlow = 0.1\nhigh = 0.2\nlogg = true', "unknown key(s) ['logg']"),
    "seed not tunable": ('[params.seed]\ntype = "int"\nlow = 0\nhigh = 3', "cannot be searched"),
    "bad toml": ("[params.lr\n", "invalid TOML"),
    "when not a table": ('[params.lr]\ntype = "float"\nlow = 0.1\nhigh = 0.2\nwhen = "step"', "when must be a table"),
    "when unknown field": ('[params.lr]\ntype = "float"\nlow = 0.1\nhigh = 0.2\nwhen = { schedul = ["step"] }',
                           "when: unknown config field 'schedul'"),
    "when misspelt value": ('[params.lr]\ntype = "float"\nlow = 0.1\nhigh = 0.2\nwhen = { schedule = ["stepp"] }',
                            "when: schedule='stepp' is invalid"),
    "nothing applies": ('[params.lr]\ntype = "float"\nlow = 0.1\nhigh = 0.2\nwhen = { schedule = ["step"] }',
                        "no parameter applies to this study"),
}


@pytest.mark.parametrize("case", sorted(BAD_SPACES))
def test_bad_space_fails_before_any_trial_with_exit_2(case, tmp_path, capsys):
    text, message = BAD_SPACES[case]
    path = tmp_path / "bad.toml"
    path.write_text(text)
    code = run_cli(run_driver.main, tiny_args(tmp_path / "res", path, "--trials", "1"))
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: space ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "res" / "runs").exists()  # nothing trained


def test_unknown_names_are_one_line_errors(tmp_path, space, capsys):
    for flag, value, message in (("--sampler", "annealing", "unknown sampler 'annealing'"),
                                 ("--pruner", "patient", "unknown pruner 'patient'"),
                                 ("--space", "nosuchspace", "unknown space 'nosuchspace'")):
        args = tiny_args(tmp_path, space, "--trials", "1", flag, value)
        assert run_cli(run_driver.main, args) == 2
        assert message in capsys.readouterr().err


# ---------------------------------------------------------------------------- studies


def test_three_trial_study_then_reruns_run_only_the_difference(tmp_path, space, capsys):
    args = tiny_args(tmp_path, space, "--pruner", "median")
    assert run_driver.main(args + ["--trials", "3"]) == 0
    study = load(tmp_path)
    assert states(study) == ["COMPLETE"] * 3
    runs = load_runs(tmp_path).set_index("run_id")
    for trial in study.trials:  # the objective is the final epoch's validation error of the linked run
        record = runs.loc[trial.user_attrs["run_id"]]
        assert trial.value == pytest.approx(record["final.val_error"])
        stored = find_record(tmp_path, trial.user_attrs["run_id"])  # a trial never measures the test set
        assert stored.config["train"]["test_eval"] == "never" and "test_error" not in stored.final
        assert all("test_error" not in epoch and "test_loss" not in epoch for epoch in stored.history)
        # median at 2 epochs judges no epoch, so a trial measures validation only after its last
        assert sorted(trial.intermediate_values) == [2] and record["seed"] == 0
        assert [e["epoch"] for e in stored.history if "val_error" in e] == [2]
    assert run_driver.main(args + ["--trials", "3"]) == 0
    assert len(load(tmp_path).trials) == 3  # the target is met: nothing new runs
    assert run_driver.main(args + ["--trials", "5"]) == 0
    assert states(load(tmp_path)) == ["COMPLETE"] * 5
    assert run_driver.main(args + ["--add", "1"]) == 0
    assert len(load(tmp_path).trials) == 6
    # re-runs draw new points: a replayed sampler seed would repeat the first trials' params
    assert len({t.params["lr"] for t in load(tmp_path).trials}) == 6
    out = capsys.readouterr().out
    assert "target 3 finished (COMPLETE + PRUNED): 0 done, 3 to run" in out and "s per full trial" in out

    table = pd.read_csv(tmp_path / "studies" / "tiny" / "trials.csv")
    frozen = load(tmp_path).trials
    assert list(table["number"]) == [t.number for t in frozen]
    assert list(table["state"]) == [t.state.name for t in frozen]
    assert table["value"].tolist() == pytest.approx([t.value for t in frozen])
    assert table["user_attrs_run_id"].tolist() == [t.user_attrs["run_id"] for t in frozen]
    best = json.loads((tmp_path / "studies" / "tiny" / "best.json").read_text())
    assert best["value"] == pytest.approx(min(t.value for t in frozen)) and "resnet_core.train" in best["command"]


def test_pruned_trials_stop_early_and_are_counted(tmp_path, space, monkeypatch):
    class Always(optuna.pruners.BasePruner):
        def prune(self, study, trial):
            return True

    monkeypatch.setitem(PRUNERS, "always", lambda epochs, first_rung, reduction, bootstrap: Always())
    args = tiny_args(tmp_path, space, "--pruner", "always", "--epochs", "3", "--trials", "2")
    assert run_driver.main(args) == 0
    study = load(tmp_path)
    assert states(study) == ["PRUNED", "PRUNED"]  # pruned trials count towards --trials
    for trial in study.trials:
        record = find_record(tmp_path, trial.user_attrs["run_id"])
        assert record.status == "stopped" and len(record.history) == 1  # epoch 1 of 3, no more
        assert not checkpoint_path(tmp_path, record.run_id).exists()  # a pruned run is not resumed
    report = (tmp_path / "studies" / "tiny" / "report.md").read_text()
    assert "2 trials pruned, 4 of 6 epochs not trained" in report


def test_failed_and_diverged_trials_do_not_stop_the_study(tmp_path, space):
    from resnet_core.engine import fit

    calls = []

    def flaky_fit(run, callbacks=(), results_dir="results", data=None, progress=False):
        calls.append(run)
        if len(calls) == 1:
            return RunRecord(run_id="x", status="diverged", config={}, error="training loss became nan at iteration 3")
        if len(calls) in (2, 3):  # out of memory again when retried: the trial fails
            return RunRecord(run_id="y", status="failed", config={}, error="OutOfMemoryError: CUDA out of memory")
        return fit(run, callbacks, results_dir, data, progress)

    setup, data = plan(tiny_request(tmp_path, space))
    counts = run_study(setup.spec, 3, ["cpu"], data=data, progress=False, threads=1, fit=flaky_fit)
    assert counts["finished"] == 3 and counts["failed"] == 1  # a diverged trial is a finished (pruned) one
    write_reports("tiny", setup.spec.storage, str(tmp_path), figures=False)
    study = load(tmp_path)
    assert states(study) == ["PRUNED", "FAIL", "COMPLETE", "COMPLETE"]
    assert "training loss became nan" in study.trials[0].user_attrs["diverged_reason"]
    assert "out of memory twice" in study.trials[1].user_attrs["fail_reason"]
    assert "CUDA out of memory" in study.trials[1].user_attrs["fail_reason"] and len(calls) == 5
    report = (tmp_path / "studies" / "tiny" / "report.md").read_text()
    assert "CUDA out of memory" in report and "PRUNED 1 (1 diverged)" in report
    assert "## Diverged trials by region" in report


def diverging_fit(status: str, above: float):
    """A fit that trains nothing: a run with lr above ``above`` measures epoch 1 and then ends
    ``status`` (diverged, or failed as a diverged trial used to end); the others complete 2 epochs
    with an error that falls as the lr rises, so the best runs sit at the edge of the region."""
    def fit(run, callbacks=(), results_dir="results", data=None, progress=False):
        first = {"epoch": 1, "val_error": 50.0}
        for callback in callbacks:
            callback(first)
        if run.train.lr > above:
            return RunRecord(run_id(run), status, {}, [first], error="training loss became nan at iteration 7")
        last = {"epoch": 2, "val_error": 10 + 20 * math.log10(0.2 / run.train.lr)}
        for callback in callbacks:
            callback(last)
        return RunRecord(run_id(run), "completed", {}, [first, last], final={"val_error": last["val_error"]})

    return fit


def _optimize(setup, data, sampler, fit, n_trials: int) -> optuna.Study:
    study = optuna.create_study(sampler=sampler, pruner=optuna.pruners.NopPruner())
    study.optimize(Objective(setup.spec, "cpu", data, fit=fit), n_trials=n_trials, catch=(TrialFailed,))
    return study


def test_a_diverged_trial_ends_pruned_at_chance_error_with_a_violated_constraint(tmp_path, space, capsys):
    setup, data = plan(tiny_request(tmp_path, space))
    study = _optimize(setup, data, optuna.samplers.RandomSampler(seed=0), diverging_fit("diverged", 0.0), 1)
    trial = study.trials[0]
    assert trial.state == TrialState.PRUNED and trial.intermediate_values == {1: 50.0, 2: 90.0}
    assert trial.value == 90.0  # chance error on 10 classes, at epoch 2, the one it diverged in
    assert trial.user_attrs["diverged"] is True and trial.user_attrs["diverged_epoch"] == 2
    assert "nan at iteration 7" in trial.user_attrs["diverged_reason"] and "fail_reason" not in trial.user_attrs
    assert trial.constraints == {"diverged": 1.0}  # infeasible: TPE ranks it below every feasible trial
    assert "trial 0 diverged in epoch 2" in capsys.readouterr().err
    with pytest.raises(ValueError):  # never the best trial, so never the final stage's
        study.best_trial
    assert final_runs(setup.spec, study, FinalStage(seeds=1)) == []
    # TPE's split (Optuna 5.1) after 1 COMPLETE trial and 5 pruned at epoch 1: its best 3 ("below") take the
    # complete one, then pruned ones by deepest step first. Its chance error at epoch 2 would rank the
    # diverged trial first among the pruned; its constraint puts it after all of them.
    from optuna.samplers._tpe.sampler import _split_trials

    params, dists = trial.params, trial.distributions
    study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=30.0))
    for value in range(40, 45):
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, state=TrialState.PRUNED,
                                                  intermediate_values={1: float(value)}))
    below, above = _split_trials(study, study.get_trials(deepcopy=False), 3)
    assert [t.number for t in below] == [1, 2, 3] and 0 in [t.number for t in above]


def test_tpe_proposes_a_region_that_diverges_less_than_when_its_trials_failed(tmp_path, space):
    setup, data = plan(tiny_request(tmp_path, space))
    proposed = {}
    for status in ("diverged", "failed"):
        study = _optimize(setup, data, make_sampler("tpe", 0), diverging_fit(status, 0.06), 40)
        after_startup = [t for t in study.trials if t.number >= 10]
        proposed[status] = sum(t.params["lr"] > 0.06 for t in after_startup)
    # Of the 30 trials after TPE's 10 random ones: FAIL left TPE in the region (its best trials sit at
    # its edge, and it never saw a trial fail there); told, it spends at most half of them there.
    assert proposed["failed"] >= 24 and proposed["diverged"] <= 15, proposed


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_every_sampler_goes_on_past_diverged_trials(tmp_path, space, sampler):
    try:
        made = make_sampler(sampler, 0)
    except ValueError as exc:  # an optional dependency (cmaes) is not installed
        pytest.skip(str(exc))
    setup, data = plan(tiny_request(tmp_path, space))
    study = _optimize(setup, data, made, diverging_fit("diverged", 0.06), 12)  # past every startup phase
    assert {t.state for t in study.trials} <= {TrialState.COMPLETE, TrialState.PRUNED} and len(study.trials) == 12


# The study tiny_args asks for, run with a fit that hangs after epoch 1 (tests/study_helpers.py).
HANGING_WORKER = """
from pathlib import Path
from resnet_core.study.plan import plan
from resnet_core.study.workers import run_study
from study_helpers import hanging_fit, tiny_request
setup, data = plan(tiny_request(Path({results!r}), Path({space!r}), pruner="sha"))  # reads epoch 1
run_study(setup.spec, 2, ["cpu"], data=data, progress=False, threads=1, fit=hanging_fit)
"""


def test_worker_killed_with_sigkill_is_recovered_and_the_study_completes(tmp_path, space):
    args = tiny_args(tmp_path, space, "--trials", "2", "--pruner", "sha")
    script = HANGING_WORKER.format(results=str(tmp_path), space=str(space))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 90
        while time.time() < deadline:  # wait until the trial has reported epoch 1 (and checkpointed it)
            time.sleep(0.5)
            storage = tmp_path / "studies" / "tiny.log"
            if storage.exists() and "tiny" in optuna.get_all_study_names(open_storage(str(storage))):
                running = load(tmp_path).get_trials(states=(TrialState.RUNNING,))
                if running and running[0].intermediate_values:
                    break
        else:
            pytest.fail(f"the worker never reported an epoch: {proc.stderr.read1().decode()[-2000:]}")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    killed = load(tmp_path).trials[0]
    assert killed.state == TrialState.RUNNING  # SIGKILL left it running

    assert run_driver.main(args) == 0
    study = load(tmp_path)
    assert not study.get_trials(states=(TrialState.RUNNING,))
    assert len(study.get_trials(states=FINISHED)) == 2
    first = study.trials[0]
    assert first.state == TrialState.FAIL and "died" in first.user_attrs["fail_reason"]
    retry = study.trials[1]
    assert retry.params == killed.params and retry.user_attrs["retry_of"] == 0
    assert sorted(retry.intermediate_values) == [2]  # resumed from the killed run's epoch-1 checkpoint
    assert len(find_record(tmp_path, retry.user_attrs["run_id"]).history) == 2


def test_two_workers_share_the_default_store(tmp_path, space, capfd):
    args = tiny_args(tmp_path, space, "--trials", "4", "--workers", "2")
    assert run_driver.main(args) == 0
    study = load(tmp_path)
    finished = study.get_trials(states=FINISHED)
    assert 4 <= len(finished) <= 5  # two workers may each start the last trial
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.FAIL))
    assert len({t.user_attrs["pid"] for t in study.trials}) == 2  # two processes, not threads
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == len(study.trials)  # seeds differ per worker
    captured = capfd.readouterr()
    assert "database is locked" not in captured.out + captured.err


def test_rdb_url_storage_works_unchanged(tmp_path, space):
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    assert run_driver.main(tiny_args(tmp_path, space, "--trials", "1", "--storage", url)) == 0
    study = optuna.load_study(study_name="tiny", storage=url)
    assert states(study) == ["COMPLETE"] and (tmp_path / "studies" / "tiny" / "report.md").exists()


def test_compare_tunes_each_value_and_compares_final_seeds(tmp_path, space):
    arch = tmp_path / "arch.toml"
    arch.write_text(TINY_SPACE + '[params.residual]\ntype = "categorical"\nchoices = [true, false]\n')
    args = tiny_args(tmp_path, arch, "--trials", "2", "--compare", "residual", "--final-seeds", "2")
    args[args.index("--no-figures")] = "--quiet"  # draw the isolation plot here
    assert run_driver.main(args) == 0
    out = tmp_path / "studies" / "tiny"
    comparison = pd.read_csv(out / "comparison.csv")
    assert comparison["residual"].tolist() == [True, False] and comparison["seeds"].tolist() == [2, 2]
    runs = load_runs(tmp_path)
    for value in (True, False):
        sub = load(tmp_path, f"tiny.residual={str(value).lower()}")
        assert len(sub.trials) == 2 and all("residual" not in t.params for t in sub.trials)
        configs = runs.loc[runs["run_id"].isin([t.user_attrs["run_id"] for t in sub.trials])]
        assert (configs["model.residual"] == value).all()  # the scientific field is fixed per sub-study
        finals = runs.loc[runs["run_id"].isin(sub.user_attrs["final_run_ids"])]
        assert sorted(finals["seed"]) == [1000, 1001] and (finals["model.residual"] == value).all()
        mean = finals["final.test_error"].mean()
        assert comparison.loc[comparison["residual"] == value, "test_error_mean"].item() == pytest.approx(mean)
        # Each value's paired baseline: the recipe with the compared field at that value, the same seeds.
        baseline = runs.loc[runs["run_id"].isin(sub.user_attrs["baseline_run_ids"])]
        assert sorted(baseline["seed"]) == [1000, 1001] and (baseline["model.residual"] == value).all()
        assert (baseline["train.lr"] == trial_config(spec_of(tmp_path, sub), {}).train.lr).all()
    report = (out / "report.md").read_text()
    assert "TEST error" in report and (out / "isolation.png").exists()
    assert "## Tuned against untuned per value (TEST error, %, paired by seed)" in report
    values = json.loads((out / "best.json").read_text())["values"]
    assert [v["final"]["paired"]["pairs"] for v in values] == [2, 2]


def spec_of(results: Path, study: optuna.Study) -> StudySpec:
    return spec_from_study(study, str(results / "studies" / "tiny.log"), str(results))


def test_compare_values_that_are_one_value_of_the_field_are_a_plan_error(tmp_path, space, capsys):
    args = tiny_args(tmp_path, space, "--trials", "1", "--compare", "lr", "--compare-values", "0.1,0.10", "--dry-run")
    assert run_cli(run_driver.main, args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--compare lr: 0.1 and 0.10 are both lr=0.1: give each value once" in err


def test_compare_on_a_data_field_trains_each_value_on_its_own_data(tmp_path, space):
    # One worker: the driver preloads the base study's data (subset 200); each sub-study must
    # train on the data its records claim, trials and final seeds alike (the final stage keeps the
    # subset when the subset is what is compared).
    args = tiny_args(tmp_path, space, "--trials", "1", "--compare", "subset", "--compare-values", "100,150",
                     "--final-seeds", "1")
    assert run_driver.main(args) == 0
    for value in (100, 150):
        sub = load(tmp_path, f"tiny.subset={value}")
        run_ids = [t.user_attrs["run_id"] for t in sub.trials] + sub.user_attrs["final_run_ids"]
        assert len(run_ids) == 2
        for rid in run_ids:
            record = find_record(tmp_path, rid)
            assert record.config["data"]["subset"] == value
            assert record.provenance["train_size"] == value  # the images it really trained on
            assert record.history[0]["iteration"] == value // 50  # steps of batch 50 in one epoch


def test_a_study_worker_pins_its_gpu(tmp_path, space, monkeypatch):
    import torch

    import resnet_core.devices as devices

    monkeypatch.setattr(devices.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(devices.torch.cuda, "device_count", lambda: 2)
    pinned = []  # (device, Inductor's share of the cores) as the worker pins its GPU
    monkeypatch.setattr(devices.torch.cuda, "set_device",
                        lambda device: pinned.append((device, os.environ.get("TORCHINDUCTOR_COMPILE_THREADS"))))
    monkeypatch.delenv("TORCHINDUCTOR_COMPILE_THREADS", raising=False)
    setup, _ = plan(tiny_request(tmp_path, space, epochs=1))
    create_study(setup.spec)
    threads = torch.get_num_threads()
    try:
        assert run_worker(WorkerJob(setup.spec, target=0, device="cuda:1", threads=1)) == 0
    finally:
        torch.set_num_threads(threads)
    assert pinned == [(devices.torch.device("cuda:1"), "1")]  # its share of the cores for Inductor
    assert "TORCHINDUCTOR_COMPILE_THREADS" not in os.environ  # given back: the worker ran in this process


def test_report_driver_rebuilds_reports_with_figures(tmp_path, space):
    assert run_driver.main(tiny_args(tmp_path, space, "--trials", "3")) == 0
    out = tmp_path / "rebuilt"
    assert report_driver.main(["--study-name", "tiny", "--results", str(tmp_path), "--out", str(out)]) == 0
    for name in ("trials.csv", "best.json", "report.md", "optimization_history.png", "learning_curves.png"):
        assert (out / name).exists(), name
    assert run_cli(report_driver.main, ["--study-name", "nope", "--results", str(tmp_path)]) == 2


def test_study_refuses_a_changed_question(tmp_path, space, capsys):
    assert run_driver.main(tiny_args(tmp_path, space, "--trials", "1")) == 0
    assert run_cli(run_driver.main, tiny_args(tmp_path, space, "--trials", "2", "--set", "depth=14")) == 2
    assert "different base_config (model.depth: 8 in the study, 14 now)" in capsys.readouterr().err


@pytest.mark.parametrize("change", [["--val-size", "80"], ["--subset", "150"], ["--budget", "standard"]],
                         ids=["val-size", "subset", "budget"])
def test_a_dry_run_refuses_a_changed_question_as_the_run_does(tmp_path, space, capsys, change):
    assert run_driver.main(tiny_args(tmp_path, space, "--trials", "1")) == 0
    capsys.readouterr()
    errors = []
    for dry_run in (["--dry-run"], []):
        assert run_cli(run_driver.main, tiny_args(tmp_path, space, "--trials", "2", *change, *dry_run)) == 2
        captured = capsys.readouterr()
        assert "to run" not in captured.out and captured.err.count("\n") == 1, captured
        errors.append(captured.err)
    assert errors[0] == errors[1] and errors[0].startswith("error: study 'tiny' exists with a different base_config")
    assert len(load(tmp_path).trials) == 1


# ---------------------------------------------------------------------------- stale trials


def _running_trial(**attrs):
    return optuna.trial.create_trial(state=TrialState.RUNNING, user_attrs=attrs)


def test_stale_reason_tells_dead_from_slow_workers():
    dead = subprocess.Popen(["true"])
    dead.wait()
    host, now = "thishost", time.time()
    assert "died" in stale_reason(_running_trial(host=host, pid=dead.pid, heartbeat=now), 600, now, host)
    alive = _running_trial(host=host, pid=os.getppid(), heartbeat=now - 10_000)
    assert stale_reason(alive, 600, now, host) is None  # a live local worker with a long epoch
    remote = _running_trial(host="elsewhere", pid=1, heartbeat=now - 700)
    assert "no heartbeat" in stale_reason(remote, 600, now, host)
    assert stale_reason(_running_trial(host="elsewhere", pid=1, heartbeat=now - 100), 600, now, host) is None


def test_a_trial_its_worker_never_fully_marked_is_stale_after_a_minute_not_the_epoch_grace():
    start = datetime.datetime(2026, 12, 3, 10, 0, 0)
    now = start.timestamp()
    for attrs in ({}, {"host": "thishost"}):  # killed before marking, or between its host and pid writes
        trial = optuna.trial.create_trial(state=TrialState.RUNNING, user_attrs=attrs)
        trial.datetime_start = start
        assert unmarked_reason(trial, 600, now + 30) is None
        assert "its worker never started it (61 s old, grace 60 s)" == unmarked_reason(trial, 600, now + 61)
        assert unmarked_reason(trial, 20, now + 21) is not None  # a shorter --stale-after still rules
    marked = optuna.trial.create_trial(state=TrialState.RUNNING, user_attrs={"host": "thishost", "pid": 1})
    marked.datetime_start = start
    assert unmarked_reason(marked, 600, now + 10_000) is None  # the pid and heartbeat rules judge it


def test_samplers_are_seeded_per_worker_and_on_resume():
    assert resumed_seed(7, 2, 0) == (7, 2)  # a fresh study is reproducible
    resumed = resumed_seed(7, 0, 12)
    assert resumed != (7, 0) and resumed == resumed_seed(7, 0, 12) and resumed != resumed_seed(7, 1, 12)
    assert isinstance(make_sampler("tpe", 0), optuna.samplers.TPESampler)
    assert isinstance(make_sampler("qmc", 0), optuna.samplers.QMCSampler)
    assert isinstance(make_sampler("gp", 0), optuna.samplers.GPSampler)
    try:
        import cmaes  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="needs the cmaes package"):
            make_sampler("cmaes", 0)
    pruner = make_pruner("median", 12)
    assert isinstance(pruner, optuna.pruners.MedianPruner) and pruner._n_warmup_steps == 4  # epochs 1-3 protected



def _pruned_at(pruner_name: str, epochs: int, bad_from: int, first_rung: int | None = None,
               reduction: int = 3) -> int | None:
    """The epoch at which a trial that turns clearly bad (error 0.99) at epoch ``bad_from`` is
    pruned (None: it finishes), after nine good trials, each trial reported and asked every epoch
    the way the objective does it (Optuna step = epoch number from 1, never asked at the last)."""
    # A fixed name: Hyperband puts a trial in a bracket by a hash of the study name and trial number.
    study = optuna.create_study(study_name="warm-up", direction="minimize", sampler=optuna.samplers.RandomSampler(0),
                                pruner=make_pruner(pruner_name, epochs, first_rung, reduction))
    for index in range(9):
        good = study.ask()
        for epoch in range(1, epochs + 1):
            good.report(0.5 - 0.01 * index - 0.01 * epoch, epoch)
            stopped = epoch < epochs and good.should_prune()  # also records the rungs halving pruners compare
            assert pruner_name in RUNG_PRUNERS or not stopped  # a rung's first trials stop there (bootstrap)
        study.tell(good, 0.5 - 0.01 * index - 0.01 * epochs)
    trial = study.ask()
    for epoch in range(1, epochs):
        trial.report(0.99 if epoch >= bad_from else 0.1, epoch)
        if trial.should_prune():
            return epoch
    return None


@pytest.mark.parametrize("epochs", [2, 4, 8, 12])
def test_the_median_pruner_never_prunes_inside_its_stated_warm_up(epochs):
    warm = max(1, epochs // 4)
    first = warm + 1
    # Bad from epoch 1, it survives the warm-up and is cut at the first epoch after it (or finishes).
    assert _pruned_at("median", epochs, bad_from=1) == (first if first < epochs else None)
    assert prunable_epochs("median", epochs) == list(range(first, epochs))
    text = describe_pruner("median", epochs)
    assert f"1{f'-{warm}' if warm > 1 else ''} protected as warm-up" in text
    if first < epochs:
        assert f"may prune at epoch{'s' * (first < epochs - 1)} {first}" in text
    else:
        assert "prunes nothing" in text  # a 2-epoch budget: warm-up epoch 1, the last epoch is never pruned


def test_successive_halving_judges_only_after_the_warm_up_at_its_rungs():
    assert prunable_epochs("sha", 20) == [6, 18]  # warm-up epochs 1-5; rungs 6 x 3^k before epoch 20
    assert _pruned_at("sha", 20, bad_from=1) == 6
    assert _pruned_at("sha", 20, bad_from=7) == 18  # promoted at 6, judged again only at the next rung
    assert "epochs 1-5 protected as warm-up; may prune at epochs 6, 18 only" in describe_pruner("sha", 20)


def test_hyperband_never_prunes_inside_the_warm_up():
    assert prunable_epochs("hyperband", 20) == [6, 18]
    assert _pruned_at("hyperband", 20, bad_from=1) in (6, 18)  # its bracket decides the first rung

# ---------------------------------------------------------------------------- injected fit


def test_the_objective_trains_through_an_injected_fit_and_leaves_globals_alone(tmp_path, space):
    import torch

    setup, data = plan(tiny_request(tmp_path, space))
    optuna.logging.set_verbosity(optuna.logging.INFO)
    threads = torch.get_num_threads()
    counts = run_study(setup.spec, 3, ["cpu"], data=data, progress=False, fit=fake_fit)
    timing = estimate(setup.spec, setup.train_size, setup.eval_size, ["cpu"], 3, threads=threads + 1)
    assert optuna.logging.get_verbosity() == optuna.logging.INFO  # only a CLI or a worker's entry sets it
    assert torch.get_num_threads() == threads and timing["per_trial_s"] > 0
    assert counts["complete"] == 3
    for trial in load(tmp_path).trials:  # the fake's values, epoch by epoch: nothing was trained
        assert trial.value == pytest.approx(fake_error(trial.params["lr"]))
        assert sorted(trial.intermediate_values) == [1, 2]
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


def test_spawned_workers_get_the_injected_fit(tmp_path, space):
    setup, _ = plan(tiny_request(tmp_path, space))
    counts = run_study(setup.spec, 2, ["cpu", "cpu"], progress=False, threads=1, fit=fake_fit)
    assert counts["failed"] == 0 and 2 <= counts["complete"] <= 3  # two workers may each start the last trial
    study = load(tmp_path)
    assert all(t.value == pytest.approx(fake_error(t.params["lr"])) for t in study.trials)
    assert os.getpid() not in {t.user_attrs["pid"] for t in study.trials}  # trained in the spawned workers


def test_a_study_created_before_a_new_config_field_goes_on(tmp_path, space):
    """The study stores its base config; a field added since (at its default) or the tutorial's old
    name is the same question, so the study continues instead of asking for a new name."""
    setup, _ = plan(tiny_request(tmp_path, space))
    study, created = create_study(setup.spec)
    assert created
    old = json.loads(json.dumps(study.user_attrs["base_config"]))
    del old["train"]["warmup_fraction"]  # as written before that field existed
    study.set_user_attr("base_config", old)
    again, created = create_study(setup.spec)
    assert not created and again.study_name == study.study_name


def test_workers_sharing_a_gpu_count_as_one_gpu_unless_a_measurement_says_otherwise():
    from resnet_core.devices import parallel_throughput

    assert parallel_throughput(["cpu"] * 3) == (3.0, "")  # each CPU worker has its own share of the cores
    assert parallel_throughput(["cuda:0", "cuda:1"]) == (2.0, "2 workers on 2 GPUs, one per GPU")
    count, line = parallel_throughput(["cuda:0"] * 3)
    assert count == 1.0
    assert line == ("shared GPUs: 3 workers on 1 GPU counted as 1 GPU at full speed "
                    "(workers sharing a GPU take turns; no measurement of concurrent processes)")
    count, line = parallel_throughput(["cuda:0", "cuda:1"] * 2, concurrency={2: 1.6, 3: 2.0})
    assert count == pytest.approx(3.2) and "2 processes on one GPU measured at 1.60x one process" in line


def test_the_study_estimate_and_plan_line_say_how_shared_gpus_count(tmp_path, space, monkeypatch):
    setup, _ = plan(tiny_request(tmp_path, space))
    monkeypatch.setattr(study_estimate, "measure_step_rate", lambda run, steps: 1000.0)  # no GPU here to measure

    def estimate_on(devices, **kwargs):
        return estimate(setup.spec, setup.train_size, setup.eval_size, devices, 12, **kwargs)

    one = estimate_on(["cuda:0"])
    assert estimate_on(["cuda:0"] * 3)["total_s"] == pytest.approx(one["total_s"])  # they take turns
    assert estimate_on(["cuda:0", "cuda:1", "cuda:2"])["total_s"] == pytest.approx(one["total_s"] / 3)
    measured = estimate_on(["cuda:0"] * 2, concurrency={2: 1.5})
    assert measured["total_s"] == pytest.approx(one["total_s"] / 1.5)
    lines = plan_lines(setup, setup.spec, 12, 0, ["cuda:0"] * 3, estimate_on(["cuda:0"] * 3))
    assert lines[-1].startswith("time     measured 1,000 training images/s")
    assert lines[-1].endswith("; shared GPUs: 3 workers on 1 GPU counted as 1 GPU at full speed "
                              "(workers sharing a GPU take turns; no measurement of concurrent processes)")


def bench_result(path: Path, rows: list[tuple[str, int, int, float]]) -> Path:
    """A benchmark result as ``python -m resnet_core.bench --json`` writes it: (mode, batch, k, aggregate)."""
    path.write_text(json.dumps({"model": "resnet20", "device": "cuda", "rows": [
        {"mode": mode, "batch": batch, "k": k, "aggregate_ips": ips, "vs_eager": None, "note": "", "rounds_ips": []}
        for mode, batch, k, ips in rows]}))
    return path


def test_the_speed_up_of_workers_sharing_a_gpu_comes_from_a_benchmarks_processes_rows(tmp_path):
    result = bench_result(tmp_path / "bench.json", [
        ("eager", 128, 1, 1000.0), ("processes", 128, 1, 900.0), ("processes", 128, 2, 1350.0),
        ("processes", 512, 1, 3000.0), ("processes", 512, 2, 3000.0)])
    assert concurrency_from_bench(result, 128) == {1: 1.0, 2: pytest.approx(1.5)}  # over one process
    assert concurrency_from_bench(result, 400) == {1: 1.0, 2: 1.0}  # the nearest measured batch
    no_single = bench_result(tmp_path / "two.json", [("eager", 128, 1, 1000.0), ("processes", 128, 2, 1500.0)])
    assert concurrency_from_bench(no_single, 128) == {2: 1.5}  # over the in-process eager row
    for bad in (bench_result(tmp_path / "none.json", [("eager", 128, 1, 1000.0)]), tmp_path / "missing.json"):
        with pytest.raises(ValueError, match=f"^--concurrency-from {bad}: ") as refused:
            concurrency_from_bench(bad, 128)
        assert "\n" not in str(refused.value)


def test_the_study_plan_counts_shared_gpus_at_a_benchmarks_measured_speed_up(tmp_path, space, capsys, monkeypatch):
    import torch

    from resnet_core.commands import study as command
    from resnet_core.study import experiment

    result = bench_result(tmp_path / "bench.json", [("processes", 50, 1, 900.0), ("processes", 50, 3, 1800.0)])
    monkeypatch.setattr(experiment, "worker_devices", lambda workers, device, per_gpu: ["cuda:0"] * 3)  # no GPU here
    monkeypatch.setattr(study_estimate, "measure_step_rate", lambda run, steps: 1000.0)
    monkeypatch.setattr(experiment, "resolve_device", lambda name: torch.device("cpu"))
    assert run_cli(command.main, tiny_args(tmp_path, space, "--trials", "2", "--dry-run",
                                           "--concurrency-from", str(result))) == 0
    assert ("shared GPUs: 3 workers on 1 GPU counted as 2 GPUs at full speed "
            "(3 processes on one GPU measured at 2.00x one process)") in capsys.readouterr().out
