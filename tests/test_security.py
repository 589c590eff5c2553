"""Security: credentials in storage and tracking URLs never reach logs, MLflow or reports;
teacher checkpoints are loaded with weights_only=True, so a malicious pickle is refused
and its payload never runs."""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import pytest
import torch
import yaml

from _helpers import (
    FAST,
    drop_study,
    fresh_postgres_db_fixture,  # noqa: F401  (the fresh_postgres_db fixture)
    load_trials,
    mlflow_client,
    mlflow_runs,
    postgres_url_fixture,  # noqa: F401  (the postgres_url fixture)
    run,
    run_in_process,
    states,
    sweep_args,
    unique,
)
from kdsweep.core.secrets import MaskSecrets, mask_secrets, mask_value

SECRET = "s3cret"
CONF = Path(__file__).resolve().parents[1] / "conf"


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        (
            "postgresql://kd:s3cret@db.example.com:5432/optuna",
            "postgresql://kd:***@db.example.com:5432/optuna",
        ),
        (
            "postgresql+psycopg2://kd:s3cret@10.0.0.5/optuna",
            "postgresql+psycopg2://kd:***@10.0.0.5/optuna",
        ),
        ("mysql://root:p%40ss:word@127.0.0.1/x", "mysql://root:***@127.0.0.1/x"),
        # SQLAlchemy takes everything up to the "@" as the password, "/" and "#" included.
        ("postgresql://kd:ab/cd#ef@host/db", "postgresql://kd:***@host/db"),
        (
            "http://mlflow:s3cret@tracking.example.com:5000",
            "http://mlflow:***@tracking.example.com:5000",
        ),
        ("https://:s3cret@host/api", "https://:***@host/api"),
        (
            "storage postgresql://a:s3cret@h/db, tracking http://b:t0ken@h:5000 (failed)",
            "storage postgresql://a:***@h/db, tracking http://b:***@h:5000 (failed)",
        ),
        ("http://host/api?user=kd&password=s3cret&x=1", "http://host/api?user=kd&password=***&x=1"),
        ("https://host/?token=s3cret", "https://host/?token=***"),
        ("https://host/?a=1&Secret=s3cret", "https://host/?a=1&Secret=***"),
        # Hydra's launchers log each job's overrides with ":" (and " ", "=", ...) escaped.
        (
            r"tracking.uri=postgresql\://u\:s3cret@host/db",
            r"tracking.uri=postgresql\://u\:***@host/db",
        ),
        (
            r"#0 : loss=kd tracking.uri=http\://kd\:s3\ cr\=et@h\:5000",
            r"#0 : loss=kd tracking.uri=http\://kd\:***@h\:5000",
        ),
        (r"tracking.uri=sqlite\:////tmp/a\:b@c/x.db", r"tracking.uri=sqlite\:////tmp/a\:b@c/x.db"),
        # Nothing secret: unchanged.
        ("postgresql://postgres@127.0.0.1:5432/test", "postgresql://postgres@127.0.0.1:5432/test"),
        ("sqlite:////tmp/a:b@c/optuna.db", "sqlite:////tmp/a:b@c/optuna.db"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("journal:/tmp/optuna.journal.log", "journal:/tmp/optuna.journal.log"),
        ("lr=0.001, T=2.0", "lr=0.001, T=2.0"),
    ],
)
def test_mask_secrets(text: str, masked: str) -> None:
    assert mask_secrets(text) == masked
    assert mask_secrets(masked) == masked  # idempotent


def test_an_errors_first_line_is_masked_before_any_caller_clips_it() -> None:
    """Callers clip it (``first_line(exc)[:200]``) before the error they build is masked:
    a clip inside the URL would leave the start of the password unmasked."""
    from kdsweep.core.errors import first_line

    message = f"could not connect to postgresql://kd:{SECRET}@db/optuna\nDETAIL: ..."
    line = first_line(RuntimeError(message))
    assert line == "could not connect to postgresql://kd:***@db/optuna"
    for cut in range(len(message)):
        assert SECRET[:2] not in first_line(RuntimeError(message))[:cut]


