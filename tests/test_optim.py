"""SGD-Nesterov against the seed's pseudocode (pytorch-kd-notes.md, "SGD in PyTorch"),
implemented by hand here, step by step."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdsweep.optim import build_optimizer
from kdsweep.schema import OptimizerConf, SGDNesterovConf


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
    conf = SGDNesterovConf(
        _target_="torch.optim.SGD", lr=lr, momentum=momentum, weight_decay=weight_decay
    )
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
    conf = SGDNesterovConf(_target_="torch.optim.SGD", lr=0.03, momentum=0.8, weight_decay=0.001)
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
    optimizer = build_optimizer(
        OptimizerConf(_target_="torch.optim.Adam", lr=0.002, weight_decay=0.1), model.parameters()
    )
    assert isinstance(optimizer, torch.optim.Adam)
    assert optimizer.param_groups[0]["lr"] == 0.002
    assert optimizer.param_groups[0]["weight_decay"] == 0.1


def test_optimizer_from_composed_config(settings) -> None:
    s = settings("optimizer=sgd_nesterov", "optimizer.lr=0.07", "optimizer.weight_decay=5e-4")
    model, _, _ = _problem()
    group = build_optimizer(s.optimizer, model.parameters()).param_groups[0]
    assert group["nesterov"] is True
    assert group["lr"] == 0.07 and group["momentum"] == 0.9 and group["weight_decay"] == 5e-4
