"""What a sweep publishes at its end: its teacher on the parent run, its best student in the
MLflow Model Registry.

- The teacher every trial learned from is logged once, as the parent run's ``teacher/``
  artifact (the checkpoint and ``teacher.json``: recipe, data fingerprint, accuracies),
  found through the tags a trial's run carries (kdsweep.student.record_student). A later
  invocation of the same study logs it again only if the teacher changed.
- After a search with costs, every confirmed point of its front is a version, tagged with
  its costs and confirmed accuracies, with the aliases ``front-1`` (the smallest) ..
  ``front-k`` and ``champion`` on the report's pick (kdsweep.results.front).
- The champion (the search's candidate that confirmed best: kdsweep.publish; without a
  confirmation stage the search's best trial, ties broken by val loss) becomes a version
  of the registered model ``<study>-student`` with the alias ``champion``; its
  description holds its confirmed figures when the sweep has a confirmation stage, its
  tags the teacher, the data fingerprint, the loss and the config.
  A rerun whose best trial is another run adds a version and moves the alias; a rerun with
  the same best updates that version's description (new confirmation seeds) and keeps it.

Everything goes through the client API of the sweep's tracking URI (SQLite store or an
``mlflow server``). A failure is logged, never raised: the sweep's results come first.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from kdsweep.core.files import safe_name
from kdsweep.core.formatting import mean_ci
from kdsweep.core.stats import SeededArm
from kdsweep.core.stores import attempt
from kdsweep.results.confirmed import ci, confirmed_headline, confirmed_summary
from kdsweep.results.front import ConfirmedFront, ConfirmedPoint, confirmed_front, front_headline
from kdsweep.run.student import ARTIFACT, DATA_TAG
from kdsweep.run.tracking import mlflow_best_effort
from kdsweep.sweep.arms import describe_costs, ranked_trials

if TYPE_CHECKING:
    import optuna

log = logging.getLogger("kdsweep.sweep")

ALIAS = "champion"


def registry_client(tracking_uri: str) -> Any:
    """A client whose Model Registry is the tracking store itself: never a registry URI
    that an environment variable (MLFLOW_REGISTRY_URI) or another caller left behind."""
    from kdsweep.core.masked_client import MaskedClient  # imports MLflow

    return MaskedClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def registered_name(study_name: str) -> str:
    """``<study>-student``, the study name cleaned as for its report folder: MLflow
    refuses model names with ``/`` or ``:`` or that resolve like paths (``..``), which
    Optuna study names may hold."""
    return f"{safe_name(study_name)}-student"


def publish(
    study: optuna.Study,
    study_name: str,
    tracking_uri: str,
    parent_run_id: str | None,
    best: optuna.trial.FrozenTrial | None,
    confirm_study: optuna.Study | None = None,
    register: bool = True,
) -> str | None:
    """Log the teacher on the parent run and (``register``) the champion. Returns the
    registered version, or None."""
    if parent_run_id is None or best is None:
        return None
    registered: list[str | None] = [None]

    def publish_models() -> None:
        client = registry_client(tracking_uri)
        log_teacher(client, parent_run_id, _teacher_run(client, study, best))
        if register:
            parts = study.user_attrs.get("parts")
            front = confirmed_front(study, confirmed_summary(confirm_study), confirm_study)
            if front is not None:  # a search with costs: every confirmed point
                registered[0] = register_front(client, study_name, study, front, parts).get(ALIAS)
            else:
                registered[0] = register_champion(client, study_name, best, confirm_study, parts)

    # The sweep's results come first: MLflow's one rule once work has begun.
    mlflow_best_effort(tracking_uri, "the sweep's models were not published", publish_models)
    return registered[0]


def _teacher_run(client: Any, study: optuna.Study, best: optuna.trial.FrozenTrial) -> Any | None:
    """The first MLflow run that names its teacher, of the best trial, then the other
    completed trials (best first); None if none does."""
    order = [best] + [t for t in ranked_trials(study) if t.number != best.number]
    for trial in order:
        run_id = trial.user_attrs.get("mlflow_run_id")
        if not run_id:
            continue
        run, deleted = attempt(lambda run_id=run_id: client.get_run(run_id))
        # A run deleted by hand is skipped.
        if deleted is None and "kdsweep.teacher.key" in run.data.tags:
            return run
    return None


def log_teacher(client: Any, parent_run_id: str, source: Any | None) -> bool:
    """The teacher's checkpoint and recipe (from the trial run ``source``) as the parent
    run's ``teacher/`` artifact, once."""
    import tempfile
    from pathlib import Path

    if source is None:
        return False
    tags = source.data.tags
    key = tags["kdsweep.teacher.key"]
    parent = client.get_run(parent_run_id)
    if parent.data.tags.get("kdsweep.teacher.key") == key:
        return False  # logged by an earlier invocation
    checkpoint = Path(tags.get("kdsweep.teacher.checkpoint", ""))
    recipe = json.loads(tags.get("kdsweep.teacher.recipe", "{}"))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "teacher"
        folder.mkdir()
        recipe["checkpoint_file"] = checkpoint.name if checkpoint.is_file() else None
        (folder / "teacher.json").write_text(json.dumps(recipe, indent=2, default=str))
        if checkpoint.is_file():
            # Copied, not linked: the cache may be cleaned; the run keeps its teacher.
            (folder / checkpoint.name).write_bytes(checkpoint.read_bytes())
        else:
            log.warning("teacher checkpoint %s is gone: logging its recipe only", checkpoint)
        client.log_artifacts(parent_run_id, str(folder), "teacher")
    client.set_tag(parent_run_id, "kdsweep.teacher.key", key)
    if DATA_TAG in tags:
        client.set_tag(parent_run_id, DATA_TAG, tags[DATA_TAG])
    log.info("teacher %s logged on the sweep's run %s", key, parent_run_id)
    return True


