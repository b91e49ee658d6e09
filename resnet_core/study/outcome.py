"""What a study's final stage answers: the test error of the tuned config and of the untuned baseline
(the space's recipe before search, trained by the same rule on the same seeds), their paired
difference with a 95% interval whose kind is named, and a verdict sentence generated from that
interval; every requested final run that did not complete is named, never dropped in silence.

Numbers from the run records and the study's user attrs (``study.final.record_plan``); text for the
report's final-stage section and for the study command's last console lines (no file I/O here)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import optuna
import pandas as pd

from resnet_core.evaluation import TEST_WRONG, unpack_wrong
from resnet_core.migrate import current_run_ids
from resnet_core.reports import markdown_table
from resnet_core.stats import paired_image_interval, paired_seed_interval
from resnet_core.store import find_record, load_runs
from resnet_core.study.common import FINAL_SEED_BASE
from resnet_core.study.final import final_interval


@dataclass(frozen=True, eq=False)
class FinalRun:
    """One requested final-stage run as its record left it (status ``missing`` without a record);
    ``wrong``: its per-image test flags, None for a record written before they were kept."""

    seed: int
    run_id: str
    status: str
    reason: str | None = None
    test_error: float | None = None
    val_error: float | None = None
    wrong: np.ndarray | None = None
    test_size: int | None = None

    @property
    def completed(self) -> bool:
        return self.status == "completed" and self.test_error is not None


@dataclass(frozen=True)
class FinalArms:
    """A study's final runs, seed for seed: each candidate trial's (best first) and the baseline's."""

    candidates: tuple[tuple[int | None, tuple[FinalRun, ...]], ...]
    baseline: tuple[FinalRun, ...]


def final_arms(study: optuna.Study, results: str) -> FinalArms | None:
    """The study's final runs read from its records (None before its final stage ran). A study
    whose final stage predates the baseline has no ``baseline_run_ids``: its baseline is empty."""
    attrs = study.user_attrs
    top = attrs.get("final_top") or ([[attrs.get("final_trial"), attrs["final_run_ids"]]]
                                      if attrs.get("final_run_ids") else [])
    if not top:
        return None
    runs = load_runs(results)  # ids stored before a run-id migration are mapped to the records' new ids
    seeds = attrs.get("final_seeds") or [FINAL_SEED_BASE + i for i in range(len(top[0][1]))]

    def read(run_ids: Sequence[str]) -> tuple[FinalRun, ...]:
        return tuple(_final_run(results, rid, seed) for rid, seed in zip(current_run_ids(run_ids, runs), seeds))

    return FinalArms(tuple((trial, read(ids)) for trial, ids in top), read(attrs.get("baseline_run_ids", [])))


def _final_run(results: str, rid: str, seed: int) -> FinalRun:
    record = find_record(results, rid)
    if record is None:
        return FinalRun(seed, rid, "missing", "no record")
    final, size = record.final, (record.provenance or {}).get("test_size")
    wrong = unpack_wrong(final[TEST_WRONG], int(size)) if final.get(TEST_WRONG) and size else None
    return FinalRun(int(record.config.get("seed", seed)), rid, record.status, record.error or record.stop_reason,
                    _number(final.get("test_error")), _number(final.get("val_error")), wrong,
                    int(size) if size else None)


def _number(value: Any) -> float | None:
    return float(value) if value is not None and math.isfinite(float(value)) else None


def arm_summary(runs: Sequence[FinalRun]) -> dict[str, Any]:
    """The completed runs of one arm: seeds, run ids, test and validation errors, and the mean test
    error with its 95% interval (:func:`resnet_core.study.final.final_interval`)."""
    done = [run for run in runs if run.completed]
    sizes = [run.test_size for run in done if run.test_size]
    interval = final_interval([run.test_error for run in done], sizes[0] if sizes else None)
    vals = [run.val_error for run in done if run.val_error is not None]
    return {"seeds": [run.seed for run in done], "run_ids": [run.run_id for run in done],
            "test_errors": [run.test_error for run in done], "val_errors": vals,
            "val_error_mean": sum(vals) / len(vals) if vals else None, "test_error_mean": interval["mean"],
            "test_error_ci95": interval["ci95"], "interval": interval["interval"]}


