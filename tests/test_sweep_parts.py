"""Unit checks of the sweep's parts that need no training: storage URLs, the grouped
sweeper settings, trial ids and a job's outcome."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any

import optuna
import pytest
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from kdsweep.core.errors import KdsweepError
from kdsweep.core.stores import storage_file
from kdsweep.sweep.core import job_outcome
from kdsweep.sweep.settings import SweepSettings
from kdsweep.sweep.studies import open_storage, trial_id

OPTIONS = {
    "direction": "maximize",
    "storage": None,
    "study_name": None,
    "n_trials": 3,
    "n_jobs": 1,
    "max_failure_rate": 0.25,
    "params": {"loss.temperature": "interval(1.0, 4.0)"},
    "pruner": {"_target_": "optuna.pruners.MedianPruner"},
    "enqueue_trials": [],
    "baselines": True,
    "report_dir": "reports",
    "heartbeat_interval": 10.0,
    "grace_period": 120.0,
    "custom_search_space": None,
}


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///optuna.db", Path("optuna.db")),
        ("sqlite:////tmp/a:b@c/optuna.db", Path("/tmp/a:b@c/optuna.db")),
        ("sqlite:///optuna.db?timeout=5", Path("optuna.db")),
        ("journal:/tmp/optuna.journal.log", Path("/tmp/optuna.journal.log")),
        ("sqlite:///:memory:", None),
        ("sqlite://", None),
        ("postgresql://kd:pw@host/db", None),
    ],
)
def test_storage_file(url: str, path: Path | None) -> None:
    assert storage_file(url) == path


def test_settings_from_the_sweeper_options() -> None:
    settings = SweepSettings.from_options(OPTIONS)
    assert settings.storage == "sqlite:///optuna.db" and settings.study_name == "kdsweep"
    assert settings.pruner_name == "MedianPruner"
    settings.check()
    with pytest.raises(TypeError):
        SweepSettings.from_options({**OPTIONS, "n_trails": 3})
    with pytest.raises(KdsweepError, match="n_trials"):
        SweepSettings.from_options({**OPTIONS, "n_trials": 0}).check()
    with pytest.raises(KdsweepError, match="direction"):
        SweepSettings.from_options({**OPTIONS, "direction": ["maximize", "minimize"]}).check()


def test_costs_are_objectives_after_the_objective() -> None:
    """No costs: today's single direction; each cost adds one minimized objective, in the
    order given (the order of a completed trial's values)."""
    assert SweepSettings.from_options(OPTIONS).directions == ["maximize"]
    costs = SweepSettings.from_options({**OPTIONS, "costs": ["params", "latency_ms"]})
    costs.check()
    assert costs.directions == ["maximize", "minimize", "minimize"]
    assert costs.costs == ["params", "latency_ms"]
    minimized = SweepSettings.from_options({**OPTIONS, "direction": "minimize", "costs": ["macs"]})
    assert minimized.directions == ["minimize", "minimize"]


def test_trial_id_is_the_storage_id_of_a_trial_number(tmp_path: Path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    for name in ("other", "mine"):  # ids and numbers part ways in the second study
        study = optuna.create_study(study_name=name, storage=storage)
        trials = [study.ask() for _ in range(2)]
    study_id = storage.get_study_id_from_name("mine")
    ids = [trial_id(storage, study_id, t.number) for t in trials]
    assert ids != [0, 1]  # the ids count the other study's trials too
    assert [storage.get_trial(i).number for i in ids] == [0, 1]


def test_job_outcome() -> None:
    done = JobReturn(status=JobStatus.COMPLETED)
    done.return_value = 0.5
    assert job_outcome(done) == (0.5, None)
    failed = JobReturn(status=JobStatus.FAILED, overrides=["tracking.uri=http://u:pw@h"])
    failed.return_value = ValueError("temperature must be > 0")
    value, error = job_outcome(failed)
    assert value is None and isinstance(error, ValueError)


def test_the_parent_run_records_every_setting_of_the_sweep(tmp_path: Path) -> None:
    """A sweep described by more than the 100 params an MLflow batch holds keeps them all
    on its parent run (it kept the first 100 and dropped the rest, silently)."""
    import optuna
    from mlflow.tracking import MlflowClient
    from omegaconf import OmegaConf

    from kdsweep.sweep.parent_run import ParentRun

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    study = optuna.create_study(study_name="s")
    space = {f"loss.w{i:03d}": f"interval(0, {i + 1})" for i in range(150)}
    description = {"study_name": "s", "search_space": space, "sampler": "TPE", "n_trials": 3}
    config = OmegaConf.create({"tracking": {"uri": uri}})
    parent = ParentRun.for_study(study, config, description, contextlib.nullcontext)
    params = MlflowClient(uri).get_run(parent.run_id).data.params
    assert len([k for k in params if k.startswith("search_space.")]) == 150
    assert params["search_space.loss.w149"] == "interval(0, 150)"


def test_the_parent_run_uploads_only_finished_report_files(tmp_path: Path, caplog) -> None:
    """A concurrent worker's temporary file, an emptied file and a removed one are never
    uploaded: only the report files that are there, with content."""
    from mlflow.tracking import MlflowClient

    from kdsweep.config.schema import TrackingConf
    from kdsweep.sweep.parent_run import ParentRun

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("e")).info.run_id
    report = tmp_path / "report"
    report.mkdir()
    (report / "index.html").write_text("<html>report</html>")
    (report / "trials.csv").write_bytes(b"")  # left empty (a full disk)
    (report / ".report.md.tmp-1234").write_bytes(b"")  # another worker's write in flight
    files = [report / "trials.csv", report / "gone.png", report / "index.html"]
    caplog.set_level("WARNING", logger="kdsweep")
    ParentRun(TrackingConf(uri=uri), run_id).finish(None, files, "FINISHED")
    uploaded = [f.path for f in client.list_artifacts(run_id, "report")]
    assert uploaded == ["report/index.html"]
    assert client.get_run(run_id).info.status == "FINISHED"
    assert "trials.csv is empty: not uploaded" in caplog.text
    assert "gone.png is gone: not uploaded" in caplog.text


def test_one_storage_per_url_and_file(tmp_path: Path) -> None:
    """Jobs in the sweeper's process share its storage; a storage file deleted and made
    again is not served by the old file's pooled connections."""
    import optuna

    from kdsweep.sweep.studies import shared_storage

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    first = shared_storage(url)
    assert shared_storage(url) is first
    optuna.create_study(study_name="s", storage=first)
    (tmp_path / "optuna.db").unlink()
    again = shared_storage(url)
    assert again is not first
    assert [s.study_name for s in again.get_all_studies()] == []  # the new, empty file


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"study_name": "kd-digits-light:confirm"}, "ends with :confirm"),
        ({"study_name": "a,b"}, "is not a plain name for a Hydra override"),
        ({"study_name": "${oc.env:HOME}"}, "is not a plain name for a Hydra override"),
        ({"study_name": "a=b"}, "is not a plain name for a Hydra override"),
        ({"n_trials": 10_001}, "n_trials=10001 plans more than 10000 trials"),
        (
            {"confirm": {"enabled": True, "seeds": 2000, "top_k": 3}},
            "plans up to 12000 confirmation runs (6 arms x 2000 seeds)",
        ),
        (
            {"confirm": {"enabled": True, "seeds": 2, "top_k": 1, "first_seed": 2**32 - 2}},
            "runs past the largest seed",
        ),
    ],
)
def test_settings_refuse_reserved_names_and_absurd_plans(options: dict, message: str) -> None:
    with pytest.raises(KdsweepError, match=re.escape(message)):
        SweepSettings.from_options({**OPTIONS, **options}).check()