def describe(
    study_name: str,
    best: optuna.trial.FrozenTrial,
    run: Any,
    confirm_study: optuna.Study | None,
    parts: Mapping[str, str] | None = None,
) -> str:
    """The version's description: the search's (selection-biased) figures, then what the
    confirmation stage measured for this configuration, if it ran, and its headline (the
    sweep's ``parts`` named)."""
    metrics = run.data.metrics
    params = ", ".join(f"{k}={v}" for k, v in best.params.items())
    confirmed = confirmed_summary(confirm_study)
    arm = None
    if confirmed is not None:
        tops = (a for a in confirmed.arms if a.key.startswith("top"))
        arm = next((a for a in tops if a.trial == best.number), None)
    what = (
        "Best trial" if arm is None or arm.key == "top1" else f"Best confirmed ({arm.key}): trial"
    )
    lines = [
        f"{what} #{best.number} of study {study_name} ({params}):"
        f" val acc {metrics.get('objective', float('nan')):.2f} %,"
        f" test acc {metrics.get('test_acc', float('nan')):.2f} %"
        " (one seed, selected on val: unconfirmed)."
    ]
    if confirmed is None:
        lines.append("No confirmation stage: these figures are the search's own.")
    else:
        if arm is not None and arm.test_stats.n:
            lines.append(f"Confirmed {_confirmed_over(arm)}.")
        lines.append(confirmed_headline(confirmed, parts))
    return "\n\n".join(lines)


def register_champion(
    client: Any,
    study_name: str,
    best: optuna.trial.FrozenTrial,
    confirm_study: optuna.Study | None = None,
    parts: Mapping[str, str] | None = None,
) -> str | None:
    """``best``'s student as a version of ``<study>-student`` with the alias ``champion``
    (moved from an earlier version if there is one). Returns the version."""
    run = _student_run(client, best, "the best trial")
    if run is None:
        return None
    name = registered_name(study_name)
    _ensure_model(client, name, study_name)
    tags = version_tags(study_name, best, run)
    description = describe(study_name, best, run, confirm_study, parts)
    version = _version_of(client, name, run, tags, description)
    _point_alias(client, name, ALIAS, version, run.info.run_id)
    return version


def register_front(
    client: Any,
    study_name: str,
    study: optuna.Study,
    front: ConfirmedFront,
    parts: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Every confirmed point of a search with costs as a version of ``<study>-student``,
    tagged with its costs and confirmed accuracies: aliases ``front-1`` (the smallest)
    .. ``front-k``, and ``champion`` on the report's pick (the smallest within tolerance
    of the best confirmed val accuracy). ``front-`` aliases a shorter front no longer has
    are removed. Returns alias -> version."""
    name = registered_name(study_name)
    _ensure_model(client, name, study_name)
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    headline = front_headline(front, parts)
    aliases: dict[str, str] = {}
    for point in front.points:
        trial = trials[point.trial]
        run = _student_run(client, trial, f"front point {point.alias} (trial {point.trial})")
        if run is None:
            continue
        tags = version_tags(study_name, trial, run) | front_tags(point)
        description = (
            f"{point.alias} of study {study_name}: trial #{point.trial}"
            f" ({describe_costs(point.costs)}), confirmed {_confirmed_over(point.kd)}"
            + (" (dominated when confirmed)" if point.dominated else "")
            + f".\n\n{headline}"
        )
        version = _version_of(client, name, run, tags, description)
        _point_alias(client, name, point.alias, version, run.info.run_id)
        aliases[point.alias] = version
        if point is front.pick:
            _point_alias(client, name, ALIAS, version, run.info.run_id)
            aliases[ALIAS] = version
    stale, _ = attempt(lambda: client.get_registered_model(name).aliases)
    for alias in stale or {}:
        if alias.startswith("front-") and alias not in aliases:
            client.delete_registered_model_alias(name, alias)
            log.info("registry: %s@%s removed: the confirmed front is shorter now", name, alias)
    return aliases


def _confirmed_over(arm: SeededArm) -> str:
    """ "over 5 fresh seed(s): test acc .. %, val acc .. % (mean ± 95 % CI half-width)"""
    return (
        f"over {arm.test_stats.n} fresh seed(s): test acc {mean_ci(arm.test_stats)} %,"
        f" val acc {mean_ci(arm.val_stats)} % (mean ± 95 % CI half-width)"
    )


