"""Bring your own model, loss and config folder: a package of the test's own (a network, a
loss subclass) on PYTHONPATH, its YAMLs in a config folder (``hydra.searchpath``), its
package in ``allowed_targets``; torchvision's resnet18 as the teacher; features read by
forward hooks on named layers. The parts in this process (fast); the CLI end to end: a
single run, a 2-trial sweep with its confirmation stage, and AT on hooked layers (slow)."""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from _helpers import children_of, compose, load_trials, mlflow_client, mlflow_runs, run, unique
from conftest import FAST
from kdsweep.config.targets import Target, build_network
from kdsweep.config.validation import validate
from kdsweep.core.errors import ConfigError
from kdsweep.nets import HookedNet, as_feature_net, check_layers, light_nn
from kdsweep.run.student import STATE_DICT, StudentSpec, save_student

PACKAGE = {
    "mypkg/__init__.py": "",
    "mypkg/nets.py": '''
        import torch
        from torch import nn


        class Tiny(nn.Module):
            """A small CNN; kdsweep passes in_channels and num_classes."""

            def __init__(self, in_channels: int, num_classes: int, width: int = 8) -> None:
                super().__init__()
                self.block1 = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU())
                self.block2 = nn.Sequential(
                    nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU()
                )
                self.pool = nn.AdaptiveAvgPool2d(1)
                self.head = nn.Linear(2 * width, num_classes)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.head(torch.flatten(self.pool(self.block2(self.block1(x))), 1))


        class NotANet:
            def __init__(self, num_classes: int) -> None:
                self.num_classes = num_classes


        def table(num_classes: int) -> dict:
            return {"classes": num_classes}
        ''',
    "mypkg/losses.py": '''
        from dataclasses import dataclass

        from kdsweep.losses import KnowledgeDistillation, LossOutput, StepInputs


        @dataclass
        class SharpKD(KnowledgeDistillation):
            """KD plus a penalty on the entropy of the student's predictions."""

            name: str = "sharp_kd"
            entropy_weight: float = 0.1

            def __post_init__(self) -> None:
                super().__post_init__()
                if self.entropy_weight < 0:
                    raise ValueError(f"loss.entropy_weight must be >= 0, got {self.entropy_weight}")

            def forward(self, batch: StepInputs) -> LossOutput:
                out = super().forward(batch)
                p = batch.student_logits.softmax(-1)
                entropy = -(p * p.clamp_min(1e-12).log()).sum(-1).mean()
                total = out.total + self.entropy_weight * entropy
                return LossOutput(total, {**out.terms, "entropy": entropy})
        ''',
    "my_conf/model/tiny.yaml": """
        _target_: mypkg.nets.Tiny
        name: tiny
        width: 8
        """,
    "my_conf/loss/sharp_kd.yaml": """
        _target_: mypkg.losses.SharpKD
        name: sharp_kd
        temperature: 4.0
        soft_target_weight: 0.5
        ce_weight: 0.5
        entropy_weight: 0.1
        """,
    "my_conf/teacher/resnet18.yaml": """
        defaults:
          - /schema/teacher/TeacherConf@_here_
          - /optimizer@optimizer: adam
          - _self_
        model:
          _target_: torchvision.models.resnet18
          name: resnet18
        seed: ${trainer.seed}
        """,
}

# Small synthetic CIFAR-shaped data: resnet18 trains on it in seconds.
DATA = ("data=synthetic", "data.size=240", "data.test_size=60", "data.image_size=16")


@pytest.fixture(scope="module")
def user_folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The user's package and config folder, the package importable here and in the
    CLI's processes (PYTHONPATH)."""
    folder = tmp_path_factory.mktemp("byo")
    for name, text in PACKAGE.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", str(folder), prepend=":")
        patch.syspath_prepend(str(folder))
        yield folder
    for module in [m for m in sys.modules if m == "mypkg" or m.startswith("mypkg.")]:
        del sys.modules[module]


def byo_args(folder: Path, *extra: str) -> list[str]:
    return [
        f"hydra.searchpath=[file://{folder / 'my_conf'}]",
        "allowed_targets=[mypkg.*]",
        "model=tiny",
        "teacher=resnet18",
        *DATA,
        *FAST,
        "trainer.save_model=best",
        *extra,
    ]


# --- in this process -----------------------------------------------------------------------


def test_torchvision_and_user_networks_get_the_data_shape(user_folder: Path) -> None:
    resnet = build_network(
        Target("teacher.model", {"_target_": "torchvision.models.resnet18"}), (3, 16, 16), 7
    )
    assert resnet.fc.out_features == 7  # through resnet18's **kwargs
    allowed = ("mypkg.*",)
    tiny = build_network(Target("model", {"_target_": "mypkg.nets.Tiny"}, allowed), (1, 8, 8), 4)
    assert tiny(torch.zeros(2, 1, 8, 8)).shape == (2, 4)


