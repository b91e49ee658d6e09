"""Degradation reports that cannot mislead (issue 25): no pooling across lengths, both halves of the
verdict, robust intervals, lack of fit, diverged runs, code versions and grids named by their hash."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
from scipy import stats as scipy_stats

from resnet_core.degradation import degradation_kind, degradation_sentence, residual_sentence, verdicts_for
from resnet_core.grid.cells import expand
from resnet_core.grid.manifest import manifest
from resnet_core.grid.spec import load_grid
from resnet_core.reports import _interval_bars, grid_line, header_lines
from resnet_core.trends import LACK_OF_FIT, PLAIN_SLOPE, RESIDUAL_SLOPE, term, trend_table

DEPTHS = (20, 32, 44, 56)
NOISE = (-0.4, 0.0, 0.4)


def runs(plain_slope: float, residual_slope: float, base: float = 40.0, seeds: int = 3, curve: float = 0.0,
         noise: dict[str, float] | None = None, **columns) -> list[dict]:
    """Completed runs with known slopes; ``curve`` adds a bend (points at the middle depths)."""
    rows = []
    for family, slope in (("plain", plain_slope), ("residual", residual_slope)):
        scale = (noise or {}).get(family, 1.0)
        for depth in DEPTHS:
            bend = curve if depth in (32, 44) else 0.0
            for seed in range(seeds):
                error = base + slope * (depth - 20) / 10 + bend + scale * NOISE[seed % 3]
                rows.append({"run_id": f"{family}{depth}s{seed}{columns}", "family": family, "depth": depth,
                             "seed": seed, "status": "completed", "cell": f"{family} {depth}", "params": 1e5,
                             "final.train_error": error, "final.test_error": error + 5, **columns})
    return rows


MANIFEST = {"axes": ["residual", "depth"], "budget": {"name": "quick", "length": "4 epochs"}}


def test_a_residual_slope_above_zero_says_residual_nets_degrade_too_while_the_plain_half_holds():
    trends = trend_table(pd.DataFrame(runs(plain_slope=6.0, residual_slope=1.5)))
    assert degradation_sentence(trends, "here").startswith("Plain half: degradation reproduced here")
    sentence = residual_sentence(trends, "here")
    assert sentence.startswith("Residual half: residual nets degrade too here, 4.0 times slower than plain nets (+6.00)")
    flat = trend_table(pd.DataFrame(runs(plain_slope=6.0, residual_slope=-1.0)))
    assert residual_sentence(flat, "here").startswith("Residual half: residual nets no worse with depth here")


def test_a_scan_gets_per_length_verdicts_and_the_paper_comparison_at_the_longest_length_only():
    table = pd.DataFrame(runs(6.0, 0.0, base=70.0, epochs=1) + runs(6.0, 0.0, base=30.0, epochs=8))
    scan_manifest = {"axes": ["residual", "depth", "epochs"], "budget": {"name": "quick"}}
    out = degradation_kind(table, pd.DataFrame(), scan_manifest)
    titles = [title for title, _ in out.sections]
    comparison = [body for title, body in out.sections if title.startswith("Compared with")]
    assert any(t.endswith("(at 8 epochs of the quick budget, the longest length of this grid)") for t in titles)
    row20 = next(line for line in comparison[0].splitlines() if line.startswith("| 20 |"))
    assert row20.split(" | ")[1].startswith("35.00 ± 0.40")  # the 8-epoch runs only, never 1- and 8-epoch pooled
    assert "+26.25" in row20  # 35.00 - 8.75 (Table 6), the mean of the longest length
    assert "runs at 8 epochs of the quick budget, the longest length" in out.captions["final_vs_depth"]
    verdicts = verdicts_for(out.tables["trends"], table, scan_manifest)
    assert sum(v.startswith("Plain half: degradation reproduced at 1 epoch") for v in verdicts) == 1
    assert sum(v.startswith("Residual half: residual nets no worse with depth at 8 epochs") for v in verdicts) == 1


def _hc3_slope_se(depth10: np.ndarray, error: np.ndarray) -> float:
    """HC3 standard error of a straight line's slope, by hand (MacKinnon & White 1985)."""
    x = np.column_stack([np.ones_like(depth10), depth10])
    bread = np.linalg.inv(x.T @ x)
    leverage = np.einsum("ij,jk,ik->i", x, bread, x)
    residuals = error - x @ (bread @ x.T @ error)
    meat = x.T @ (x * (residuals**2 / (1 - leverage) ** 2)[:, None])
    return float(np.sqrt((bread @ meat @ bread)[1, 1]))


