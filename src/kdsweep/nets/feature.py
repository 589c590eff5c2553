"""What the training loop and the losses ask of a network: a :class:`FeatureNet`, which
returns its logits, its hidden representation and its stage feature maps. kdsweep's own
nets are FeatureNets; any other ``nn.Module`` (torchvision's, the user's) becomes one
through :class:`HookedNet`, which reads the outputs of named layers by forward hooks
(torchdistill's way). Also the helpers that pool a teacher's hidden vector to the
student's width."""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kdsweep.core.errors import ConfigError


class FeatureNet(nn.Module):
    """What the training loop and the losses ask of every network: logits, a hidden vector
    (``hidden_width`` wide) and the feature map at the end of each stage (the maps the
    feature losses, AT and hint, compare). ``returns_hidden`` decides what ``forward``
    gives, like the seed's Modified*Cosine classes."""

    hidden_width: int
    returns_hidden: bool

    def forward_with_features(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        raise NotImplementedError  # pragma: no cover - interface

    def forward_with_hidden(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, hidden, _ = self.forward_with_features(x)
        return logits, hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        logits, hidden = self.forward_with_hidden(x)
        return (logits, hidden) if self.returns_hidden else logits


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode for the block (no dropout, BatchNorm's running statistics
    used and left as they are), then back in the mode it was in, whatever the block raised."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def hidden_pool_kernel(teacher_width: int, student_width: int) -> int:
    """Kernel of the 1-D average pool that brings the teacher's hidden width down to the
    student's (the seed pools DeepNN's 2048 features by 2 to LightNN's 1024)."""
    if teacher_width % student_width:
        raise ConfigError(
            f"teacher hidden width {teacher_width} is not a multiple of the student's"
            f" {student_width}: the cosine loss cannot align them; use teacher=deep model=modified"
        )
    return teacher_width // student_width


def pool_hidden(hidden: torch.Tensor, kernel: int) -> torch.Tensor:
    return hidden if kernel == 1 else F.avg_pool1d(hidden, kernel)


class HookedNet(FeatureNet):
    """``network`` as a FeatureNet: its ``features`` layers' outputs are the feature maps and
    its ``hidden`` layer's output, flattened, the hidden vector. Without them it gives what
    a kdsweep net gives itself, or, for another network, no maps and its logits as the
    hidden vector (no loss reads it then: the cosine loss must name a layer).

    The hooks live for one forward pass only, so the network itself stays hook-free: it is
    saved, copied and traced as it is."""

    returns_hidden = False

    def __init__(
        self, network: nn.Module, features: Sequence[str] = (), hidden: str | None = None
    ) -> None:
        super().__init__()
        self.network = network
        self.feature_layers = list(features)
        self.hidden_layer = hidden

    def forward_with_features(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        names = [*self.feature_layers, *([self.hidden_layer] if self.hidden_layer else [])]
        layers = dict(self.network.named_modules())
        seen: dict[str, torch.Tensor] = {}

        def keep(name: str):  # noqa: ANN202 - a forward hook
            def hook(_module: nn.Module, _inputs: object, output: object) -> None:
                seen[name] = output[0] if isinstance(output, (tuple, list)) else output

            return hook

        handles = [layers[name].register_forward_hook(keep(name)) for name in names]
        try:
            if isinstance(self.network, FeatureNet):
                logits, hidden, maps = self.network.forward_with_features(x)
            else:
                out = self.network(x)
                logits = out[0] if isinstance(out, (tuple, list)) else out
                hidden, maps = logits, []
        finally:
            for handle in handles:
                handle.remove()
        if self.hidden_layer:
            hidden = torch.flatten(seen[self.hidden_layer], 1)
        if self.feature_layers:
            maps = [seen[name] for name in self.feature_layers]
        return logits, hidden, maps


def network_of(model: nn.Module) -> nn.Module:
    """The network itself, without the HookedNet around it (what is saved)."""
    return model.network if isinstance(model, HookedNet) else model


def as_feature_net(
    model: nn.Module, features: Sequence[str] = (), hidden: str | None = None
) -> FeatureNet:
    """``model`` itself when no layer is named and it has the loop's interface already (a
    FeatureNet, or a module with its ``forward_with_hidden``), else a HookedNet."""
    if not features and not hidden and hasattr(model, "forward_with_hidden"):
        return model  # type: ignore[return-value]
    return HookedNet(network_of(model), features, hidden)


def top_layers(model: nn.Module) -> str:
    """The names of a network's top-level layers, for messages that ask for one."""
    return ", ".join(name for name, _ in network_of(model).named_children())


def check_layers(model: nn.Module, names: Sequence[str], key: str, what: str) -> None:
    """Every name is a layer of ``model``; else one line naming the ones that would fit
    (the closest names, or its top-level layers)."""
    layers = [name for name, _ in network_of(model).named_modules() if name]
    for name in names:
        if name not in layers:
            near = ", ".join(difflib.get_close_matches(name, layers, n=6, cutoff=0.6))
            raise ConfigError(
                f"{key}: {what} has no layer {name!r}; layers that would fit:"
                f" {near or top_layers(model)} (print the model for them all)"
            )
