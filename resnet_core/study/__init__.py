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
"""

from resnet_core.study.common import (
    FINAL_SEED_BASE, FINISHED, MAX_CONSECUTIVE_FAILURES, MAX_RETRIES, TrialFailed,
)
from resnet_core.study.compare import compare_specs
from resnet_core.study.final import (
    FinalStage, final_config, final_interval, final_runs, final_table, train_final, train_finals,
)
from resnet_core.study.figures import (
    history_figure, importance_figure, isolation_figure, learning_curves_figure, parallel_figure, slice_figure,
    top_params,
)
from resnet_core.study.importance import RungImportances, deepest_rung, rung_importances, rung_study
from resnet_core.study.journal import InterruptSafeJournal, RepairingJournalFile, damaged_tail, deferred_interrupts
from resnet_core.study.objective import Objective, matching_data
from resnet_core.study.plan import (
    Setup, StudyRequest, check_resumable, concurrency_from_bench, current_counts, estimate, plan, plan_lines,
)
from resnet_core.study.recovery import (
    RetryStaleTrial, heartbeat_settings, recover_stale_trials, requeue, stale_reason, unmarked_reason,
)
from resnet_core.study.report import (
    best_command, console_summary, open_study_or_group, report_context, report_warnings, write_compare_report, write_reports,
    write_study_report,
)
from resnet_core.study.pruners import (
    PRUNERS, RUNG_PRUNERS, bootstrap_for, describe_pruner, expected_work, make_pruner, prunable_epochs,
)
from resnet_core.study.rungs import diverged_by_region, measured_values, region_labels, rung_summary, rung_values
from resnet_core.study.search import (
    INDEXED_SAMPLERS, SAMPLERS, check_same_question, counts, create_study, describe_sampler, make_sampler,
    search_history_text,
)
from resnet_core.study.space import (
    NOT_TUNABLE, SPACES_DIR, Param, SearchSpace, check_settings_kept, parse_param, read_space, space_path,
    validate_space,
)
from resnet_core.study.spec import StudySpec, base_run, budget, default_study_name, spec_from_study, trial_config
from resnet_core.study.storage import (
    check_storage, default_storage, describe_storage, driver_url, is_rdb_url, open_storage, storage_error,
)
from resnet_core.study.tables import (
    best_summary, compare_markdown, compare_table, config_differences, failed_table, format_value, pruning_savings,
    reproduce_command, run_labels, state_counts, study_markdown, top_trials, trials_table,
)
from resnet_core.study.urls import mask_url, scrub, unencoded_at, url_passwords
from resnet_core.study.workers import (
    TrialProgress, WorkerJob, interrupt_on_sigterm, resumed_seed, run_study, run_worker, worker_jobs, worker_sampler,
    worker_threads,
)

__all__ = [
    "base_run", "best_command", "check_resumable", "check_same_question", "check_settings_kept", "best_summary", "budget", "check_storage", "compare_markdown", "compare_specs",
    "compare_table", "config_differences", "counts", "create_study", "current_counts", "damaged_tail",
    "default_storage", "default_study_name", "deferred_interrupts", "describe_pruner", "describe_sampler",
    "describe_storage", "driver_url", "estimate", "failed_table", "final_runs", "FINAL_SEED_BASE", "final_table",
    "FINISHED", "format_value", "heartbeat_settings", "history_figure", "importance_figure", "INDEXED_SAMPLERS",
    "interrupt_on_sigterm", "InterruptSafeJournal", "is_rdb_url", "isolation_figure", "learning_curves_figure",
    "make_pruner", "make_sampler", "mask_url", "matching_data", "MAX_CONSECUTIVE_FAILURES", "MAX_RETRIES",
    "NOT_TUNABLE", "Objective", "open_storage", "open_study_or_group", "parallel_figure", "Param", "parse_param",
    "prunable_epochs", "RUNG_PRUNERS", "expected_work", "bootstrap_for",
    "plan", "plan_lines", "PRUNERS", "pruning_savings", "read_space", "recover_stale_trials",
    "RepairingJournalFile", "report_context", "report_warnings", "reproduce_command", "requeue", "resumed_seed",
    "RetryStaleTrial", "run_labels", "run_study", "run_worker", "SAMPLERS", "scrub", "search_history_text",
    "SearchSpace", "Setup", "slice_figure", "space_path", "SPACES_DIR", "spec_from_study", "stale_reason",
    "state_counts", "storage_error", "study_markdown", "StudyRequest", "StudySpec", "top_params", "top_trials",
    "train_final", "FinalStage", "final_config", "final_interval", "trial_config", "TrialFailed", "TrialProgress", "trials_table", "unencoded_at",
    "unmarked_reason", "url_passwords", "validate_space", "worker_jobs", "worker_sampler", "worker_threads",
    "WorkerJob", "write_compare_report", "write_reports", "write_study_report", "train_finals", "concurrency_from_bench",
    "RungImportances", "deepest_rung", "rung_importances", "rung_study", "diverged_by_region", "measured_values",
    "region_labels", "rung_summary", "rung_values", "console_summary",
]
