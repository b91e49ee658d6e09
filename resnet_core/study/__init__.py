"""Optuna studies over the harness: search spaces from TOML, the objective, storage, parallel
workers, recovery of trials whose worker died, and fair comparisons of one architectural choice.

The objective is the VALIDATION error (%) of the final epoch (docs/DESIGN.md: the test set never
chooses). Each trial is one ``fit`` call (:func:`resnet_core.engine.fit` unless another is passed
in) whose run record is linked from the trial (user attr ``run_id``); pruning lives in fit's
per-epoch callback. Workers are processes sharing one storage (not ``n_jobs`` threads: samplers
re-seed threads and GPUs want a process each).

Modules, each importing only those above it:
``common`` constants and small helpers; ``space`` search spaces; ``urls`` password masking;
``journal`` the journal file store; ``recovery`` trials of dead workers; ``storage`` opening and
checking stores; ``spec`` the study spec; ``search`` samplers, pruners, creating a study;
``objective`` one trial; ``workers`` processes running trials; ``final`` the final stage's runs;
``outcome`` what the final stage answers (tuned against untuned); ``compare`` --compare groups;
``plan`` checking a request before any trial; ``rungs`` the ranking at every rung and where
trials diverged; ``importance`` parameter importances at a rung; ``tables``/``figures`` report content;
``report`` report files.

The package exports what the command lines use; everything else is imported from its module
(``from resnet_core.study.final import final_table``).
"""

from resnet_core.study.compare import compare_specs
from resnet_core.study.experiment import StudyOrder, StudyPlan, execute_study, plan_study, report_study
from resnet_core.study.final import FinalStage, train_finals
from resnet_core.study.plan import (
    StudyRequest, check_resumable, concurrency_from_bench, current_counts, estimate, plan, plan_lines,
)
from resnet_core.study.report import console_summary, report_warnings, write_reports
from resnet_core.study.storage import default_storage, open_storage
from resnet_core.study.workers import run_study

__all__ = [
    "FinalStage", "StudyRequest", "check_resumable", "compare_specs", "concurrency_from_bench", "current_counts",
    "default_storage", "estimate", "open_storage", "plan", "plan_lines", "report_warnings", "run_study",
    "train_finals", "write_reports", "console_summary", "StudyOrder", "StudyPlan", "execute_study", "plan_study",
    "report_study",
]
