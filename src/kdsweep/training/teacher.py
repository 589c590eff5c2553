"""The teacher: trained at most once per (teacher config, data, seed), then reused.

Checkpoints are content-keyed files under ``<cache_dir>/teachers``, cached artifacts
(kdsweep.core.cache): sealed, checked on every load, trained once under a lock while
concurrent runs (sweep workers) wait. The frozen teacher's outputs on each split are
cached the same way (kdsweep.training.teacher_outputs), so a KD trial never pays for the
teacher's forward pass (about 70x the student's) more than once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kdsweep.config.schema import TrainerConf
from kdsweep.config.targets import build_network
from kdsweep.config.validation import Settings
from kdsweep.core.cache import UNREADABLE_TORCH_FILE, cached_artifact, load_plain
from kdsweep.core.errors import CheckpointError, KdsweepError, first_line
from kdsweep.core.files import file_hash, stable_hash
from kdsweep.core.integrity import CHECKSUM_KEY, IntegrityError, content_digest, verified
from kdsweep.core.values import finite_number
from kdsweep.data import TensorSplits
from kdsweep.data.splits import hide_labels
from kdsweep.losses import CrossEntropy
from kdsweep.nets import FeatureNet
from kdsweep.training.loop import evaluate, fit
from kdsweep.training.optim import build_optimizer

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "kdsweep-teacher/1"

# A teacher must beat chance on validation both surely and by a margin. Surely: a
# one-sided binomial test of its correct answers against guessing (1 / num_classes) at
# p < WEAK_P_VALUE, because on a few validation images a margin alone can be luck (5 of
# 12 right among 3 classes). By a margin: WEAK_MARGIN of the way from chance to 100 %,
# because on many images a useless teacher is still significant (11 % against 10 % on
# 10,000 images, a network whose BatchNorm statistics are wrong).
WEAK_P_VALUE = 0.01
WEAK_MARGIN = 0.1


class WeakTeacherError(KdsweepError):
    """The teacher is not clearly above chance: distilling from it teaches nothing."""


@dataclass
class Teacher:
    model: FeatureNet
    key: str  # identifies the weights: cache keys of its outputs derive from it
    path: Path
    metrics: dict[str, float]
    trained_now: bool


def training_recipe(settings: Settings, data: TensorSplits) -> dict[str, Any]:
    """What a teacher kdsweep trains is made from: its network, how it is trained, its
    data. Its cache key is this recipe's hash (teacher_key); a run records it (the
    ``kdsweep.teacher.recipe`` tag)."""
    recipe = {
        "model": settings.teacher_model.identity(),
        "epochs": settings.teacher.epochs,
        "batch_size": settings.teacher.batch_size,
        "seed": settings.teacher.seed,
        "optimizer": settings.teacher_optimizer.identity(),
        "scheduler": scheduler.identity() if (scheduler := settings.teacher_scheduler) else None,
        "data": data.fingerprint,
        "format": CHECKPOINT_FORMAT,
    }
    if settings.teacher.labelled_fraction < 1:  # named only when set: split_seed picks them
        recipe["labels"] = [settings.teacher.labelled_fraction, settings.data.split_seed]
    if settings.trainer.precision != "fp32":  # likewise; bf16 autocast trains other weights
        recipe["precision"] = str(settings.trainer.precision)
    return recipe


def teacher_key(settings: Settings, data: TensorSplits) -> str:
    return stable_hash(training_recipe(settings, data))


def _read_checkpoint(path: Path) -> Any:
    try:
        return load_plain(path)
    except UNREADABLE_TORCH_FILE as exc:
        raise CheckpointError(
            f"teacher checkpoint {path} is corrupt or not a torch file ({first_line(exc)}):"
            " delete it to retrain, or set teacher.checkpoint to a good file"
        ) from exc


def _load_weights(model: FeatureNet, state: Any, path: Path) -> None:
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise CheckpointError(
            f"teacher checkpoint {path} does not fit a {model.__class__.__name__} for this data"
            f" ({first_line(exc)}): check teacher.model and data,"
            " or set teacher.checkpoint=null"
        ) from exc


def _made_for(settings: Settings, data: TensorSplits) -> dict[str, Any]:
    """What a kdsweep checkpoint records of the network it holds (the network's target and
    arguments: plain values, as weights_only loading refuses anything else)."""
    return {
        "architecture": settings.teacher_model.identity(),
        "input_shape": list(data.input_shape),
        "num_classes": data.num_classes,
    }


def _check_payload(payload: Any, path: Path, settings: Settings, data: TensorSplits) -> None:
    for key, value in _made_for(settings, data).items():
        if payload.get(key) != value:
            raise CheckpointError(
                f"teacher checkpoint {path} has {key}={payload.get(key)}, this run needs {value}:"
                " set teacher.checkpoint=null to train a matching teacher"
            )
    if payload.get("data_fingerprint") != data.fingerprint:
        raise CheckpointError(
            f"teacher checkpoint {path} was trained on other data"
            f" (fingerprint {payload.get('data_fingerprint')}, this run's data {data.fingerprint}):"
            " set teacher.checkpoint=null to train one on this data"
        )


def _finite_metrics(payload: dict) -> dict[str, float]:
    """The checkpoint's recorded teacher metrics that are numbers (a sealed file's: kdsweep
    wrote them), so they never break the run's logging."""
    metrics = payload.get("metrics")
    if not isinstance(metrics, dict):
        return {}
    numbers = {str(k): finite_number(v) for k, v in metrics.items()}
    return {k: v for k, v in numbers.items() if v is not None}