def test_mask_value_leaves_non_strings_alone() -> None:
    assert mask_value(3) == 3
    assert mask_value(None) is None
    assert mask_value("http://u:s3cret@h") == "http://u:***@h"


def test_every_value_kdsweep_writes_to_mlflow_is_masked_then_clipped(
    tmp_path: Path, empty_mlflow_db: Path
) -> None:
    """MaskedClient is the one door to MLflow: params, tags, the run's and a model
    version's description, text artifacts. A clip to MLflow's limit comes after the mask,
    so it never leaves part of a password behind."""
    import shutil

    from mlflow.entities import Param, RunTag

    from kdsweep.core.masked_client import MAX_PARAM_LENGTH, MaskedClient

    shutil.copyfile(empty_mlflow_db, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MaskedClient(tracking_uri=uri, registry_uri=uri)
    url = f"postgresql://kd:{SECRET}@db/optuna"
    run_id = client.create_run("0", tags={"storage": url}).info.run_id
    client.set_tag(run_id, "error", f"cannot open {url}")
    client.log_param(run_id, "uri", url)
    padded = "x" * (MAX_PARAM_LENGTH - 20) + url  # the password straddles the limit
    client.log_batch(run_id, params=[Param("long", padded)], tags=[RunTag("t", url)])
    client.log_text(run_id, f"tracking:\n  uri: {url}\n", "config.yaml")
    client.create_registered_model("m", tags={"storage": url}, description=url)
    client.create_model_version("m", f"runs:/{run_id}/x", run_id, tags={"s": url}, description=url)
    client.update_model_version("m", "1", description=f"now {url}")
    client.set_model_version_tag("m", "1", "again", url)
    data = client.get_run(run_id).data
    written = [*data.tags.values(), *data.params.values()]
    assert "postgresql://kd:***@db/optuna" in data.params["uri"]
    assert len(data.params["long"]) <= MAX_PARAM_LENGTH
    version = client.get_model_version("m", "1")
    written += [version.description, *version.tags.values()]
    written += [client.get_registered_model("m").description]
    written.append(
        (Path(client.download_artifacts(run_id, "config.yaml", str(tmp_path)))).read_text()
    )
    assert all(SECRET not in text for text in written), written
    assert SECRET.encode() not in (tmp_path / "mlflow.db").read_bytes()


def test_log_lines_and_tracebacks_are_masked_by_the_handler_filter() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(MaskSecrets())
    logger = logging.getLogger("kdsweep.test_masking")
    logger.addHandler(handler)
    try:
        logger.error("cannot reach %s", f"postgresql://u:{SECRET}@db/x")
        try:
            raise RuntimeError(f"connect to http://u:{SECRET}@h failed")
        except RuntimeError:
            logger.exception("failed")
        logger.error("%d trials", 3)  # records without a secret are left as they are
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert SECRET not in text
    assert "postgresql://u:***@db/x" in text and "http://u:***@h" in text
    assert "Traceback" in text and "3 trials" in text


@pytest.mark.parametrize("name", ["job_logging", "hydra_logging"])
def test_every_log_handler_masks(name: str) -> None:
    conf = yaml.safe_load((CONF / "hydra" / name / "kdsweep.yaml").read_text())
    assert conf["filters"]["masked"]["()"] == "kdsweep.core.secrets.MaskSecrets"
    assert all("masked" in handler.get("filters", []) for handler in conf["handlers"].values())


def _files_with(root: Path, needle: bytes, skip_hydra_snapshots: bool) -> list[Path]:
    found = []
    for path in root.rglob("*"):
        if not path.is_file():
            continue
        if skip_hydra_snapshots and (
            ".hydra" in path.parts or path.name == "multirun.yaml" or path.suffix == ".pkl"
        ):
            continue
        if needle in path.read_bytes():
            found.append(path)
    return found


LAUNCHERS = {
    "basic": [],
    "joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "hydra.sweeper.n_jobs=2"],
    "submitit_local": [
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=10",
        "hydra.launcher.cpus_per_task=1",
    ],
}


@pytest.mark.postgres
@pytest.mark.parametrize(
    "launcher",
    [
        "basic",
        pytest.param("joblib", marks=pytest.mark.slow),
        pytest.param("submitit_local", marks=pytest.mark.slow),
    ],
)
def test_passwords_in_both_urls_reach_no_console_run_or_report(
    tmp_path: Path, postgres_url: str, fresh_postgres_db: str, teacher_cache: Path, launcher: str
) -> None:
    """A sweep with a password in the Optuna storage URL and in the MLflow tracking URL,
    both on PostgreSQL (trust auth ignores the password), under each launcher kdsweep
    ships: every launcher prints the jobs' overrides in its own form (Hydra escapes the
    URL's ``:`` as ``\\:``), and none of them may show the password."""
    assert "@" in postgres_url and ":" not in postgres_url.split("://")[1].split("@")[0]
    storage = postgres_url.replace("@", f":{SECRET}@", 1)
    tracking = fresh_postgres_db.replace("@", f":{SECRET}@", 1)
    study_name = unique("secret")
    args = sweep_args(
        tmp_path,
        study_name,
        2,
        *LAUNCHERS[launcher],
        storage=storage,
        tracking_uri=tracking,
        cache_dir=teacher_cache,
    )
    try:
        proc = run(tmp_path, args, timeout=900)
        assert proc.returncode == 0, mask_secrets(proc.stderr[-3000:])
        assert states(load_trials(postgres_url, study_name)) == {"COMPLETE": 2}
    finally:
        drop_study(postgres_url, study_name)

    # Not on the console, where both URLs are named, masked...
    output = proc.stdout + proc.stderr
    assert SECRET not in output
    assert "postgres:***@" in output
    if launcher == "submitit_local":  # each job's own log, written by submitit
        job_logs = list((tmp_path / "multirun").glob(".submitit/*/*_log.*"))
        assert job_logs
        assert not [p for p in job_logs if SECRET.encode() in p.read_bytes()]
    # ...nor in MLflow: params, tags and metrics of the parent and every trial run...
    runs = mlflow_runs(fresh_postgres_db)
    assert len(runs) == 3
    parent = next(r for r in runs if r.data.tags.get("kdsweep.role") == "sweep")
    assert parent.data.params["storage"] == storage.replace(SECRET, "***")
    for run_ in runs:
        for key, value in {**run_.data.params, **run_.data.tags}.items():
            assert SECRET not in value, key
    # ...nor in any file kdsweep wrote: the MLflow artifacts, the report, the job logs
    # (main.log) and results. Hydra's own snapshots of the command line (.hydra/*.yaml,
    # multirun.yaml) and submitit's pickled job specs are the user's input, recorded
    # verbatim by those libraries.
    assert list((tmp_path / "reports").rglob("index.html"))
    assert list((tmp_path / "multirun").rglob("*.log"))
    assert _files_with(tmp_path, SECRET.encode(), skip_hydra_snapshots=True) == []


def test_tracking_password_is_masked_in_the_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail at once
    proc = run(
        tmp_path,
        [
            "loss=ce",
            f"tracking.uri=http://kd:{SECRET}@127.0.0.1:1",
            f"cache_dir={tmp_path / 'cache'}",
            f"hydra.run.dir={tmp_path / 'out'}",
            *FAST,
        ],
    )
    assert proc.returncode == 2
    assert "MLflow does not answer at tracking.uri=http://kd:***@127.0.0.1:1" in proc.stderr
    assert SECRET not in proc.stdout + proc.stderr
    assert _files_with(tmp_path, SECRET.encode(), skip_hydra_snapshots=True) == []


def test_storage_password_is_masked_when_the_server_is_unreachable(tmp_path: Path) -> None:
    proc = run(
        tmp_path,
        sweep_args(tmp_path, "unreachable", 1, storage=f"postgresql://kd:{SECRET}@127.0.0.1:1/x"),
    )
    assert proc.returncode == 2
    assert "cannot open the Optuna storage postgresql://kd:***@127.0.0.1:1/x" in proc.stderr
    assert SECRET not in proc.stdout + proc.stderr


# --- teacher checkpoints: weights_only ------------------------------------------------------


class Payload:
    """Unpickling this creates a file: proof that the payload ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {self.marker}",))


def _malicious_checkpoint(tmp_path: Path, wrap: bool) -> tuple[Path, Path]:
    marker = tmp_path / "PWNED"
    path = tmp_path / "teacher.pt"
    payload = Payload(marker)
    if wrap:  # shaped like a state_dict / kdsweep checkpoint, the payload inside
        payload = {"format": "kdsweep-teacher/1", "state_dict": {"w": torch.zeros(1)}, "x": payload}
    torch.save(payload, path)
    assert not marker.exists()
    return path, marker


@pytest.mark.parametrize("wrap", [False, True], ids=["bare", "inside-a-checkpoint"])
def test_malicious_teacher_checkpoint_is_refused_in_process(tmp_path: Path, wrap: bool) -> None:
    from _helpers import compose
    from kdsweep.config.validation import validate
    from kdsweep.core.errors import CheckpointError
    from kdsweep.data import load_splits
    from kdsweep.training.teacher import load_user_checkpoint

    path, marker = _malicious_checkpoint(tmp_path, wrap)
    settings = validate(compose(f"teacher.checkpoint={path}"))
    with pytest.raises(CheckpointError) as caught:
        load_user_checkpoint(settings, load_splits(settings.data), torch.device("cpu"))
    assert "\n" not in str(caught.value)
    assert str(path) in str(caught.value)
    assert not marker.exists()
    # The same file, loaded the unsafe way, does run the payload: the test would notice.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_malicious_teacher_checkpoint_is_refused_by_the_cli(tmp_path: Path) -> None:
    path, marker = _malicious_checkpoint(tmp_path, wrap=False)
    proc = run(
        tmp_path,
        [
            f"teacher.checkpoint={path}",
            f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
            f"cache_dir={tmp_path / 'cache'}",
            f"hydra.run.dir={tmp_path / 'out'}",
            *FAST,
        ],
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("kdsweep: error:")]
    assert f"teacher checkpoint {path} is corrupt or not a torch file" in line
    assert not marker.exists()
    assert mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}") == []


def test_malicious_file_in_the_caches_is_never_unpickled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A planted file where the teacher cache or the teacher-output cache would be is
    unreadable with weights_only: it is replaced by a freshly computed one."""
    from _helpers import compose
    from kdsweep.config.validation import validate
    from kdsweep.data import load_splits
    from kdsweep.training import teacher as teacher_module
    from kdsweep.training.teacher import prepare_teacher, teacher_key
    from kdsweep.training.teacher_outputs import cached_source

    def untrained(settings, data, device):  # noqa: ANN001, ANN202  (training is not the point)
        return teacher_module._new_model(settings, data), {"teacher_val_acc": 0.0}

    monkeypatch.setattr(teacher_module, "_train_teacher", untrained)

    cache = tmp_path / "cache"
    untrained = ("teacher.epochs=1", "teacher.allow_weak=true")  # scores 0 %, as stubbed
    settings = validate(compose(*untrained, f"cache_dir={cache}"))
    data = load_splits(settings.data)
    key = teacher_key(settings, data)
    planted, marker = _malicious_checkpoint(tmp_path, wrap=False)
    target = cache / "teachers" / f"{settings.teacher_model.name}-{key}.pt"
    target.parent.mkdir(parents=True)
    target.write_bytes(planted.read_bytes())

    teacher = prepare_teacher(settings, data, torch.device("cpu"))
    assert teacher.trained_now  # the planted file was not used
    assert not marker.exists()
    assert torch.load(target, weights_only=True)["format"] == "kdsweep-teacher/1"

    # The teacher-output cache: plant the payload where val logits go.
    first = cached_source(teacher.model, teacher.key, "val", data.val_x, cache, True, False)
    (logits_file,) = (cache / "teacher_outputs").glob("val-*-logits.pt")
    logits_file.write_bytes(planted.read_bytes())
    again = cached_source(teacher.model, teacher.key, "val", data.val_x, cache, True, False)
    assert not marker.exists()
    assert torch.equal(again.logits, first.logits)


# --- the study name is user input, never a path ----------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["/home/me/.ssh", "..", ".", "../../etc", "a/../../b", "~", "", "x" * 600, "C:\\temp", "\x00"],
)
def test_report_dir_is_one_component_inside_the_root(tmp_path: Path, name: str) -> None:
    from kdsweep.core.files import MAX_SAFE_NAME
    from kdsweep.report import report_dir_for

    folder = report_dir_for(tmp_path / "reports", name)
    assert folder.parent == tmp_path / "reports"
    assert folder.name not in ("", ".", "..") and not folder.name.startswith(".")
    assert len(folder.name) <= MAX_SAFE_NAME + 9
    assert "/" not in folder.name and "\\" not in folder.name


