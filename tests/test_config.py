"""Composed configs (Hydra's compose API over the real conf/) and their validation."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hydra.errors import HydraException
from omegaconf import OmegaConf

from kdsweep.config.targets import build_network
from kdsweep.config.validation import validate
from kdsweep.core.errors import ConfigError
from kdsweep.losses import CosineHidden, KnowledgeDistillation
from kdsweep.main import composition_error, config_dir


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(config_dir()) / group).glob("*.yaml"))


MODELS, LOSSES, OPTIMIZERS = _options("model"), _options("loss"), _options("optimizer")


def test_the_groups_hold_what_the_spec_names() -> None:
    assert {"deep", "light", "modified"} <= set(MODELS)
    assert {"ce", "kd", "cosine", "multimargin"} <= set(LOSSES)
    assert {"adam", "sgd_nesterov"} <= set(OPTIMIZERS)


@pytest.mark.parametrize(
    ("model", "loss", "optimizer"), list(itertools.product(MODELS, LOSSES, OPTIMIZERS))
)
def test_every_combination_validates_or_names_the_fix(
    compose, model: str, loss: str, optimizer: str
) -> None:
    cfg = compose(f"model={model}", f"loss={loss}", f"optimizer={optimizer}")
    model_returns_hidden = bool(cfg.model.returns_hidden)
    if loss == "cosine" and not model_returns_hidden:
        with pytest.raises(ConfigError) as info:
            validate(cfg)
        message = str(info.value)
        assert "model=modified" in message
        assert "\n" not in message
        return
    settings = validate(cfg)
    assert settings.model.name == model
    assert settings.loss.name == loss
    assert settings.optimizer.name == optimizer
    assert settings.uses_teacher == (loss not in ("ce", "multimargin"))


def test_defaults_are_the_tutorials(settings) -> None:
    s = settings()
    assert isinstance(s.loss, KnowledgeDistillation)
    assert (s.loss.temperature, s.loss.soft_target_weight, s.loss.ce_weight) == (2.0, 0.25, 0.75)
    assert s.optimizer.name == "adam" and s.optimizer.arguments["lr"] == 1e-3
    assert s.trainer.batch_size == 128
    cos = settings("loss=cosine", "model=modified").loss
    assert isinstance(cos, CosineHidden) and (cos.hidden_weight, cos.ce_weight) == (0.25, 0.75)
    sgd = settings("optimizer=sgd_nesterov").optimizer
    assert sgd.target == "torch.optim.SGD" and sgd.arguments["nesterov"] is True
    assert sgd.arguments["momentum"] > 0 and sgd.arguments["dampening"] == 0


def test_overrides_reach_the_typed_settings(settings) -> None:
    s = settings(
        "loss.temperature=4",
        "loss.soft_target_weight=0.5",
        "trainer.epochs=3",
        "data.val_fraction=0.2",
        "trainer.seed=7",
    )
    assert s.loss.temperature == 4.0 and isinstance(s.loss.temperature, float)
    assert s.loss.soft_target_weight == 0.5
    assert s.trainer.epochs == 3 and s.data.val_fraction == 0.2
    assert s.teacher.seed == 7  # interpolated from trainer.seed


def _refusal(compose, *overrides: str) -> str:
    """The one line a bad value gets, whether composition (types, closed choices),
    validation (ranges, cross-field rules) or building the student refuses it."""
    try:
        cfg = compose(*overrides)
    except HydraException as exc:
        line = composition_error(exc)
        assert line is not None, exc
        return line
    try:
        settings = validate(cfg)
    except ConfigError as exc:
        return str(exc)
    # A network's target is located when it is built, once the data's shape is known.
    with pytest.raises(ConfigError) as info:
        build_network(settings.model, (1, 8, 8), 10)
    return str(info.value)


BAD = [
    # (overrides, words the one-line message must contain)
    (["loss.temperature=0"], ["loss.temperature"]),
    (["loss.temperature=-1"], ["loss.temperature"]),
    (["loss.soft_target_weight=-0.1"], ["loss.soft_target_weight"]),
    (["loss.ce_weight=-1"], ["loss.ce_weight"]),
    (["loss.soft_target_weight=0", "loss.ce_weight=0"], ["all 0"]),
    (["loss=cosine", "model=modified", "loss.hidden_weight=-1"], ["loss.hidden_weight"]),
    (["loss=cosine", "model=modified", "loss.hidden_weight=0", "loss.ce_weight=0"], ["all 0"]),
    (["optimizer.lr=0"], ["optimizer.lr"]),
    (["optimizer.lr=-0.1"], ["optimizer.lr"]),
    (["optimizer.weight_decay=-1"], ["optimizer.weight_decay"]),
    (["trainer.batch_size=0"], ["trainer.batch_size"]),
    (["trainer.epochs=0"], ["trainer.epochs"]),
    (["teacher.epochs=0"], ["teacher.epochs"]),
    (["data.val_fraction=0"], ["data.val_fraction"]),
    (["data.val_fraction=1"], ["data.val_fraction"]),
    (["optimizer=sgd_nesterov", "optimizer.momentum=0"], ["optimizer.momentum"]),
    (["optimizer=sgd_nesterov", "optimizer.dampening=0.1"], ["optimizer.dampening"]),
    (["loss=multimargin", "loss.p=3"], ["loss.p"]),
    (["loss=multimargin", "loss.margin=0"], ["loss.margin"]),
    (["model.dropout=1.0"], ["model.dropout"]),
    (["trainer.objective=worst"], ["trainer.objective"]),
    (["trainer.progress=loud"], ["trainer.progress"]),
    (["model._target_=kdsweep.nets.huge"], ["model._target_"]),
    (["optimizer.weight_decay=nan"], ["optimizer.weight_decay"]),
    (["data=synthetic", "data.noise=nan"], ["data.noise"]),
    (["loss.temperature=nan"], ["loss.temperature"]),
    (["loss=cosine", "model=light"], ["model=modified"]),
    (["loss=cosine", "model=deep"], ["model=modified"]),
    (["teacher.optimizer.lr=0"], ["teacher.optimizer.lr"]),
    # The key that is at fault, not the one whose check noticed it.
    (["data.test_fraction=0.999"], ["data.test_fraction=0.999", "smaller"]),
    (["tracking.experiment=" + "x" * 501], ["tracking.experiment", "at most 500"]),
]


@pytest.mark.parametrize(("overrides", "words"), BAD, ids=[" ".join(o) for o, _ in BAD])
def test_out_of_range_values_are_one_line_config_errors(
    compose, overrides: list[str], words: list[str]
) -> None:
    message = _refusal(compose, *overrides)
    assert "\n" not in message and message.strip() == message
    for word in words:
        assert word in message


def test_unknown_key_is_a_config_error(compose) -> None:
    cfg = compose("+loss.foo=1")
    with pytest.raises(ConfigError) as info:
        validate(cfg)
    message = str(info.value)
    assert "foo" in message and "\n" not in message


def test_key_of_another_option_is_a_config_error(compose) -> None:
    # loss.p exists for multimargin only; adding it to kd must not pass silently.
    with pytest.raises(ConfigError, match="p"):
        validate(compose("loss=kd", "+loss.p=2"))


def test_wrong_type_is_a_config_error(compose) -> None:
    # Refused by Hydra while composing against the schema; the CLI words it in one line.
    message = _refusal(compose, "trainer.epochs=abc")
    assert "trainer.epochs" in message and "abc" in message and "\n" not in message


def test_wrong_type_float_is_a_config_error(compose) -> None:
    assert "optimizer.lr" in _refusal(compose, "optimizer.lr=fast")


def test_key_unknown_to_hydra_is_refused_at_compose(compose) -> None:
    # Without '+', Hydra's struct mode refuses a key no option defines.
    with pytest.raises(HydraException):
        compose("loss.foo=1")


def test_unknown_option_name_is_a_config_error(compose) -> None:
    cfg = compose()
    cfg = OmegaConf.merge(cfg, {"loss": {"_target_": "nope"}})
    with pytest.raises(ConfigError, match="loss._target_ must be one of"):
        validate(cfg)


def test_missing_group_names_it(compose) -> None:
    cfg = OmegaConf.to_container(compose())
    del cfg["optimizer"]
    with pytest.raises(ConfigError, match="optimizer"):
        validate(OmegaConf.create(cfg))


def test_cpu_threads_are_torchs_unless_asked() -> None:
    from kdsweep.run.plan import cpu_threads

    assert cpu_threads(0) is None  # torch's own default
    assert cpu_threads(1) == 1 and cpu_threads(4) == 4


def test_negative_threads_are_refused(compose) -> None:
    assert "trainer.threads" in _refusal(compose, "trainer.threads=-1")


@pytest.mark.parametrize("group", ["loss", "data"])
def test_every_field_of_a_built_part_is_a_key_of_its_option(compose, group: str) -> None:
    """A loss's or a data set's YAML lists every field of its class: a field it lacks
    could not be set from the command line (Hydra refuses keys no option defines)."""
    from dataclasses import fields

    from hydra.utils import get_class

    for option in _options(group):
        node = compose(f"{group}={option}", "model=modified")[group]
        wanted = {f.name for f in fields(get_class(node._target_))}
        assert wanted <= set(node), f"conf/{group}/{option}.yaml lacks {wanted - set(node)}"
