"""The student's size as a setting: kdsweep's networks scale with ``width``
(kdsweep.nets.width). 1.0 is the published network, unchanged, so existing checkpoints,
teacher caches and studies keep their meaning; a width that builds no network is one line
naming ``model.width``; a sweep can choose the model and its width."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import settings_for
from kdsweep.config.folder import config_dir
from kdsweep.config.targets import Target, build_network
from kdsweep.core.errors import ConfigError
from kdsweep.nets import count_parameters

DIGITS = (1, 8, 8)
CIFAR = (3, 32, 32)
OPTIONS = {
    group: sorted(p.stem for p in Path(config_dir(), group).glob("*.yaml"))
    for group in ("model", "teacher")
}
NETS = ("deep_nn", "light_nn", "resnet8x4", "resnet32x4", "wrn_16_2", "wrn_40_2")


def build(target: str, shape: tuple[int, int, int] = DIGITS, **arguments: object) -> nn.Module:
    node = {"_target_": f"kdsweep.nets.{target}", **arguments}
    return build_network(Target("model", node), shape, 10)


def layout(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


@pytest.mark.parametrize(("group", "option"), [(g, o) for g, os in OPTIONS.items() for o in os])
def test_width_one_is_every_shipped_option_as_it_was(group: str, option: str) -> None:
    """The options leave width out (a ``width: 1.0`` key would change every teacher's cache
    key, every study's definition and every run's params), and width 1.0 builds the same
    state_dict as no width: a saved student or teacher loads either way."""
    settings = settings_for(f"{group}={option}")
    target = settings.model if group == "model" else settings.teacher_model
    assert "width" not in target.identity()
    for shape in (DIGITS, CIFAR):
        plain = build_network(target, shape, 10)
        widened = build_network(Target(target.key, {**target.node, "width": 1.0}), shape, 10)
        assert layout(widened) == layout(plain)
        widened.load_state_dict(plain.state_dict())


def test_width_scales_channels_and_hidden_units() -> None:
    light = build("light_nn", width=0.5)
    assert [m.out_channels for m in light.modules() if isinstance(m, nn.Conv2d)] == [8, 8]
    assert light.classifier[0].out_features == 128 and light.hidden_width == 8 * 2 * 2
    deep = build("deep_nn", width=2)
    assert [m.out_channels for m in deep.modules() if isinstance(m, nn.Conv2d)] == [
        256, 128, 128, 64
    ]  # fmt: skip
    assert build("resnet8x4", width=0.5).hidden_width == 128
    assert build("wrn_16_2", width=0.5).conv1.out_channels == 8
    assert build("wrn_16_2", width=0.5).hidden_width == 64
    # round half up: 16 x 0.75 = 12, 16 x 0.03125 = 0.5 -> 1
    assert build("light_nn", width=0.75).features[0].out_channels == 12
    assert build("light_nn", width=0.03125).features[0].out_channels == 1


@pytest.mark.parametrize("target", NETS)
def test_a_narrower_network_runs_and_is_smaller(target: str) -> None:
    narrow, full = build(target, width=0.5), build(target)
    assert count_parameters(narrow) < count_parameters(full)
    with torch.no_grad():
        assert narrow.eval()(torch.randn(2, *DIGITS)).shape == (2, 10)


@pytest.mark.parametrize("width", [0, -1, 0.01, math.nan, math.inf, "wide", True])
def test_a_width_that_builds_no_network_is_one_line(width: object) -> None:
    with pytest.raises(ConfigError) as caught:
        build("light_nn", width=width)
    message = str(caught.value)
    assert message.startswith("model.width must be a finite number >= 0.03125 for light_nn")
    assert "\n" not in message


def test_a_sweep_chooses_the_model_and_its_width() -> None:
    """``model=choice(light,deep)`` and ``+model.width=choice(0.5,1,2)`` as the sweeper
    parses them and a trial composes them (kdsweep.sweep.core: ``name=value``)."""
    from kdsweep.sweep.settings import search_space

    space = search_space({"model": "choice(light,deep)"}, ["+model.width=choice(0.5,1,2)"])
    choices = {name: d.choices for name, d in space.distributions.items()}
    assert choices == {"model": ("light", "deep"), "+model.width": (0.5, 1, 2)}
    first = {"light": 16, "deep": 128}
    for model, width in itertools.product(*choices.values()):
        settings = settings_for(f"model={model}", f"+model.width={width}")
        network = build_network(settings.model, DIGITS, 10)
        assert network.features[0].out_channels == round(first[model] * width)
    # without "+", Hydra refuses the key the options leave out, and names the "+" form
    with pytest.raises(Exception, match=r"\+model.width=0.5"):
        settings_for("model.width=0.5")
