"""Losses on feature maps: attention transfer and the tutorial's hint. The maps are the
outputs of named layers (``loss.student_layers``, ``loss.teacher_layers``, read by forward
hooks), by default the ends of the stages of kdsweep's nets. Their teacher runs live:
feature maps are not cached (kdsweep.run.plan). Their feature terms take every sample of
a batch; CE its labelled samples only."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    import torch

from kdsweep.losses.base import (
    LossOutput,
    Objective,
    StepInputs,
    Taps,
    check_positive,
    check_weights,
    labelled_cross_entropy,
    torch_functional,
)


@dataclass
class FeatureMapObjective(Objective):
    """A loss on the feature maps of the student's and the teacher's named layers; [] takes
    the network's stage ends (kdsweep's nets), e.g. ``loss.teacher_layers=[layer2,layer3]``
    for a torchvision ResNet."""

    student_layers: list[str] = field(default_factory=list)
    teacher_layers: list[str] = field(default_factory=list)
    uses_teacher: ClassVar[bool] = True
    needs_teacher_features: ClassVar[bool] = True
    needs_student_features: ClassVar[bool] = True

    def taps(self) -> tuple[Taps, Taps]:
        return Taps(tuple(self.student_layers)), Taps(tuple(self.teacher_layers))


@dataclass
class AttentionTransfer(FeatureMapObjective):
    """ce_weight * CE + weight * sum over stages of mean((Q_s - Q_t)^2), with the attention
    map Q = normalize(mean over channels of |F|^p), flattened per sample, for the feature map F
    at the end of each stage; a stage's larger map is average-pooled to the smaller's size
    (as RepDistiller does).

    Zagoruyko, Komodakis: "Paying More Attention to Attention" (ICLR 2017); p = 2 and
    weight 1000 in RepDistiller's CIFAR-100 scripts. The attention term takes every sample,
    labelled or not; CE the labelled ones."""

    name: str = "at"
    weight: float = 1000.0
    p: float = 2.0
    ce_weight: float = 1.0

    def __post_init__(self) -> None:
        check_positive(p=self.p)
        check_weights(weight=self.weight, ce_weight=self.ce_weight)

    def attach(self, student_maps: list[tuple[int, ...]], teacher_maps: list[tuple[int, ...]]):  # noqa: ANN201
        if len(student_maps) != len(teacher_maps):
            raise ValueError(
                f"loss=at pairs the stages of student and teacher: the student has"
                f" {len(student_maps)} stages, the teacher {len(teacher_maps)}; pick a pair"
                " with as many (light/deep, resnet8x4/resnet32x4, wrn_16_2/wrn_40_2), or"
                " name as many layers in loss.student_layers and loss.teacher_layers"
            )
        return []

    def attention(self, feature_map: torch.Tensor) -> torch.Tensor:
        pooled = feature_map.abs().pow(self.p).mean(dim=1).flatten(1)  # |F|^p, as the paper
        return torch_functional().normalize(pooled, dim=1)

    def forward(self, batch: StepInputs) -> LossOutput:
        assert batch.student_features is not None and batch.teacher_features is not None
        functional = torch_functional()
        transfer = batch.student_logits.new_zeros(())
        for f_s, f_t in zip(batch.student_features, batch.teacher_features, strict=True):
            size = min(f_s.shape[2], f_t.shape[2]), min(f_s.shape[3], f_t.shape[3])
            if tuple(f_s.shape[2:]) != size:
                f_s = functional.adaptive_avg_pool2d(f_s, size)
            if tuple(f_t.shape[2:]) != size:
                f_t = functional.adaptive_avg_pool2d(f_t, size)
            transfer = transfer + (self.attention(f_s) - self.attention(f_t)).pow(2).mean()
        ce = labelled_cross_entropy(batch.student_logits, batch.labels)
        total = self.ce_weight * ce + self.weight * transfer
        return LossOutput(total, {"attention": transfer, "ce": ce})


@dataclass
class Hint(FeatureMapObjective):
    """ce_weight * CE + feature_map_weight * MSE(regressor(F_s), F_t), for the feature maps
    F at the end of the last stage; the regressor, a 3x3 convolution from the student's
    channels to the teacher's, trains with the student and is not part of it.

    Romero et al.: "FitNets: Hints for Thin Deep Nets" (ICLR 2015), in the form of the
    PyTorch knowledge-distillation tutorial (ModifiedLightNNRegressor: Conv2d(16, 32, 3,
    padding=1); weights 0.25 and 0.75). The hint takes every sample, labelled or not; CE
    the labelled ones."""

    name: str = "hint"
    feature_map_weight: float = 0.25
    ce_weight: float = 0.75

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
        functional = torch_functional()
        f_s, f_t = batch.student_features[-1], batch.teacher_features[-1]
        regressor = self.regressor.to(f_s.device)
        hint = functional.mse_loss(regressor(f_s), f_t)
        ce = labelled_cross_entropy(batch.student_logits, batch.labels)
        total = self.ce_weight * ce + self.feature_map_weight * hint
        return LossOutput(total, {"hint": hint, "ce": ce})
