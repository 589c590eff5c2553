"""One command, K workers on its study (``hydra.sweeper.workers``): the same path as K
sweep processes started by hand on one shared storage (each a full sweep loop with
``n_jobs=1``, asking for its next trial the moment its last one ends, the study lock
keeping ``n_trials`` exact), with the command the user started as their owner.

The command checks the settings and opens the study and its MLflow parent run, starts
each worker on its device (kdsweep.sweep.worker_slots) as ``python -m kdsweep`` with its
own overrides, its output in ``<hydra.sweep.dir>/workers/worker-N.log``, then watches the
study and the workers: it prints a line per finished trial naming its worker and device,
and the live progress line; it writes the report, registers the champion and ends the
parent run once every worker is done.

Faults: SIGINT/SIGTERM is passed to every worker, which fails its trial in flight and
ends its run KILLED (kdsweep.sweep.recovery); a worker still there after STOP_WAIT_S is
killed and its trials failed here, so the command ends within 5 s with nothing RUNNING,
and rerunning it resumes. A worker that dies (SIGKILL, out of memory) has its trial
failed and queued again with the same parameters, and is started again, once; a second
death ends the sweep with one line. A worker that fails with its own line (too many
failed trials, say) ends the sweep with that line. A command killed itself takes its
workers with it (the kernel sends them SIGTERM: ``end_with_the_command``).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
from omegaconf import OmegaConf
from optuna.trial import FrozenTrial, TrialState

from kdsweep.config.parts import override_key
from kdsweep.core.errors import CommandFailed, Interrupted
from kdsweep.core.signals import check_interrupt, cooperative, interruptible
from kdsweep.sweep.arms import describe_params
from kdsweep.sweep.confirm import open_companion
from kdsweep.sweep.core import Finish, StudySweep
from kdsweep.sweep.live import LIVE
from kdsweep.sweep.liveness import WORKER_ATTR
from kdsweep.sweep.recovery import clean_up_interrupted, recover
from kdsweep.sweep.worker_slots import WorkerSlot, gpu_ids, plan_workers

log = logging.getLogger("kdsweep.sweep")

#: Set in a worker's environment (to its number): the sweep it runs is one of a command's.
WORKER_ENV = "KDSWEEP_SWEEP_WORKER"
#: Set in a worker's environment (to its command's pid): the process it ends with.
COMMAND_ENV = "KDSWEEP_SWEEP_COMMAND"
#: Linux's prctl option that has the kernel signal a process when its parent ends.
_PR_SET_PDEATHSIG = 1
#: How long a signalled worker may take to end its trial and runs before it is killed:
#: with the command's own clean-up after it, the command ends within 5 s.
STOP_WAIT_S = 3.0
#: How often the command looks at its workers and the study.
POLL_S = 0.5
#: A worker that dies is started again this many times in one command; one more death
#: ends the sweep (a worker that keeps dying would only burn its trials).
REPLACEMENTS = 1
#: The command's overrides that a worker gets other values for.
_REPLACED = ("hydra.sweeper.workers", "hydra.sweep.dir", "hydra.sweeper.study_name")
_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def worker_number() -> int:
    """N if this process is worker N of a command (1..K), else 0."""
    value = os.environ.get(WORKER_ENV, "")
    return int(value) if value.isdigit() else 0


def end_with_the_command() -> None:
    """In a worker: a SIGTERM when its command ends, however it ends. The command forwards
    the signals it gets, but not SIGKILL (nor an out-of-memory kill): without this its
    workers would train on for a command that is gone, beside the ones a rerun starts.
    SIGTERM ends the worker as it ends a sweep (its trial failed, its run closed), so the
    rerun runs that trial again. The kernel's parent-death signal (Linux; elsewhere a
    killed command's workers run on until the study has its trials)."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
        log.warning("cannot follow the command (prctl: errno %d)", ctypes.get_errno())
        return
    if str(os.getppid()) != os.environ.get(COMMAND_ENV):  # it ended before the prctl
        os.kill(os.getpid(), signal.SIGTERM)


def finished_by_the_command(*_args: Any, **_kwargs: Any) -> None:
    """A worker's end of its sweep (its ``Finish``): nothing; the report, the registration
    and the parent run's end are its command's."""


def machine_gpus(device: str) -> list[str]:
    """The GPUs the workers may be pinned to: every one torch sees for ``trainer.device``
    auto or cuda, the one it names for cuda:N, none for cpu (or mps)."""
    kind, _, index = device.partition(":")
    if kind not in ("auto", "cuda"):
        return []
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    ids = gpu_ids(count, os.environ.get("CUDA_VISIBLE_DEVICES"))
    return [ids[int(index)]] if index and ids else ids


