"""SIGTERM and SIGINT (Ctrl-C) end a run or a sweep cleanly: one line on stderr, exit
143 / 130, no traceback, the MLflow run(s) ended KILLED, the trials in flight FAIL (so a
rerun runs them again), nothing left RUNNING, and no launcher child left behind."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from _helpers import (
    finish,
    group_alive,
    kill_group,
    load_trials,
    mlflow_runs,
    run_in_process,
    start,
    states,
    sweep_args,
    unique,
    wait_for,
)
from conftest import cli_env, job_log

EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}


def _one_line(stderr: str, name: str) -> None:
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith("kdsweep: ")]
    assert len(lines) == 1, stderr[-3000:]
    assert lines[0].startswith(f"kdsweep: interrupted by {name}"), lines


def _epoch_logged(directory: Path) -> bool:
    return any("student epoch 1/" in job_log(d) for d in [directory, *directory.glob("*")])


@pytest.mark.parametrize(
    "sig",
    [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)],
    ids=["SIGTERM", "SIGINT"],
)
def test_a_signalled_run_ends_killed_with_one_line(
    tmp_path: Path, teacher_cache: Path, empty_mlflow_db: Path, sig: signal.Signals
) -> None:
    shutil.copyfile(empty_mlflow_db, tmp_path / "mlflow.db")  # no migrations before epoch 1
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = [
        f"tracking.uri={tracking}",
        f"cache_dir={teacher_cache}",
        f"hydra.run.dir={tmp_path / 'out'}",
        "teacher.epochs=1",
        "trainer.device=cpu",
        "trainer.progress=log",
        "trainer.epochs=500",
    ]
    proc = start(tmp_path, args)
    try:
        wait_for(lambda: _epoch_logged(tmp_path / "out"), 120, "the first epoch", proc)
        proc.send_signal(sig)
        done = finish(proc, timeout=120)
    finally:
        kill_group(proc)
    assert done.returncode == EXIT[sig], done.stderr[-3000:]
    _one_line(done.stderr, sig.name)
    (only,) = mlflow_runs(tracking)
    assert only.info.status == "KILLED"
    assert sig.name in only.data.tags["error"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "sig, launcher",
    [(signal.SIGINT, "basic"), (signal.SIGTERM, "joblib")],
    ids=["SIGINT-basic", "SIGTERM-joblib"],
)
def test_a_signalled_sweep_fails_its_trials_and_kills_its_runs(
    tmp_path: Path, teacher_cache: Path, empty_mlflow_db: Path, sig: signal.Signals, launcher: str
) -> None:
    shutil.copyfile(empty_mlflow_db, tmp_path / "mlflow.db")  # no migrations before training
    study = unique("sig")
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    extra = ["trainer.epochs=500", "trainer.progress=log"]
    if launcher == "joblib":
        extra += ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "hydra.sweeper.n_jobs=2"]
    proc = start(tmp_path, sweep_args(tmp_path, study, 3, *extra, cache_dir=teacher_cache))
    try:

        def training() -> bool:
            running = [t for t in load_trials(storage, study) if t.state.name == "RUNNING"]
            return bool(running) and all(t.user_attrs.get("history") for t in running)

        wait_for(training, 180, "trials in training", proc)
        if sig == signal.SIGINT:
            kill_group(proc, sig)  # Ctrl-C reaches the whole process group
        else:
            proc.send_signal(sig)  # `kill PID`: the sweeper alone
        done = finish(proc, timeout=120)
    finally:
        kill_group(proc)
    assert done.returncode == EXIT[sig], done.stderr[-3000:]
    _one_line(done.stderr, sig.name)
    trials = load_trials(storage, study)
    assert "RUNNING" not in states(trials)
    assert states(trials)["FAIL"] == (2 if launcher == "joblib" else 1)
    runs = mlflow_runs(tracking)
    assert runs and "RUNNING" not in {r.info.status for r in runs}
    sweep_runs = [r for r in runs if r.data.tags.get("kdsweep.role") == "sweep"]
    assert [r.info.status for r in sweep_runs] == ["KILLED"]
    killed = [r for r in runs if r.data.tags.get("kdsweep.role") == "trial"]
    assert {r.info.status for r in killed} == {"KILLED"}
    if launcher == "joblib":  # the workers went with the sweeper
        wait_for(lambda: not group_alive(proc.pid), 30, "the launcher's workers to end")

    # A rerun completes the study (with 1-epoch trials now: a deliberate change of settings);
    # it is no signal test, so it runs in this process.
    again = sweep_args(
        tmp_path, study, 3, "hydra.sweeper.allow_changed_settings=true", cache_dir=teacher_cache
    )
    resumed = run_in_process(tmp_path, again)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert states(load_trials(storage, study))["COMPLETE"] == 3


@pytest.fixture
def kdsweep_signal_handlers(monkeypatch: pytest.MonkeyPatch):
    """kdsweep's SIGINT/SIGTERM handlers (and unraisable hook) in this process, fresh, and
    pytest's back after."""
    from kdsweep.core import signals

    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    monkeypatch.setattr(signals, "_state", signals._SignalState())
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)  # ours replaces it
    signals.install_signal_handlers()
    yield signals
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def test_a_signal_is_raised_at_the_next_check_never_where_it_lands(
    kdsweep_signal_handlers,
) -> None:
    """Cooperative cancellation: the handler records the signal; the code it lands in (a
    store write, say) runs to its end, and the next check raises it, once."""
    from kdsweep.core.errors import Interrupted

    done: list[str] = []
    os.kill(os.getpid(), signal.SIGTERM)
    done.append("the write the signal landed in")
    assert done == ["the write the signal landed in"]
    with pytest.raises(Interrupted) as caught:
        kdsweep_signal_handlers.check_interrupt()
    assert caught.value.exit_code == 143
    # Clean-up after the interrupt is not interrupted again.
    os.kill(os.getpid(), signal.SIGINT)
    kdsweep_signal_handlers.check_interrupt()


