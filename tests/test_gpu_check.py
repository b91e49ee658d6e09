"""scripts/gpu_check.sh without a GPU: it parses, its step limits add up to the time it states, and
with a stand-in interpreter a failing step fails the script (with a summary), a relative OUTDIR
lands under the caller's directory, and the interpreter is $PYTHON or the `python` on PATH."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.sh"
BENCH_CALLS = re.compile(r"^bench \S+ \d+ (\d+)$", re.MULTILINE)
STEP_CALLS = re.compile(r"^\s*(?:if )?step \S+ (\d+) ", re.MULTILINE)


def test_the_script_parses():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_step_limits_add_up_to_the_stated_time():
    text = SCRIPT.read_text()
    minutes = int(re.search(r"at most (\d+) minutes", text).group(1))
    stated = int(re.search(r"add up to\s*#?\s*(\d+) s", text).group(1))
    limits = [int(s) for s in STEP_CALLS.findall(text)] + [int(s) for s in BENCH_CALLS.findall(text)]
    assert len(limits) == 8  # nvidia-smi, cuda, gpu-tests, 4 benchmarks, the training run
    assert sum(limits) == stated == minutes * 60


def fake_tools(folder: Path, python_status: dict[str, int]) -> Path:
    """A bin folder with `nvidia-smi` and a `python` whose exit status depends on what it runs."""
    folder.mkdir()
    cases = "\n".join(f'  *{word}*) exit {status} ;;' for word, status in python_status.items())
    (folder / "python").write_text(f'#!/bin/sh\necho "fake python $*"\necho "{{}}"\ncase "$*" in\n{cases}\nesac\nexit 0\n')
    (folder / "nvidia-smi").write_text("#!/bin/sh\necho 'fake nvidia-smi'\n")
    for tool in folder.iterdir():
        tool.chmod(0o755)
    return folder


def run_script(cwd: Path, outdir: str, bin_dir: Path, python: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHON", "RESNET_CORE_DATA")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    if python is not None:
        env["PYTHON"] = python
    return subprocess.run(["bash", str(SCRIPT), outdir], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_every_step_passing_exits_0_with_a_relative_outdir(tmp_path):
    bin_dir = fake_tools(tmp_path / "bin", {})
    done = run_script(tmp_path, "rel/out", bin_dir)
    assert done.returncode == 0, done.stdout + done.stderr
    out = tmp_path / "rel" / "out"  # under the caller's directory, not the repository's
    summary = (out / "summary.txt").read_text()
    assert summary.count("ok  ") == 7 and "FAILED" not in summary and "skipped train-resnet20" in summary
    assert (out / "bench-resnet56-512.json").read_text() == "{}\n"
    assert "fake python -m pytest" in (out / "gpu-tests.log").read_text()  # the `python` on PATH


@pytest.mark.parametrize("failing", ["pytest", "resnet_core.bench"])
def test_a_failing_step_fails_the_script_with_a_summary(tmp_path, failing):
    passing = fake_tools(tmp_path / "bin", {})
    failing_python = fake_tools(tmp_path / "failing", {failing: 3})
    done = run_script(tmp_path, str(tmp_path / "abs"), passing, python=str(failing_python / "python"))
    assert done.returncode == 1, done.stdout + done.stderr
    summary = (tmp_path / "abs" / "summary.txt").read_text()
    failed = "gpu-tests" if failing == "pytest" else "bench-resnet20-128"
    assert f"FAILED  {failed}" in summary and "exit status 3" in summary
    assert "ok      cuda" in summary  # the steps after a failure still ran
    assert "step(s) failed" in done.stderr and failed in done.stderr