def paired(tuned: Sequence[FinalRun], baseline: Sequence[FinalRun]) -> dict[str, Any]:
    """The paired difference tuned - baseline (test error, percentage points) over the seeds where
    both completed; ``left_out`` names every seed with a side missing."""
    if [run.run_id for run in tuned] == [run.run_id for run in baseline]:
        return {"diff": 0.0, "ci95": [0.0, 0.0], "kind": "same runs", "p_value": None, "pairs": len(tuned),
                "left_out": [], "interval": "the best config is the untuned recipe itself: the same runs"}
    by_seed = {run.seed: run for run in baseline}
    pairs, left_out = [], []
    for run in tuned:
        other = by_seed.get(run.seed)
        if run.completed and other is not None and other.completed:
            pairs.append((run, other))
        else:
            left_out.append(f"seed {run.seed}: tuned {run.status}, baseline {other.status if other else 'not trained'}")
    return {**paired_difference(pairs), "pairs": len(pairs), "left_out": left_out}


def paired_difference(pairs: Sequence[tuple[FinalRun, FinalRun]]) -> dict[str, Any]:
    """``diff``, ``ci95``, ``kind``, ``interval`` (its label) and ``p_value`` of (tuned, baseline)
    pairs of one seed each: 2+ seeds with per-image flags: t over the seeds widened by the test-set
    sampling term; 2+ without: t over seeds only; one seed with flags: the paired test over the test
    images (McNemar); one seed without: no interval."""
    if not pairs:
        return {"diff": None, "ci95": None, "kind": "none", "p_value": None,
                "interval": "no seed has both runs completed"}
    flags = all(t.wrong is not None and b.wrong is not None and t.wrong.shape == b.wrong.shape for t, b in pairs)
    if len(pairs) >= 2:
        return _over_seeds(pairs, flags)
    if flags:
        return _over_images(*pairs[0])
    return {"diff": pairs[0][0].test_error - pairs[0][1].test_error, "ci95": None, "kind": "none", "p_value": None,
            "interval": "one seed without per-image test results: no interval"}


def _over_seeds(pairs: Sequence[tuple[FinalRun, FinalRun]], flags: bool) -> dict[str, Any]:
    """t over the per-seed differences, plus the test set's sampling when every run has its flags."""
    n = len(pairs)
    images = (100 * np.mean([t.wrong.astype(float) - b.wrong.astype(float) for t, b in pairs], axis=0)
              if flags else None)
    result = paired_seed_interval([t.test_error - b.test_error for t, b in pairs], images)
    label = (f"t over {n} paired seeds (df {n - 1}) plus the sampling of the {len(images):,} test images: "
             "both terms in it" if flags else
             f"t over {n} paired seeds (df {n - 1}); test-set sampling left out (no per-image test results)")
    return {"diff": result["diff"], "ci95": [result["ci_low"], result["ci_high"]],
            "kind": "seeds and test set" if flags else "seeds only", "p_value": None, "interval": label}


def _over_images(tuned: FinalRun, baseline: FinalRun) -> dict[str, Any]:
    """One pair: the paired test over the test images (what the test set's sampling alone could do)."""
    result = paired_image_interval(tuned.wrong, baseline.wrong)
    label = (f"paired over {result['images']:,} test images ({result['tuned_only']} wrong only tuned, "
             f"{result['baseline_only']} only baseline; Wald interval of the paired difference, exact McNemar "
             f"p = {result['p_value']:.3g}): test-set sampling only (one seed)")
    return {"diff": result["diff"], "ci95": [result["ci_low"], result["ci_high"]], "kind": "test set",
            "p_value": result["p_value"], "interval": label}


def verdict(difference: Mapping[str, Any] | None) -> str:
    """The sentence a report states about tuning, generated from the paired difference's interval."""
    if not difference or difference.get("diff") is None:
        return ("No verdict on tuning: no seed has both a tuned and a baseline final run completed "
                "(the study command, run again, retries failed runs).")
    diff, ci = difference["diff"], difference.get("ci95")
    if difference.get("kind") == "same runs":
        return "No gain from tuning to measure: the best config found is the untuned recipe itself."
    if ci is None:
        return f"No verdict on tuning: the difference {diff:.2f} points has no interval ({difference['interval']})."
    low, high = ci
    scope = VERDICT_SCOPE.get(difference.get("kind"), "")
    if high < 0:
        return f"Tuning lowered test error by {-diff:.2f} points (95% CI {-high:.2f} to {-low:.2f}{scope})."
    if low > 0:
        return f"Tuning raised test error by {diff:.2f} points (95% CI {low:.2f} to {high:.2f}{scope})."
    return (f"No clear gain from tuning at this budget (difference {diff:.2f} points, 95% CI {low:.2f} to "
            f"{high:.2f}{scope}).")


# What a verdict's interval leaves out, said in the sentence itself (a reader may quote it alone).
VERDICT_SCOPE = {"test set": "; one seed: the test set's sampling only, not seed-to-seed variation",
                 "seeds only": "; over seeds only, without the test set's sampling"}


