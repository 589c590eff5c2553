"""The one training loop, for every objective, student and teacher alike.

Per batch it indexes the on-device data with a permutation (or, for a streamed split,
takes the DataLoader's batch in that permutation's order), asks the teacher source for
its outputs (precomputed or live), runs the student, and steps. Loss sums stay on the
device: the host syncs once per epoch, not once per batch.
"""

from __future__ import annotations

import copy
import logging
import math
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn

from kdsweep.config.schema import TrainerConf
from kdsweep.config.targets import Target
from kdsweep.core.errors import NonFiniteLossError
from kdsweep.losses import LossOutput, Objective
from kdsweep.nets import eval_mode
from kdsweep.training.batches import Images, TeacherSource, batches_of, step_inputs, student_forward
from kdsweep.training.optim import build_scheduler

log = logging.getLogger(__name__)


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    train_terms: dict[str, float]
    val_loss: float
    val_acc: float
    seconds: float
    images_per_s: float

    def metrics(self) -> dict[str, float]:
        out = {
            "train_loss": self.train_loss,
            "val_loss": self.val_loss,
            "val_acc": self.val_acc,
            "epoch_seconds": self.seconds,
            # Not "train_images_per_s": that key is the run's final average, and MLflow
            # shows a key's highest step, so a per-epoch series would hide it.
            "epoch_images_per_s": self.images_per_s,
        }
        out.update({f"train_{name}": value for name, value in self.train_terms.items()})
        return out


@dataclass
class FitResult:
    history: list[EpochRecord] = field(default_factory=list)
    best_epoch: int = 0
    best_val_acc: float = 0.0
    wall_seconds: float = 0.0

    @property
    def last_val_acc(self) -> float:
        return self.history[-1].val_acc

    @property
    def images_per_s(self) -> float:
        return sum(r.images_per_s for r in self.history) / len(self.history)


EpochCallback = Callable[[EpochRecord], None]
Augment = Callable[[torch.Tensor], torch.Tensor]
Taught = tuple[torch.Tensor | None, torch.Tensor | None, list[torch.Tensor] | None]


def _autocast(device: torch.device, precision: str):  # noqa: ANN202 - context manager
    if precision == "bf16" and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def _show_bar(progress: str) -> bool:
    return progress == "bar" or (progress == "auto" and sys.stderr.isatty())


@torch.no_grad()
def evaluate(
    model: nn.Module,
    objective: Objective,
    inputs: Images,
    labels: torch.Tensor,
    teacher: TeacherSource | None,
    batch_size: int,
    precision: str = "fp32",
    epoch: int = 1,
) -> tuple[float, float]:
    """(mean objective loss, accuracy in %) over a split, in eval mode; ``epoch`` is the
    training epoch it follows (losses with a warm-up weigh their terms by it)."""
    device = labels.device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    forward = student_forward(model, objective.needs_student_features)
    teacher_maps = objective.needs_teacher_features
    with eval_mode(model):
        for index, x in batches_of(inputs, batch_size):
            y = labels.index_select(0, index.to(device))
            with _autocast(device, precision):
                student = forward(x)
            taught = teacher.with_features(index, x, teacher_maps) if teacher else (None,) * 3
            out = objective(step_inputs(y, student, taught, epoch))
            loss_sum += out.total * len(y)
            correct += (student[0].argmax(dim=1) == y).sum()
    return loss_sum.item() / len(inputs), 100.0 * correct.item() / len(inputs)


def _diverged(
    what: str, optimizer: torch.optim.Optimizer, lr_key: str, objective: Objective
) -> NonFiniteLossError:
    """Divergence after updates: the lr is the usual cause, the loss's scale the other."""
    lr = optimizer.param_groups[0]["lr"]
    settings = objective.settings()
    also = f", or check the loss's settings ({settings})" if settings else ""
    return NonFiniteLossError(f"{what} (lr={lr}): lower {lr_key}{also}")


@dataclass
class TrainStep:
    """One update on one batch, and the diagnostics of a loss that will not train: each
    names what to change (the loss's settings before any update, ``lr_key`` after)."""

    forward: Callable[[torch.Tensor], tuple]
    objective: Objective
    optimizer: torch.optim.Optimizer
    lr_key: str
    precision: str
    first_checked: bool = False  # the first batch's loss, checked once per fit

    def __call__(self, x: torch.Tensor, y: torch.Tensor, taught: Taught, epoch: int) -> LossOutput:
        device = y.device
        with _autocast(device, self.precision):
            student = self.forward(x)
        try:
            out = self.objective(step_inputs(y, student, taught, epoch))
        except ArithmeticError as exc:  # Python arithmetic on a setting (tau**2 at 1e200)
            raise NonFiniteLossError(
                f"the loss overflows ({type(exc).__name__}) in epoch {epoch}: check the"
                f" loss's settings ({self.objective.settings()})"
            ) from None
        if not self.first_checked:  # one host sync per fit: no lr can be blamed yet
            self.first_checked = True
            first = out.total.detach().item()
            if not math.isfinite(first) and self.objective.settings():
                raise NonFiniteLossError(
                    f"the loss is {first} on the first batch, before any update: check"
                    f" the loss's settings ({self.objective.settings()})"
                )
        self.optimizer.zero_grad(set_to_none=True)
        out.total.backward()
        try:
            self.optimizer.step()
        except RuntimeError as exc:
            # An lr so large that the update itself overflows (Adam at lr=1e38): torch
            # raises before any loss is non-finite. The same fault, so the same fix.
            if "overflow" not in str(exc):
                raise
            what = f"the optimizer step overflowed in epoch {epoch}"
            raise _diverged(what, self.optimizer, self.lr_key, self.objective) from None
        return out


