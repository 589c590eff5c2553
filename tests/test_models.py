"""The seed's networks: parameter counts, layouts (a tutorial state_dict loads), input-size
handling and the hidden representation the cosine loss uses."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdsweep.config.targets import Target, build_network
from kdsweep.core.errors import ConfigError
from kdsweep.nets import count_parameters, deep_nn, hidden_pool_kernel, light_nn, pool_hidden


def build_model(name: str, shape: tuple[int, int, int], classes: int, **arguments) -> nn.Module:
    """The seed network ``name`` as the config builds it: a ``_target_`` node."""
    node = {"_target_": f"kdsweep.nets.{name}_nn", **arguments}
    return build_network(Target("model", node), shape, classes)


# --- the seed's classes, as in pytorch-kd-notes.md (the Modified* ones are the same layers) --


class SeedDeepNN(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 128, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(128, 64, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2),
            nn.Conv2d(64, 64, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(64, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(2048, 512), nn.ReLU(), nn.Dropout(0.1), nn.Linear(512, num_classes)
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ModifiedDeepNNCosine.forward: logits and the pooled flattened features."""
        x = self.features(x)
        flat = torch.flatten(x, 1)
        return self.classifier(flat), torch.nn.functional.avg_pool1d(flat, 2)


class SeedLightNN(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2),
            nn.Conv2d(16, 16, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(1024, 256), nn.ReLU(), nn.Dropout(0.1), nn.Linear(256, num_classes)
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ModifiedLightNNCosine.forward: logits and the flattened features."""
        x = self.features(x)
        flat = torch.flatten(x, 1)
        return self.classifier(flat), flat


CIFAR = (3, 32, 32)


def test_parameter_counts_at_cifar_size() -> None:
    assert count_parameters(deep_nn(CIFAR, 10)) == 1_186_986
    assert count_parameters(light_nn(CIFAR, 10)) == 267_738
    assert count_parameters(build_model("deep", CIFAR, 10)) == 1_186_986
    assert count_parameters(build_model("light", CIFAR, 10, returns_hidden=True)) == 267_738


@pytest.mark.parametrize(("arch", "seed_cls"), [("deep", SeedDeepNN), ("light", SeedLightNN)])
def test_same_layout_as_the_seed(arch: str, seed_cls: type[nn.Module]) -> None:
    ours = build_model(arch, CIFAR, 10).state_dict()
    seed = seed_cls().state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in seed.items()}


@pytest.mark.parametrize(("arch", "seed_cls"), [("deep", SeedDeepNN), ("light", SeedLightNN)])
def test_outputs_equal_the_seeds_modified_classes(arch: str, seed_cls: type[nn.Module]) -> None:
    torch.manual_seed(0)
    seed = seed_cls().eval()
    ours = build_model(arch, CIFAR, 10, returns_hidden=True).eval()
    ours.load_state_dict(seed.state_dict())
    x = torch.randn(4, *CIFAR)
    with torch.no_grad():
        seed_logits, seed_hidden = seed(x)
        logits, hidden = ours(x)
        kernel = hidden_pool_kernel(2048, 1024) if arch == "deep" else 1
        pooled = pool_hidden(hidden, kernel)
    torch.testing.assert_close(logits, seed_logits)
    torch.testing.assert_close(pooled, seed_hidden)


@pytest.mark.parametrize("arch", ["deep", "light"])
@pytest.mark.parametrize("shape", [(3, 16, 16), (3, 8, 8), (1, 8, 8), (3, 40, 24)])
def test_other_input_sizes_change_only_the_first_linear_layer(
    arch: str, shape: tuple[int, int, int]
) -> None:
    ref = {k: v.shape for k, v in build_model(arch, CIFAR, 10).state_dict().items()}
    other = {k: v.shape for k, v in build_model(arch, shape, 10).state_dict().items()}
    assert ref.keys() == other.keys()
    changed = {k for k in ref if ref[k] != other[k]}
    expected = {"classifier.0.weight"}
    if shape[0] != 3:
        expected.add("features.0.weight")  # the first conv's input channels, nothing else
        assert other["features.0.weight"][1] == shape[0]
    assert changed == expected
    channels_out = 32 if arch == "deep" else 16
    width = channels_out * (shape[1] // 4) * (shape[2] // 4)
    assert other["classifier.0.weight"] == (512 if arch == "deep" else 256, width)


def test_digits_size_parameter_count() -> None:
    # LightNN at 1x8x8: convs (1*9*16+16) + (16*9*16+16), linear (64*256+256), (256*10+10)
    expected = (1 * 9 * 16 + 16) + (16 * 9 * 16 + 16) + (64 * 256 + 256) + (256 * 10 + 10)
    assert count_parameters(light_nn((1, 8, 8), 10)) == expected


def test_num_classes_sets_the_output_width() -> None:
    logits = light_nn(CIFAR, 100)(torch.randn(2, *CIFAR))
    assert logits.shape == (2, 100)


def test_modified_returns_logits_and_hidden_plain_returns_logits() -> None:
    x = torch.randn(5, *CIFAR)
    plain = build_model("light", CIFAR, 10)
    modified = build_model("light", CIFAR, 10, returns_hidden=True)
    modified.load_state_dict(plain.state_dict())
    plain.eval()
    modified.eval()
    out = plain(x)
    assert isinstance(out, torch.Tensor) and out.shape == (5, 10)
    logits, hidden = modified(x)
    assert logits.shape == (5, 10) and hidden.shape == (5, 1024)
    torch.testing.assert_close(logits, out)
    torch.testing.assert_close(hidden, torch.flatten(modified.features(x), 1))


def test_teacher_hidden_pooled_to_student_width() -> None:
    deep, light = deep_nn(CIFAR, 10), light_nn(CIFAR, 10)
    assert (deep.hidden_width, light.hidden_width) == (2048, 1024)
    kernel = hidden_pool_kernel(deep.hidden_width, light.hidden_width)
    assert kernel == 2
    _, hidden = deep.forward_with_hidden(torch.randn(3, *CIFAR))
    pooled = pool_hidden(hidden, kernel)
    assert pooled.shape == (3, light.hidden_width)
    # average of adjacent pairs, by hand
    torch.testing.assert_close(pooled, (hidden[:, 0::2] + hidden[:, 1::2]) / 2)
    # digits-sized: 32*2*2=128 -> 16*2*2=64
    assert hidden_pool_kernel(deep_nn((1, 8, 8), 10).hidden_width, 64) == 2
    assert pool_hidden(hidden, 1) is hidden


def test_unalignable_widths_and_sizes_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="multiple"):
        hidden_pool_kernel(100, 64)
    with pytest.raises(ConfigError, match="multiple of 4"):
        light_nn((3, 30, 30), 10)


def test_dropout_is_configurable() -> None:
    model = build_model("light", CIFAR, 10, dropout=0.5)
    assert model.classifier[2].p == 0.5