def test_unequal_variances_widen_the_robust_interval_of_the_noisy_family_against_the_pooled_one():
    table = pd.DataFrame(runs(6.0, 0.0, noise={"plain": 10.0, "residual": 0.5}))
    trends = trend_table(table, ("train_error",))
    plain, residual = term(trends, "train_error", PLAIN_SLOPE), term(trends, "train_error", RESIDUAL_SLOPE)
    data = table.assign(depth10=table["depth"] / 10, plain=(table["family"] == "plain").astype(float),
                        error=table["final.train_error"])
    pooled = smf.ols("error ~ depth10 * plain", data=data).fit()
    pooled_plain = pooled.t_test("depth10 + depth10:plain = 0").conf_int(alpha=0.05).ravel()
    pooled_residual = pooled.t_test("depth10 = 0").conf_int(alpha=0.05).ravel()
    assert plain["ci_high"] - plain["ci_low"] > pooled_plain[1] - pooled_plain[0]  # noisy family: wider
    assert residual["ci_high"] - residual["ci_low"] < pooled_residual[1] - pooled_residual[0]  # quiet family: narrower
    plain_runs = data[data["family"] == "plain"]
    half = scipy_stats.t.ppf(0.975, plain["df"]) * _hc3_slope_se(plain_runs["depth10"].to_numpy(), plain_runs["error"].to_numpy())
    assert (plain["ci_high"] - plain["ci_low"]) / 2 == pytest.approx(half, rel=1e-9)
    assert plain["df"] == 20 and plain["inference"] == "OLS, HC3 standard errors, t"


def test_the_lack_of_fit_test_flags_a_curved_trend_and_not_a_straight_one():
    curved = trend_table(pd.DataFrame(runs(6.0, 0.0, curve=4.0)), ("train_error",))
    row = term(curved, "train_error", LACK_OF_FIT)
    assert row["p_value"] < 0.001 and row["inference"] == "F(4, 16)" and row["df"] == 16
    sentences = verdicts_for(curved, pd.DataFrame(runs(6.0, 0.0, curve=4.0)), MANIFEST)
    assert any(s.startswith("A straight line in depth fits the train error poorly at the quick budget (4 epochs) "
                            "(lack of fit against the cell means: F(4, 16) = ") for s in sentences)
    straight = pd.DataFrame(runs(6.0, 0.0))
    assert term(trend_table(straight), "train_error", LACK_OF_FIT)["p_value"] > 0.5
    assert not any("fits the train error poorly" in s for s in verdicts_for(trend_table(straight), straight, MANIFEST))


def test_contrast_rows_use_their_own_cells_degrees_of_freedom():
    trends = trend_table(pd.DataFrame(runs(6.0, 0.0)), ("train_error",))
    row = term(trends, "train_error", "residual minus plain at depth 56")
    assert row["n_runs"] == 6 and row["df"] == pytest.approx(4.0)  # Welch: 3 + 3 runs, equal spreads
    assert row["estimate"] == pytest.approx(-6.0 * 3.6)


def _diverged(family: str, depth: int, seed: int) -> dict:
    return {"run_id": f"d{family}{depth}{seed}", "family": family, "depth": depth, "seed": seed, "status": "diverged",
            "cell": f"{family} {depth}", "final.train_error": float("nan"), "final.test_error": float("nan")}


def test_diverged_runs_get_a_sensitivity_line_that_says_whether_the_verdict_changes():
    changing = pd.DataFrame(runs(6.0, -0.5) + [_diverged("residual", 56, s) for s in (3, 4, 5)])
    sentences = verdicts_for(trend_table(changing), changing, MANIFEST)
    line = next(s for s in sentences if s.startswith("Sensitivity"))
    assert line.startswith("Sensitivity at the quick budget (4 epochs): with 3 diverged runs counted at chance error "
                           "(90%), the verdict changes: ")
    assert "Plain half: degradation not shown" in line and "The verdict above leaves them out; read both." in line
    same = pd.DataFrame(runs(6.0, -0.5) + [_diverged("plain", 56, 3)])
    line = next(s for s in verdicts_for(trend_table(same), same, MANIFEST) if s.startswith("Sensitivity"))
    assert "1 diverged run counted at chance error (90%), the verdict is the same" in line
    clean = pd.DataFrame(runs(6.0, -0.5))
    assert not any(s.startswith("Sensitivity") for s in verdicts_for(trend_table(clean), clean, MANIFEST))


