"""The training objectives, behind one interface so the loop never branches on them.

Each loss is a dataclass whose fields are its config keys: ``conf/loss/<name>.yaml`` names
the class by ``_target_``, Hydra checks the keys' types at composition against a schema
made from these fields (kdsweep.schema), ``__post_init__`` checks their ranges, and
``hydra.utils.instantiate`` builds it once. Adding a loss is one class here and one YAML.

This module imports torch only inside the formulas, so that a config is checked (and a
typo refused) before torch's ~2 s import. Each loss returns its total and its unweighted
component terms (for logging). Formulas follow the seed notes (DESIGN.md section 5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    import torch


def _functional():  # noqa: ANN202 - torch.nn.functional, imported on first use
    import torch.nn.functional as functional

    return functional


@dataclass
class StepInputs:
    labels: torch.Tensor
    student_logits: torch.Tensor
    student_hidden: torch.Tensor | None = None
    teacher_logits: torch.Tensor | None = None
    teacher_hidden: torch.Tensor | None = None
    epoch: int = 1  # the training epoch, from 1 (losses with a warm-up read it)
    # The feature map at the end of each stage (kdsweep.models.FeatureNet), for the losses
    # that declare needs_student_features / needs_teacher_features.
    student_features: list[torch.Tensor] | None = None
    teacher_features: list[torch.Tensor] | None = None


@dataclass
class LossOutput:
    total: torch.Tensor
    terms: dict[str, torch.Tensor]


def check_weights(**weights: float) -> None:
    """Loss weights are finite, >= 0, and not all 0 (nothing would be learned)."""
    for key, value in weights.items():
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"loss.{key} must be a finite number >= 0, got {value}")
    if all(value == 0 for value in weights.values()):
        raise ValueError(f"loss weights {', '.join(weights)} are all 0: nothing would be learned")


@dataclass
class Objective:
    """A loss. ``name`` is the config option that selects it (tags, run names); the class
    flags say which teacher / student outputs the loop must provide."""

    name: str = "objective"
    uses_teacher: ClassVar[bool] = False
    needs_teacher_logits: ClassVar[bool] = False
    needs_teacher_hidden: ClassVar[bool] = False
    needs_student_hidden: ClassVar[bool] = False
    needs_teacher_features: ClassVar[bool] = False
    needs_student_features: ClassVar[bool] = False

    def __call__(self, batch: StepInputs) -> LossOutput:
        return self.forward(batch)

    def attach(self, student_maps: list[tuple[int, ...]], teacher_maps: list[tuple[int, ...]]):  # noqa: ANN201
        """Called once before training with the (C, H, W) shape of each stage's feature map
        of the student and the teacher; checks that this loss can compare them (raises
        ValueError naming the fix) and returns the modules it trains with the student
        (nn.Module list: their parameters join the optimizer, and they are not part of the
        saved student). Losses without feature maps need nothing."""
        return []

    def forward(self, batch: StepInputs) -> LossOutput:  # pragma: no cover - interface
        raise NotImplementedError


@dataclass
class CrossEntropy(Objective):
    """CE(student, labels): the student without a teacher."""

    name: str = "ce"

    def forward(self, batch: StepInputs) -> LossOutput:
        ce = _functional().cross_entropy(batch.student_logits, batch.labels)
        return LossOutput(ce, {"ce": ce})


def soft_target_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """T^2 * KL(softmax(t/T) || softmax(s/T)), averaged over the batch (Hinton et al.)."""
    functional = _functional()
    log_p_student = functional.log_softmax(student_logits / temperature, dim=-1)
    log_p_teacher = functional.log_softmax(teacher_logits / temperature, dim=-1)
    # log_target avoids the seed's softmax().log(), which is -inf where a probability
    # underflows to 0 at low temperatures.
    kl = functional.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2


@dataclass
class KnowledgeDistillation(Objective):
    """soft_target_weight * T^2 * KL(teacher/T || student/T) + ce_weight * CE.

    Hinton, Vinyals, Dean: "Distilling the Knowledge in a Neural Network" (2015)."""

    name: str = "kd"
    temperature: float = 2.0
    soft_target_weight: float = 0.25
    ce_weight: float = 0.75
    uses_teacher: ClassVar[bool] = True
    needs_teacher_logits: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"loss.temperature must be > 0, got {self.temperature}")
        check_weights(soft_target_weight=self.soft_target_weight, ce_weight=self.ce_weight)

    def forward(self, batch: StepInputs) -> LossOutput:
        assert batch.teacher_logits is not None
        soft = soft_target_loss(batch.student_logits, batch.teacher_logits, self.temperature)
        ce = _functional().cross_entropy(batch.student_logits, batch.labels)
        total = self.soft_target_weight * soft + self.ce_weight * ce
        return LossOutput(total, {"soft_target": soft, "ce": ce})


@dataclass
class CosineHidden(Objective):
    """hidden_weight * (1 - cos(student hidden, pooled teacher hidden)) + ce_weight * CE.

    The seed's cosine-embedding variant: CosineEmbeddingLoss with target +1 on the
    flattened conv features. Needs a student that returns them (model=modified)."""

    name: str = "cosine"
    hidden_weight: float = 0.25
    ce_weight: float = 0.75
    uses_teacher: ClassVar[bool] = True
    needs_teacher_hidden: ClassVar[bool] = True
    needs_student_hidden: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_weights(hidden_weight=self.hidden_weight, ce_weight=self.ce_weight)

    def forward(self, batch: StepInputs) -> LossOutput:
        assert batch.student_hidden is not None and batch.teacher_hidden is not None
        import torch

        functional = _functional()
        # CosineEmbeddingLoss with target +1 is mean(1 - cos(student, teacher)).
        target = torch.ones(batch.student_hidden.shape[0], device=batch.student_hidden.device)
        hidden = functional.cosine_embedding_loss(
            batch.student_hidden, batch.teacher_hidden, target
        )
        ce = functional.cross_entropy(batch.student_logits, batch.labels)
        total = self.hidden_weight * hidden + self.ce_weight * ce
        return LossOutput(total, {"hidden_cosine": hidden, "ce": ce})


@dataclass
class MultiMargin(Objective):
    """torch.nn.MultiMarginLoss: the multi-class hinge loss on the labels (no teacher)."""

    name: str = "multimargin"
    p: int = 1
    margin: float = 1.0

    def __post_init__(self) -> None:
        if self.p not in (1, 2):
            raise ValueError(f"loss.p must be 1 or 2 (torch.nn.MultiMarginLoss), got {self.p}")
        if not (math.isfinite(self.margin) and self.margin > 0):
            raise ValueError(f"loss.margin must be > 0, got {self.margin}")

    def forward(self, batch: StepInputs) -> LossOutput:
        hinge = _functional().multi_margin_loss(
            batch.student_logits, batch.labels, p=self.p, margin=self.margin
        )
        return LossOutput(hinge, {"multimargin": hinge})


def _pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation of each row of ``a`` with the same row of ``b``."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


@dataclass
class DIST(Objective):
    """ce_weight * CE + tau^2 * (beta * inter + gamma * intra), on p = softmax(z / tau):
    inter = 1 - mean over samples of the Pearson correlation of student and teacher
    across classes; intra = the same per class across the batch.

    Huang, You, Wang, Qian, Xu: "Knowledge Distillation from A Stronger Teacher" (NeurIPS
    2022); beta = gamma = 1 and tau = 1 in its CIFAR-100 recipe."""

    name: str = "dist"
    beta: float = 1.0
    gamma: float = 1.0
    tau: float = 1.0
    ce_weight: float = 1.0
    uses_teacher: ClassVar[bool] = True
    needs_teacher_logits: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not (math.isfinite(self.tau) and self.tau > 0):
            raise ValueError(f"loss.tau must be > 0, got {self.tau}")
        check_weights(beta=self.beta, gamma=self.gamma, ce_weight=self.ce_weight)

    def forward(self, batch: StepInputs) -> LossOutput:
        assert batch.teacher_logits is not None
        functional = _functional()
        p_student = functional.softmax(batch.student_logits / self.tau, dim=1)
        p_teacher = functional.softmax(batch.teacher_logits / self.tau, dim=1)
        inter = 1 - _pearson_rows(p_student, p_teacher).mean()
        intra = 1 - _pearson_rows(p_student.T, p_teacher.T).mean()
        ce = functional.cross_entropy(batch.student_logits, batch.labels)
        relation = self.tau**2 * (self.beta * inter + self.gamma * intra)
        total = self.ce_weight * ce + relation
        return LossOutput(total, {"inter": inter, "intra": intra, "ce": ce})


@dataclass
class DKD(Objective):
    """Decoupled KD: ce_weight * CE + min(epoch / warmup, 1) * T^2 * (alpha * TCKD +
    beta * NCKD). TCKD is the KL between teacher and student of the binary distribution
    [p_target, 1 - p_target]; NCKD the KL of their distributions over the non-target
    classes, renormalised; p = softmax(z / T).

    Zhao, Cui, Song, Qiu, Liang: "Decoupled Knowledge Distillation" (CVPR 2022); alpha 1,
    beta 8, T 4 and a 20-epoch warm-up in its CIFAR-100 recipe (mdistiller)."""

    name: str = "dkd"
    alpha: float = 1.0
    beta: float = 8.0
    temperature: float = 4.0
    warmup: int = 20
    ce_weight: float = 1.0
    uses_teacher: ClassVar[bool] = True
    needs_teacher_logits: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"loss.temperature must be > 0, got {self.temperature}")
        if self.warmup < 1:
            raise ValueError(f"loss.warmup must be >= 1 epoch, got {self.warmup}")
        check_weights(alpha=self.alpha, beta=self.beta, ce_weight=self.ce_weight)

    def forward(self, batch: StepInputs) -> LossOutput:
        assert batch.teacher_logits is not None
        import torch

        functional = _functional()
        t = self.temperature
        target = functional.one_hot(batch.labels, batch.student_logits.shape[1]).bool()
        p_student = functional.softmax(batch.student_logits / t, dim=1)
        p_teacher = functional.softmax(batch.teacher_logits / t, dim=1)

        def binary(p: torch.Tensor) -> torch.Tensor:  # [p_target, p_rest]
            p_target = (p * target).sum(dim=1, keepdim=True)
            return torch.cat([p_target, 1 - p_target], dim=1)

        tckd = functional.kl_div(
            binary(p_student).clamp_min(1e-12).log(), binary(p_teacher), reduction="batchmean"
        )
        # Masking the target logit out before the softmax renormalises over the others.
        masked = target.float() * 1000.0
        nckd = functional.kl_div(
            functional.log_softmax(batch.student_logits / t - masked, dim=1),
            functional.log_softmax(batch.teacher_logits / t - masked, dim=1),
            reduction="batchmean",
            log_target=True,
        )
        ce = functional.cross_entropy(batch.student_logits, batch.labels)
        ramp = min(batch.epoch / self.warmup, 1.0)
        total = self.ce_weight * ce + ramp * t**2 * (self.alpha * tckd + self.beta * nckd)
        return LossOutput(total, {"tckd": tckd, "nckd": nckd, "ce": ce})


@dataclass
class AttentionTransfer(Objective):
    """ce_weight * CE + weight * sum over stages of mean((Q_s - Q_t)^2), with the attention
    map Q = normalize(mean over channels of |F|^p), flattened per sample, for the feature map F
    at the end of each stage; a stage's larger map is average-pooled to the smaller's size
    (as RepDistiller does).

    Zagoruyko, Komodakis: "Paying More Attention to Attention" (ICLR 2017); p = 2 and
    weight 1000 in RepDistiller's CIFAR-100 scripts."""

    name: str = "at"
    weight: float = 1000.0
    p: float = 2.0
    ce_weight: float = 1.0
    uses_teacher: ClassVar[bool] = True
    needs_teacher_features: ClassVar[bool] = True
    needs_student_features: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not (math.isfinite(self.p) and self.p > 0):
            raise ValueError(f"loss.p must be > 0, got {self.p}")
        check_weights(weight=self.weight, ce_weight=self.ce_weight)

    def attach(self, student_maps: list[tuple[int, ...]], teacher_maps: list[tuple[int, ...]]):  # noqa: ANN201
        if len(student_maps) != len(teacher_maps):
            raise ValueError(
                f"loss=at pairs the stages of student and teacher: the student has"
                f" {len(student_maps)} stages, the teacher {len(teacher_maps)}; pick a pair"
                " with as many (light/deep, resnet8x4/resnet32x4, wrn_16_2/wrn_40_2)"
            )
        return []

    def attention(self, feature_map: torch.Tensor) -> torch.Tensor:
        pooled = feature_map.abs().pow(self.p).mean(dim=1).flatten(1)  # |F|^p, as the paper
        return _functional().normalize(pooled, dim=1)

    def forward(self, batch: StepInputs) -> LossOutput:
        assert batch.student_features is not None and batch.teacher_features is not None
        functional = _functional()
        transfer = batch.student_logits.new_zeros(())
        for f_s, f_t in zip(batch.student_features, batch.teacher_features, strict=True):
            size = min(f_s.shape[2], f_t.shape[2]), min(f_s.shape[3], f_t.shape[3])
            if tuple(f_s.shape[2:]) != size:
                f_s = functional.adaptive_avg_pool2d(f_s, size)
            if tuple(f_t.shape[2:]) != size:
                f_t = functional.adaptive_avg_pool2d(f_t, size)
            transfer = transfer + (self.attention(f_s) - self.attention(f_t)).pow(2).mean()
        ce = functional.cross_entropy(batch.student_logits, batch.labels)
        total = self.ce_weight * ce + self.weight * transfer
        return LossOutput(total, {"attention": transfer, "ce": ce})


