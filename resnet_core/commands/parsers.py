"""Every command's flags, and the commands as their console scripts start them (pyproject.toml).

Torch-free on purpose: this module imports only cli.py and budgets.py, so ``--help`` and a
malformed flag are answered in a fraction of a second; a command's module (``commands/<name>.py``,
which imports torch, Optuna or pandas) is imported only once its flags have parsed
(:class:`resnet_core.cli.Command`). Help texts that list choices read them from torch-free places:
the budgets, and the built-in grids and spaces by file name (``cli.builtin_names``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from resnet_core.budgets import AUTO, GRID_BUDGETS, STUDY_BUDGETS
from resnet_core.cli import Command, UsageError, add_flags, builtin_names

# The names of recipes.RECIPES (which imports torch through config.py); tests/test_help_speed.py
# checks that they are the registry's.
RECIPE_NAMES = ("paper", "tutorial", "quick")

BENCH_DESCRIPTION = """Training throughput of the engine's step: modes x batch sizes, side by side in one process.

    python -m resnet_core.bench --model resnet20 --device cuda --batch 128,512 \\
        --modes eager,compiled,cudagraphs,fused1,fused3,fused8 --processes 2,4 --json bench.json

Modes (one row per batch size each):
  eager       the engine's step as a run trains it (engine.train_step): uint8 images indexed on the
              device, on-device pad-crop-flip, autocast, channels_last, the optimizer step, plus what
              the epoch loop adds per step (learning rate, loss sums on the device, the sampled
              per-stage gradient norms), at the engine's defaults for the device;
  compiled    the same with the model torch.compile'd (static shapes, as within one run);
  cudagraphs  compiled with mode "reduce-overhead" (CUDA graphs): CUDA only, "n/a" elsewhere;
  fusedK      K runs (seeds 0..K-1) trained as one fused model by the fused trainer's step
              (fused_fit.group_step: each member its own batch of --batch images, data order and
              augmentation draw): images/s per member and in aggregate (K x per member).
--processes N,...: N worker processes on the same device, each training its own model with the
eager step, timed over one shared interval (aggregate: all their images over the span from the
first start to the last end).

