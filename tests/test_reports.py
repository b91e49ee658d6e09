"""Report functions on hand-made run records: numbers, verdict wording, Table 6, figures."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image
from scipy import stats as scipy_stats

from resnet_core.config import DataConfig, ModelConfig, RunConfig, apply_overrides, to_dict
from resnet_core.identity import run_id
from resnet_core.degradation import PLAIN_REFERENCE_COLUMN, paper_comparison
from resnet_core.grid.report import build_report, write_report
from resnet_core.reports import display_table, grid_table, markdown_table, summarize_cells
from resnet_core.store import RunRecord, load_histories, load_runs, write_record

STAGES = ("stem", "stage1", "stage2", "stage3", "head")


def make_run(residual: bool, depth: int, seed: int) -> RunConfig:
    run = RunConfig(model=ModelConfig(depth=depth, residual=residual), data=DataConfig(source="synthetic"), seed=seed)
    return apply_overrides(run, {"epochs": 2})


def make_record(run: RunConfig, test: float, train: float, status: str = "completed") -> RunRecord:
    history = [
        {"epoch": e, "iteration": 10 * e, "train_error": train + 10 / e, "test_error": test + 5 / e, "val_error": test,
         "train_loss": 1.0, "test_loss": 1.0, "val_loss": 1.0, "lr": 0.1, "seconds": 1.0, "images_per_s": 100.0,
         "grad_norm": {s: (0.5 if run.model.residual else 0.1) * (i + 1) for i, s in enumerate(STAGES)}}
        for e in (1, 2)
    ]
    return RunRecord(
        run_id=run_id(run), status=status, config=to_dict(run), history=history,
        final={"test_error": test, "train_error": train, "val_error": test + 0.5, "epochs": 2, "iterations": 20},
        wall_seconds=12.0 + run.seed, params=270_000 if run.model.depth == 20 else 850_000, macs=41_000_000,
        provenance={"data_description": "synthetic (2000 train)", "train_size": 1500, "val_size": 500, "test_size": 500,
                    "device_name": "cpu (x86_64, 2 cores)", "torch": "2.14.1", "python": "3.11.7", "cuda": None,
                    "git_commit": "abc123"},
    )


# (residual, depth) -> final (test, train) per seed: plain worse with depth, residual better.
VALUES = {
    (False, 20): [(9.7, 5.0), (9.9, 5.2), (9.8, 4.8)],
    (False, 56): [(13.0, 9.0), (12.8, 9.3), (13.1, 8.9)],
    (True, 20): [(8.7, 4.0), (8.8, 4.1), (8.75, 3.9)],
    (True, 56): [(7.0, 2.0), (6.9, 2.2), (7.1, 2.1)],
}


def manifest_for(runs: dict[tuple, list[RunConfig]], report: str = "degradation") -> dict:
    rows = [{"run_id": run_id(r), "cell": f"residual={str(k[0]).lower()}, depth={k[1]}", "seed": r.seed,
             "residual": k[0], "depth": k[1]} for k, rs in runs.items() for r in rs]
    return {"grid": "deg", "source": "deg.toml", "description": "test grid", "report": report,
            "axes": ["residual", "depth"], "seeds": [0, 1, 2], "runs": rows}


@pytest.fixture
def store(tmp_path):
    """Records of VALUES, plus a diverged 4th seed of plain-56 and a plain-32 cell never run."""
    runs = {}
    for (residual, depth), values in VALUES.items():
        runs[(residual, depth)] = []
        for seed, (test, train) in enumerate(values):
            run = make_run(residual, depth, seed)
            write_record(tmp_path, make_record(run, test, train))
            runs[(residual, depth)].append(run)
    diverged = make_run(False, 56, 3)
    write_record(tmp_path, make_record(diverged, test=1.0, train=1.0, status="diverged"))  # tempting numbers
    runs[(False, 56)].append(diverged)
    runs[(False, 32)] = [make_run(False, 32, 0)]
    write_record(tmp_path, make_record(make_run(True, 44, 0), 5.0, 5.0))  # another grid's record: ignored
    return tmp_path, manifest_for(runs)


def test_summary_is_the_mean_and_interval_of_completed_seeds(store):
    path, manifest = store
    table = grid_table(load_runs(path), manifest)
    summary = summarize_cells(table, ["residual", "depth"]).set_index("cell")
    assert len(table) == 3 * 4 + 1 + 1 and len(summary) == 5
    row = summary.loc["residual=false, depth=56"]
    tests = [v[0] for v in VALUES[(False, 56)]]
    half = scipy_stats.t.ppf(0.975, 2) * np.std(tests, ddof=1) / math.sqrt(3)
    assert row["test_error_mean"] == pytest.approx(np.mean(tests))
    assert row["test_error_std"] == pytest.approx(np.std(tests, ddof=1))
    assert row["test_error_ci_high"] == pytest.approx(np.mean(tests) + half)
    assert (row["test_error_n"], row["completed"], row["diverged"], row["runs"]) == (3, 3, 1, 4)
    assert row["train_error_mean"] == pytest.approx(np.mean([v[1] for v in VALUES[(False, 56)]]))
    assert row["params"] == 850_000 and row["seconds_mean"] == pytest.approx(13.0)
    missing = summary.loc["residual=false, depth=32"]
    assert (missing["missing"], missing["test_error_n"]) == (1, 0) and math.isnan(missing["test_error_mean"])


def test_single_seed_numbers_are_labelled(tmp_path):
    runs = {(False, 20): [make_run(False, 20, 0)], (False, 56): [make_run(False, 56, 0)]}
    write_record(tmp_path, make_record(runs[(False, 20)][0], 10.0, 5.0))
    write_record(tmp_path, make_record(runs[(False, 56)][0], 12.0, 7.5))
    table = grid_table(load_runs(tmp_path), manifest_for(runs))
    shown = display_table(summarize_cells(table, ["residual", "depth"]), ["residual", "depth"])
    assert shown.loc[0, "test error (%)"] == "10.00 (single seed)"


def test_table6_side_by_side(store):
    path, manifest = store
    table = paper_comparison(grid_table(load_runs(path), manifest)).set_index("depth")
    ours20 = np.mean([v[0] for v in VALUES[(True, 20)]])
    assert list(table.index) == [20, 32, 56]
    assert table.loc[20, "ResNet, He et al. 2015 Table 6"] == "8.75"
    assert table.loc[56, "ResNet, He et al. 2015 Table 6"] == "6.97"
    assert table.loc[20, "ours − paper"] == f"{ours20 - 8.75:+.2f}"
    assert table.loc[20, "residual test error (%), ours"].startswith(f"{ours20:.2f} ± ")
    assert table.loc[56, PLAIN_REFERENCE_COLUMN] == "12.95 ± 0.22" and table.loc[32, PLAIN_REFERENCE_COLUMN] == "—"
    assert table.loc[32, "residual test error (%), ours"] == "not in grid"
    assert table.loc[20, "params, paper"] == "0.27M"


def test_all_diverged_cell_is_shown_not_dropped(tmp_path):
    runs = {(False, 20): [make_run(False, 20, s) for s in range(2)]}
    for run in runs[(False, 20)]:
        write_record(tmp_path, make_record(run, 3.0, 3.0, status="diverged"))
    table = grid_table(load_runs(tmp_path), manifest_for(runs, report="generic"))
    shown = display_table(summarize_cells(table, ["residual", "depth"]), ["residual", "depth"])
    assert shown.loc[0, "test error (%)"] == "diverged (2/2)" and shown.loc[0, "runs"] == "2 diverged"
    report = build_report(load_runs(tmp_path), load_histories(tmp_path), manifest_for(runs, report="generic"))
    assert "diverged (2/2)" in report.markdown


def test_a_generic_report_draws_validation_curves(store):
    path, manifest = store  # generic grids measure the test set at the end only (grid.REPORT_MEASUREMENTS)
    report = build_report(load_runs(path), load_histories(path), {**manifest, "report": "generic"})
    curves = report.figures["curves"]
    assert "validation error (solid)" in curves.get_suptitle() and "validation error (solid)" in report.markdown
    drawn = [line.get_ydata() for ax in curves.axes for line in ax.get_lines() if len(line.get_ydata()) == 2]
    assert any(np.isclose(y[0], y[1]) for y in drawn)  # a flat validation line (each run's val_error is constant)
    assert not any(np.isclose(y[0] - y[1], 2.5) for y in drawn)  # no test line (test + 5 / epoch falls by 2.5)
    assert "(He et al. 2015 Fig. 6)" not in report.markdown  # the degradation report's caption is its own


def test_markdown_table_escapes_and_shapes():
    import pandas as pd

    text = markdown_table(pd.DataFrame({"a": ["x|y", "z"], "b": [1.0, 2.5], "c": [True, False]}))
    lines = text.splitlines()
    assert lines[0] == "| a | b | c |" and lines[1] == "|---|---|---|"
    assert lines[2] == "| x\\|y | 1 | true |" and lines[3] == "| z | 2.5 | false |"


def png_size(figure) -> tuple[int, int, int]:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    image = Image.open(io.BytesIO(buffer.getvalue()))
    return len(buffer.getvalue()), *image.size


def test_degradation_report_header_tables_and_figures(store, tmp_path_factory):
    path, manifest = store
    report = build_report(load_runs(path), load_histories(path), manifest)
    text = report.markdown
    for fragment in ("# Ablation: deg", "synthetic (2000 train) (`synthetic`", "1500 train / 500 val / 500 test images",
                     "2 epochs per run", "batch 128", "Seeds: 3 per cell", "cpu (x86_64, 2 cores)",
                     "torch 2.14.1, python 3.11.7", "git abc123", "1 diverged", "1 missing",
                     "He et al. 2015, Table 6", "nabla0001/resnet", "degradation reproduced"):
        assert fragment in text, fragment
    assert set(report.figures) == {"test_error_by_cell", "curves", "final_vs_depth", "grad_norms"}
    assert set(report.tables) == {"trends"}
    curves = report.figures["curves"]
    assert [ax.get_title() for ax in curves.axes if ax.get_title()] == ["plain", "residual"]
    assert all(len(ax.get_lines()) >= 4 for ax in curves.axes[:2])  # 2 depths x (train, test)
    assert [ax.get_title() for ax in report.figures["grad_norms"].axes] == list(STAGES)
    for name, figure in report.figures.items():
        size, width, height = png_size(figure)
        assert size > 10_000 and width >= 400 and height >= 200, name
    written = write_report(report, tmp_path_factory.mktemp("out"))
    assert [p.name for p in written[:2]] == ["summary.csv", "report.md"] and all(p.stat().st_size > 0 for p in written)


def test_precision_line_names_each_setting_once():
    import pandas as pd

    from resnet_core.reports import _precision_text

    # One run recorded tf32_conv False, another (older) left it out: the same precision, said once.
    table = pd.DataFrame({"provenance.amp": ["fp32", "fp32"], "provenance.grad_scaler": [False, None],
                          "provenance.tf32_conv": [False, None], "provenance.channels_last": [True, True]})
    assert _precision_text(table) == "fp32, channels_last memory format"


def test_a_run_listed_twice_counts_once(tmp_path):
    # A manifest that names one run twice (as one written before cells were checked could): the cell's
    # runs, completed seeds and n come from distinct run ids, never from rows.
    run = make_run(False, 20, 0)
    write_record(tmp_path, make_record(run, 10.0, 5.0))
    manifest = manifest_for({(False, 20): [run, run]}, "generic")
    report = build_report(load_runs(tmp_path), load_histories(tmp_path), manifest)
    row = report.summary.iloc[0]
    assert (len(report.summary), row["runs"], row["completed"], row["test_error_n"]) == (1, 1, 1, 1)
    assert "- Runs: 1 in the grid: 1 completed" in report.markdown and "(single seed)" in report.markdown
