"""The Python half of scripts/gpu_check.sh: what the device is, and the summary of all parts.

    python scripts/gpu_check_report.py env DEVICE WORK/env.json   # the "env" part (exit 1: no CUDA)
    python scripts/gpu_check_report.py summary WORK OUTDIR        # OUTDIR/summary.md and gpu_check.json

WORK is the script's folder of per-part logs and results, with parts.tsv (one line per part: name,
ran or skipped, exit status, seconds, limit, why skipped). The summary judges each part (a study
that stopped short of its trials only because of its time cap passes) and exits 1 when one failed.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PAPER_ITERATIONS = 64000  # He et al. 2015: the CIFAR-10 recipe's length
TIMED_OUT = 124  # timeout(1)'s exit status


# -------------------------------------------------------------------------------- env

def env(device: str, path: Path) -> int:
    """Write what this machine is (torch, CUDA, the device's name, nvidia-smi's line) to ``path``."""
    import torch

    from resnet_core.devices import device_name
    from resnet_core.provenance import git_commit

    facts: dict[str, Any] = {"device": device, "torch": torch.__version__, "cuda": torch.version.cuda,
                             "python": platform.python_version(),
                             "commit": os.environ.get("GPU_CHECK_COMMIT") or git_commit()}
    if shutil.which("nvidia-smi"):
        query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
        facts["nvidia_smi"] = subprocess.run(query, capture_output=True, text=True, timeout=10).stdout.strip()
    usable = device != "cuda" or torch.cuda.is_available()
    if usable:
        facts["device_name"] = device_name(torch.device(device))
    if usable and device == "cuda":
        facts["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
    path.write_text(json.dumps(facts, indent=1) + "\n")
    print(json.dumps(facts))
    if not usable:
        print("torch sees no CUDA device", file=sys.stderr)
    return 0 if usable else 1


# ------------------------------------------------------------------------ the parts' numbers

def read_parts(work: Path) -> dict[str, dict[str, Any]]:
    parts = {}
    for line in (work / "parts.tsv").read_text().splitlines():
        name, state, rc, seconds, limit, note = (line.split("\t") + [""] * 6)[:6]
        parts[name] = {"state": state, "rc": int(rc) if rc else None, "seconds": int(seconds) if seconds else None,
                       "limit": int(limit) if limit else None, "note": note}
    return parts


def records(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((folder / "runs").glob("*.json"))]


def run_rate(record: dict[str, Any]) -> float | None:
    """Training images/s of a run: the median over its epochs, the first left out when there are
    others (it holds cuDNN's algorithm search and compilation)."""
    rates = [epoch["images_per_s"] for epoch in record["history"]]
    return statistics.median(rates[1:] if len(rates) > 1 else rates) if rates else None


def train_numbers(work: Path, name: str) -> tuple[str, dict[str, Any]]:
    """One run (or a fused group's members): images/s and the extrapolation to the paper's 64k iterations."""
    found = records(work / name)
    if not found:
        return "no run record", {}
    rates = [run_rate(r) or 0.0 for r in found]
    first = found[0]
    iterations, batch = first["final"].get("iterations") or 0, first["config"]["train"]["batch_size"]
    wall = max(r["wall_seconds"] for r in found)
    raw = {"runs": len(found), "statuses": sorted({r["status"] for r in found}), "iterations": iterations,
           "images_per_s_per_run": rates, "images_per_s": sum(rates), "wall_seconds": wall,
           "paper_seconds_steps": PAPER_ITERATIONS * batch * len(found) / sum(rates) if sum(rates) else None,
           "paper_seconds_whole": wall / iterations * PAPER_ITERATIONS if iterations else None,
           "test_error": [r["final"].get("test_error") for r in found]}
    groups = {r["provenance"].get("fused_group", {}).get("size") for r in found}
    raw["fused_group"] = groups == {len(found)} and len(found) > 1
    text = (f"{len(found)} run(s) {'/'.join(raw['statuses'])}" + (" as one fused group" if raw["fused_group"] else "")
            + f", {iterations:,} it: {raw['images_per_s']:,.0f} img/s"
            + (f" ({', '.join(f'{v:,.0f}' for v in rates)} per run)" if len(found) > 1 else "")
            + (f"; 64k it extrapolated {raw['paper_seconds_whole']:,.0f} s whole run, "
               f"{raw['paper_seconds_steps']:,.0f} s of steps" if raw["paper_seconds_whole"] else ""))
    return text, raw


def bench_numbers(work: Path, name: str) -> tuple[str, dict[str, Any]]:
    path = work / f"{name}.json"
    if not path.exists():
        return "no result", {}
    result = json.loads(path.read_text())
    measured = [r for r in result["rows"] if r["aggregate_ips"] is not None]
    if not measured:
        return "no row measured", result
    best = max(measured, key=lambda r: r["aggregate_ips"])
    return (f"{len(measured)} of {len(result['rows'])} rows measured; best aggregate {best['aggregate_ips']:,.0f} "
            f"img/s ({best['mode']}, batch {best['batch']})"), result


def tests_numbers(work: Path, name: str) -> tuple[str, dict[str, Any]]:
    log = work / f"{name}.log"
    lines = [line.strip("= ") for line in (log.read_text().splitlines() if log.exists() else [])
             if re.search(r"\d+ (passed|failed|error|skipped)", line)]
    return (lines[-1] if lines else "no pytest summary line"), {}


def study_numbers(work: Path, name: str) -> tuple[str, dict[str, Any]]:
    found = records(work / name)
    counts: dict[str, int] = {}
    for record in found:
        counts[record["status"]] = counts.get(record["status"], 0) + 1
    text = f"{len(found)} trial run(s): " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) if found else "no trial ran"
    return text, {"statuses": counts}