@dataclass
class Hint(Objective):
    """ce_weight * CE + feature_map_weight * MSE(regressor(F_s), F_t), for the feature maps
    F at the end of the last stage; the regressor, a 3x3 convolution from the student's
    channels to the teacher's, trains with the student and is not part of it.

    Romero et al.: "FitNets: Hints for Thin Deep Nets" (ICLR 2015), in the form of the
    PyTorch knowledge-distillation tutorial (ModifiedLightNNRegressor: Conv2d(16, 32, 3,
    padding=1); weights 0.25 and 0.75)."""

    name: str = "hint"
    feature_map_weight: float = 0.25
    ce_weight: float = 0.75
    uses_teacher: ClassVar[bool] = True
    needs_teacher_features: ClassVar[bool] = True
    needs_student_features: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_weights(feature_map_weight=self.feature_map_weight, ce_weight=self.ce_weight)
        self.regressor = None  # built by attach(), once the feature maps' shapes are known

    def attach(self, student_maps: list[tuple[int, ...]], teacher_maps: list[tuple[int, ...]]):  # noqa: ANN201
        from torch import nn

        (s_channels, *s_size), (t_channels, *t_size) = student_maps[-1], teacher_maps[-1]
        if s_size != t_size:
            raise ValueError(
                f"loss=hint regresses the student's last feature map onto the teacher's, and"
                f" their sizes differ ({'x'.join(map(str, s_size))} against"
                f" {'x'.join(map(str, t_size))}): pick a pair whose last stages match"
                " (light/deep, resnet8x4/resnet32x4, wrn_16_2/wrn_40_2)"
            )
        self.regressor = nn.Conv2d(s_channels, t_channels, kernel_size=3, padding=1)
        return [self.regressor]

    def forward(self, batch: StepInputs) -> LossOutput:
        assert batch.student_features is not None and batch.teacher_features is not None
        if self.regressor is None:
            raise RuntimeError("loss=hint: attach() was not called before training")
        functional = _functional()
        f_s, f_t = batch.student_features[-1], batch.teacher_features[-1]
        regressor = self.regressor.to(f_s.device)
        hint = functional.mse_loss(regressor(f_s), f_t)
        ce = functional.cross_entropy(batch.student_logits, batch.labels)
        total = self.ce_weight * ce + self.feature_map_weight * hint
        return LossOutput(total, {"hint": hint, "ce": ce})