def _check_finite(model: FeatureNet, path: Path) -> None:
    """A user's weights must be numbers: NaN weights would surface later as a diverging
    student, blamed on the loss's settings."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(
                f"teacher checkpoint {path} has weights that are not finite ({name}):"
                " set teacher.checkpoint to a good file, or null to train a teacher"
            )


def _measured_metrics(model: FeatureNet, settings: Settings, data: TensorSplits) -> dict:
    """The user's teacher's accuracy on this run's val and test splits, measured: what a
    file claims is not what is reported."""
    size = settings.trainer.eval_batch_size
    _, val_acc = evaluate(model, CrossEntropy(), data.val_x, data.val_y, None, size)
    _, test_acc = evaluate(model, CrossEntropy(), data.test_x, data.test_y, None, size)
    return {"teacher_val_acc": val_acc, "teacher_test_acc": test_acc}


def _new_model(settings: Settings, data: TensorSplits) -> FeatureNet:
    return build_network(settings.teacher_model, data.input_shape, data.num_classes)


def load_user_checkpoint(settings: Settings, data: TensorSplits, device: torch.device) -> Teacher:
    """``teacher.checkpoint``: a kdsweep checkpoint (checked against this run's data) or a
    plain state_dict of the same network (e.g. saved by the tutorial's code)."""
    path = Path(settings.teacher.checkpoint).expanduser()  # type: ignore[arg-type]
    if not path.is_file():
        raise CheckpointError(
            f"teacher.checkpoint {path} does not exist: give an existing file, or null to train one"
        )
    payload = _read_checkpoint(path)
    model = _new_model(settings, data)
    if isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT:
        is_sealed = CHECKSUM_KEY in payload
        if is_sealed:
            try:
                payload = verified(payload)
            except IntegrityError as exc:
                raise CheckpointError(
                    f"teacher checkpoint {path} is damaged: {exc}; set teacher.checkpoint to"
                    " a good copy, or null to train a teacher"
                ) from None
        _check_payload(payload, path, settings, data)
        _load_weights(model, payload["state_dict"], path)
        # A sealed file's other figures (its training time) are kdsweep's own record.
        metrics = _finite_metrics(payload) if is_sealed else {}
    elif isinstance(payload, dict) and all(isinstance(v, torch.Tensor) for v in payload.values()):
        log.warning(
            "teacher checkpoint %s is a bare state_dict: its training data is unknown", path
        )
        _load_weights(model, payload, path)
        metrics = {}
    else:
        raise CheckpointError(
            f"teacher checkpoint {path} is neither a kdsweep checkpoint nor a state_dict:"
            " set teacher.checkpoint to a file saved by kdsweep or torch.save(model.state_dict())"
        )
    _check_finite(model, path)
    model.to(device).eval()
    metrics.update(_measured_metrics(model, settings, data))
    return Teacher(model, "file-" + file_hash(path), path, metrics, trained_now=False)


def weak_teacher_problem(val_acc: float, n_val: int, num_classes: int) -> str | None:
    """Why a teacher of validation accuracy ``val_acc`` (%) on ``n_val`` images is not
    clearly above chance, or None when it is (WEAK_P_VALUE, WEAK_MARGIN)."""
    from scipy.stats import binomtest

    chance = 100.0 / num_classes
    needed = chance + WEAK_MARGIN * (100.0 - chance)
    correct = round(val_acc / 100.0 * n_val)
    p_value = binomtest(correct, n_val, 1.0 / num_classes, alternative="greater").pvalue
    if val_acc >= needed and p_value < WEAK_P_VALUE:
        return None
    return (
        f"scores {val_acc:.2f} % on {n_val} validation images, chance is {chance:.2f} %"
        f" (it needs {needed:.2f} % and p < {WEAK_P_VALUE} against guessing; p = {p_value:.2g})"
    )


def check_teaches(teacher: Teacher, settings: Settings, data: TensorSplits) -> None:
    """Refuse a teacher that is not clearly above chance, trained now, cached or the
    user's, unless teacher.allow_weak: a student distilled from it learns nothing from it,
    in silence. A weak teacher stays cached: it is refused again on every reuse."""
    val_acc = teacher.metrics["teacher_val_acc"]  # measured, or a sealed file's record
    problem = weak_teacher_problem(val_acc, len(data.val_y), data.num_classes)
    if problem is None:
        return
    if settings.teacher.allow_weak:
        log.warning(
            "teacher %s %s: distilled from anyway (teacher.allow_weak=true)",
            settings.teacher_model.name,
            problem,
        )
        return
    raise WeakTeacherError(
        f"teacher {settings.teacher_model.name} {problem}: it would teach nothing. Check"
        " teacher.epochs and teacher.optimizer.lr, that its BatchNorm statistics are"
        " right in eval mode, or teacher.checkpoint; or set teacher.allow_weak=true to"
        " distil from it anyway"
    )


def _train_teacher(
    settings: Settings, data: TensorSplits, device: torch.device
) -> tuple[FeatureNet, dict]:
    conf = settings.teacher
    torch.manual_seed(conf.seed)
    model = _new_model(settings, data).to(device)
    recipe = TrainerConf(
        epochs=conf.epochs,
        batch_size=conf.batch_size,
        eval_batch_size=settings.trainer.eval_batch_size,
        seed=conf.seed,
        progress=settings.trainer.progress,
        objective="best",
        precision=settings.trainer.precision,
        channels_last=settings.trainer.channels_last,
    )
    objective = CrossEntropy()
    result = fit(
        model,
        objective,
        build_optimizer(settings.teacher_optimizer, model.parameters()),
        data.train_x,
        hide_labels(data.train_y, conf.labelled_fraction, settings.data.split_seed),
        data.val_x,
        data.val_y,
        recipe,
        description="teacher",
        lr_key="teacher.optimizer.lr",
        scheduler=settings.teacher_scheduler,
    )
    _, test_acc = evaluate(model, objective, data.test_x, data.test_y, None, recipe.eval_batch_size)
    metrics = {
        "teacher_val_acc": result.best_val_acc,
        "teacher_test_acc": test_acc,
        "teacher_train_seconds": result.wall_seconds,
    }
    return model, metrics


def prepare_teacher(settings: Settings, data: TensorSplits, device: torch.device) -> Teacher:
    """The run's teacher, in eval mode on ``device``: from ``teacher.checkpoint``, from the
    cache, or trained now (once, under a lock) and cached atomically; refused when it is
    not clearly above chance (check_teaches)."""
    if settings.teacher.checkpoint:
        teacher = load_user_checkpoint(settings, data, device)
    else:
        teacher = _cached_teacher(settings, data, device)
    check_teaches(teacher, settings, data)
    return teacher


def _cached_teacher(settings: Settings, data: TensorSplits, device: torch.device) -> Teacher:
    key = teacher_key(settings, data)
    path = Path(settings.cache_dir) / "teachers" / f"{settings.teacher_model.name}-{key}.pt"

    def train() -> dict[str, Any]:
        log.info(
            "teacher: training %s for %d epochs (once for this data and recipe; cached at %s)",
            settings.teacher_model.name,
            settings.teacher.epochs,
            path,
        )
        model, metrics = _train_teacher(settings, data, device)
        return {
            "format": CHECKPOINT_FORMAT,
            **_made_for(settings, data),
            "data_fingerprint": data.fingerprint,
            "metrics": metrics,
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        }

    def load(payload: dict[str, Any]) -> Teacher:
        _check_payload(payload, path, settings, data)
        model = _new_model(settings, data)
        _load_weights(model, payload["state_dict"], path)
        # The key names the weights, not only their recipe: a teacher retrained on a GPU
        # (its entry was damaged) has other weights, and its outputs are other outputs.
        weights = content_digest(payload["state_dict"])[:16]
        metrics = dict(payload["metrics"])
        return Teacher(model.to(device).eval(), f"{key}-{weights}", path, metrics, False)

    teacher, trained = cached_artifact(path, train, load, "teacher cache")
    teacher.trained_now = trained
    if not trained:
        log.info("teacher: reusing %s", path)
    return teacher