def front_tags(point: ConfirmedPoint) -> dict[str, str]:
    """A front point's costs and confirmed accuracies, as version tags."""
    tags = {f"cost.{name}": f"{value:g}" for name, value in point.costs.items()}
    tags["front.alias"] = point.alias
    tags["front.dominated"] = str(point.dominated).lower()
    tags["confirmed.seeds"] = str(point.kd.test_stats.n)
    tags["confirmed.test_acc"] = mean_ci(point.kd.test_stats)
    tags["confirmed.val_acc"] = mean_ci(point.kd.val_stats)
    if point.ablation is not None:
        tags["confirmed.no_teacher_test_acc"] = mean_ci(point.ablation.test_stats)
    if point.gain is not None and point.gain.n:
        tags["confirmed.teacher_gain"] = ci(point.gain)
    return tags


def _student_run(client: Any, trial: optuna.trial.FrozenTrial, what: str) -> Any | None:
    """The MLflow run of ``trial`` if it logged a student; else None, logged."""
    run_id = trial.user_attrs.get("mlflow_run_id")
    if not run_id:
        log.info("registry: %s has no MLflow run; nothing registered", what)
        return None
    names = {item.path for item in client.list_artifacts(run_id, ARTIFACT)}
    if f"{ARTIFACT}/MLmodel" not in names:
        log.info(
            "registry: the run %s of %s logged no student (trainer.save_model=none?);"
            " nothing registered",
            run_id,
            what,
        )
        return None
    return client.get_run(run_id)


def _ensure_model(client: Any, name: str, study_name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(
            name,
            description=f"The best distilled student of kdsweep study {study_name};"
            f" alias {ALIAS} = the current best.",
        )
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def _version_of(client: Any, name: str, run: Any, tags: dict[str, str], description: str) -> str:
    """The version of ``name`` holding ``run``'s student, its description and tags
    brought up to date; a new version where there is none yet."""
    run_id = run.info.run_id
    escaped = run_id.replace("'", "")
    quoted = name.replace("'", "\\'")
    existing = client.search_model_versions(f"name='{quoted}' and run_id='{escaped}'")
    if existing:
        version = str(max(int(v.version) for v in existing))
        client.update_model_version(name, version, description=description)
        for key, value in tags.items():
            client.set_model_version_tag(name, version, key, value)
        return version
    created = client.create_model_version(
        name,
        source=f"{run.info.artifact_uri}/{ARTIFACT}",
        run_id=run_id,
        tags=tags,
        description=description,
    )
    return str(created.version)


def _point_alias(client: Any, name: str, alias: str, version: str, run_id: str) -> None:
    found, _ = attempt(lambda: client.get_model_version_by_alias(name, alias))
    previous = None if found is None else str(found.version)
    client.set_registered_model_alias(name, alias, version)
    if previous not in (None, version):
        log.info("registry: %s@%s moved from version %s to %s", name, alias, previous, version)
    else:
        log.info("registry: %s@%s is version %s (run %s)", name, alias, version, run_id)


def version_tags(study_name: str, best: optuna.trial.FrozenTrial, run: Any) -> dict[str, str]:
    tags = run.data.tags
    params = run.data.params
    teacher = tags.get("kdsweep.teacher.key")
    if teacher:
        recipe = json.loads(tags.get("kdsweep.teacher.recipe", "{}"))
        teacher = f"{recipe.get('architecture', '?')} {teacher}"
    config = " ".join(f"{k}={v}" for k, v in best.params.items())
    fixed = [
        f"{k}={params[k]}"
        for k in ("model.name", "optimizer.name", "data.name", "trainer.epochs")
        if k in params
    ]
    return {
        "study": study_name,
        "trial": str(best.number),
        "run_id": run.info.run_id,
        "teacher": teacher or "none",
        "data_fingerprint": tags.get(DATA_TAG, "unknown"),
        "loss": tags.get("loss", params.get("loss.name", "unknown")),
        "config": " ".join([config, *fixed]).strip()[:4000],
        "config_artifact": f"runs:/{run.info.run_id}/config.yaml",
    }