def env_numbers(work: Path, name: str) -> tuple[str, dict[str, Any]]:
    path = work / "env.json"
    if not path.exists():
        return "", {}
    facts = json.loads(path.read_text())
    return facts.get("nvidia_smi") or facts.get("device_name", ""), facts


NUMBERS = {"env": env_numbers, "gpu-tests": tests_numbers, "bench-resnet20": bench_numbers,
           "bench-resnet56": bench_numbers, "train-resnet20": train_numbers, "fused-resnet56": train_numbers,
           "study": study_numbers}


def verdict(name: str, part: dict[str, Any], raw: dict[str, Any]) -> str:
    """ok, skipped or FAILED (why). A study's exit status 1 means it stopped short of its trials: a
    pass when that was the time cap (no trial failed), since the part is capped by design."""
    if part["state"] == "skipped":
        return "skipped"
    if part["rc"] == 0:
        return "ok"
    if name == "study" and part["rc"] == 1 and raw.get("statuses") and "failed" not in raw["statuses"]:
        return "ok (capped by time)"
    return "FAILED (timed out)" if part["rc"] == TIMED_OUT else f"FAILED (exit status {part['rc']})"


# ---------------------------------------------------------------------------- the summary

def summary(work: Path, out: Path) -> int:
    parts, results, lines = read_parts(work), {}, []
    for name, part in parts.items():
        text, raw = NUMBERS.get(name, lambda w, n: ("", {}))(work, name) if part["state"] == "ran" else (part["note"], {})
        results[name] = {**part, "verdict": verdict(name, part, raw), "numbers": text, "raw": raw}
        took = "" if part["seconds"] is None else f"{part['seconds']} of {part['limit']}"
        lines.append(f"| {name} | {results[name]['verdict']} | {took} | {text} |")
    facts = results.get("env", {}).get("raw", {})
    text = [f"# GPU check: {facts.get('device_name', 'device unknown')}", "",
            f"torch {facts.get('torch', '?')} (CUDA {facts.get('cuda')}), python {facts.get('python', '?')}, "
            f"commit {facts.get('commit', '?')}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
            "`scripts/gpu_check.sh` (its raw numbers: gpu_check.json)", "",
            "| part | result | seconds (of limit) | numbers |", "|---|---|---|---|", *lines]
    for name, result in results.items():
        if name.startswith("bench-") and result["raw"].get("rows"):
            from resnet_core.bench import heading, markdown_table  # imports torch: only where a table is due

            text += ["", f"## {name}", "", heading(result["raw"]), "", markdown_table(result["raw"]["rows"])]
    (out / "summary.md").write_text("\n".join(text) + "\n")
    (out / "gpu_check.json").write_text(json.dumps(results, indent=1) + "\n")
    print("\n".join(text))
    return 1 if any(r["verdict"].startswith("FAILED") for r in results.values()) else 0


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "env":
        return env(argv[1], Path(argv[2]))
    if len(argv) == 3 and argv[0] == "summary":
        return summary(Path(argv[1]), Path(argv[2]))
    print("usage: gpu_check_report.py env DEVICE PATH | summary WORK OUTDIR", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
