"""Tuned against untuned (issue 27, item 3): the final stage trains the best config and the baseline
(the space's recipe before search) on the same seeds, and reports their paired difference with a 95%
interval of a named kind and a verdict generated from it. Constructed numbers and studies, a fake fit:
no training."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import optuna
import pytest
import torch
from optuna.distributions import FloatDistribution
from scipy import stats

from resnet_core.config import to_dict
from resnet_core.evaluation import pack_wrong, unpack_wrong
from resnet_core.identity import run_id
from resnet_core.stats import paired_image_interval, paired_seed_interval
from resnet_core.store import RunRecord, find_record, write_record
from resnet_core.study import outcome
from resnet_core.study.final import FinalStage, final_config, final_interval, final_runs, train_final
from resnet_core.study.plan import plan
from resnet_core.study.tables import config_differences
from resnet_core.study.report import write_study_report
from study_helpers import tiny_request

from test_study import _quiet_env, space  # noqa: F401  (fixtures: the tiny space, a per-session cache)

T1 = stats.t.ppf(0.975, 1)  # Student's t, 1 degree of freedom (two seeds)


def flags(*bits: int) -> np.ndarray:
    return np.array(bits, dtype=bool)


def run(seed: int, wrong: np.ndarray | None, error: float | None = None, status: str = "completed"):
    error = 100 * wrong.mean() if error is None and wrong is not None else error
    return outcome.FinalRun(seed, f"r{seed}-{error}", status, test_error=error, wrong=wrong)


# ------------------------------------------------------------------------------ the arithmetic

def test_two_seeds_t_interval_widened_by_the_test_sets_sampling():
    # 10 test images. Seed 1: tuned wrong on 0, 1 (20%), baseline on 0-3 (40%): d1 = -20 points.
    # Seed 2: tuned wrong on 0, 1 (20%), baseline on 0-2 (30%): d2 = -10. Mean -15, s_d^2 = 50.
    pairs = [(run(1, flags(1, 1, 0, 0, 0, 0, 0, 0, 0, 0)), run(1, flags(1, 1, 1, 1, 0, 0, 0, 0, 0, 0))),
             (run(2, flags(1, 1, 0, 0, 0, 0, 0, 0, 0, 0)), run(2, flags(1, 1, 1, 0, 0, 0, 0, 0, 0, 0)))]
    # D_j = 100 x mean over seeds of (tuned - baseline): image 2 -> -100, image 3 -> -50, others 0; mean -15.
    # Var_j(D_j) (population) = (100^2 + 50^2) / 10 - 15^2 = 1250 - 225 = 1025; over N = 10 images: 102.5.
    # se^2 = s_d^2 / n + 102.5 = 50 / 2 + 102.5 = 127.5.
    result = outcome.paired_difference(pairs)
    half = T1 * math.sqrt(127.5)
    assert result["diff"] == pytest.approx(-15.0)
    assert result["ci95"] == pytest.approx([-15 - half, -15 + half])
    assert result["kind"] == "seeds and test set" and "both terms in it" in result["interval"]
    # Without per-image flags (older records): the seeds' term alone, and the label says what is left out.
    old = outcome.paired_difference([(run(s, None, t), run(s, None, b)) for s, t, b in ((1, 20, 40), (2, 20, 30))])
    assert old["ci95"] == pytest.approx([-15 - T1 * 5, -15 + T1 * 5])  # sqrt(50 / 2) = 5
    assert old["kind"] == "seeds only" and "test-set sampling left out" in old["interval"]


def test_paired_seed_interval_adds_the_image_term_to_the_seed_term():
    # d = 1, 2, 4: mean 7/3, s_d^2 = (16/9 + 1/9 + 25/9) / 2 = 7/3, over n = 3: 7/9.
    # D = 50, -50, 0, 0: population variance (2500 + 2500) / 4 = 1250, over N = 4: 312.5.
    result = paired_seed_interval([1.0, 2.0, 4.0], [50.0, -50.0, 0.0, 0.0])
    half = stats.t.ppf(0.975, 2) * math.sqrt(7 / 9 + 312.5)
    assert result["diff"] == pytest.approx(7 / 3) and result["ci_low"] == pytest.approx(7 / 3 - half)
    assert paired_seed_interval([1.0, 2.0, 4.0])["se"] == pytest.approx(math.sqrt(7 / 9))
    with pytest.raises(ValueError, match="2 or more seeds"):
        paired_seed_interval([1.0])


def test_one_seed_is_the_paired_test_over_the_test_images():
    # 20 images: 3 wrong for both, 2 only tuned (b), 6 only baseline (c), 9 right for both.
    tuned = flags(*[1] * 3, *[1] * 2, *[0] * 6, *[0] * 9)
    baseline = flags(*[1] * 3, *[0] * 2, *[1] * 6, *[0] * 9)
    # diff = (b - c) / N = -4/20 = -0.2 (-20 points); paired variance ((b + c)/N - diff^2)/N = (0.4 - 0.04)/20.
    se = math.sqrt((0.4 - 0.04) / 20)
    # exact McNemar: two-sided binomial of b = 2 in b + c = 8 at 1/2: 2 (C(8,0) + C(8,1) + C(8,2)) / 2^8 = 74/256.
    result = paired_image_interval(tuned, baseline)
    assert result["diff"] == pytest.approx(-20.0) and (result["tuned_only"], result["baseline_only"]) == (2, 6)
    assert result["ci_low"] == pytest.approx(100 * (-0.2 - 1.959964 * se), abs=1e-4)
    assert result["ci_high"] == pytest.approx(100 * (-0.2 + 1.959964 * se), abs=1e-4)
    assert result["p_value"] == pytest.approx(74 / 256)
    labelled = outcome.paired_difference([(run(1, tuned), run(1, baseline))])
    assert labelled["ci95"] == pytest.approx([result["ci_low"], result["ci_high"]])
    assert labelled["interval"].endswith("test-set sampling only (one seed)") and "McNemar p = 0.289" in labelled["interval"]
    lone = outcome.paired_difference([(run(1, None, 20.0), run(1, None, 25.0))])  # one seed, no flags
    assert lone["diff"] == -5.0 and lone["ci95"] is None and "no interval" in lone["interval"]
    assert outcome.verdict(lone).startswith("No verdict on tuning: the difference -5.00 points has no interval")


def test_the_verdict_sentence_is_chosen_by_the_interval():
    assert outcome.verdict({"diff": -1.2, "ci95": [-1.9, -0.5], "interval": "x"}) == \
        "Tuning lowered test error by 1.20 points (95% CI 0.50 to 1.90)."
    assert outcome.verdict({"diff": 0.8, "ci95": [0.1, 1.5], "interval": "x"}) == \
        "Tuning raised test error by 0.80 points (95% CI 0.10 to 1.50)."
    assert outcome.verdict({"diff": -0.3, "ci95": [-1.1, 0.5], "interval": "x"}) == \
        "No clear gain from tuning at this budget (difference -0.30 points, 95% CI -1.10 to 0.50)."
    assert outcome.verdict({"diff": -4.7, "ci95": [-5.6, -3.8], "interval": "x", "kind": "test set"}) == (
        "Tuning lowered test error by 4.70 points (95% CI 3.80 to 5.60; one seed: the test set's sampling only, "
        "not seed-to-seed variation).")


def test_a_pair_with_one_side_missing_is_left_out_and_named():
    tuned = [run(1000, flags(1, 0, 0, 0)), run(1001, flags(1, 1, 0, 0))]
    baseline = [run(1000, flags(1, 1, 0, 0)), run(1001, None, None, status="failed")]
    result = outcome.paired(tuned, baseline)
    assert result["pairs"] == 1 and result["left_out"] == ["seed 1001: tuned completed, baseline failed"]
    assert result["diff"] == pytest.approx(-25.0) and result["kind"] == "test set"


def test_the_single_config_interval_says_the_shared_test_set_is_not_in_it():
    assert final_interval([40.0, 42.0], 10000)["interval"] == \
        "t over 2 seeds; the sampling of the one shared test set is not in it"


# --------------------------------------------------------------------------- the final stage

TEST_IMAGES = 40


def paired_fake_fit(trained: list, fail: set = frozenset()):
    """No training: a record whose per-image flags (and so its test error) follow the lr and the
    seed, and whose validation error falls with the lr; ``(lr, seed)`` in ``fail`` fails."""

    def fit(config, callbacks=(), results_dir="results", data=None, progress=False):
        trained.append(config)
        rng = np.random.default_rng([config.seed, round(config.train.lr * 1e4)])
        wrong = rng.random(TEST_IMAGES) < 0.5 - config.train.lr
        key = (round(config.train.lr, 4), config.seed)
        status, error = ("failed", "RuntimeError: boom") if key in fail else ("completed", None)
        final = {} if error else {"test_error": 100 * wrong.mean(), "val_error": 30 - 100 * config.train.lr,
                                  "test_wrong": pack_wrong(torch.from_numpy(wrong))}
        record = RunRecord(run_id(config), status, to_dict(config), final=final, error=error,
                           provenance={"test_size": TEST_IMAGES, "val_size": 100})
        write_record(results_dir, record)
        return record

    return fit


def constructed_study(*trials: tuple[float, float]) -> optuna.Study:
    """In memory: COMPLETE trials of (validation error, lr), momentum 0.8 each."""
    study = optuna.create_study()
    distributions = {"lr": FloatDistribution(0.01, 0.2, log=True), "momentum": FloatDistribution(0.5, 0.9)}
    for value, lr in trials:
        study.add_trial(optuna.trial.create_trial(value=value, params={"lr": lr, "momentum": 0.8},
                                                  distributions=distributions))
    return study


@pytest.fixture()
def spec(tmp_path, space):
    return plan(tiny_request(tmp_path, space, epochs=1))[0].spec


def test_the_final_stage_trains_the_best_config_and_the_baseline_on_the_same_seeds(tmp_path, spec):
    study = constructed_study((10.0, 0.05), (12.0, 0.15))
    stage, trained = FinalStage(2, epochs=1), []
    records = train_final(spec, study, stage, "cpu", progress=False, fit=paired_fake_fit(trained))
    baseline = final_config(spec, {}, stage)
    best = final_config(spec, study.best_trial.params, stage)
    assert baseline == final_config(spec, dict(spec.space.fixed), stage)  # the recipe: no searched value moved
    assert baseline.train.lr == spec.base.train.lr != best.train.lr == 0.05
    assert config_differences(best, baseline).keys() == {"train.lr", "train.momentum"}  # same rule, same length
    by_lr = {lr: sorted(c.seed for c in trained if c.train.lr == lr) for lr in (0.05, spec.base.train.lr)}
    assert by_lr == {0.05: [1000, 1001], spec.base.train.lr: [1000, 1001]} and len(trained) == 4
    assert [r.config["train"]["lr"] for r in records] == [0.05, 0.05]  # the best trial's records
    assert study.user_attrs["baseline_run_ids"] == [run_id(dataclasses.replace(baseline, seed=s)) for s in (1000, 1001)]
    assert study.user_attrs["final_seeds"] == [1000, 1001]
    trained.clear()  # asked again, every run is found, none trained
    train_final(spec, study, stage, "cpu", progress=False, fit=paired_fake_fit(trained))
    assert trained == []


def test_a_final_stage_from_before_the_baseline_trains_only_the_baseline_when_run_again(tmp_path, spec):
    study = constructed_study((10.0, 0.05))
    stage, trained = FinalStage(1, epochs=1), []
    fit = paired_fake_fit(trained)
    (old,) = final_runs(spec, study, stage)
    fit(old, results_dir=tmp_path)
    study.set_user_attr("final_run_ids", [run_id(old)])  # what the earlier final stage recorded
    study.set_user_attr("final_trial", 0)
    final = outcome.final_outcome(outcome.final_arms(study, str(tmp_path)))
    assert "baseline" not in final and "predates the baseline" in final["verdict"]
    trained.clear()
    train_final(spec, study, stage, "cpu", progress=False, fit=fit)
    assert [c.train.lr for c in trained] == [spec.base.train.lr]


def test_final_top_two_trains_both_configs_and_the_baseline_and_ranks_them_on_validation(tmp_path, spec):
    # Trial 1 repeats trial 0's params: the second distinct config is trial 2.
    study = constructed_study((10.0, 0.05), (10.0, 0.05), (11.0, 0.07), (12.0, 0.15))
    stage, trained = FinalStage(1, epochs=1, top=2), []
    train_final(spec, study, stage, "cpu", progress=False, fit=paired_fake_fit(trained))
    assert sorted(c.train.lr for c in trained) == sorted([0.05, 0.07, spec.base.train.lr])
    assert [trial for trial, _ in study.user_attrs["final_top"]] == [0, 2]
    out = write_study_report(study, spec, tmp_path / "report", figures=False)
    final = json.loads((out / "best.json").read_text())["final"]
    # The fake validation error falls with the lr: trial 2 (lr 0.07) ranks first, not the best trial.
    assert final["trial"] == 2 and [row["trial"] for row in final["ranking"]] == [2, 0]
    report = (out / "report.md").read_text()
    assert "ranked by mean final-stage VALIDATION error (the test set never chooses)" in report
    assert "Trial 2 re-trained with 1 new seed (1000)" in report


def test_a_requested_seed_that_failed_is_named_in_the_report(tmp_path, spec):
    study = constructed_study((10.0, 0.05))
    stage = FinalStage(2, epochs=1)
    fit = paired_fake_fit([], fail={(round(spec.base.train.lr, 4), 1001)})
    train_final(spec, study, stage, "cpu", progress=False, fit=fit)
    out = write_study_report(study, spec, tmp_path / "report", figures=False)
    report = (out / "report.md").read_text()
    assert "Requested final runs that did not complete (1; not in the numbers above):" in report
    assert any(all(part in line for part in ("| baseline", "| 1001", "| failed", "| RuntimeError: boom"))
               for line in report.splitlines())
    assert "Left out of the paired difference: seed 1001: tuned completed, baseline failed." in report
    final = json.loads((out / "best.json").read_text())["final"]
    assert [(m["arm"], m["seed"], m["status"]) for m in final["not_completed"]] == [("baseline", 1001, "failed")]
    assert final["paired"]["pairs"] == 1 and final["paired"]["kind"] == "test set"
    assert f"**{final['verdict']}**" in report and final["baseline"]["seeds"] == [1000]
    tuned = unpack_wrong(find_record(tmp_path, final["run_ids"][0]).final["test_wrong"], TEST_IMAGES)
    assert final["test_errors"][0] == pytest.approx(100 * tuned.mean())


def test_a_best_config_that_is_the_recipe_itself_is_trained_once_and_said_so(tmp_path, spec):
    study = optuna.create_study()
    recipe = {"lr": spec.base.train.lr, "momentum": spec.base.train.momentum}  # no searched value moved
    study.add_trial(optuna.trial.create_trial(value=10.0, params=recipe, distributions={
        "lr": FloatDistribution(1e-3, 1.0, log=True), "momentum": FloatDistribution(0.0, 0.99)}))
    trained = []
    train_final(spec, study, FinalStage(2, epochs=1), "cpu", progress=False, fit=paired_fake_fit(trained))
    assert len(trained) == 2 and study.user_attrs["baseline_run_ids"] == study.user_attrs["final_run_ids"]
    final = outcome.final_outcome(outcome.final_arms(study, str(tmp_path)))
    assert final["paired"]["kind"] == "same runs" and final["paired"]["diff"] == 0.0
    assert final["verdict"] == "No gain from tuning to measure: the best config found is the untuned recipe itself."