def chosen_arm(arms: FinalArms) -> tuple[int | None, tuple[FinalRun, ...]]:
    """The candidate with the lowest mean final-stage VALIDATION error (the test set never chooses);
    the best trial's when none has one."""
    def key(candidate):
        mean = arm_summary(candidate[1])["val_error_mean"]
        return (mean is None, mean if mean is not None else 0.0)

    return min(arms.candidates, key=key)  # min keeps the first of equals: the best trial's


def final_outcome(arms: FinalArms) -> dict[str, Any]:
    """The numbers of the report's final-stage section: the chosen candidate's arm, the baseline's,
    their paired difference and verdict, the candidates ranked, and the runs that did not complete."""
    trial, tuned = chosen_arm(arms)
    outcome: dict[str, Any] = {"trial": trial, "seeds_requested": [run.seed for run in tuned], **arm_summary(tuned)}
    if arms.baseline:
        outcome["baseline"] = arm_summary(arms.baseline)
        outcome["paired"] = paired(tuned, arms.baseline)
    outcome["verdict"] = verdict(outcome.get("paired")) if arms.baseline else (
        "No verdict on tuning: this final stage predates the baseline (re-run the study command: it trains only "
        "the baseline, the tuned runs are found).")
    outcome["not_completed"] = not_completed(arms)
    if len(arms.candidates) > 1:
        outcome["ranking"] = ranking(arms)
    return outcome


def not_completed(arms: FinalArms) -> list[dict[str, Any]]:
    """Every requested final run that did not complete: arm, seed, status and reason."""
    named = [(f"trial {trial}", run) for trial, runs in arms.candidates for run in runs]
    named += [("baseline", run) for run in arms.baseline]
    seen, rows = set(), []
    for arm, run in named:
        if not run.completed and (arm, run.run_id) not in seen:
            seen.add((arm, run.run_id))
            rows.append({"arm": arm, "seed": run.seed, "status": run.status, "reason": run.reason or "",
                         "run_id": run.run_id})
    return rows


def ranking(arms: FinalArms) -> list[dict[str, Any]]:
    """The candidates ranked by mean final-stage validation error, with their test errors shown."""
    rows = []
    for trial, runs in arms.candidates:
        summary = arm_summary(runs)
        rows.append({"trial": trial, "seeds": len(summary["seeds"]), "val_error_mean": summary["val_error_mean"],
                     "test_error_mean": summary["test_error_mean"], "test_error_ci95": summary["test_error_ci95"]})
    return sorted(rows, key=lambda row: (row["val_error_mean"] is None, row["val_error_mean"] or 0.0))


# ------------------------------------------------------------------------------------- text

def _range_text(ci: Sequence[float] | None) -> str:
    return f"{ci[0]:.2f} to {ci[1]:.2f}" if ci else "none"


def _interval_text(ci: Sequence[float] | None) -> str:
    return f"95% CI {_range_text(ci)}" if ci else "no interval"


def _errors_text(arm: Mapping[str, Any]) -> str:
    """``25.10% (95% CI 24.30 to 25.90; <kind of interval>); per seed: 25.00%, 25.20%``."""
    if arm.get("test_error_mean") is None:
        return "none (no completed run)"
    errors = ", ".join(f"{e:.2f}%" for e in arm["test_errors"])
    return f"{arm['test_error_mean']:.2f}% ({_interval_text(arm['test_error_ci95'])}; {arm['interval']}); per seed: {errors}"


def difference_text(difference: Mapping[str, Any]) -> str:
    """``-1.10 points (95% CI -1.90 to -0.30; <kind of interval>)``."""
    if difference.get("diff") is None:
        return f"none ({difference['interval']})"
    return f"{difference['diff']:.2f} points ({_interval_text(difference.get('ci95'))}; {difference['interval']})"


def final_lines(final: Mapping[str, Any] | None) -> list[str]:
    """The report's final-stage section: the tuned config and the baseline re-trained with new seeds,
    their TEST errors with 95% intervals, the paired difference, the verdict and every run left out."""
    if not final:
        return ["## Final stage", "", "Not run (--final-seeds 0, or no COMPLETE trial): this study reports no test "
                "error.", ""]
    lines, trained = ["## Final stage (test error)", ""], f"The best trial (trial {final.get('trial')})"
    if final.get("outdated"):  # its runs measure an earlier best: said first, and never called the best
        lines += [outdated_final_text(final["trial"], final["best_trial"]), ""]
        trained = f"Trial {final['trial']}"
    if final.get("ranking"):
        lines += _ranking_lines(final)
        trained = f"Trial {final['trial']}"
    seeds = final.get("seeds_requested") or final["seeds"]
    lines += [f"{trained} re-trained with {len(seeds)} new seed{'s' * (len(seeds) != 1)} "
              f"({', '.join(map(str, seeds))}), {final['training']}"
              + ("; the untuned baseline (the space's recipe before search) trained alike on the same seeds."
                 if "baseline" in final else "."), "",
              f"Test error {_errors_text(final)}.", ""]
    if "baseline" in final:
        lines += [f"Baseline test error {_errors_text(final['baseline'])}.", "",
                  f"Paired difference tuned - baseline: {difference_text(final['paired'])}."]
        lines += [f"Left out of the paired difference: {'; '.join(final['paired']['left_out'])}."] * bool(
            final["paired"]["left_out"])
        lines.append("")
    lines += [f"**{final['verdict']}**", ""] + _not_completed_lines(final.get("not_completed", []))
    lines += ["Reproduce (first seed):", "", f"    {final['command']}", ""]
    if final.get("baseline", {}).get("command"):
        lines += ["Baseline (first seed):", "", f"    {final['baseline']['command']}", ""]
    return lines


