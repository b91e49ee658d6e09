"""Studies across hosts on a real PostgreSQL server (tests/pg.py): two `studies/run.py` processes
share one study; a host killed mid-trial is noticed by Optuna's heartbeat and its trial retried;
the storage password never reaches a console, a report, a record or the study's attributes.

"Hosts" are processes on this machine that report another host name (socket.gethostname), so the
survivors cannot use the same-host rule (a dead pid) and must rely on the heartbeat, as across
machines. Each trial sleeps a little per epoch (in a fit callback) so that both hosts overlap.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

from resnet_core.cli import run_cli
from resnet_core.store import find_record, iter_records
from resnet_core.study.common import FINISHED
from resnet_core.study.storage import driver_url, open_storage
from resnet_core.study.urls import mask_url, scrub

REPO = Path(__file__).resolve().parents[1]
from resnet_core.commands import study as run_driver  # resnet-study (studies/run.py in a checkout)
from resnet_core.commands import study_report as report_driver  # resnet-study-report

SPACE = '[params.lr]\ntype = "float"\nlow = 0.01\nhigh = 0.2\nlog = true\n'

# A worker "on another host": the real studies/run.py main, with a host name of its own, whose
# study runs its trials with study_helpers.host_fit (run_study's fit parameter): an optional pause
# (and hang) after each epoch, so a test can overlap hosts or kill one mid-trial.
HOST_WORKER = """
import functools, os, socket, sys
host = os.environ.get("TEST_HOST")
if host:
    socket.gethostname = lambda: host
from resnet_core.study import experiment
from study_helpers import host_fit
experiment.run_study = functools.partial(experiment.run_study, fit=host_fit)  # what execute_study calls
from resnet_core.commands import study as run
from resnet_core.cli import run_cli
sys.exit(run_cli(run.main, sys.argv[1:]))
"""


@pytest.fixture(autouse=True)
def _quiet():
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def study_args(tmp_path: Path, url: str, name: str, *extra: str) -> list[str]:
    """A depth-8 study on 200 synthetic images, 2 epochs per trial, one CPU thread."""
    space = tmp_path / "tiny.toml"
    space.write_text(SPACE)
    return ["--space", str(space), "--data", "synthetic:300", "--subset", "200", "--val-size", "100",
            "--epochs", "2", "--set", "depth=8", "--set", "widths=4,8,16", "--set", "batch_size=50",
            "--set", "eval_batch_size=500", "--device", "cpu", "--results", str(tmp_path / "res"),
            "--storage", url, "--study-name", name, "--quiet", "--no-figures", "--sampler", "random",
            "--threads", "1", "--pruner", "median", "--final-seeds", "0", "--set", "val_epochs=1,2",
            *extra]  # validation (and a report to the study) after every epoch


def start_host(tmp_path: Path, args: list[str], host: str, log: str, **env: str) -> subprocess.Popen:
    script = tmp_path / "host_worker.py"
    script.write_text(HOST_WORKER)
    paths = os.pathsep.join(str(p) for p in (REPO, REPO / "tests"))
    environment = {**os.environ, "PYTHONPATH": paths, "TEST_HOST": host, **env}
    with open(tmp_path / f"{log}.out", "w") as out, open(tmp_path / f"{log}.err", "w") as err:
        return subprocess.Popen([sys.executable, str(script), *args], env=environment, stdout=out, stderr=err)


def load(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(url))


def assert_no_password(url: str, tmp_path: Path, study: optuna.Study | None = None) -> None:
    """Neither the password nor the full URL in any file the tests or the studies wrote."""
    password = make_url(url).password
    for path in tmp_path.rglob("*"):
        if path.is_file() and path.suffix not in (".pt", ".png"):
            assert password not in path.read_text(errors="replace"), path
    if study is not None:
        attrs = [study.user_attrs] + [(t.user_attrs, t.system_attrs) for t in study.trials]
        assert password not in json.dumps(attrs, default=str)


def wait_for(condition, timeout: float, proc: subprocess.Popen, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        if proc.poll() is not None:
            pytest.fail(f"the worker exited ({proc.returncode}) before {what}")
        time.sleep(0.3)
    pytest.fail(f"timed out waiting for {what}")


def test_two_hosts_share_one_study_and_stop_together(postgres_url, tmp_path):
    """The same command on two hosts: one study, no duplicate numbers or points, the target
    reached once (not once per host); one host logs in with PGPASSWORD instead of the URL's password."""
    target = 6
    args = study_args(tmp_path, postgres_url, "two-hosts", "--trials", str(target))
    password = make_url(postgres_url).password
    no_password_url = postgres_url.replace(f":{password}@", "@")
    args_b = [no_password_url if a == postgres_url else a for a in args]
    hosts = [start_host(tmp_path, args, "host-a", "a", TEST_EPOCH_SLEEP="0.4"),
             start_host(tmp_path, args_b, "host-b", "b", TEST_EPOCH_SLEEP="0.4", PGPASSWORD=password)]
    codes = [p.wait(timeout=150) for p in hosts]
    assert codes == [0, 0], [(tmp_path / f"{h}.err").read_text()[-2000:] for h in "ab"]

    study = load(postgres_url, "two-hosts")
    numbers = [t.number for t in study.trials]
    assert numbers == list(range(len(numbers)))  # the database numbers trials: no duplicates, no gaps
    finished = study.get_trials(states=FINISHED)
    # Both hosts may start the last trial at the same instant: at most workers - 1 = 1 beyond the target.
    assert target <= len(finished) <= target + 1
    assert len(study.trials) == len(finished)  # nothing RUNNING, WAITING or FAILED left behind
    assert {t.user_attrs["host"] for t in study.trials} == {"host-a", "host-b"}  # both hosts trained
    assert len({t.params["lr"] for t in study.trials}) == len(study.trials)  # hosts do not propose the same point
    for host in "ab":  # each host saw the shared target reached
        assert f"two-hosts: {len(finished)} finished" in (tmp_path / f"{host}.out").read_text()
        assert "target 6 reached" in (tmp_path / f"{host}.out").read_text()
    assert "postgresql://resnet:***@127.0.0.1" in (tmp_path / "a.out").read_text()
    report = (tmp_path / "res" / "studies" / "two-hosts" / "report.md").read_text()
    assert "| storage | postgresql://resnet" in report  # as the host that wrote the report last names it
    assert_no_password(postgres_url, tmp_path, study)