A measurement runs --steps steps after --warmup and synchronises the device only at its two ends:
no epoch restarts and no host reads inside it. Rounds alternate the rows so that drift in machine
load hits all alike; each figure is the median over --rounds. A mode that cannot run (out of
memory, say) is a row saying so, the others still run, and the command exits 1. Performance claims
come from here, never from timed tests.
"""
DEFAULT_MODES = "eager,compiled,cudagraphs,fused1,fused3,fused8"


def _budget_help(auto: str, budgets: dict) -> str:
    return f"training budget: {AUTO} ({auto}), " + ", ".join(f"{b.name} ({b.note})" for b in budgets.values())


def grid_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="resnet-grid", description="Run an ablation grid: every cell x seed is one "
                                     "fit(); finished runs are never trained again.",
                                     epilog="built-in grids: " + ", ".join(builtin_names("grids")))
    add_flags(parser, "grid", required=("grid",))
    parser.add_argument("--axis", action="append", default=[], metavar="FIELD=V1,V2", help="replace or add an axis (repeatable)")
    add_flags(parser, "seeds", "budget", help={"budget": _budget_help("quick on a CPU, paper on a GPU", GRID_BUDGETS)})
    length = parser.add_mutually_exclusive_group()
    add_flags(length, "epochs", "iterations")
    add_flags(parser, "data", "subset", "val_size", "device", "workers", "workers_per_gpu", "gpu_memory_fraction",
              "threads", "fuse", "results", "set", "quiet", "dry_run",
              help={"workers": "parallel runs (default 0: one per GPU slot, or 1 on a CPU); not used with --dask",
                    "data": "cifar10, cifar100, synthetic[:N] or an ImageFolder directory (default: the grid "
                            "file's data, else $RESNET_CORE_DATA, else cifar10)"})
    parser.add_argument("--dask", metavar="ADDRESS", help="run on a Dask cluster: a scheduler address (tcp://HOST:8786) "
                        "or local:N for a local cluster of N worker processes")
    return parser


def grid_report_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="resnet-grid-report", description="Rebuild an ablation grid's report from "
                                     "its run records (trains nothing).",
                                     epilog="built-in grids: " + ", ".join(builtin_names("grids")))
    add_flags(parser, "grid", "results", required=("grid",),
              help={"grid": "a built-in grid name (listed below), or the grid's .toml file as given to resnet-grid"})
    return parser


def _study_val_help() -> str:
    ceilings = [f"{b.search.val_size:,} on {b.name}" for b in STUDY_BUDGETS.values() if b.search.val_size is not None]
    return ("validation images a trial is judged on (default: the budget's, a ceiling that small data keep below: "
            + ", ".join(ceilings) + "; 5,000 on the others, as for a run)")


def study_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="resnet-study", description="Run an Optuna study of the ResNet harness "
                                     "(thin driver: flags -> resnet_core.study -> reports).")
    add = parser.add_argument
    add("--trials", type=int, help="target number of finished (COMPLETE + PRUNED) trials in the study")
    add("--add", type=int, help="run N more finished trials than the study holds now")
    add_flags(parser, "study_name", "storage")
    add("--space", default="recipe", help=f"a built-in space ({', '.join(builtin_names('spaces'))}: resnet_core/spaces) "
        "or a .toml path")
    add_flags(parser, "model", help={"model": "model preset the space starts from (default resnet20)"})
    add("--sampler", default="tpe", help="tpe, random, qmc, cmaes or gp (seeded by --seed)")
    add("--pruner", default="auto", help="auto (the budget's: successive halving on quick and standard, median on "
                                         "paper), sha, hyperband, median or none")
    add("--allow-change", action="store_true", help="go on with another --sampler/--pruner than the study used "
                                                    "so far (the report says from which trial)")
    add_flags(parser.add_mutually_exclusive_group(), "epochs", "iterations",
              help={"epochs": "epochs of a full trial (replaces the budget's length; pruned trials stop earlier)",
                    "iterations": "iterations of a full trial (replaces the budget's length; the paper's is 64,000)"})
    add_flags(parser, "seed", "budget", "data", "subset", "val_size", "device", "workers", "workers_per_gpu",
              "gpu_memory_fraction", "threads", "fuse", "results", "set", "quiet", "dry_run",
              help={"seed": "sampler seed and the run seed of every trial (default 0)",
                    "budget": _budget_help("quick on a CPU, standard on a GPU", STUDY_BUDGETS),
                    "val_size": _study_val_help(),
                    "subset": "trials train on N images of the training split (seeded, class-stratified; replaces "
                              "the budget's subset); the final stage trains on the whole split",
                    "fuse": "the final stage's seeds train as one fused model: auto (on GPUs only), on or off "
                            "(default auto; trials train alone); records and run ids are the same either way"})
    add("--concurrency-from", metavar="BENCH_JSON", help="a benchmark result with --processes rows (python -m "
        "resnet_core.bench --processes 1,2,4 --json PATH): the time estimate counts workers sharing a GPU at its "
        "measured speed-up (default: as one GPU, since without MPS they take turns)")
    add("--timeout", type=float, help="start no new trial after this many seconds")
    add("--stale-after", type=float, default=600.0, help="seconds without a heartbeat before a trial on another "
                                                           "host counts as dead and is retried (RDB storages beat "
                                                           "every stale-after/3 s; local dead pids are seen at once)")
    add("--compare", metavar="FIELD", help="fair comparison: one tuned sub-study per value of FIELD")
    add("--compare-values", help="comma-separated values of FIELD (default: the space's choices)")
    add("--final-seeds", type=int, help="final stage: seeds re-training the best config on the full training split "
                                        "(default: the budget's, 1 on quick, 3 on the others; 3 per value with "
                                        "--compare; 0 skips it)")
    add("--final-epochs", type=int, help="final stage: epochs of each run (default: the SGD steps of a full trial)")
    add("--final-top", type=int, default=1, help="final stage: the best K trials with distinct params each get it, "
                                                 "ranked by final-stage validation error (default 1)")
    add_flags(parser, "no_figures")
    return parser


def study_report_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="resnet-study-report", description="Rebuild a study's reports from its "
                                     "storage and run records (no training).")
    add_flags(parser, "study_name", "storage", "results", required=("study_name",),
              help={"study_name": "a study, or the group name of a --compare study"})
    parser.add_argument("--out", type=Path, help="output folder (default: <results>/studies/<name>/)")
    add_flags(parser, "no_figures")
    return parser


def train_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="resnet-train", description="Train one configuration from the command line.")
    add_flags(parser, "model")
    parser.add_argument("--recipe", default="paper", help=f"training recipe: {', '.join(RECIPE_NAMES)} (default paper)")
    parser.add_argument("--config", type=Path, help="TOML file of field = value pairs (applied before flags)")
    length = parser.add_mutually_exclusive_group()
    add_flags(length, "epochs", "iterations", help={"epochs": "epochs (replaces the recipe's length)",
                                                    "iterations": "iterations (replaces the recipe's length)"})
    add_flags(parser, "data", "subset", "val_size", "seed", "device", "threads", "results", "set", "quiet", "dry_run",
              help={"seed": "the run's seed (default 0)",
                    "subset": "train on N images of the training split (seeded, class-stratified; default all)",
                    "threads": "CPU threads for torch (default: the cores this process may use)",
                    "set": "set a config field, e.g. --set depth=56 --set amp=off (repeatable; applied last)",
                    "dry_run": "print the resolved config and its run id, train nothing (the data are read: a "
                                 "model they cannot train is refused as training would)"})
    parser.add_argument("--lr", type=float)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--optimizer", help="sgd, adam or adamw")
    parser.add_argument("--schedule", help="step, cosine, onecycle or constant")
    parser.add_argument("--weight-decay", type=float)
    return parser


def models_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m resnet_core.models", description="Show a model's module tree, "
                                     "parameter count and forward MACs per 32x32 image.")
    parser.add_argument("name", nargs="?", help="a model preset, e.g. resnet20, plain56 or preact-resnet164 "
                                                "(--table lists every preset)")
    add_flags(parser, "set", help={"set": "set a ModelConfig field, e.g. --set depth=56 (repeatable)"})
    parser.add_argument("--table", action="store_true", help="params and MACs of every preset")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    return parser


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str):  # a malformed flag: one line and exit 2, as every other error of the benchmark
        raise UsageError(message)


def bench_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="python -m resnet_core.bench", description=BENCH_DESCRIPTION,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add_flags(parser, "model", "device")
    add("--modes", default=DEFAULT_MODES, help=f"comma-separated modes (default {DEFAULT_MODES}); '' for none")
    add("--batch", default="128,512", help="comma-separated batch sizes (per run; default 128,512)")
    add("--processes", default="", help="comma-separated counts of concurrent worker processes (default none)")
    add("--steps", type=int, default=20, help="steps per measurement")
    add("--rounds", type=int, default=3, help="alternating rounds; the median is reported")
    add("--warmup", type=int, default=5, help="untimed steps per row first (compiling happens here)")
    add("--time-limit", type=float, help="seconds: no row is set up that would not be ready by then (compiled rows "
                                          "are set up last), and no round after the first starts after it")
    add("--json", type=Path, help="also write the result as JSON to this file")
    return parser


# The console scripts (pyproject.toml) and the `python -m` / checkout wrappers start these.
resnet_grid = Command("resnet_core.commands.grid", grid_parser)
resnet_grid_report = Command("resnet_core.commands.grid_report", grid_report_parser)
resnet_study = Command("resnet_core.commands.study", study_parser)
resnet_study_report = Command("resnet_core.commands.study_report", study_report_parser)
resnet_train = Command("resnet_core.commands.train", train_parser)
models = Command("resnet_core.commands.models", models_parser)
bench = Command("resnet_core.commands.bench", bench_parser)
