"""SGD-Nesterov against the seed's pseudocode (pytorch-kd-notes.md, "SGD in PyTorch"),
implemented by hand here, step by step."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from conftest import settings_for
from kdsweep.config.targets import Target
from kdsweep.training.optim import build_optimizer, build_scheduler


def _option(name: str, **arguments: float) -> Target:
    """The optimizer option ``name`` (conf/optimizer) with these arguments overridden."""
    overrides = (f"optimizer.{key}={value}" for key, value in arguments.items())
    return settings_for(f"optimizer={name}", *overrides).optimizer


def _problem() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    x = torch.randn(12, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (12,))
    return model, x, y


def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, step: int) -> torch.Tensor:
    # A different batch each step, so gradients change direction as in training.
    rows = torch.arange(len(x)).roll(step)[:8]
    return nn.functional.cross_entropy(model(x[rows]), y[rows])


def _pseudocode_sgd(
    params: list[torch.Tensor],
    grad_fn,
    steps: int,
    lr: float,
    weight_decay: float,
    momentum: float,
    dampening: float,
    nesterov: bool,
) -> list[list[torch.Tensor]]:
    """theta_t after each step t = 1..steps, straight from the pseudocode."""
    theta = [p.detach().clone() for p in params]
    buffers: list[torch.Tensor | None] = [None] * len(theta)
    history = []
    for t in range(1, steps + 1):
        grads = grad_fn(theta, t)
        new_theta = []
        for i, (th, g) in enumerate(zip(theta, grads, strict=True)):
            if weight_decay != 0:
                g = g + weight_decay * th
            if momentum != 0:
                # t > 1: b_t = mu b_{t-1} + (1 - tau) g_t, else b_t = g_t
                b = momentum * buffers[i] + (1 - dampening) * g if t > 1 else g
                buffers[i] = b
                g = g + momentum * b if nesterov else b
            new_theta.append(th - lr * g)  # maximize = False
        theta = new_theta
        history.append([th.clone() for th in theta])
    return history


@pytest.mark.parametrize(
    ("lr", "momentum", "weight_decay"), [(0.1, 0.9, 0.01), (0.05, 0.5, 0.1), (0.2, 0.99, 0.0)]
)
def test_sgd_nesterov_follows_the_pseudocode(
    lr: float, momentum: float, weight_decay: float
) -> None:
    model, x, y = _problem()
    names = [name for name, _ in model.named_parameters()]
    reference_model, _, _ = _problem()  # same init (same seed)

    def grad_fn(theta: list[torch.Tensor], step: int) -> list[torch.Tensor]:
        with torch.no_grad():
            for p, value in zip(reference_model.parameters(), theta, strict=True):
                p.copy_(value)
        reference_model.zero_grad()
        _loss(reference_model, x, y, step).backward()
        return [p.grad.detach().clone() for p in reference_model.parameters()]

    steps = 6
    expected = _pseudocode_sgd(
        list(model.parameters()),
        grad_fn,
        steps,
        lr=lr,
        weight_decay=weight_decay,
        momentum=momentum,
        dampening=0.0,
        nesterov=True,
    )
    conf = _option("sgd_nesterov", lr=lr, momentum=momentum, weight_decay=weight_decay)
    optimizer = build_optimizer(conf, model.parameters())
    start = [p.detach().clone() for p in model.parameters()]
    for t in range(1, steps + 1):
        optimizer.zero_grad()
        _loss(model, x, y, t).backward()
        optimizer.step()
        for name, p, want in zip(names, model.parameters(), expected[t - 1], strict=True):
            torch.testing.assert_close(p.detach(), want, rtol=1e-12, atol=1e-12, msg=name)
    moved = [not torch.equal(a, b.detach()) for a, b in zip(start, model.parameters(), strict=True)]
    assert all(moved)


def test_nesterov_differs_from_plain_momentum_and_weight_decay_matters() -> None:
    # The reference itself must be sensitive to what the test checks.
    model, x, y = _problem()

    def grad_fn(theta: list[torch.Tensor], step: int) -> list[torch.Tensor]:
        return [torch.ones_like(th) * step for th in theta]

    params = list(model.parameters())
    common = {"steps": 3, "lr": 0.1, "momentum": 0.9, "dampening": 0.0}
    nesterov = _pseudocode_sgd(params, grad_fn, weight_decay=0.01, nesterov=True, **common)
    plain = _pseudocode_sgd(params, grad_fn, weight_decay=0.01, nesterov=False, **common)
    no_wd = _pseudocode_sgd(params, grad_fn, weight_decay=0.0, nesterov=True, **common)
    assert not torch.allclose(nesterov[-1][0], plain[-1][0])
    assert not torch.allclose(nesterov[-1][0], no_wd[-1][0])


def test_sgd_nesterov_param_group() -> None:
    model, _, _ = _problem()
    conf = _option("sgd_nesterov", lr=0.03, momentum=0.8, weight_decay=0.001)
    optimizer = build_optimizer(conf, model.parameters())
    assert isinstance(optimizer, torch.optim.SGD)
    group = optimizer.param_groups[0]
    assert group["nesterov"] is True
    assert (group["lr"], group["momentum"], group["dampening"], group["weight_decay"]) == (
        0.03,
        0.8,
        0.0,
        0.001,
    )


def test_adam_from_config() -> None:
    model, _, _ = _problem()
    optimizer = build_optimizer(_option("adam", lr=0.002, weight_decay=0.1), model.parameters())
    assert isinstance(optimizer, torch.optim.Adam)
    assert optimizer.param_groups[0]["lr"] == 0.002
    assert optimizer.param_groups[0]["weight_decay"] == 0.1


def test_optimizer_from_composed_config(settings) -> None:
    s = settings("optimizer=sgd_nesterov", "optimizer.lr=0.07", "optimizer.weight_decay=5e-4")
    model, _, _ = _problem()
    group = build_optimizer(s.optimizer, model.parameters()).param_groups[0]
    assert group["nesterov"] is True
    assert group["lr"] == 0.07 and group["momentum"] == 0.9 and group["weight_decay"] == 5e-4


def test_plain_sgd_is_repdistillers_and_not_nesterov(settings) -> None:
    s = settings("optimizer=sgd")
    optimizer = build_optimizer(s.optimizer, nn.Linear(2, 2).parameters())
    assert isinstance(optimizer, torch.optim.SGD)
    group = optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.05, 0.9, 5e-4)
    assert group["nesterov"] is False


def test_the_lr_steps_down_after_each_milestone(settings) -> None:
    """trainer/scheduler=step: torch's MultiStepLR, one step per epoch."""
    from kdsweep.losses import CrossEntropy
    from kdsweep.training.loop import fit

    s = settings(
        "trainer.epochs=4", "trainer/scheduler=step",
        "trainer.scheduler.milestones=[1,3]", "trainer.scheduler.gamma=0.5",
    )  # fmt: skip
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    seen: list[float] = []

    class Net(nn.Module):  # the loop's interface: logits and a hidden vector
        def __init__(self) -> None:
            super().__init__()
            self.body = model

        def forward_with_hidden(self, x):  # noqa: ANN001, ANN202
            return self.body(x), x.flatten(1)

    net = Net()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    x, y = torch.randn(12, 4), torch.arange(12) % 3
    fit(
        net, CrossEntropy(), optimizer, x, y, x, y, s.trainer,
        callbacks=[lambda record: seen.append(optimizer.param_groups[0]["lr"])],
        scheduler=s.scheduler,
    )  # fmt: skip
    assert seen == pytest.approx([0.05, 0.05, 0.025, 0.025])  # after epochs 1 and 3


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        ("none", [0.1, 0.1, 0.1, 0.1]),
        ("cosine", [0.1 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(1, 5)]),
    ],
)
def test_the_schedules_are_constant_or_anneal_over_the_runs_epochs(
    settings, option: str, expected: list[float]
) -> None:
    """trainer/scheduler=cosine: CosineAnnealingLR, its T_max the run's epochs."""
    s = settings("trainer.epochs=4", f"trainer/scheduler={option}")
    optimizer = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    schedule = build_scheduler(s.scheduler, optimizer, s.trainer.epochs)
    seen = []
    for _ in range(4):
        optimizer.step()
        schedule.step()
        seen.append(optimizer.param_groups[0]["lr"])
    assert seen == pytest.approx(expected, abs=1e-12)  # cosine: 0 after the last epoch


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "trainer/scheduler=step trainer.scheduler.milestones=[5,2]",
            "must be increasing epochs >= 1",
        ),
        (
            "trainer/scheduler=step trainer.scheduler.milestones=[0]",
            "must be increasing epochs >= 1",
        ),
        (
            "trainer/scheduler=step trainer.scheduler.milestones=[1] trainer.scheduler.gamma=0",
            "trainer.scheduler.gamma must be in (0, 1]",
        ),
        (
            "trainer/scheduler@teacher.scheduler=step teacher.scheduler.milestones=[1]"
            " teacher.scheduler.gamma=1.5",
            "teacher.scheduler.gamma must be in (0, 1]",
        ),
        ("optimizer=sgd optimizer.momentum=1", "momentum must be in [0, 1)"),
    ],
)
def test_bad_lr_steps_and_momentum_are_one_line_errors(settings, override, message) -> None:
    import re

    from kdsweep.core.errors import ConfigError

    with pytest.raises(ConfigError, match=re.escape(message)):
        settings(*override.split())