def test_settings_allow_the_largest_plan_and_the_last_seeds() -> None:
    largest = {"enabled": True, "seeds": 2500, "top_k": 1}  # 4 arms x 2500 = 10,000 runs
    SweepSettings.from_options({**OPTIONS, "n_trials": 10_000, "confirm": largest}).check()
    last = {"enabled": True, "seeds": 2, "top_k": 1, "first_seed": 2**32 - 3}
    SweepSettings.from_options({**OPTIONS, "confirm": last}).check()
    # Off, the confirmation plans nothing, whatever its seeds.
    SweepSettings.from_options({**OPTIONS, "confirm": {"seeds": 10**9}}).check()
    for name in ("kd-digits-light", "/tmp/a b/.ssh", "confirm-kd:v2"):
        SweepSettings.from_options({**OPTIONS, "study_name": name}).check()


USER_PRUNER = """
import optuna

class Never(optuna.pruners.BasePruner):
    def __init__(self, patience: int = 1) -> None:
        self.patience = patience

    def prune(self, study, trial) -> bool:
        return False
"""


def test_a_users_own_pruner_is_built_once_its_package_is_allowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kdsweep.core.errors import ConfigError
    from kdsweep.sweep.checks import _check_pruner
    from kdsweep.sweep.studies import build_pruner

    (tmp_path / "mypruners.py").write_text(USER_PRUNER)
    monkeypatch.syspath_prepend(str(tmp_path))
    node = {"_target_": "mypruners.Never", "patience": 3}
    with pytest.raises(ConfigError, match=r"allowed_targets=\[mypruners\.\*\]"):
        build_pruner(node)
    pruner = build_pruner(node, allowed=("mypruners.*",))
    assert type(pruner).__name__ == "Never" and pruner.patience == 3
    _check_pruner(node, ("mypruners.*",))  # it prunes a test study without an error
    assert isinstance(build_pruner(None), optuna.pruners.NopPruner)


def test_pruner_options_that_fail_only_when_pruning_are_refused_at_start_up() -> None:
    from kdsweep.sweep.checks import _check_pruner

    hyperband = {"_target_": "optuna.pruners.HyperbandPruner", "reduction_factor": 0}
    with pytest.raises(KdsweepError, match=r"\(HyperbandPruner with reduction_factor=0\)"):
        _check_pruner(hyperband, ())
    _check_pruner({**hyperband, "reduction_factor": 3}, ())


def test_a_sampler_target_that_builds_something_else_is_refused() -> None:
    from kdsweep.sweep.checks import _check_sampler

    with pytest.raises(KdsweepError, match="built a dict, not an Optuna sampler"):
        _check_sampler(lambda seed_offset: {})
    _check_sampler(lambda seed_offset: optuna.samplers.RandomSampler(seed=seed_offset))


def test_a_null_storage_reaches_the_jobs_as_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """hydra.sweeper.storage=null: the sweeper used sqlite:///optuna.db while each job,
    reading the sweeper's node, opened the storage "None" and every trial failed."""
    from hydra.core.hydra_config import HydraConfig

    from kdsweep.sweep import trial_hooks

    sweeper = OmegaConf.create({"sweeper": {"storage": None, "pruner": None}})
    monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda: sweeper))
    opened: dict[str, Any] = {}
    monkeypatch.setattr(trial_hooks, "OptunaTrialHooks", lambda **kwargs: opened.update(kwargs))
    trial_hooks.trial_hooks(OmegaConf.create({"sweep": {"trial_id": 0, "study_name": "s"}}))
    assert opened["storage_url"] == SweepSettings.from_options(OPTIONS).storage