def test_killed_host_trial_fails_after_grace_and_is_retried(postgres_url, tmp_path):
    """Host B dies (SIGKILL) after epoch 1 of the study's only trial. Host A, started with the same
    command, sees the target covered by B's RUNNING trial and waits; once B sent no heartbeat for
    --stale-after seconds the trial is failed and re-queued, and A resumes it from its checkpoint."""
    args = study_args(tmp_path, postgres_url, "dead-host", "--trials", "1", "--stale-after", "5")
    proc = start_host(tmp_path, args, "host-b", "b", TEST_HANG_AFTER_EPOCH="1")

    def reported_epoch_1() -> bool:
        if "dead-host" not in optuna.get_all_study_names(open_storage(postgres_url)):
            return False
        running = load(postgres_url, "dead-host").get_trials(states=(TrialState.RUNNING,))
        return bool(running) and 1 in running[0].intermediate_values

    try:
        wait_for(reported_epoch_1, 90, proc, "host-b reported epoch 1")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    killed_at = time.time()
    killed = load(postgres_url, "dead-host").trials[0]
    assert killed.state == TrialState.RUNNING and killed.user_attrs["host"] == "host-b"

    assert run_driver.main(args) == 0  # host A (this process): the same command
    study = load(postgres_url, "dead-host")
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.COMPLETE]  # nothing left RUNNING
    retry = study.trials[1]
    assert retry.params == killed.params and retry.user_attrs["host"] != "host-b"
    assert retry.user_attrs["retry_of"] == 0 and retry.user_attrs["retried_from"] == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        assert optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(retry) == 0
    # Heartbeats every 1 s, grace 5 s: not failed before ~4 s after the kill.
    assert retry.datetime_start.timestamp() - killed_at >= 4
    assert sorted(retry.intermediate_values) == [2]  # resumed from host B's epoch-1 checkpoint
    assert len(find_record(tmp_path / "res", retry.user_attrs["run_id"]).history) == 2
    report = (tmp_path / "res" / "studies" / "dead-host" / "report.md").read_text()
    assert f"| 0 | no heartbeat from worker host-b:{proc.pid} for 5 s (died?); retried as trial 1 |" in report
    assert_no_password(postgres_url, tmp_path, study)


def test_storage_errors_are_one_masked_line(postgres_url, tmp_path, capsys):
    """A wrong password and an unreachable server: exit 2, one line, password masked, nothing trained."""
    wrong = postgres_url.replace("pg-Secret-4711", "Wrong-Secret-99")
    unreachable = "postgresql://user:Unreachable-Secret@127.0.0.1:1/x"
    for url, detail in ((wrong, "password authentication failed"), (unreachable, "Connection refused")):
        assert run_cli(run_driver.main, study_args(tmp_path, url, "bad", "--trials", "1")) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err.count("\n") == 1
        assert captured.err.startswith(f"error: storage {mask_url(url)} cannot be opened: ")
        assert detail in captured.err and "Secret" not in captured.err
    assert not (tmp_path / "res" / "runs").exists()
    assert run_cli(report_driver.main, ["--study-name", "x", "--storage", unreachable]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: storage postgresql://user:***@127.0.0.1:1/x") and "Secret" not in err
    assert not list(iter_records(tmp_path / "res")[0])


@pytest.mark.parametrize("url, masked, password", [
    ("postgresql://u:p%40ss%3Aword@h:5432/db", "postgresql://u:***@h:5432/db", "p@ss:word"),
    ("postgresql://u@h/db?sslmode=require&password=s3cret", "postgresql://u@h/db?sslmode=require&password=***", "s3cret"),
    ("postgresql+psycopg2://u:s3cret@h/db?password=other", "postgresql+psycopg2://u:***@h/db?password=***", "other"),
])
def test_masking_covers_encoded_and_query_passwords(url, masked, password):
    assert mask_url(url) == masked
    message = f"could not connect as {url} with password {password}"
    assert password not in scrub(message, url) and "***" in scrub(message, url)


def test_bare_postgresql_urls_get_an_installed_driver():
    """SQLAlchemy 2.1 maps postgresql:// to psycopg 3; the scale extra installs psycopg2."""
    import importlib.util

    drivers = [name for name in ("psycopg", "psycopg2") if importlib.util.find_spec(name)]
    if not drivers:
        with pytest.raises(ValueError, match=r"postgres://u:\*\*\*@h/db: no PostgreSQL driver is installed"):
            driver_url("postgres://u:p@h/db")
        return
    assert driver_url("postgres://u:p@h/db") == f"postgresql+{drivers[0]}://u:p@h/db"
    assert driver_url("postgresql+psycopg2://u@h/db") == "postgresql+psycopg2://u@h/db"
    assert driver_url("sqlite:///x.db") == "sqlite:///x.db"
