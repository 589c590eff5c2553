"""The objectives against the seed's formulas (DESIGN.md section 5), written out here
independently of kdsweep.losses."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdsweep.losses import (
    CosineHidden,
    CrossEntropy,
    KnowledgeDistillation,
    MultiMargin,
    StepInputs,
)

BATCH, CLASSES = 16, 10


def _batch(seed: int, hidden: int = 0, scale: float = 3.0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {
        "labels": torch.randint(0, CLASSES, (BATCH,), generator=g),
        "student_logits": torch.randn(BATCH, CLASSES, generator=g, dtype=torch.float64) * scale,
        "teacher_logits": torch.randn(BATCH, CLASSES, generator=g, dtype=torch.float64) * scale,
    }
    if hidden:
        out["student_hidden"] = torch.randn(BATCH, hidden, generator=g, dtype=torch.float64)
        out["teacher_hidden"] = torch.randn(BATCH, hidden, generator=g, dtype=torch.float64)
    return out


def _seed_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    # -log softmax(x)[y], averaged: written out, not F.cross_entropy
    log_probs = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    return -log_probs[torch.arange(len(labels)), labels].mean()


def _seed_kd(student, teacher, labels, T, soft_w, ce_w):
    """The seed's train_knowledge_distillation step, verbatim in spirit."""
    soft_targets = nn.functional.softmax(teacher / T, dim=-1)
    soft_prob = nn.functional.log_softmax(student / T, dim=-1)
    soft_loss = torch.sum(soft_targets * (soft_targets.log() - soft_prob)) / soft_prob.size()[0]
    soft_loss = soft_loss * (T**2)
    label_loss = nn.CrossEntropyLoss()(student, labels)
    return soft_w * soft_loss + ce_w * label_loss, soft_loss, label_loss


@pytest.mark.parametrize(
    ("T", "soft_w", "ce_w"), [(2.0, 0.25, 0.75), (1.0, 1.0, 0.0), (4.0, 0.6, 0.3), (0.5, 0, 1)]
)
def test_kd_matches_seed(T: float, soft_w: float, ce_w: float) -> None:
    b = _batch(seed=int(T * 10))
    student = b["student_logits"].clone().requires_grad_(True)
    ref_student = b["student_logits"].clone().requires_grad_(True)
    loss = KnowledgeDistillation(temperature=T, soft_target_weight=soft_w, ce_weight=ce_w)
    out = loss(StepInputs(b["labels"], student, teacher_logits=b["teacher_logits"]))
    ref_total, ref_soft, ref_ce = _seed_kd(
        ref_student, b["teacher_logits"], b["labels"], T, soft_w, ce_w
    )

    torch.testing.assert_close(out.total, ref_total, rtol=1e-10, atol=1e-10)
    # Terms are the unweighted components.
    assert set(out.terms) == {"soft_target", "ce"}
    torch.testing.assert_close(out.terms["soft_target"], ref_soft, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out.terms["ce"], ref_ce, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out.terms["ce"], _seed_ce(b["student_logits"], b["labels"]))
    # Same gradient for the student as the seed's loss.
    out.total.backward()
    ref_total.backward()
    torch.testing.assert_close(student.grad, ref_student.grad, rtol=1e-8, atol=1e-12)


def test_kd_soft_term_is_zero_when_student_equals_teacher() -> None:
    b = _batch(seed=3)
    out = KnowledgeDistillation()(
        StepInputs(b["labels"], b["teacher_logits"], teacher_logits=b["teacher_logits"])
    )
    assert abs(out.terms["soft_target"].item()) < 1e-12
    assert out.total.item() == pytest.approx(0.75 * out.terms["ce"].item())


def test_kd_stays_finite_where_the_seeds_log_of_softmax_underflows() -> None:
    # At a low temperature softmax(t/T) underflows to 0, and the seed's .log() gives
    # 0 * -inf = nan. The KL itself is finite.
    b = _batch(seed=5, scale=50.0)
    _, seed_soft, _ = _seed_kd(
        b["student_logits"].float(), b["teacher_logits"].float(), b["labels"], 0.05, 1, 0
    )
    assert not torch.isfinite(seed_soft)  # the condition this test is about does occur
    out = KnowledgeDistillation(temperature=0.05, soft_target_weight=1, ce_weight=0)(
        StepInputs(
            b["labels"], b["student_logits"].float(), teacher_logits=b["teacher_logits"].float()
        )
    )
    assert torch.isfinite(out.total)
    assert out.total.item() > 0


