"""The allow-list cannot be walked around (issue 27, class 2): a ``_target_`` names what
builds a run's parts and a sweep's sampler and pruner, not whole packages. torch.hub.load,
which runs a folder's hubconf.py, is refused on every route a config reaches (a nested
node, the sweeper's pruner, the network a saved student's kdsweep.json names), before any
of it runs; so is what loads code under a trusted name. A package that exists but fails to
import is reported as its own error. (The bad-input table holds more rows of the class.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _helpers import run_in_process, unique
from conftest import FAST, settings_for
from kdsweep.config.targets import BrokenImport, Target, UnknownTarget, instantiate_trusted
from kdsweep.core.errors import ConfigError

HUBCONF = """\
import pathlib
FLAG = pathlib.Path(__file__).with_name("FLAG")
FLAG.write_text("hubconf.py was imported")
def flag(*args, **kwargs):
    FLAG.write_text("hubconf.flag ran")
    return True
"""


@pytest.fixture
def hub(tmp_path: Path) -> Path:
    """A torch.hub folder whose hubconf.py leaves a FLAG file when it is imported or run."""
    folder = tmp_path / "hub"
    folder.mkdir()
    (folder / "hubconf.py").write_text(HUBCONF)
    return folder


def _one_error_line(stderr: str, prefix: str = "kdsweep: error:") -> str:
    assert "Traceback" not in stderr, stderr[-3000:]
    (line,) = [x for x in stderr.splitlines() if x.startswith(prefix)]
    return line


HUB_NODE = "{_target_:torch.hub.load,repo_or_dir:./hub,model:flag,source:local}"


@pytest.mark.parametrize(
    ("args", "where"),
    [
        # The issue's own command: a key the network does not even need.
        ((f"+model.returns_hidden={HUB_NODE}",), "model.returns_hidden._target_=torch.hub.load"),
        (
            (
                "-m",
                "hparams_search=kd",
                "hydra.sweeper.baselines=false",
                "hydra/sweeper/pruner=none",
                "hydra.sweeper.pruner._target_=torch.hub.load",
                "+hydra.sweeper.pruner.repo_or_dir=./hub",
                "+hydra.sweeper.pruner.model=flag",
                "+hydra.sweeper.pruner.source=local",
            ),
            "hydra.sweeper.pruner._target_=torch.hub.load",
        ),
    ],
    ids=["nested in the model", "the sweeper's pruner"],
)
def test_torch_hub_load_never_runs_from_a_config(
    tmp_path: Path, hub: Path, args: tuple[str, ...], where: str
) -> None:
    isolated = [
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        f"cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={tmp_path / 'out'}",
        *FAST,
    ]
    if "-m" in args:
        isolated += [
            f"hydra.sweep.dir={tmp_path / 'multirun'}",
            f"hydra.sweeper.storage=sqlite:///{tmp_path / 'optuna.db'}",
            f"hydra.sweeper.study_name={unique('hub')}",
        ]
    flags = [a for a in args if a == "-m"]
    proc = run_in_process(tmp_path, [*flags, *isolated, *(a for a in args if a != "-m")])
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = _one_error_line(proc.stderr)
    assert where in line and "'allowed_targets=[torch.hub.load]'" in line, line
    assert not (hub / "FLAG").exists()
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "cache").exists()


def test_hydra_builds_only_its_callbacks_and_log_filters(tmp_path: Path, hub: Path) -> None:
    """hydra.main's list is what Hydra itself builds: a callback naming torch.hub.load
    (trusted there with torch.* before) is refused at start-up. (Hydra reports it, exit 1.)"""
    proc = run_in_process(
        tmp_path,
        [
            f"+hydra.callbacks.hub={HUB_NODE}",
            f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
            f"hydra.run.dir={tmp_path / 'out'}",
            *FAST,
        ],
    )
    assert proc.returncode != 0
    assert "torch.hub.load" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not (hub / "FLAG").exists() and not (tmp_path / "mlflow.db").exists()


def _saved_student(folder: Path, network: dict, **spec: object) -> Path:
    """A kdsweep student folder: a light_nn's state_dict beside a kdsweep.json naming
    ``network``."""
    import torch

    from kdsweep.config.targets import build_network

    net = build_network(Target("model", {"_target_": "kdsweep.nets.light_nn"}), (1, 8, 8), 10)
    folder.mkdir(parents=True)
    torch.save(net.state_dict(), folder / "state_dict.pt")
    info = {"network": network, "input_shape": [1, 8, 8], "num_classes": 10, **spec}
    (folder / "kdsweep.json").write_text(json.dumps(info))
    return folder / "state_dict.pt"


def test_kdsweep_eval_never_runs_what_a_kdsweep_json_names(
    tmp_path: Path, hub: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The file names the network, not what may run: its own allow-list entries are
    ignored; the command line's allowed_targets is the fix the line names."""
    from kdsweep.evaluate import main

    network = {"_target_": "torch.hub.load", "repo_or_dir": str(hub), "model": "flag"}
    state_dict = _saved_student(
        tmp_path / "student", {**network, "source": "local"}, allowed=["torch.*"]
    )
    with pytest.raises(SystemExit) as exit_:
        main([str(state_dict)])
    assert exit_.value.code == 2
    line = _one_error_line(capsys.readouterr().err, "kdsweep-eval: error:")
    assert "kdsweep.json names the network: model._target_=torch.hub.load" in line, line
    assert "'allowed_targets=[torch.hub.load]' (on this command line)" in line, line
    assert not (hub / "FLAG").exists()