def test_a_target_that_builds_no_module_is_one_line(user_folder: Path) -> None:
    target = Target("model", {"_target_": "mypkg.nets.table"}, ("mypkg.*",))
    with pytest.raises(ConfigError, match="built a dict, not a torch nn.Module"):
        build_network(target, (3, 8, 8), 10)


def test_hooks_read_named_layers_of_any_network() -> None:
    from torchvision.models import resnet18

    net = resnet18(num_classes=5).eval()
    hooked = as_feature_net(net, ["layer2", "layer3"], "avgpool")
    logits, hidden, maps = hooked.forward_with_features(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 5) and hidden.shape == (2, 512)
    assert [tuple(m.shape[1:]) for m in maps] == [(128, 4, 4), (256, 2, 2)]
    assert not any(m._forward_hooks for m in net.modules())  # no hook outlives the pass
    # kdsweep's nets are their own FeatureNet; a named layer overrides their default.
    light = light_nn((3, 32, 32), 10)
    assert as_feature_net(light) is light
    _, _, maps = as_feature_net(light, ["features.0"]).forward_with_features(
        torch.zeros(1, 3, 32, 32)
    )
    assert maps[0].shape == (1, 16, 32, 32)


def test_a_layer_the_model_lacks_names_those_that_fit() -> None:
    from torchvision.models import resnet18

    with pytest.raises(ConfigError) as caught:
        check_layers(resnet18(), ["layer5"], "loss.teacher_layers", "teacher.model=resnet18")
    message = str(caught.value)
    assert "loss.teacher_layers: teacher.model=resnet18 has no layer 'layer5'" in message
    assert "layer4" in message and "\n" not in message


def _traced_student(model: nn.Module, folder: Path) -> dict:
    spec = StudentSpec({"_target_": "x"}, [3, 16, 16], 10)
    save_student(model.eval(), spec, ([0.5] * 3, [0.25] * 3), torch.rand(2, 3, 16, 16), folder)
    return json.loads((folder / "kdsweep.json").read_text())


def test_any_module_is_saved_as_an_mlflow_model(user_folder: Path, tmp_path: Path) -> None:
    import mlflow.pytorch
    from mypkg.nets import Tiny
    from torchvision.models import resnet18

    x = torch.rand(3, 3, 16, 16)
    for name, net in {"resnet18": resnet18(num_classes=10), "tiny": Tiny(3, 10)}.items():
        # Saved as trained: the hooks' wrapper is not part of it.
        info = _traced_student(
            HookedNet(net, ["layer1" if name == "resnet18" else "block1"]), tmp_path / name
        )
        assert "export_error" not in info, info
        loaded = mlflow.pytorch.load_model(str(tmp_path / name)).eval()
        with torch.no_grad():
            assert torch.allclose(loaded(x), net.eval()((x - 0.5) / 0.25), atol=1e-5)
        state = torch.load(tmp_path / name / STATE_DICT, weights_only=True)
        assert state.keys() == net.state_dict().keys()


class Branchy(nn.Module):
    """Control flow on values: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * 16 * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fc(x.flatten(1))
        return out if out.sum() > 0 else -out


def test_a_module_that_cannot_be_traced_keeps_its_state_dict(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    info = _traced_student(Branchy(), tmp_path / "branchy")
    assert info["export_error"]
    assert (tmp_path / "branchy" / STATE_DICT).is_file()
    assert not (tmp_path / "branchy" / "MLmodel").exists()
    (warning,) = [r.getMessage() for r in caplog.records if "MLflow model" in r.getMessage()]
    assert "keeping its state_dict" in warning and "\n" not in warning


def _with(cfg, key: str, node: dict):  # noqa: ANN001, ANN202 - DictConfig
    """The composed config with ``key`` replaced by ``node`` (keys of its own)."""
    return OmegaConf.create({**OmegaConf.to_container(cfg), key: node})


def test_user_loss_and_allowed_targets(user_folder: Path) -> None:
    from mypkg.losses import SharpKD

    cfg = compose("model=light", "allowed_targets=[mypkg.*]")
    node = {"_target_": "mypkg.losses.SharpKD", "name": "sharp_kd", "entropy_weight": 0.5}
    settings = validate(_with(cfg, "loss", node))
    assert isinstance(settings.loss, SharpKD) and settings.loss.entropy_weight == 0.5
    with pytest.raises(ConfigError, match=r"allowed_targets=\[mypkg\.\*\]"):
        validate(_with(compose(), "loss", node))
    with pytest.raises(ConfigError, match="must be one of .* or a subclass of"):
        validate(_with(cfg, "loss", {"_target_": "mypkg.nets.Tiny"}))


@pytest.mark.parametrize(
    ("key", "target", "message"),
    [
        ("model", "mypkg.nets.NotANet", "model._target_ must name a torch nn.Module"),
        ("model", "mypkg.nets.Nope", "check the name, and that its package is installed"),
        ("optimizer", "mypkg.nets.Tiny", "optimizer._target_ must name a torch.optim class"),
        ("model", "othpkg.Net", "'allowed_targets=[othpkg.*]'"),
    ],
)
def test_wrong_targets_are_one_line(user_folder: Path, key: str, target: str, message: str) -> None:
    cfg = _with(compose("allowed_targets=[mypkg.*]"), key, {"_target_": target})
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("*", r"\*")):
        validate(cfg)


# --- the CLI, end to end --------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the CLI tests: the resnet18 teacher trains once."""
    return tmp_path_factory.mktemp("byo_cache")