@pytest.mark.parametrize(("hidden_w", "ce_w"), [(0.25, 0.75), (1.0, 0.0), (0.0, 2.0)])
def test_cosine_matches_seed(hidden_w: float, ce_w: float) -> None:
    b = _batch(seed=11, hidden=32)
    out = CosineHidden(hidden_weight=hidden_w, ce_weight=ce_w)(
        StepInputs(
            b["labels"],
            b["student_logits"],
            student_hidden=b["student_hidden"],
            teacher_hidden=b["teacher_hidden"],
        )
    )
    ones = torch.ones(BATCH, dtype=torch.float64)
    ref_hidden = nn.CosineEmbeddingLoss()(b["student_hidden"], b["teacher_hidden"], ones)
    # and from the definition: mean(1 - cos)
    cos = (b["student_hidden"] * b["teacher_hidden"]).sum(1) / (
        b["student_hidden"].norm(dim=1) * b["teacher_hidden"].norm(dim=1)
    )
    torch.testing.assert_close(ref_hidden, (1 - cos).mean())
    ref_ce = nn.CrossEntropyLoss()(b["student_logits"], b["labels"])

    torch.testing.assert_close(out.total, hidden_w * ref_hidden + ce_w * ref_ce)
    assert set(out.terms) == {"hidden_cosine", "ce"}
    torch.testing.assert_close(out.terms["hidden_cosine"], ref_hidden)
    torch.testing.assert_close(out.terms["ce"], ref_ce)


def _hand_multimargin(x: torch.Tensor, y: torch.Tensor, p: int, margin: float) -> torch.Tensor:
    """sum_{i != y} max(0, margin - x[y] + x[i])^p / C, averaged over the batch (notes)."""
    per_sample = []
    for row, target in zip(x.tolist(), y.tolist(), strict=True):
        total = 0.0
        for i, value in enumerate(row):
            if i != target:
                total += max(0.0, margin - row[target] + value) ** p
        per_sample.append(total / len(row))
    return torch.tensor(sum(per_sample) / len(per_sample), dtype=x.dtype)


@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("margin", [1.0, 0.3])
def test_multimargin_matches_formula(p: int, margin: float) -> None:
    b = _batch(seed=p * 7, scale=0.6)  # small logits: some hinges active, some not
    out = MultiMargin(p=p, margin=margin)(StepInputs(b["labels"], b["student_logits"]))
    expected = _hand_multimargin(b["student_logits"], b["labels"], p, margin)
    torch.testing.assert_close(out.total, expected, rtol=1e-10, atol=1e-12)
    assert set(out.terms) == {"multimargin"}
    torch.testing.assert_close(out.terms["multimargin"], expected, rtol=1e-10, atol=1e-12)


def test_multimargin_p_changes_the_loss() -> None:
    b = _batch(seed=2, scale=2.0)
    one = MultiMargin(p=1)(StepInputs(b["labels"], b["student_logits"]))
    two = MultiMargin(p=2)(StepInputs(b["labels"], b["student_logits"]))
    assert one.total.item() != pytest.approx(two.total.item())


def test_cross_entropy() -> None:
    b = _batch(seed=9)
    out = CrossEntropy()(StepInputs(b["labels"], b["student_logits"]))
    torch.testing.assert_close(out.total, _seed_ce(b["student_logits"], b["labels"]))
    assert set(out.terms) == {"ce"}


@pytest.mark.parametrize("loss", ["kd", "cosine", "multimargin", "ce"])
def test_each_loss_option_composes_into_its_class(compose, loss: str) -> None:
    """conf/loss/<name>.yaml names its class by _target_; validation builds it once."""
    from kdsweep.config.validation import validate

    built = validate(compose(f"loss={loss}", "model=modified")).loss
    assert built.name == loss
    assert (
        type(built)
        is {
            "kd": KnowledgeDistillation,
            "cosine": CosineHidden,
            "multimargin": MultiMargin,
            "ce": CrossEntropy,
        }[loss]
    )


def test_build_objective_picks_the_class_and_its_needs(compose) -> None:
    from kdsweep.config.validation import validate

    def build_objective(*overrides: str):  # noqa: ANN202 - the composed loss, built once
        return validate(compose(*overrides, "model=modified")).loss

    kd = build_objective("loss=kd")
    cosine = build_objective("loss=cosine")
    assert isinstance(kd, KnowledgeDistillation)
    assert kd.needs_teacher_logits and not kd.needs_teacher_hidden
    assert isinstance(cosine, CosineHidden)
    assert cosine.needs_teacher_hidden and cosine.needs_student_hidden
    assert not cosine.needs_teacher_logits
    assert isinstance(build_objective("loss=multimargin", "loss.p=2"), MultiMargin)
    assert build_objective("loss=multimargin", "loss.p=2").p == 2
    assert isinstance(build_objective("loss=ce"), CrossEntropy)


def _dist_reference(student, teacher, labels, beta, gamma, tau, ce_w):
    """DIST from the paper's definition, in numpy float64: Pearson correlations by
    np.corrcoef, per sample across classes (inter) and per class across the batch (intra)."""
    import numpy as np

    def softmax(z):
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    ps, pt = softmax(student / tau), softmax(teacher / tau)
    inter = 1 - np.mean([np.corrcoef(ps[i], pt[i])[0, 1] for i in range(len(ps))])
    intra = 1 - np.mean([np.corrcoef(ps[:, c], pt[:, c])[0, 1] for c in range(ps.shape[1])])
    log_p = student - np.log(np.exp(student).sum(axis=1, keepdims=True))
    ce = -log_p[np.arange(len(labels)), labels].mean()
    return ce_w * ce + tau**2 * (beta * inter + gamma * intra)