@pytest.mark.parametrize(
    ("override", "where"),
    [
        # Under torch.nn, yet it imports whatever module it is given (hubconf runs).
        (
            "+model.returns_hidden={_target_:torch.nn.attention._fa3.register_flash_attention_fa3,"
            "module_path:hubconf}",
            "model.returns_hidden._target_=torch.nn.attention._fa3.",
        ),
        # A trusted name leading elsewhere: Hydra checks where it leads.
        ("model._target_=kdsweep.nets.cifar.torch.hub.load", "resolved from"),
        (
            "+teacher.model._args_=[{_target_:torch.hub.load,repo_or_dir:hub,model:flag}]",
            "_args_.0",
        ),
    ],
    ids=["torch.nn.attention imports a module", "an alias of torch.hub.load", "in _args_"],
)
def test_code_loaders_under_trusted_names_are_refused(
    tmp_path: Path, hub: Path, monkeypatch: pytest.MonkeyPatch, override: str, where: str
) -> None:
    monkeypatch.syspath_prepend(str(hub))  # hubconf importable by name
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="allowed_targets=") as refused:
        settings_for(override)
    assert where in str(refused.value)
    assert not (hub / "FLAG").exists()


def test_allowed_targets_still_lets_the_user_trust_a_name() -> None:
    """What kdsweep refuses under a trusted package, the user may allow by name."""
    getter = "{_target_:torchvision.models.get_model,name:resnet18}"
    with pytest.raises(UnknownTarget, match="picks a callable by name"):
        settings_for(f"+model.returns_hidden={getter}")
    allowed = settings_for(
        f"+model.returns_hidden={getter}", "allowed_targets=[torchvision.models.get_model]"
    )
    assert allowed.model.allowed == ("torchvision.models.get_model",)


BROKEN = {
    "syntax": ("def net(:\n    pass\n", "SyntaxError: invalid syntax", "nets.py:1)"),
    "dependency": (
        "import no_such_dependency_xyz\n",
        "No module named 'no_such_dependency_xyz'",
        "nets.py:1)",
    ),
    "raises": (
        "x = 1\nraise RuntimeError('needs a GPU at import')\n",
        "RuntimeError: needs a GPU",
        "nets.py:2)",
    ),
}


