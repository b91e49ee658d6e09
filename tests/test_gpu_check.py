"""scripts/gpu_check.sh without a GPU: it parses, its part limits add up to the time it states, its
CPU-safe parts run end to end in smoke mode (tiny sizes, synthetic data) into a summary a commit can
hold, a failing part fails the script with a summary, and the interpreter is $PYTHON or the `python`
on PATH. Nothing here asserts a speed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.sh"
PARTS = ["env", "wheels", "gpu-tests", "bench-resnet20", "bench-resnet56", "train-resnet20", "fused-resnet56", "study"]


def test_the_script_parses():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_part_limits_add_up_to_the_stated_time():
    text = SCRIPT.read_text()
    minutes = int(re.search(r"at most (\d+) minutes", text).group(1))
    stated = int(re.search(r"add up to (\d+) s", text).group(1))
    limits = dict(re.findall(r"\[([\w-]+)\]=(\d+)", re.search(r"^declare -A LIMIT=\((.*)\)$", text, re.M).group(1)))
    assert list(limits) == PARTS
    assert sum(map(int, limits.values())) == stated == minutes * 60


def run_script(cwd: Path, outdir: str, *args: str, python: str | None = sys.executable, path_first: Path | None = None,
               **env_vars: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPU_CHECK_") and k not in ("PYTHON", "RESNET_CORE_DATA")}
    env.update(TMPDIR=str(cwd), GPU_CHECK_SMOKE="1", **env_vars)
    if python is not None:
        env["PYTHON"] = python
    if path_first is not None:
        env["PATH"] = f"{path_first}{os.pathsep}{env['PATH']}"
    return subprocess.run(["bash", str(SCRIPT), outdir, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def summary_rows(out: Path) -> dict[str, str]:
    """Each part's verdict, from the summary's first table (in the order of the parts)."""
    rows = [line.split(" | ") for line in (out / "summary.md").read_text().splitlines() if line.startswith("| ")]
    return {cells[0][2:]: cells[1] for cells in rows if cells[0][2:] in PARTS}


def test_the_smoke_run_fills_a_summary_with_every_part(tmp_path):
    done = run_script(tmp_path, "rel/out")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = tmp_path / "rel" / "out"  # under the caller's directory, not the repository's
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "gpu_check.log", "summary.md"]
    verdicts = summary_rows(out)
    assert list(verdicts) == PARTS
    assert verdicts["gpu-tests"] == "skipped" and verdicts["env"] == verdicts["train-resnet20"] == "ok"
    assert verdicts["bench-resnet20"] == verdicts["bench-resnet56"] == "ok" and "FAILED" not in verdicts.values()
    summary = (out / "summary.md").read_text()
    assert "## bench-resnet56" in summary and "| fused2 | 8 | 2 |" in summary and "64k it extrapolated" in summary
    assert "3 run(s) completed as one fused group" in summary  # fused-resnet56
    raw = json.loads((out / "gpu_check.json").read_text())
    assert [r["mode"] for r in raw["bench-resnet20"]["raw"]["rows"]] == ["eager", "cudagraphs", "fused2"]
    assert raw["train-resnet20"]["raw"]["iterations"] == 4


def test_a_failing_part_fails_the_script_after_the_others_ran(tmp_path):
    done = run_script(tmp_path, str(tmp_path / "abs"), str(tmp_path / "no-such-data"),
                      GPU_CHECK_ONLY="train-resnet20,study")
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    verdicts = summary_rows(tmp_path / "abs")
    assert list(verdicts) == ["train-resnet20", "study"]  # only the parts asked for; the study ran after the failure
    assert verdicts["train-resnet20"] == "FAILED (exit status 2)" and verdicts["study"] == "FAILED (exit status 2)"
    assert "a part failed" in done.stderr


def test_the_interpreter_is_the_python_on_path(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text('#!/bin/sh\necho "fake python $*"\n')
    (bin_dir / "python").chmod(0o755)
    done = run_script(tmp_path, "out", python=None, path_first=bin_dir, GPU_CHECK_ONLY="env")
    assert done.returncode == 1 and "no summary was written" in done.stderr
    assert "fake python scripts/gpu_check_report.py env cpu" in (tmp_path / "out" / "gpu_check.log").read_text()