def test_the_champions_model_name_is_one_mlflow_accepts_for_any_study_name(
    tmp_path: Path,
) -> None:
    """Optuna takes any study name; MLflow refuses model names with / or : or that
    resolve like paths. The registry's name is cleaned as the report folder's is."""
    from mlflow.tracking import MlflowClient

    from kdsweep.registry import registered_name

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    names = ["/home/me/.ssh", "..", "a/b", "a_b", "a:b", "y" * 300, "kd-digits-light"]
    registered = [registered_name(n) for n in names]
    assert registered[-1] == "kd-digits-light-student"
    assert len(set(registered)) == len(names)
    for name in registered:
        client.create_registered_model(name)  # raises on a name MLflow refuses


def test_report_dir_keeps_plain_names_and_separates_cleaned_ones(tmp_path: Path) -> None:
    from kdsweep.report import report_dir_for

    assert report_dir_for(tmp_path, "kd-digits-light") == tmp_path / "kd-digits-light"
    assert report_dir_for(tmp_path, "a/b") != report_dir_for(tmp_path, "a_b")
    assert report_dir_for(tmp_path, "y" * 300) != report_dir_for(tmp_path, "y" * 301)


@pytest.mark.usefixtures("tracked_workdir")  # tmp_path/mlflow.db seeded
def test_a_path_as_study_name_writes_and_uploads_nothing_outside_the_reports(
    tmp_path: Path, teacher_cache: Path
) -> None:
    """study_name=<a folder with a private key> once wrote the report into that folder and
    uploaded all of it (the key included) to the parent run."""
    secret_dir = tmp_path / "home" / ".ssh"
    secret_dir.mkdir(parents=True)
    (secret_dir / "id_rsa").write_text("PRIVATE KEY")
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "unrelated.txt").write_text("not the sweep's")  # a neighbour, never uploaded
    proc = run_in_process(
        tmp_path, sweep_args(tmp_path, str(secret_dir), 1, cache_dir=teacher_cache)
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    assert sorted(p.name for p in secret_dir.iterdir()) == ["id_rsa"]
    (folder,) = [p for p in reports.iterdir() if p.is_dir()]
    assert (folder / "index.html").is_file()
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    (parent,) = [r for r in mlflow_runs(tracking) if r.data.tags.get("kdsweep.role") == "sweep"]
    client = mlflow_client(tracking)
    uploaded = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert "report/index.html" in uploaded
    assert uploaded == {f"report/{p.name}" for p in folder.iterdir()}
    here = client.download_artifacts(parent.info.run_id, "report", str(tmp_path / "dl"))
    assert b"PRIVATE KEY" not in b"".join(p.read_bytes() for p in Path(here).iterdir())