def test_a_wait_is_interrupted_at_once_and_a_job_inside_it_at_its_checks(
    kdsweep_signal_handlers,
) -> None:
    """A launcher's wait runs none of kdsweep's code: a signal is raised inside it. A job
    the launcher runs in this process is kdsweep's code again: it waits for a check."""
    from kdsweep.core.errors import Interrupted

    started = time.monotonic()
    with pytest.raises(Interrupted), kdsweep_signal_handlers.interruptible():
        threading.Timer(0.2, os.kill, args=(os.getpid(), signal.SIGINT)).start()
        time.sleep(10)  # the jobs in other processes
    assert time.monotonic() - started < 5
    kdsweep_signal_handlers.install_signal_handlers()  # a fresh command
    done = []
    with pytest.raises(Interrupted), kdsweep_signal_handlers.interruptible():
        with kdsweep_signal_handlers.cooperative():
            os.kill(os.getpid(), signal.SIGTERM)
            done.append("the job's write")
        done.append("never: raised when the job returned to the wait")
        kdsweep_signal_handlers.check_interrupt()
    assert done == ["the job's write", "never: raised when the job returned to the wait"]


def test_a_wait_for_a_lock_another_process_holds_is_interrupted(
    tmp_path: Path, kdsweep_signal_handlers
) -> None:
    """Another process training the teacher holds its lock for minutes: waiting for it is
    a wait, and a signal ends it at once."""
    from kdsweep.core.errors import Interrupted
    from kdsweep.core.files import file_lock

    lock = tmp_path / "teacher.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(lock)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        threading.Timer(0.3, os.kill, args=(os.getpid(), signal.SIGTERM)).start()
        started = time.monotonic()
        with pytest.raises(Interrupted), file_lock(lock):
            pytest.fail("the lock was never free")
        assert time.monotonic() - started < 5
    finally:
        holder.kill()
        holder.wait()


HOLD_LOCK = """
import sys, time
from filelock import FileLock
lock = FileLock(sys.argv[1])
lock.acquire()
print("held", flush=True)
time.sleep(60)
"""