def _ok(proc) -> None:  # noqa: ANN001
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
def test_single_run_with_a_user_model_loss_and_a_torchvision_teacher(
    user_folder: Path, shared_cache: Path, tmp_path: Path
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = byo_args(
        user_folder,
        "loss=sharp_kd",
        f"tracking.uri={uri}",
        f"cache_dir={shared_cache}",
        f"hydra.run.dir={tmp_path / 'out'}",
    )
    _ok(run(tmp_path, args))
    assert list((shared_cache / "teachers").glob("resnet18-*.pt"))  # cached
    (record,) = mlflow_runs(uri)
    assert record.info.status == "FINISHED"
    assert record.data.params["loss._target_"] == "mypkg.losses.SharpKD"
    assert any("entropy" in metric for metric in record.data.metrics)  # the loss's own term
    spec = json.loads((tmp_path / "out" / "student" / "kdsweep.json").read_text())
    assert spec["network"]["_target_"] == "mypkg.nets.Tiny" and "export_error" not in spec
    assert record.data.tags["kdsweep.student"] == f"runs:/{record.info.run_id}/student"
    # kdsweep-eval rebuilds the user's network from the state_dict, under their allow-list.
    from kdsweep.evaluate import evaluate_model

    state_dict = str(tmp_path / "out" / "student" / "state_dict.pt")
    figures = evaluate_model(state_dict, byo_args(user_folder, f"tracking.uri={uri}"))
    assert figures["test_acc"] == pytest.approx(record.data.metrics["test_acc"], abs=1e-6)


@pytest.mark.slow
def test_sweep_with_confirmation_registers_the_user_student(
    user_folder: Path, shared_cache: Path, tmp_path: Path
) -> None:
    study = unique("byo")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = [
        "-m",
        "hparams_search=kd",
        *byo_args(user_folder, "loss=sharp_kd"),
        "hydra.sweeper.n_trials=2",
        f"hydra.sweeper.study_name={study}",
        f"hydra.sweeper.storage=sqlite:///{tmp_path / 'optuna.db'}",
        f"hydra.sweeper.report_dir={tmp_path / 'reports'}",
        f"hydra.sweep.dir={tmp_path / 'multirun'}",
        "hydra.sweeper.baselines=false",
        "hydra.sweeper.confirm.seeds=1",
        "hydra.sweeper.confirm.top_k=1",
        f"tracking.uri={uri}",
        f"cache_dir={shared_cache}",
    ]
    _ok(run(tmp_path, args))
    assert list((shared_cache / "teachers").glob("resnet18-*.pt"))  # trained once, cached
    assert [t.state.name for t in load_trials(f"sqlite:///{tmp_path / 'optuna.db'}", study)] == [
        "COMPLETE"
    ] * 2
    runs = mlflow_runs(uri)
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = children_of(runs, parent.info.run_id)
    assert all(r.info.status == "FINISHED" for r in children)
    assert {r.data.tags.get("kdsweep.role") for r in children} >= {"trial", "confirm"}
    taught = [r for r in children if r.data.params.get("loss._target_") == "mypkg.losses.SharpKD"]
    assert taught and all(r.data.tags["kdsweep.student"] for r in taught)
    versions = mlflow_client(uri).search_model_versions(f"name='{study}-student'")
    assert len(versions) == 1


@pytest.mark.slow
@pytest.mark.parametrize(
    "loss",
    [
        ("loss=kd",),
        ("loss=at", "loss.student_layers=[block1,block2]", "loss.teacher_layers=[layer2,layer3]"),
    ],
    ids=["kd", "at"],
)
def test_resnet18_teacher_distils_into_a_small_student(
    user_folder: Path, shared_cache: Path, tmp_path: Path, loss: tuple[str, ...]
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = byo_args(
        user_folder,
        *loss,
        f"tracking.uri={uri}",
        f"cache_dir={shared_cache}",
        f"hydra.run.dir={tmp_path / 'out'}",
    )
    _ok(run(tmp_path, args))
    (record,) = mlflow_runs(uri)
    assert record.info.status == "FINISHED"
    assert record.data.tags["kdsweep.teacher.recipe"].count("torchvision.models.resnet18") == 1
