"""data.labelled_fraction: a seeded, class-stratified share of the training split keeps its
labels; the label terms of every loss use those samples only, the teacher terms all of them
(docs/few-labels.md). Fast and in-process: tiny tensors, or digits' labels."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from conftest import compose_config, settings_for
from kdsweep.core.errors import ConfigError
from kdsweep.data import DigitsData, load_splits
from kdsweep.data.splits import UNLABELLED, hide_labels
from kdsweep.losses import (
    DIST,
    DKD,
    CrossEntropy,
    KnowledgeDistillation,
    MultiMargin,
    StepInputs,
    soft_target_loss,
)
from kdsweep.run import experiment
from kdsweep.training.teacher import teacher_key

BAD_FRACTIONS = [0, -0.5, 1.5, math.nan]


@pytest.fixture(scope="module")
def digits_labels() -> torch.Tensor:
    return load_splits(DigitsData()).train_y


def test_each_class_keeps_its_share_of_labels(digits_labels: torch.Tensor) -> None:
    kept = hide_labels(digits_labels, 0.1, seed=0)
    assert set(kept.unique().tolist()) == {UNLABELLED, *range(10)}
    for label in range(10):
        count = int((digits_labels == label).sum())
        assert int((kept == label).sum()) == max(1, round(count * 0.1))
    # What stays labelled keeps its true class.
    labelled = kept >= 0
    assert torch.equal(kept[labelled], digits_labels[labelled])


def test_the_labelled_subset_is_fixed_by_the_split_seed(digits_labels: torch.Tensor) -> None:
    first = hide_labels(digits_labels, 0.1, seed=0)
    assert torch.equal(first, hide_labels(digits_labels, 0.1, seed=0))
    assert not torch.equal(first, hide_labels(digits_labels, 0.1, seed=1))
    # A larger fraction keeps a superset: 0.05 -> 0.1 -> 0.25 only add labels.
    smaller, larger = hide_labels(digits_labels, 0.05, 0), hide_labels(digits_labels, 0.25, 0)
    assert bool(((smaller >= 0) <= (first >= 0)).all() and ((first >= 0) <= (larger >= 0)).all())
    assert hide_labels(digits_labels, 1.0, seed=0) is digits_labels


def test_a_tiny_class_keeps_one_label() -> None:
    labels = torch.tensor([0] * 50 + [1, 1])
    kept = hide_labels(labels, 0.05, seed=3)
    assert int((kept == 0).sum()) == 2 and int((kept == 1).sum()) == 1


class _Stop(Exception):
    """Raised by the stand-in fit once it has seen the labels."""


def test_every_arm_and_seed_trains_on_the_same_labels(monkeypatch, tmp_path: Path) -> None:
    """KD and "the same recipe without the teacher" (CE, another trainer.seed) get the same
    images, and the same ones of them labelled; val and test keep every label."""
    seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def capture(model, objective, optimizer, train_x, train_y, val_x, val_y, *args, **kwargs):
        seen.append((train_x, train_y.clone(), val_y))
        raise _Stop

    monkeypatch.setattr(experiment, "fit", capture)
    common = (
        "data.labelled_fraction=0.1",
        "tracking.enabled=false",
        "teacher=light",
        "teacher.epochs=1",
        f"cache_dir={tmp_path / 'cache'}",
    )
    for arm in (("loss=kd", "trainer.seed=0"), ("loss=ce", "trainer.seed=3")):
        with pytest.raises(_Stop):
            experiment.run(compose_config(*arm, *common), output_dir=tmp_path)
    (kd_x, kd_y, kd_val), (ce_x, ce_y, _) = seen
    assert torch.equal(kd_x, ce_x) and torch.equal(kd_y, ce_y)
    labelled = int((kd_y >= 0).sum())
    assert 0.09 * len(kd_y) < labelled < 0.11 * len(kd_y)
    assert bool((kd_val >= 0).all())


def _logits(n: int = 8, classes: int = 10, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, classes, generator=generator).requires_grad_()


def _grad(loss_fn, logits: torch.Tensor, **inputs) -> torch.Tensor:
    logits.grad = None
    out = loss_fn(StepInputs(student_logits=logits, **inputs))
    out.total.backward()
    return logits.grad.clone()


def test_ce_ignores_the_unlabelled_samples() -> None:
    logits = _logits()
    labels = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6])
    hidden = torch.tensor([False, True, False, True, True, False, False, True])
    masked = labels.masked_fill(hidden, UNLABELLED)
    grad = _grad(CrossEntropy(), logits, labels=masked)
    # Zero on the unlabelled rows; on the others, plain CE over the labelled rows alone.
    assert bool((grad[hidden] == 0).all())
    subset = logits.detach()[~hidden].requires_grad_()
    torch.nn.functional.cross_entropy(subset, labels[~hidden]).backward()
    torch.testing.assert_close(grad[~hidden], subset.grad)
    # Another (hidden) class for an unlabelled sample changes nothing.
    other = labels.clone()
    other[hidden] = 0
    assert torch.equal(grad, _grad(CrossEntropy(), logits, labels=other.masked_fill(hidden, -1)))
    # With every label kept it is torch's CE.
    full = CrossEntropy()(StepInputs(labels, logits)).total
    torch.testing.assert_close(full, torch.nn.functional.cross_entropy(logits, labels))


@pytest.mark.parametrize(
    "loss",
    [CrossEntropy(), MultiMargin(), KnowledgeDistillation(), DKD(), DIST()],
    ids=lambda loss: loss.name,
)
def test_a_batch_without_labels_gives_finite_label_terms(loss) -> None:
    logits, teacher = _logits(), _logits(seed=1).detach()
    labels = torch.full((8,), UNLABELLED)
    out = loss(StepInputs(labels, logits, teacher_logits=teacher))
    out.total.backward()
    assert math.isfinite(float(out.total.detach())) and bool(torch.isfinite(logits.grad).all())
    for name in ("ce", "multimargin", "tckd", "nckd"):
        if name in out.terms:
            assert float(out.terms[name].detach()) == 0.0


def test_kd_soft_term_sees_every_sample() -> None:
    logits, teacher = _logits(), _logits(seed=1).detach()
    kd = KnowledgeDistillation(temperature=4.0, soft_target_weight=0.5, ce_weight=0.5)
    hidden_all = torch.full((8,), UNLABELLED)
    out = kd(StepInputs(hidden_all, logits, teacher_logits=teacher))
    torch.testing.assert_close(out.terms["soft_target"], soft_target_loss(logits, teacher, 4.0))
    grad = _grad(kd, logits, labels=hidden_all, teacher_logits=teacher)
    assert bool((grad.abs().sum(dim=1) > 0).all())  # every row is taught


def test_dkd_with_every_label_is_unchanged() -> None:
    """The per-sample means equal the batch means DKD had before labels could be hidden."""
    logits, teacher = _logits(), _logits(seed=1).detach()
    labels = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6])
    dkd = DKD()
    out = dkd(StepInputs(labels, logits, teacher_logits=teacher))
    # One unlabelled sample: the terms are the means over the other seven.
    masked = labels.clone()
    masked[0] = UNLABELLED
    rest = dkd(StepInputs(labels[1:], logits[1:], teacher_logits=teacher[1:]))
    part = dkd(StepInputs(masked, logits, teacher_logits=teacher))
    for name in ("tckd", "nckd", "ce"):
        torch.testing.assert_close(part.terms[name], rest.terms[name])
    assert all(math.isfinite(float(v.detach())) for v in out.terms.values())


@pytest.mark.parametrize("value", BAD_FRACTIONS)
def test_bad_data_fraction_is_one_line(value: float) -> None:
    with pytest.raises(ConfigError) as err:
        settings_for(f"data.labelled_fraction={value}")
    assert str(err.value).startswith("data.labelled_fraction must be in (0, 1]")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("value", BAD_FRACTIONS)
def test_bad_teacher_fraction_is_one_line(value: float) -> None:
    with pytest.raises(ConfigError) as err:
        settings_for(f"teacher.labelled_fraction={value}")
    assert str(err.value).startswith("teacher.labelled_fraction must be in (0, 1]")
    assert "\n" not in str(err.value)


def test_the_teachers_fraction_is_in_its_cache_key() -> None:
    data = load_splits(DigitsData())
    all_labels = teacher_key(settings_for(), data)
    # The student's fraction alone does not retrain a teacher that sees every label.
    assert teacher_key(settings_for("data.labelled_fraction=0.1"), data) == all_labels
    on_student = settings_for(
        "data.labelled_fraction=0.1", "teacher.labelled_fraction=${data.labelled_fraction}"
    )
    assert on_student.teacher.labelled_fraction == 0.1
    assert teacher_key(on_student, data) != all_labels
    assert teacher_key(on_student, data) != teacher_key(
        settings_for("teacher.labelled_fraction=0.25"), data
    )