def test_a_signal_mid_metric_write_leaves_mlflow_writable_and_the_run_killed(
    tmp_path: Path, kdsweep_signal_handlers, monkeypatch: pytest.MonkeyPatch, empty_mlflow_db: Path
) -> None:
    """The CI failure this guards against: SIGTERM raised inside MLflow's SQLite
    transaction skipped its rollback, and ending the run KILLED then failed with "database
    is locked". Now the signal lands there and is raised at the next check."""
    from mlflow.tracking import MlflowClient

    from kdsweep.config.schema import TrackingConf
    from kdsweep.core.errors import Interrupted
    from kdsweep.run.tracking import RunTracker

    shutil.copyfile(empty_mlflow_db, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = RunTracker(TrackingConf(uri=uri), "signalled", local_dir=tmp_path)
    tracker.start()
    real_log_batch = MlflowClient.log_batch

    def signalled_mid_write(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return real_log_batch(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_batch", signalled_mid_write)
    tracker.log_metrics({"val_acc": 50.0})  # written now (per-epoch ones are batched)
    monkeypatch.setattr(MlflowClient, "log_batch", real_log_batch)
    with pytest.raises(Interrupted):  # at the next check, after the write
        kdsweep_signal_handlers.check_interrupt()
    tracker.set_tags({"kdsweep.state": "FAIL"})
    tracker.finish("KILLED", error="Interrupted: SIGTERM")
    assert tracker.broken is None
    run = MlflowClient(uri).get_run(tracker.run_id)
    assert run.info.status == "KILLED"
    assert run.data.metrics["val_acc"] == 50.0  # the interrupted write was completed
    assert run.data.tags["kdsweep.state"] == "FAIL"


def _catches_sigterm(pid: int) -> bool:
    """Whether the process has installed a SIGTERM handler (Linux: SigCgt in
    /proc/PID/status). Python catches SIGINT from its start, SIGTERM only once kdsweep's
    handlers are in: the moment after which a signal must be one line."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(mask, 16) & (1 << (signal.SIGTERM - 1)))


def _signal_while_starting(
    workdir: Path, sig: signal.Signals, args: list[str]
) -> tuple[subprocess.Popen, str]:
    """Start ``python ARGS``, send ``sig`` as soon as it has installed its handlers; the
    finished process and its stderr."""
    proc = subprocess.Popen(
        [sys.executable, *args],
        cwd=workdir,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not _catches_sigterm(proc.pid) and proc.poll() is None:
            assert time.monotonic() < deadline, "the command never installed its handlers"
            time.sleep(0.01)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        kill_group(proc)
    return proc, err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize(
    ("command", "args"),
    [
        ("kdsweep", ["-m", "kdsweep", "trainer.epochs=1", "tracking.enabled=false"]),
        ("kdsweep-report", ["-c", "from kdsweep.cli import kdsweep_report; kdsweep_report()"]),
    ],
    ids=["kdsweep", "kdsweep-report"],
)
def test_a_signal_while_a_command_starts_is_one_line(
    tmp_path: Path, sig: signal.Signals, command: str, args: list[str]
) -> None:
    """Ctrl-C or SIGTERM while the command is still importing Hydra, torch and MLflow."""
    # kdsweep-report's imports take ~50 ms: on a busy machine this test can be descheduled
    # until the command has ended by itself (exit 2, its usage); then the signal is sent to
    # a fresh one. A command that mishandles the signal fails every attempt.
    for _attempt in range(3):
        proc, err = _signal_while_starting(tmp_path, sig, args)
        if proc.returncode in EXIT.values():
            break
    assert proc.returncode == EXIT[sig], err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith(f"{command}: ")]
    assert len(lines) == 1 and lines[0].startswith(f"{command}: interrupted by {sig.name}"), err


SWALLOWING_CALLBACK = """
import os, signal, sys, time, weakref
from kdsweep.core.errors import Interrupted
from kdsweep.core.signals import install_signal_handlers, interruptible

install_signal_handlers()

class Node:
    pass

def callback(_ref):  # Python swallows what a weakref callback raises
    os.kill(os.getpid(), signal.{sig})  # the handler raises here, inside the callback
    print("the callback was not interrupted", flush=True)

node = Node()
ref = weakref.ref(node, callback)
try:
    with interruptible():  # a wait, where a signal is raised at once
        del node  # the callback runs, and the handler inside it
        time.sleep(5)  # the signal is delivered again, and raised here
except Interrupted as exc:
    print("raised", exc.signal_name, flush=True)
    sys.exit(exc.exit_code)
print("never raised", flush=True)
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_swallowed_by_a_callback_is_not_lost(sig: signal.Signals) -> None:
    """The CI failure this guards against: a SIGTERM landed in importlib's weakref callback,
    Python printed "Exception ignored" and went on, and the command ran as if unsignalled."""
    script = SWALLOWING_CALLBACK.format(sig=sig.name)
    done = subprocess.run(
        [sys.executable, "-c", script], env=cli_env(), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == EXIT[sig], done.stdout + done.stderr
    assert done.stdout.splitlines() == [f"raised {sig.name}"]
    assert "Exception ignored" not in done.stderr and "Traceback" not in done.stderr


SWALLOWED_THEN_EXIT = """
import os, signal, sys, types, weakref
from kdsweep.cli import _run
from kdsweep.core.boundary import command

@command("fake", interrupted="nothing was written")
def main():
    class Node:
        pass

    def callback(_ref):  # the handler raises inside it; Python swallows that
        os.kill(os.getpid(), signal.{sig})

    node = Node()
    ref = weakref.ref(node, callback)
    del node
    sys.exit(2)  # the command ends before the signal's second delivery

sys.modules["fake_command"] = types.SimpleNamespace(main=main)
_run("fake_command")
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_swallowed_signal_outruns_a_command_that_exits_at_once(sig: signal.Signals) -> None:
    """Found under load in the start-up test: the signal landed in a weakref callback of a
    lazy import inside argparse, and argparse's own exit (2) came before the second
    delivery. The entry point raises the swallowed signal on the way out instead."""
    script = SWALLOWED_THEN_EXIT.format(sig=sig.name)
    done = subprocess.run(
        [sys.executable, "-c", script], env=cli_env(), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == EXIT[sig], done.stdout + done.stderr
    assert done.stderr.splitlines()[-1].startswith(f"fake: interrupted by {sig.name}")
    assert "Traceback" not in done.stderr


LATE_SIGNALS = """
import atexit, os, signal, sys, types
from kdsweep.cli import _run
from kdsweep.core.boundary import command

class SignalAtTeardown:  # __main__'s globals are cleared after Python resets its handlers
    def __del__(self, kill=os.kill, pid=os.getpid(), sig=signal.{sig}):
        kill(pid, sig)

@command("fake", interrupted="nothing was written")
def main():
    if {twice}:  # runs before kdsweep's own exit callback: the handler is still Python's
        atexit.register(lambda: [os.kill(os.getpid(), signal.{sig}) for _ in range(2)])
    print("done", flush=True)

teardown = SignalAtTeardown()
sys.modules["fake_command"] = types.SimpleNamespace(main=main)
_run("fake_command")
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_after_the_command_finished_keeps_its_exit_code(sig: signal.Signals) -> None:
    """The chaos test's CI failure: a Ctrl-C that reached a sweep while it was already
    exiting killed it with -SIGINT and no word, because Python's shutdown resets handlers
    to the default action. The work was done; the exit code stays the command's."""
    script = LATE_SIGNALS.format(sig=sig.name, twice=False)
    done = subprocess.run(
        [sys.executable, "-c", script], env=cli_env(), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, (done.returncode, done.stderr)
    assert done.stdout == "done\n" and done.stderr == ""


def test_a_second_late_signal_leaves_a_hanging_exit_at_once() -> None:
    script = LATE_SIGNALS.format(sig="SIGTERM", twice=True)
    done = subprocess.run(
        [sys.executable, "-c", script], env=cli_env(), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == EXIT[signal.SIGTERM], (done.returncode, done.stderr)
    assert done.stdout == "done\n" and "Traceback" not in done.stderr


# Issue 27 class 9: of 222 signals in commands' first seconds, 6 ended wrongly: an abort
# (a signal raised inside torch's import, in a C++ callback), tracebacks, and
# "'NoneType' object has no attribute '_invalidate_flags_cache'" (OmegaConf's clean-up
# failing on the node the interrupt left half-set, which replaced the interrupt).
SIGNAL_IN_AN_IMPORT = """
import os, signal, sys, types
from kdsweep.cli import _run
from kdsweep.core.boundary import command

MODULE = '''
import os, signal
os.kill(os.getpid(), signal.{sig})  # lands while this module is being made
import time
time.sleep(0.3)  # a redelivery lands here too: still inside the import
finished = True
'''

@command("fake", interrupted="nothing was written")
def main():
    with open("heavy.py", "w") as handle:
        handle.write(MODULE)
    sys.path.insert(0, os.getcwd())
    try:
        import heavy  # a wait in which no kdsweep code runs: interruptible
    finally:
        made = getattr(sys.modules.get("heavy"), "finished", False)
        print("import finished" if made else "import cut in half", flush=True)

sys.modules["fake_command"] = types.SimpleNamespace(main=main)
_run("fake_command")
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_inside_an_import_waits_for_its_end(tmp_path: Path, sig: signal.Signals) -> None:
    script = SIGNAL_IN_AN_IMPORT.format(sig=sig.name)
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout.splitlines() == ["import finished"], done.stdout + done.stderr
    assert done.returncode == EXIT[sig], done.stderr
    assert done.stderr.splitlines() == [f"fake: interrupted by {sig.name}: nothing was written"]


CLEAN_UP_FAILS = """
import os, signal, sys, types
from kdsweep.cli import _run
from kdsweep.core.boundary import command

@command("fake", interrupted="nothing was written")
def main():
    try:
        os.kill(os.getpid(), signal.{sig})  # raised at once: the command is waiting
    finally:  # a library's clean-up, failing on what the interrupt left
        None._invalidate_flags_cache()

sys.modules["fake_command"] = types.SimpleNamespace(main=main)
_run("fake_command")
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_clean_up_that_fails_after_a_signal_is_still_an_interrupt(sig: signal.Signals) -> None:
    script = CLEAN_UP_FAILS.format(sig=sig.name)
    done = subprocess.run(
        [sys.executable, "-c", script], env=cli_env(), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == EXIT[sig], done.stderr
    assert done.stderr.splitlines() == [f"fake: interrupted by {sig.name}: nothing was written"]


@pytest.mark.slow  # a command and its two workers, signalled mid-trial, then run again
@pytest.mark.parametrize(
    ("sig", "whole_group", "code"),
    [(signal.SIGTERM, False, 143), (signal.SIGINT, True, 130)],
    ids=["SIGTERM-to-the-command", "Ctrl-C-to-the-group"],
)
def test_a_signalled_command_stops_its_workers_and_the_same_command_resumes(
    tmp_path: Path,
    teacher_cache: Path,
    empty_mlflow_db: Path,
    sig: signal.Signals,
    whole_group: bool,
    code: int,
) -> None:
    """hydra.sweeper.workers=2, SIGTERM to the command alone (`kill PID`: it passes the
    signal on), or Ctrl-C (SIGINT to the command and its workers at once, which the
    command passes on again): every worker ends its trial FAIL and its run KILLED, the
    command says one line and exits 143 / 130 with no worker left; the same command then
    completes the study."""
    shutil.copyfile(empty_mlflow_db, tmp_path / "mlflow.db")
    study = unique("sig-workers")
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    workers = ["hydra.sweeper.workers=2", "hydra.sweeper.allow_changed_settings=true"]
    long = ["trainer.epochs=500", "trainer.progress=log"]
    proc = start(tmp_path, sweep_args(tmp_path, study, 3, *workers, *long, cache_dir=teacher_cache))
    try:

        def both_training() -> bool:
            running = [t for t in load_trials(storage, study) if t.state.name == "RUNNING"]
            training = [t for t in running if t.user_attrs.get("history")]
            return len({t.user_attrs["worker"] for t in training}) == 2

        wait_for(both_training, 600, "both workers' trials in training", proc)
        if whole_group:
            kill_group(proc, sig)
        else:
            proc.send_signal(sig)
        done = finish(proc, timeout=120)
    finally:
        kill_group(proc)
    assert done.returncode == code, done.stderr[-3000:]
    _one_line(done.stderr, sig.name)
    assert not group_alive(proc.pid)  # every worker had ended when the command did
    trials = load_trials(storage, study)
    assert states(trials) == {"FAIL": 2}
    runs = mlflow_runs(tracking)
    assert "RUNNING" not in {r.info.status for r in runs}
    sweep_runs = [r for r in runs if r.data.tags.get("kdsweep.role") == "sweep"]
    assert [r.info.status for r in sweep_runs] == ["KILLED"]

    # The same command (its trials 1 epoch now, a change it allows) completes the study.
    again = finish(
        start(tmp_path, sweep_args(tmp_path, study, 3, *workers, cache_dir=teacher_cache)), 900
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert states(load_trials(storage, study)) == {"FAIL": 2, "COMPLETE": 3}
    sweep_runs = [r for r in mlflow_runs(tracking) if r.data.tags.get("kdsweep.role") == "sweep"]
    assert [r.info.status for r in sweep_runs] == ["FINISHED"]