@pytest.mark.parametrize(
    ("batch", "classes", "beta", "gamma", "tau", "ce_w"),
    [(16, 10, 1.0, 1.0, 1.0, 1.0), (7, 3, 2.0, 0.5, 4.0, 0.0), (32, 100, 1.0, 2.0, 2.0, 0.3)],
)
def test_dist_matches_the_papers_definition(batch, classes, beta, gamma, tau, ce_w) -> None:
    from kdsweep.losses import DIST

    g = torch.Generator().manual_seed(batch * classes)
    student = torch.randn(batch, classes, generator=g, dtype=torch.float64) * 3
    teacher = torch.randn(batch, classes, generator=g, dtype=torch.float64) * 3
    labels = torch.randint(0, classes, (batch,), generator=g)
    out = DIST(beta=beta, gamma=gamma, tau=tau, ce_weight=ce_w)(
        StepInputs(labels, student, teacher_logits=teacher)
    )
    ref = _dist_reference(student.numpy(), teacher.numpy(), labels.numpy(), beta, gamma, tau, ce_w)
    assert out.total.item() == pytest.approx(ref, rel=1e-6)
    # A student that matches its teacher has no relation loss left: CE alone.
    same = DIST(beta=beta, gamma=gamma, tau=tau, ce_weight=ce_w)(
        StepInputs(labels, teacher, teacher_logits=teacher)
    )
    assert same.terms["inter"].item() == pytest.approx(0, abs=1e-5)
    assert same.terms["intra"].item() == pytest.approx(0, abs=1e-5)


def _dkd_reference(student, teacher, labels, alpha, beta, t, warmup, epoch, ce_w):
    """DKD from the paper's definition, numpy float64: the binary target/rest KL and the
    KL over the non-target classes renormalised (no masking trick)."""
    import numpy as np

    def softmax(z):
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    ps, pt = softmax(student / t), softmax(teacher / t)
    tckd = nckd = 0.0
    for i, y in enumerate(labels):
        bs, bt = np.array([ps[i, y], 1 - ps[i, y]]), np.array([pt[i, y], 1 - pt[i, y]])
        tckd += np.sum(bt * np.log(bt / bs))
        rest = np.arange(ps.shape[1]) != y
        qs, qt = ps[i, rest] / ps[i, rest].sum(), pt[i, rest] / pt[i, rest].sum()
        nckd += np.sum(qt * np.log(qt / qs))
    tckd, nckd = tckd / len(labels), nckd / len(labels)
    log_p = student - np.log(np.exp(student).sum(axis=1, keepdims=True))
    ce = -log_p[np.arange(len(labels)), labels].mean()
    return ce_w * ce + min(epoch / warmup, 1.0) * t**2 * (alpha * tckd + beta * nckd)


@pytest.mark.parametrize(
    ("batch", "classes", "alpha", "beta", "t", "warmup", "epoch", "ce_w"),
    [
        (16, 10, 1.0, 8.0, 4.0, 20, 1, 1.0),
        (8, 5, 0.5, 2.0, 1.0, 20, 40, 0.0),
        (32, 100, 1.0, 8.0, 4.0, 5, 3, 1.0),
    ],
)
def test_dkd_matches_the_papers_definition(batch, classes, alpha, beta, t, warmup, epoch, ce_w):
    from kdsweep.losses import DKD

    g = torch.Generator().manual_seed(batch + classes)
    student = torch.randn(batch, classes, generator=g, dtype=torch.float64) * 2
    teacher = torch.randn(batch, classes, generator=g, dtype=torch.float64) * 2
    labels = torch.randint(0, classes, (batch,), generator=g)
    loss = DKD(alpha=alpha, beta=beta, temperature=t, warmup=warmup, ce_weight=ce_w)
    out = loss(StepInputs(labels, student, teacher_logits=teacher, epoch=epoch))
    ref = _dkd_reference(
        student.numpy(), teacher.numpy(), labels.numpy(), alpha, beta, t, warmup, epoch, ce_w
    )
    assert out.total.item() == pytest.approx(ref, rel=1e-6)
    # The warm-up ramps the distillation terms in linearly, then holds them.
    early = loss(StepInputs(labels, student, teacher_logits=teacher, epoch=1)).total
    late = loss(StepInputs(labels, student, teacher_logits=teacher, epoch=10 * warmup)).total
    later = loss(StepInputs(labels, student, teacher_logits=teacher, epoch=20 * warmup)).total
    assert late.item() == pytest.approx(later.item()) and late.item() > early.item()