def machine_cores() -> int:
    """The CPU cores this process may run on (its affinity, where the OS says)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class Workers:
    """The command's side: start the workers, watch them and the study, finish the sweep."""

    def __init__(self, sweep: StudySweep, finish: Finish) -> None:
        self.sweep, self.finish = sweep, finish
        self.processes: dict[int, subprocess.Popen[bytes]] = {}  # running, by worker number
        self.slot_of_pid: dict[int, WorkerSlot] = {}
        self.deaths = 0
        self.reported: set[tuple[str, int]] = set()  # (study, trial number) said on the console
        self.search_done = self.search_failed = 0  # this command's, for the ETA and the rate

    def run(self, arguments: list[str]) -> optuna.Study:
        # Like the sweep loop: a signal is raised at its checks and inside its waits,
        # never inside a write to the stores.
        with cooperative():
            return self._run(arguments)

    def _run(self, arguments: list[str]) -> optuna.Study:
        sweep = self.sweep
        space, self.study, self.parent = sweep.start(arguments)
        s = sweep.settings
        self.companion = None
        if s.baselines or s.confirm.enabled:
            self.companion = open_companion(sweep.storage, s.study_name)
        self.threads = int(OmegaConf.select(sweep.config, "trainer.threads", default=0) or 0)
        self.device = str(OmegaConf.select(sweep.config, "trainer.device", default="auto"))
        gpus = machine_gpus(self.device)
        self.slots = plan_workers(
            s.workers, s.workers_per_device, gpus, machine_cores(), self.threads
        )
        self.reported = {(study.study_name, t.number) for study, t in self._finished_trials()}
        try:
            for study in self._studies():  # what an earlier command left, once, before any worker
                recover(sweep.storage, sweep.lock, sweep.config, study)
            log.info(
                "%d workers on study %s: %s",
                len(self.slots),
                s.study_name,
                ", ".join(slot.label for slot in self.slots),
            )
            for slot in self.slots:
                self._start(slot)
            self._watch()
        except Interrupted as exc:
            self._stop(exc.signum)
            clean_up_interrupted(
                sweep.storage, sweep.lock, sweep.config, (), self.study, self.parent, exc
            )
            raise
        finally:
            if self.processes:  # whatever ended the watch, no worker outlives its command
                self._stop(signal.SIGTERM)
        self._say_new_trials()
        confirmed = self.companion is not None and bool(
            s.confirmation_seeds(OmegaConf.select(sweep.config, "trainer.seed"))
        )
        failure = self.finish(
            self.study,
            sweep.config,
            s,
            self.parent,
            aborted=False,
            confirm_study=self.companion if confirmed else None,
        )
        if failure is not None:
            raise CommandFailed(failure)
        return self.study

    def _studies(self) -> list[optuna.Study]:
        return [self.study] + ([self.companion] if self.companion is not None else [])

    # --- the workers' processes ---

    def _command(self, slot: WorkerSlot) -> list[str]:
        """``python -m kdsweep -m`` with the command's overrides, as one worker of it."""
        config, s = self.sweep.config, self.sweep.settings
        hydra = config.hydra
        own_threads = self.threads > 0
        replaced = _REPLACED if own_threads else (*_REPLACED, "trainer.threads")
        given = [*hydra.overrides.hydra, *hydra.overrides.task]
        args = ["-m", *(o for o in given if override_key(str(o)) not in replaced)]
        args += [
            "hydra.sweeper.workers=1",
            f"hydra.sweep.dir={self.sweep_dir}",
            f"hydra.sweeper.study_name={s.study_name}",
        ]
        if not own_threads:
            args.append(f"trainer.threads={slot.threads}")
        if slot.gpu is not None and self.device.startswith("cuda:"):
            args.append("trainer.device=cuda")  # its one visible GPU
        for source in hydra.runtime.config_sources:
            if source.provider == "command-line":  # --config-dir
                args += ["--config-dir", str(source.path).removeprefix("file://")]
        args += ["--config-name", str(hydra.job.config_name)]
        return [sys.executable, "-m", "kdsweep", *args]

    @property
    def sweep_dir(self) -> Path:
        return Path(str(self.sweep.config.hydra.sweep.dir)).absolute()

    def log_file(self, slot: WorkerSlot) -> Path:
        return self.sweep_dir / "workers" / f"worker-{slot.index}.log"

    def _start(self, slot: WorkerSlot) -> None:
        path = self.log_file(slot)
        path.parent.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            **slot.environment(),
            WORKER_ENV: str(slot.index),
            COMMAND_ENV: str(os.getpid()),
        }
        with path.open("ab") as output:  # a replaced worker writes on after the first
            proc = subprocess.Popen(
                self._command(slot), env=env, stdout=output, stderr=subprocess.STDOUT
            )
        self.processes[slot.index] = proc
        self.slot_of_pid[proc.pid] = slot

    def _watch(self) -> None:
        """Until every worker has ended: the trials they finish, said on the console; a
        worker that died started again (once), one that failed ends the sweep."""
        while self.processes:
            with interruptible():  # a wait: a signal is raised here at once
                time.sleep(POLL_S)
            self._say_new_trials()
            for index, proc in list(self.processes.items()):
                code = proc.poll()
                if code is None:
                    continue
                del self.processes[index]
                slot = self.slots[index - 1]
                if code < 0 or code in (130, 143):  # killed, or signalled by someone else
                    self._died(slot, code)
                elif code != 0:
                    self._failed(slot, code)
            check_interrupt()

    def _died(self, slot: WorkerSlot, code: int) -> None:
        sweep = self.sweep
        self.deaths += 1
        cause = _cause(code)
        failed = []
        for study in self._studies():
            failed += recover(sweep.storage, sweep.lock, sweep.config, study, retry=True)
        trials = ", ".join(str(t.number) for t in failed) or "none"
        if self.deaths > REPLACEMENTS:
            self._stop(signal.SIGTERM)
            self.parent.end("FAILED")
            raise CommandFailed(
                f"{slot.label} died ({cause}) after another worker had: the sweep stops"
                " (its finished trials are kept); rerun the same command to resume it"
            )
        log.warning(
            "%s died (%s): its trial(s) in flight (%s) failed and are queued again;"
            " starting it again (once)",
            slot.label,
            cause,
            trials,
        )
        self._start(slot)

    def _failed(self, slot: WorkerSlot, code: int) -> None:
        """A worker ended with an error of its own: the other workers stop, the sweep ends
        with its line (and the report of what was done)."""
        line = _last_error_line(self.log_file(slot))
        self._abort(
            f"{slot.label} failed: {line or f'exit code {code}, see {self.log_file(slot)}'}"
        )

    def _abort(self, message: str) -> None:
        """The other workers stop; the sweep ends with ``message`` (and the report)."""
        sweep = self.sweep
        self._stop(signal.SIGTERM)
        self._say_new_trials()
        self.finish(self.study, sweep.config, sweep.settings, self.parent, aborted=True)
        raise CommandFailed(message)

    def _stop(self, signum: int) -> None:
        """Signal every worker; kill those still there after STOP_WAIT_S; fail the trials
        the killed ones held (and close their runs)."""
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.send_signal(signum)
        deadline = time.monotonic() + STOP_WAIT_S
        killed = False
        for proc in self.processes.values():
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                killed = True
        self.processes.clear()
        if killed:
            sweep = self.sweep
            for study in self._studies():
                recover(sweep.storage, sweep.lock, sweep.config, study)

    # --- the console ---

    def _finished_trials(self) -> list[tuple[optuna.Study, FrozenTrial]]:
        return [
            (study, trial)
            for study in self._studies()
            for trial in study.get_trials(deepcopy=False, states=_FINISHED)
        ]

    def _say_new_trials(self) -> None:
        """A line for each search trial finished since the last look, naming its worker
        and device, then the live progress line; confirmation and baseline runs in the
        log file only (debug), as in one sweep process."""
        for study, trial in self._finished_trials():
            if (study.study_name, trial.number) in self.reported:
                continue
            self.reported.add((study.study_name, trial.number))
            self._say(study, trial)

    def _say(self, study: optuna.Study, trial: FrozenTrial) -> None:
        s = self.sweep.settings
        who = self._worker_label(trial)
        role = trial.user_attrs.get("role", "trial")
        error = str(trial.user_attrs.get("error") or "")
        if role != "trial":
            log.debug("%s: %s trial %d: %s", who, role, trial.number, trial.state.name)
            return
        if trial.state == TrialState.FAIL:
            if error.startswith("interrupted"):  # said when it was recovered
                return
            self.search_failed += 1
            log.warning("%s: trial %d: FAIL: %s", who, trial.number, error)
            finished = self.search_failed + self.search_done
            if too_many := s.too_many_failures(self.search_failed, finished):
                self._abort(too_many)
            return
        self.search_done += 1
        progress = self.sweep.progress(study, ran=self.search_done)
        label = f"trial {trial.number} ({describe_params(trial.params)})"
        if trial.state == TrialState.COMPLETE:
            # The objective is the first value (the others are costs: hydra.sweeper.costs).
            value = trial.values[0]
            log.info("%s: %s: COMPLETE, val %.2f %%  %s", who, label, value, progress)
        else:
            epochs = len(trial.user_attrs.get("history") or [])
            log.info("%s: %s: PRUNED after epoch %d  %s", who, label, epochs, progress)
        LIVE.show(f"sweep {s.study_name} {progress}")

    def _worker_label(self, trial: FrozenTrial) -> str:
        pid = str(trial.user_attrs.get(WORKER_ATTR, "")).rpartition(":")[2]
        slot = self.slot_of_pid.get(int(pid)) if pid.isdigit() else None
        return slot.label if slot is not None else "another worker"


def _cause(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _last_error_line(path: Path) -> str | None:
    """The worker's one line (``kdsweep: error: ...``), without its prefix."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return None
    ours = [line for line in lines if line.startswith("kdsweep: ")]
    if not ours:
        return None
    return ours[-1].removeprefix("kdsweep: ").removeprefix("error: ")
