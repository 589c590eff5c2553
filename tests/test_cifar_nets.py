"""RepDistiller's CIFAR networks (kdsweep.nets.cifar): the published parameter counts, output
shapes at digits and CIFAR sizes, frozen BatchNorm in eval, returns_hidden, and one short
distillation run per teacher/student pair through the command line's entry point."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import db_path, mlflow_runs, run_cli_in_process
from kdsweep.config.folder import config_dir
from kdsweep.config.targets import Target, build_network
from kdsweep.core.errors import ConfigError
from kdsweep.nets import FeatureNet, count_parameters

CIFAR = (3, 32, 32)
DIGITS = (1, 8, 8)

# Exact counts at 3x32x32 with 100 classes, and the CRD paper's table (millions, 2 decimals;
# RepDistiller's README prints the same). Each exact count matches RepDistiller's code.
PARAMETERS = {
    "resnet32x4": (7_433_860, 7.43),
    "resnet8x4": (1_233_540, 1.23),
    "wrn_40_2": (2_255_156, 2.26),
    "wrn_16_2": (703_284, 0.70),
}
HIDDEN_WIDTH = {"resnet32x4": 256, "resnet8x4": 256, "wrn_40_2": 128, "wrn_16_2": 128}
NAMES = sorted(PARAMETERS)
SEED_NETS = {"deep": "deep_nn", "light": "light_nn"}


def build_model(name: str, shape: tuple[int, int, int], classes: int, **arguments) -> nn.Module:
    """The network ``name`` as the config builds it: a ``_target_`` node."""
    node = {"_target_": f"kdsweep.nets.{SEED_NETS.get(name, name)}", **arguments}
    return build_network(Target("model", node), shape, classes)


@pytest.mark.parametrize("name", NAMES)
def test_parameter_counts_are_the_published_ones(name: str) -> None:
    exact, published = PARAMETERS[name]
    count = count_parameters(build_model(name, CIFAR, 100))
    assert count == exact
    assert round(count / 1e6, 2) == published


def test_every_network_is_an_option_of_the_config() -> None:
    options = [*Path(config_dir()).glob("model/*.yaml"), *Path(config_dir()).glob("teacher/*.yaml")]
    targets = {line.split()[-1] for p in options for line in p.read_text().splitlines()
               if line.strip().startswith("_target_: kdsweep.nets.")}  # fmt: skip
    for name in NAMES:
        assert f"kdsweep.nets.{name}" in targets
        assert isinstance(build_model(name, DIGITS, 10), FeatureNet)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(("shape", "classes"), [(DIGITS, 10), (CIFAR, 100)])
def test_output_shapes(name: str, shape: tuple[int, int, int], classes: int) -> None:
    torch.manual_seed(0)
    model = build_model(name, shape, classes).eval()
    assert model.hidden_width == HIDDEN_WIDTH[name]
    assert model.returns_hidden is False
    x = torch.randn(2, *shape)
    with torch.no_grad():
        out = model(x)
        logits, hidden = model.forward_with_hidden(x)
        logits_f, hidden_f, stages = model.forward_with_features(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, classes)
    assert logits.shape == (2, classes) and hidden.shape == (2, model.hidden_width)
    torch.testing.assert_close(out, logits)
    torch.testing.assert_close(logits_f, logits)
    torch.testing.assert_close(hidden_f, hidden)
    assert len(stages) == 3
    size = shape[1]
    assert [s.shape[2:] for s in stages] == [
        (size, size),
        (size // 2, size // 2),
        (size // 4, size // 4),
    ]
    assert all(s.shape[0] == 2 for s in stages)
    assert stages[-1].shape[1] == model.hidden_width  # the pooled vector is the last stage's


@pytest.mark.parametrize("name", NAMES)
def test_input_channels_follow_the_input_shape(name: str) -> None:
    model = build_model(name, DIGITS, 10)
    assert model.conv1.weight.shape[1] == 1
    assert build_model(name, CIFAR, 10).conv1.weight.shape[1] == 3


@pytest.mark.parametrize("name", NAMES)
def test_batchnorm_is_frozen_in_eval(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, DIGITS, 10)
    model.train()
    with torch.no_grad():
        model(torch.randn(8, *DIGITS))  # running stats away from their initial values
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        first = model(torch.randn(4, *DIGITS))
        model(torch.randn(6, *DIGITS) * 3 + 1)
    after = model.state_dict()
    assert before.keys() == after.keys()
    for key, value in before.items():
        torch.testing.assert_close(after[key], value, rtol=0, atol=0)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert first.shape == (4, 10)


@pytest.mark.parametrize("name", NAMES)
def test_returns_hidden_makes_forward_return_a_tuple(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, CIFAR, 100, returns_hidden=True).eval()
    assert model.returns_hidden is True
    x = torch.randn(3, *CIFAR)
    with torch.no_grad():
        out = model(x)
        expected = model.forward_with_hidden(x)
    assert isinstance(out, tuple) and len(out) == 2
    logits, hidden = out
    assert logits.shape == (3, 100) and hidden.shape == (3, HIDDEN_WIDTH[name])
    torch.testing.assert_close(logits, expected[0])
    torch.testing.assert_close(hidden, expected[1])


@pytest.mark.parametrize("name", NAMES)
def test_no_dropout_and_init_is_repdistillers(name: str) -> None:
    model = build_model(name, CIFAR, 10)
    assert not any(isinstance(m, nn.Dropout) for m in model.modules())
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0)
        if isinstance(module, nn.Conv2d):
            assert module.bias is None


def test_inputs_smaller_than_4x4_are_config_errors() -> None:
    for name in NAMES:
        with pytest.raises(ConfigError, match="too small"):
            build_model(name, (3, 2, 8), 10)
    build_model("resnet8x4", (3, 4, 4), 10).eval()(torch.randn(1, 3, 4, 4))


# --- one short distillation run per pair, from the command line ---------------------------

# digits' test_fraction 0.75 leaves 449 train+val images: a resnet32x4 epoch on all 1,179
# took ~40 s on a busy 2-core machine. One thread: on a busy machine torch's default
# threads fight over the cores (kdsweep.run.plan.cpu_threads has the measurements).
PAIRS = {
    "resnet": (
        "model=resnet8x4",
        "teacher=resnet32x4",
        "loss=kd",
        "data.test_fraction=0.75",
    ),
    "wrn": (
        "model=wrn_16_2",
        "teacher=wrn_40_2",
        "loss=kd",
        "data=synthetic",
        "data.size=200",
        "data.test_size=40",
        # One epoch on 180 images: a teacher near chance, on purpose (the test is the
        # pair's plumbing, not what it teaches).
        "teacher.allow_weak=true",
    ),
}


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n == "wrn" else n for n in PAIRS]
)  # the wide ResNets: ~10 s
def test_cli_distils_each_pair(tracked_workdir: Path, name: str) -> None:
    """The CLI's entry point, in this process, tracking into a seeded database."""
    overrides = PAIRS[name]
    result = run_cli_in_process(
        tracked_workdir, *overrides, "teacher.epochs=1", "trainer.threads=1"
    )
    assert result.returncode == 0, f"{name}: {result.stderr[-2000:]}"
    runs = mlflow_runs(db_path(tracked_workdir))
    assert [r.info.status for r in runs] == ["FINISHED"], name
    params = runs[0].data.params
    student, teacher = (o.split("=")[1] for o in overrides[:2])
    assert student in params.values() and teacher in params.values(), params


@pytest.mark.parametrize("architecture", ["light", "deep", "resnet8x4", "wrn_16_2"])
def test_a_students_input_channels_and_classes_are_read_off_its_weights(
    architecture: str,
) -> None:
    """kdsweep-eval's check that a state_dict fits a data set, for every architecture."""
    from kdsweep.run.student import spec_from_state_dict

    model = build_model(architecture, (3, 32, 32), 100)
    assert spec_from_state_dict(model.state_dict()) == (3, 100)
    assert spec_from_state_dict(build_model(architecture, (1, 8, 8), 10).state_dict()) == (1, 10)
