"""What every command line of the project shares: the common flags (defined once, with one default
and one error sentence each), one-line errors with exit code 2, Ctrl-C and SIGTERM as 130, and
:class:`Command`, which answers ``--help`` and malformed flags before the command's module is imported.

The commands live in ``resnet_core/commands/``: each command's flags in ``parsers.py`` (torch-free,
like this module), its body in ``<command>.py``. They are installed as console scripts (``resnet-train``,
``resnet-grid``, ``resnet-grid-report``, ``resnet-study``, ``resnet-study-report``; see pyproject.toml);
``python -m resnet_core.train|models|bench`` and, in a checkout, ``studies/*.py`` and ``ablation/*.py``
are thin wrappers of them.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class UsageError(ValueError):
    """An error the user caused (a bad flag, path or value): printed as one line, exit code 2."""


@dataclass(frozen=True)
class Flag:
    """One shared command-line flag. ``minimum`` (for numbers) is checked by :func:`check_flags`
    with one sentence for every command: ``--epochs 0: expected an integer >= 1 (epochs per run)``."""

    name: str
    help: str
    type: Callable[[str], Any] | None = None
    default: Any = None
    minimum: float | None = None
    meaning: str = ""
    action: str | None = None

    @property
    def dest(self) -> str:
        return self.name.lstrip("-").replace("-", "_")

    def add_to(self, parser: argparse.ArgumentParser | Any, help: str | None = None, required: bool = False) -> None:
        kwargs: dict[str, Any] = {"help": (help or self.help).replace("%", "%%")}  # argparse formats help with %
        if required:
            kwargs["required"] = True
        if self.action:
            kwargs["action"] = self.action
            if self.action == "append":
                kwargs.update(default=[], metavar="FIELD=VALUE")
        else:
            kwargs.update(type=self.type, default=self.default)
        parser.add_argument(self.name, **kwargs)


DATA_HELP = ("cifar10, cifar100, synthetic[:N] or an ImageFolder directory "
             "(default: $RESNET_CORE_DATA, else cifar10)")

SHARED_FLAGS: dict[str, Flag] = {flag.dest: flag for flag in (
    Flag("--data", DATA_HELP, str),
    Flag("--subset", "train on N images of the training split (seeded, class-stratified; replaces the budget's subset)",
         int, minimum=1, meaning="training images"),
    Flag("--val-size", "validation images carved from the training split (default 5,000; data of at most 5,000 "
         "training images hold out 10%)", int, minimum=0, meaning="validation images"),
    Flag("--epochs", "epochs per run (replaces the budget's or recipe's length)", int, minimum=1,
         meaning="epochs per run"),
    Flag("--iterations", "iterations per run (replaces the budget's or recipe's length)", int, minimum=1,
         meaning="iterations per run"),
    Flag("--budget", "training budget: auto (by device), quick (CPU-sized), standard (GPU-sized) or paper "
         "(He et al. 2015: 64k iterations); see resnet_core/budgets.py", str, default="auto"),
    # Not given (None) means seed 0 everywhere; None lets a command tell "not given" from 0 (resnet-train
    # applies flags over a --config file only when they are given).
    Flag("--seed", "random seed (default 0)", int, minimum=0, meaning="a random seed"),
    Flag("--seeds", "number of seeds per cell: seeds 0..N-1 (default: the grid file's, else 3)", int, minimum=1,
         meaning="seeds per cell"),
    Flag("--device", "auto, cpu, cuda, cuda:N or mps (default auto)", str, default="auto"),
    Flag("--workers", "parallel worker processes (default 0: one per GPU slot, or 1 on a CPU)", int, default=0,
         minimum=0, meaning="worker processes"),
    Flag("--workers-per-gpu", "at most this many workers per GPU (default 1; more --workers than GPU slots "
         "is an error)", int, default=1, minimum=1, meaning="workers per GPU"),
    Flag("--gpu-memory-fraction", "cap each worker process at this share of its GPU's memory (0-1; default no "
         "cap): a run that outgrows it fails alone instead of starving the other runs on the GPU", float),
    Flag("--threads", "CPU threads per worker (default: the cores this process may use / workers); CPU "
         "results repeat bit for bit only at the same thread count", int, minimum=1,
         meaning="CPU threads per worker"),
    Flag("--fuse", "train runs that differ only in their seed as one fused model: auto (on GPUs only), on or "
         "off (default auto); records and run ids are the same either way", str, default="auto"),
    Flag("--results", "results directory: run records in DIR/runs, reports below it (default results)",
         str, default="results"),
    Flag("--set", "fix a config field for every run, e.g. --set depth=56 --set amp=off (repeatable)",
         action="append"),
    Flag("--quiet", "no progress bars", action="store_true"),
    Flag("--dry-run", "print the plan (and a time estimate) and train nothing", action="store_true"),
    Flag("--model", "model preset (default resnet20; python -m resnet_core.models --table lists them)", str,
         default="resnet20"),
    Flag("--grid", "a built-in grid name (listed below) or a path to a grid .toml file", str),
    Flag("--study-name", "the study's name (default: <space>-<model>-<data>-<budget>)", str),
    Flag("--storage", "where the study lives: an Optuna RDB URL (postgresql://..., sqlite:///...) or a journal "
         "file path (default: <results>/studies/<study name>.log)", str),
    Flag("--no-figures", "write tables and report.md only, no figures", action="store_true"),
)}


def builtin_names(folder: str) -> list[str]:
    """The built-in grids (``folder="grids"``) or search spaces (``"spaces"``): the TOML files shipped
    inside the package, listed without importing the modules that read them (help texts need no torch)."""
    return sorted(path.stem for path in (Path(__file__).resolve().parent / folder).glob("*.toml"))


def add_flags(parser: argparse.ArgumentParser | Any, *names: str, help: dict[str, str] | None = None,
              required: Collection[str] = ()) -> None:
    """Add the shared flags ``names`` (dest names: ``val_size``) to ``parser``; ``help`` may say
    what a flag means for this command (its default and its check stay the shared ones); the flags
    named in ``required`` must be given to this command."""
    for name in names:
        if name not in SHARED_FLAGS:
            raise KeyError(f"no shared flag {name!r}: expected one of {', '.join(SHARED_FLAGS)}")
    if set(required) - set(names):
        raise KeyError(f"required flags {sorted(set(required) - set(names))} are not among those added: {names}")
    for name in names:
        SHARED_FLAGS[name].add_to(parser, (help or {}).get(name), required=name in required)


def check_flags(args: argparse.Namespace) -> None:
    """Every shared number flag the command has, against its minimum: one line naming the flag."""
    for name, flag in SHARED_FLAGS.items():
        value = getattr(args, name, None)
        if flag.minimum is not None and value is not None and value < flag.minimum:
            raise UsageError(f"{flag.name} {value}: expected an integer >= {flag.minimum:g} ({flag.meaning})")


def check_positive_seconds(args: argparse.Namespace, *names: str) -> None:
    """Durations (``--timeout``): a number of seconds above 0, or not given."""
    for name in names:
        value = getattr(args, name, None)
        if value is not None and not value > 0:
            raise UsageError(f"--{name.replace('_', '-')} {value}: expected a number of seconds > 0")


def os_error_line(exc: OSError) -> str:
    """``<path>: <cause>`` for an OSError that names a path (a read-only folder, a full disk), else
    its own message: the user fixes the environment, so the line says where and what."""
    if exc.filename is None:
        return str(exc) or type(exc).__name__
    cause = exc.strerror or type(exc).__name__
    target = f"{exc.filename} -> {exc.filename2}" if exc.filename2 is not None else str(exc.filename)
    return f"{target}: {cause}"


def run_cli(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run ``main(argv)`` and turn user errors into one line on stderr and exit code 2.

    ``ValueError`` (bad config values) and any ``OSError`` (a bad path, a read-only or full disk)
    become ``error: <message>``; Ctrl-C exits 130.
    """
    try:
        return main(argv)
    except KeyboardInterrupt:
        print("interrupted: finished work is saved; run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ValueError, OSError) as exc:
        text = os_error_line(exc) if isinstance(exc, OSError) else str(exc)
        message = text.splitlines()[0] if text else type(exc).__name__
        print(f"error: {message}", file=sys.stderr)
        return EXIT_USAGE


def entry(main: Callable[[list[str] | None], int]) -> None:
    """A console script's body: SIGTERM (kill, a batch system's time limit) stops like Ctrl-C (records
    flushed, checkpoints kept, exit 130), and user errors are one line with exit code 2."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    sys.exit(run_cli(main))


@dataclass(frozen=True)
class Command:
    """A command line as its console script (and ``python -m``, and a checkout's wrapper) starts it:
    the flags are parsed and the shared ones checked first, by ``parser`` (torch-free), so ``--help``
    and a malformed flag are answered without importing torch, Optuna or pandas; then ``module``'s
    ``console()`` runs the command (its ``main`` parses the same flags again, which costs nothing
    next to the imports)."""

    module: str
    parser: Callable[[], argparse.ArgumentParser]

    def parse(self, argv: list[str] | None = None) -> int:
        check_flags(self.parser().parse_args(argv))
        return 0

    def __call__(self) -> None:
        code = run_cli(self.parse)
        if code:
            sys.exit(code)
        importlib.import_module(self.module).console()
