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
``plan`` checking a request before any trial; ``estimate`` what the plan says and how long it takes; ``rungs`` the ranking at every rung and where
trials diverged; ``importance`` parameter importances at a rung; ``tables``/``figures`` report content;
``report`` report files; ``experiment`` the study as one experiment (order -> plan -> execute ->
report), which the command drives.

The package exports what the command lines use; everything else is imported from its module
(``from resnet_core.study.final import final_table``).
"""

from resnet_core.study.experiment import StudyOrder, execute_study, plan_study, report_study
from resnet_core.study.plan import StudyRequest
from resnet_core.study.report import report_warnings, write_reports
from resnet_core.study.storage import default_storage

__all__ = [
    "StudyOrder", "StudyRequest", "default_storage", "execute_study", "plan_study", "report_study", "report_warnings",
    "write_reports",
]