@pytest.mark.parametrize("key", ["model", "loss"])
@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_a_package_that_fails_to_import_is_reported_as_its_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, key: str
) -> None:
    source, error, where = BROKEN[kind]
    package = tmp_path / f"broken_{kind}"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    target = f"broken_{kind}.nets.Thing"
    with pytest.raises(BrokenImport) as broken:
        settings_for(f"{key}._target_={target}", f"allowed_targets=[broken_{kind}.*]")
    message = str(broken.value)
    assert message.startswith(f"{key}._target_={target}: it is found but fails to import:")
    assert error in message and where in message, message
    assert "Error locating" not in message and "installed" not in message


def test_a_missing_module_is_still_reported_as_missing() -> None:
    with pytest.raises(UnknownTarget, match="check the name, and that its package is installed"):
        settings_for("model._target_=torchvision.models.no_such_module.Net")


@pytest.mark.parametrize(
    "sampler",
    [
        {"_target_": "optuna.samplers.TPESampler", "seed": 1},
        {"_target_": "hydra_plugins.hydra_optuna_sweeper._impl.create_nsgaii_sampler"},
        {"_target_": "hydra_plugins.hydra_optuna_sweeper._impl.create_nsgaiii_sampler"},
        {
            "_target_": "optuna.samplers.CmaEsSampler",
            "independent_sampler": {"_target_": "optuna.samplers.RandomSampler"},
        },
    ],
    ids=lambda s: s["_target_"].rpartition(".")[2],
)
@pytest.mark.filterwarnings("ignore:NSGAIIISampler is experimental")
def test_the_sweepers_samplers_are_trusted(sampler: dict) -> None:
    import optuna

    assert isinstance(instantiate_trusted(sampler), optuna.samplers.BaseSampler)


class _Unpickled:
    """A pickle that writes a file when it is loaded, in place of a logged MLflow model."""

    def __init__(self, flag: Path) -> None:
        self.flag = flag

    def __reduce__(self) -> tuple:
        return (Path.write_text, (self.flag, "the pickled model was loaded"))


def test_kdsweep_eval_rebuilds_a_logged_student_and_never_unpickles_it(
    tmp_path: Path, hub: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A logged student's MLflow model is a pickle: loading it would run whatever it
    names. kdsweep-eval rebuilds it from its weights and its kdsweep.json, whose network
    passes the allow-list as a state_dict's does."""
    import pickle

    import torch

    from kdsweep.config.targets import build_network
    from kdsweep.evaluate import main
    from kdsweep.run.student import StudentSpec, save_student

    net = build_network(Target("model", {"_target_": "kdsweep.nets.light_nn"}), (1, 8, 8), 10)
    spec = StudentSpec({"_target_": "kdsweep.nets.light_nn"}, [1, 8, 8], 10)
    normalization = ([4.9], [6.0])
    metadata = {"input_normalization": {"mean": [4.9], "std": [6.0]}}
    folder = save_student(
        net, spec, normalization, torch.rand(2, 1, 8, 8), tmp_path / "s", metadata
    )
    flag = tmp_path / "UNPICKLED"
    (pickled,) = folder.rglob("model.pth")
    pickled.write_bytes(pickle.dumps(_Unpickled(flag)))

    main([f"file://{folder}", "--json"])
    figures = json.loads(capsys.readouterr().out)
    assert 0 <= figures["test_acc"] <= 100 and figures["parameters"] > 0
    assert not flag.exists()

    info = json.loads((folder / "kdsweep.json").read_text())
    info["network"] = {"_target_": "torch.hub.load", "repo_or_dir": str(hub), "model": "flag"}
    (folder / "kdsweep.json").write_text(json.dumps(info))
    with pytest.raises(SystemExit) as exit_:
        main([f"file://{folder}"])
    assert exit_.value.code == 2
    line = _one_error_line(capsys.readouterr().err, "kdsweep-eval: error:")
    assert "kdsweep.json names the network: model._target_=torch.hub.load" in line, line
    assert not flag.exists() and not (hub / "FLAG").exists()