def _train_epoch(
    step: TrainStep,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    train_y: torch.Tensor,
    teacher: TeacherSource | None,
    augment: Augment | None,
    channels_last: bool,
    epoch: int,
    n: int,
) -> tuple[float, dict[str, torch.Tensor]]:
    """One pass over the training batches: (mean loss, each term's weighted sum). The
    sums stay on the device; the mean is the epoch's one host sync, and a non-finite one
    is divergence."""
    device = train_y.device
    teacher_maps = step.objective.needs_teacher_features
    loss_sum = torch.zeros((), device=device)
    term_sums: dict[str, torch.Tensor] = {}
    for index, x in batches:
        y = train_y.index_select(0, index.to(device))
        if augment is not None:
            x = augment(x)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        taught = teacher.with_features(index, x, teacher_maps) if teacher else (None,) * 3
        out = step(x, y, taught, epoch)
        weight = len(index)
        loss_sum += out.total.detach() * weight
        for name, value in out.terms.items():
            term_sums[name] = term_sums.get(name, 0.0) + value.detach() * weight
    train_loss = loss_sum.item() / n  # the epoch's single host sync
    if not math.isfinite(train_loss):
        what = f"training loss became {train_loss} in epoch {epoch}"
        raise _diverged(what, step.optimizer, step.lr_key, step.objective)
    return train_loss, term_sums


def fit(
    model: nn.Module,
    objective: Objective,
    optimizer: torch.optim.Optimizer,
    train_x: Images,
    train_y: torch.Tensor,
    val_x: Images,
    val_y: torch.Tensor,
    trainer: TrainerConf,
    train_teacher: TeacherSource | None = None,
    val_teacher: TeacherSource | None = None,
    augment: Augment | None = None,
    callbacks: Sequence[EpochCallback] = (),
    description: str = "train",
    lr_key: str = "optimizer.lr",
    scheduler: Target | None = None,
) -> FitResult:
    """Train ``model`` for ``trainer.epochs`` epochs, the lr following ``scheduler``
    (None: constant); leave it holding the weights the objective names (best or last val
    epoch). Callbacks may raise to stop (pruning). Divergence raises NonFiniteLossError
    naming ``lr_key``, the setting to lower."""
    device = train_y.device
    generator = torch.Generator(device=device).manual_seed(trainer.seed)
    forward = student_forward(model, objective.needs_student_features)
    if trainer.compile:
        forward = torch.compile(forward)
    step = TrainStep(forward, objective, optimizer, lr_key, trainer.precision)
    channels_last = trainer.channels_last and device.type == "cuda"
    if channels_last:
        model.to(memory_format=torch.channels_last)
    result = FitResult()
    best_state: dict[str, torch.Tensor] | None = None
    started = time.perf_counter()
    n, batch = len(train_x), trainer.batch_size
    show_bar = _show_bar(trainer.progress)
    schedule = build_scheduler(scheduler, optimizer, trainer.epochs)

    for epoch in range(1, trainer.epochs + 1):
        model.train()
        epoch_start = time.perf_counter()
        order = torch.randperm(n, device=device, generator=generator)
        batches = batches_of(train_x, batch, order)
        if show_bar:
            from tqdm.auto import tqdm

            label = f"{description} {epoch}/{trainer.epochs}"
            batches = tqdm(batches, desc=label, total=math.ceil(n / batch), leave=False)
        train_loss, term_sums = _train_epoch(
            step, batches, train_y, train_teacher, augment, channels_last, epoch, n
        )
        train_seconds = time.perf_counter() - epoch_start
        if schedule is not None:
            schedule.step()  # the lr of the next epoch
        val_loss, val_acc = evaluate(
            model, objective, val_x, val_y, val_teacher, trainer.eval_batch_size,
            trainer.precision, epoch,
        )  # fmt: skip
        record = EpochRecord(
            epoch=epoch,
            train_loss=train_loss,
            train_terms={name: float(total) / n for name, total in term_sums.items()},
            val_loss=val_loss,
            val_acc=val_acc,
            seconds=time.perf_counter() - epoch_start,
            images_per_s=n / train_seconds,
        )
        result.history.append(record)
        if val_acc > result.best_val_acc or epoch == 1:
            result.best_val_acc, result.best_epoch = val_acc, epoch
            if trainer.objective == "best" and epoch < trainer.epochs:
                best_state = copy.deepcopy(model.state_dict())
            else:
                best_state = None  # the current weights are the best ones
        log.info(
            "%s epoch %d/%d: train_loss %.4f  val_loss %.4f  val_acc %.2f%%  (%.0f img/s)",
            description,
            epoch,
            trainer.epochs,
            train_loss,
            val_loss,
            val_acc,
            record.images_per_s,
        )
        for callback in callbacks:
            callback(record)

    if trainer.objective == "best" and best_state is not None:
        model.load_state_dict(best_state)
    result.wall_seconds = time.perf_counter() - started
    return result