def _ranking_lines(final: Mapping[str, Any]) -> list[str]:
    rows = [{"trial": r["trial"], "seeds": r["seeds"], "val error (mean)": r["val_error_mean"],
             "test error (mean)": r["test_error_mean"],
             "test 95% CI": _range_text(r["test_error_ci95"])}
            for r in final["ranking"]]
    return [f"The best {len(rows)} trials with distinct params each had the final stage; they are ranked by mean "
            f"final-stage VALIDATION error (the test set never chooses), so trial {final['trial']} is the tuned "
            "config below:", "", markdown_table(pd.DataFrame(rows), floatfmt=".2f"), ""]


def _not_completed_lines(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    if not rows:
        return []
    table = pd.DataFrame([{k: row[k] for k in ("arm", "seed", "status", "reason")} for row in rows])
    return [f"Requested final runs that did not complete ({len(rows)}; not in the numbers above):", "",
            markdown_table(table), ""]


def outdated_final_text(trained: int, best: int) -> str:
    """What a report says when its final stage trained an earlier best trial than the best one now."""
    return (f"The final stage trained trial {trained}; the best trial is now {best}, so the final test error is "
            f"trial {trained}'s: re-run without --final-seeds 0 to train trial {best}.")


def console_lines(best: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The study command's last lines for one (sub-)study from its best.json: the best validation
    error, the final stage's test errors with intervals, the paired difference and the verdict."""
    if best.get("trial") is None:
        return [f"best     {prefix}no COMPLETE trial"]
    lines = [f"best     {prefix}trial {best['trial']}: validation error {best['value']:.2f}% (final epoch, one seed)"]
    final = best.get("final")
    if not final:
        return lines + [f"test     {prefix}no final stage (--final-seeds 0): no test error"]
    tuned = (f"tuned (trial {final['trial']}) {final['test_error_mean']:.2f}% ({_interval_text(final['test_error_ci95'])})"
             if final.get("test_error_mean") is not None else f"tuned (trial {final['trial']}) no completed run")
    base = final.get("baseline")
    if base is not None:
        tuned += (f", baseline {base['test_error_mean']:.2f}% ({_interval_text(base['test_error_ci95'])})"
                  if base.get("test_error_mean") is not None else ", baseline no completed run")
    lines.append(f"test     {prefix}{tuned}")
    if "paired" in final:
        lines.append(f"paired   {prefix}tuned - baseline {difference_text(final['paired'])}")
    lines.append(f"verdict  {prefix}{final['verdict']}")
    if final.get("not_completed"):
        lines.append(f"missing  {prefix}{len(final['not_completed'])} requested final run(s) did not complete "
                     "(named in report.md)")
    return lines


def compare_paired_lines(field: str, finals: Sequence[tuple[str, Mapping[str, Any] | None]]) -> list[str]:
    """A --compare report's section: per value (label, its final result) the tuned config against
    the baseline of that value (the recipe with ``field`` at the value, nothing searched moved)."""
    rows = []
    for label, final in finals:
        if not final or "paired" not in final:
            continue
        difference = final["paired"]
        rows.append({field: label, "tuned": final.get("test_error_mean"),
                     "baseline": final["baseline"].get("test_error_mean"), "tuned - baseline": difference.get("diff"),
                     "95% CI": _range_text(difference.get("ci95")), "interval": difference["interval"],
                     "verdict": final["verdict"]})
    if not rows:
        return []
    return ["## Tuned against untuned per value (TEST error, %, paired by seed)", "",
            f"Each value's baseline is the space's recipe with `{field}` at that value and no searched parameter "
            "moved, trained by the final stage's rule on the same seeds as the value's tuned config.", "",
            markdown_table(pd.DataFrame(rows), floatfmt=".2f"), ""]