def _provenance(commit: str, training: str | None) -> dict:
    values = {"provenance.git_commit": commit, "provenance.git_dirty": False, "provenance.git_diff_sha256": None}
    return values | ({"provenance.training_code_sha256": training} if training else {})


@pytest.mark.parametrize(("second", "warning"), [
    (_provenance("bbbb", "t2"), "trained by 2 versions of the training code (hashes t1, t2)"),
    (_provenance("bbbb", "t1"), None),  # another commit, the same training code: nothing to warn of
])
def test_a_report_over_two_commits_names_both_and_warns_when_training_differs(second, warning):
    table = pd.DataFrame([{**r, **_provenance("aaaa", "t1")} for r in runs(6.0, 0.0)[:12]]
                         + [{**r, **second} for r in runs(6.0, 0.0)[12:]])
    header = "\n".join(header_lines(table, {"grid": "g", "axes": ["residual", "depth"], "seeds": [0, 1, 2]}))
    assert "- Code: git aaaa (clean tree); git bbbb (clean tree)" in header
    assert (warning in header) if warning else "Warning" not in header


def test_records_without_the_training_hash_from_two_commits_are_warned_of_as_unknown():
    table = pd.DataFrame([{**r, **_provenance("aaaa" if i < 12 else "bbbb", None)} for i, r in enumerate(runs(6.0, 0.0))])
    header = "\n".join(header_lines(table, {"grid": "g", "axes": [], "seeds": []}))
    assert "come from 2 commits and some records predate the training-code hash" in header


def test_figure_intervals_are_clipped_to_the_possible_range():
    stats = pd.DataFrame({"test_error_mean": [80.0, 3.0], "test_error_ci_low": [27.5, -12.0],
                          "test_error_ci_high": [134.1, 9.0]})
    assert _interval_bars(stats, "test_error").tolist() == [[52.5, 3.0], [20.0, 6.0]]


LR_GRID = """
name = "lr-degradation"
report = "degradation"
[axes]
lr = [0.05, 0.1]
"""


def test_a_degradation_report_refuses_an_axis_its_fits_would_pool(tmp_path):
    path = tmp_path / "lr.toml"
    path.write_text(LR_GRID)
    with pytest.raises(ValueError, match="axis 'lr' cannot be in a grid with report = 'degradation'"):
        expand(load_grid(str(path)), {"data.source": "synthetic"})


def test_the_manifest_names_the_grid_by_name_and_file_hash_not_by_path(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text(LR_GRID.replace("degradation", "generic"))
    spec = load_grid(str(path))
    values = manifest(spec, expand(spec, {"data.source": "synthetic"}))
    assert "source" not in values and str(tmp_path) not in str(values)
    assert values["grid_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    assert (values["grid_file"], values["builtin"]) == ("mine.toml", False)
    assert grid_line(values) == f"- Grid: `lr-generic` (grid file mine.toml, sha256 {values['grid_sha256']})"
    builtin = load_grid("degradation")
    shipped = manifest(builtin, expand(builtin, {"data.source": "synthetic"}))
    assert shipped["builtin"] is True and grid_line(shipped).startswith("- Grid: `degradation` (built-in grid file degradation.toml")


def test_a_record_names_the_code_its_process_loaded_not_the_tree_at_the_time_it_is_written(monkeypatch):
    """A tree edited or committed while a long grid runs must not relabel the runs trained after it."""
    from resnet_core import provenance
    from resnet_core.config import RunConfig

    loaded = provenance.loaded_code()
    monkeypatch.setattr(provenance, "code_state", lambda path=None: {"commit": "later", "dirty": True, "diff_sha256": "x"})
    monkeypatch.setattr(provenance, "training_code_sha256", lambda package_dir=None: "edited")
    facts = provenance.collect_provenance(RunConfig(), None, None, None)
    assert (facts["git_commit"].removesuffix("-dirty"), facts["git_diff_sha256"]) == (loaded["commit"], loaded["diff_sha256"])
    assert facts["training_code_sha256"] == loaded["training_code_sha256"] != "edited"