def test_the_cifar100_recipe_composes_to_repdistillers_settings(settings) -> None:
    s = settings("experiment=cifar100_recipe", "trainer.device=cpu")
    assert (s.model.target, s.teacher_model.target) == (
        "kdsweep.nets.resnet8x4", "kdsweep.nets.resnet32x4",
    )  # fmt: skip
    assert (s.trainer.epochs, s.trainer.batch_size, s.scheduler.arguments["milestones"]) == (
        240, 64, [150, 180, 210],
    )  # fmt: skip
    for optimizer in (s.optimizer, s.teacher_optimizer):
        arguments = optimizer.arguments
        assert optimizer.name == "sgd" and arguments["lr"] == 0.05
        assert (arguments["momentum"], arguments["weight_decay"]) == (0.9, 5e-4)
    assert s.teacher_scheduler.arguments["milestones"] == [150, 180, 210] and s.data.augment


def test_the_teachers_lr_steps_are_part_of_its_cache_key(settings) -> None:
    from kdsweep.data import load_splits
    from kdsweep.training.teacher import teacher_key

    plain = settings()
    stepped = settings(
        "trainer/scheduler@teacher.scheduler=step", "teacher.scheduler.milestones=[5]"
    )
    data = load_splits(plain.data)
    assert teacher_key(plain, data) != teacher_key(stepped, data)
