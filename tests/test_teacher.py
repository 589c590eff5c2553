"""Teacher checkpoints (user files and the cache), cached teacher outputs, atomic writes."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch

from conftest import compose_config, settings_for
from kdsweep.core.errors import CheckpointError
from kdsweep.core.files import atomic_torch_save, atomic_write, atomic_write_text
from kdsweep.data import load_splits
from kdsweep.losses import CosineHidden, KnowledgeDistillation, StepInputs
from kdsweep.nets import deep_nn, light_nn
from kdsweep.training.teacher import WeakTeacherError, prepare_teacher, weak_teacher_problem
from kdsweep.training.teacher_outputs import cached_source, live_source

CPU = torch.device("cpu")
# A light teacher on digits trains in well under a second.
TEACHER = ("teacher=light", "teacher.epochs=1", "trainer.progress=none")


def _prepare(settings_for, cache: Path, *overrides: str):
    s = settings_for(*TEACHER, f"cache_dir={cache}", *overrides)
    data = load_splits(s.data)
    return s, data, prepare_teacher(s, data, CPU)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A light teacher trained on digits (split_seed=0) into a module cache dir."""
    cache = tmp_path_factory.mktemp("teacher-cache")
    s, data, teacher = _prepare(settings_for, cache, "data.split_seed=0")
    return cache, teacher


def test_training_then_reusing_the_cache(settings, trained, caplog) -> None:
    cache, first = trained
    assert first.trained_now and first.path.is_file()
    assert first.path.parent == cache / "teachers"
    assert set(first.metrics) >= {"teacher_val_acc", "teacher_test_acc"}
    mtime = first.path.stat().st_mtime_ns
    caplog.set_level("INFO", logger="kdsweep")
    _, _, again = _prepare(settings, cache, "data.split_seed=0")
    assert not again.trained_now
    assert again.path == first.path and again.key == first.key
    assert first.path.stat().st_mtime_ns == mtime
    assert "teacher: reusing" in caplog.text
    for a, b in zip(
        first.model.state_dict().values(), again.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)
    assert not again.model.training
    # another recipe is another cache entry
    _, _, other = _prepare(settings, cache, "data.split_seed=0", "teacher.seed=5")
    assert other.trained_now and other.path != first.path


def test_corrupt_cache_entry_is_retrained(settings, tmp_path: Path, caplog) -> None:
    _, _, first = _prepare(settings, tmp_path)
    first.path.write_bytes(b"not a checkpoint")
    caplog.set_level("WARNING", logger="kdsweep")
    _, _, again = _prepare(settings, tmp_path)
    assert again.trained_now
    assert "unusable" in caplog.text
    torch.load(again.path, weights_only=True)  # a good file again


@pytest.mark.parametrize("content", [b"garbage" * 10, b""])
def test_corrupt_checkpoint_file_is_a_one_line_error(
    settings, tmp_path: Path, content: bytes
) -> None:
    bad = tmp_path / "teacher.pt"
    bad.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        _prepare(settings, tmp_path, f"teacher.checkpoint={bad}")
    message = str(info.value)
    assert "\n" not in message
    assert str(bad) in message and "corrupt" in message


def test_corrupt_checkpoint_stops_the_run_before_mlflow(tmp_path: Path, monkeypatch) -> None:
    from kdsweep.run.experiment import run

    bad = tmp_path / "teacher.pt"
    bad.write_bytes(b"\x00" * 64)
    monkeypatch.chdir(tmp_path)
    cfg = compose_config(
        *TEACHER,
        f"teacher.checkpoint={bad}",
        f"cache_dir={tmp_path / 'cache'}",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
    )
    with pytest.raises(CheckpointError):
        run(cfg, output_dir=tmp_path)
    assert not (tmp_path / "mlflow.db").exists()


def test_truncated_checkpoint_is_a_one_line_error(settings, trained, tmp_path: Path) -> None:
    _, teacher = trained
    cut = tmp_path / "cut.pt"
    blob = teacher.path.read_bytes()
    cut.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError) as info:
        _prepare(settings, tmp_path, f"teacher.checkpoint={cut}")
    assert "\n" not in str(info.value)


def test_missing_checkpoint_file(settings, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        _prepare(settings, tmp_path, f"teacher.checkpoint={tmp_path / 'nope.pt'}")


def test_checkpoint_from_other_data_split_is_refused(settings, trained, tmp_path: Path) -> None:
    _, teacher = trained
    with pytest.raises(CheckpointError) as info:
        _prepare(settings, tmp_path, f"teacher.checkpoint={teacher.path}", "data.split_seed=1")
    message = str(info.value)
    assert "other data" in message and "\n" not in message


def test_checkpoint_from_other_data_set_is_refused(settings, trained, tmp_path: Path) -> None:
    _, teacher = trained
    with pytest.raises(CheckpointError) as info:
        _prepare(
            settings,
            tmp_path,
            f"teacher.checkpoint={teacher.path}",
            "data=synthetic",
            "data.size=40",
            "data.test_size=8",
        )
    assert "input_shape" in str(info.value)


def test_checkpoint_of_other_architecture_is_refused(settings, trained, tmp_path: Path) -> None:
    _, teacher = trained
    with pytest.raises(CheckpointError, match="architecture"):
        _prepare(settings, tmp_path, f"teacher.checkpoint={teacher.path}", "teacher=deep")


def test_own_checkpoint_loads_on_the_same_data(settings, trained, tmp_path: Path) -> None:
    _, teacher = trained
    _, _, loaded = _prepare(settings, tmp_path, f"teacher.checkpoint={teacher.path}")
    assert not loaded.trained_now and loaded.metrics == teacher.metrics
    for a, b in zip(
        teacher.model.state_dict().values(), loaded.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)
    assert not (tmp_path / "teachers").exists()  # nothing trained or cached


def test_bare_state_dict_loads(settings, tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = deep_nn((1, 8, 8), 10)
    path = tmp_path / "tutorial_teacher.pt"
    torch.save(model.state_dict(), path)
    untrained = ("teacher=deep", f"teacher.checkpoint={path}", "teacher.allow_weak=true")
    _, data, teacher = _prepare(settings, tmp_path, *untrained)
    assert not teacher.trained_now and set(teacher.metrics) == {
        "teacher_val_acc",
        "teacher_test_acc",
    }  # measured here: a bare state_dict claims nothing
    assert teacher.key.startswith("file-")
    for name, value in model.state_dict().items():
        assert torch.equal(teacher.model.state_dict()[name], value), name
    assert not teacher.model.training
    x = data.val_x[:4]
    model.eval()
    torch.testing.assert_close(teacher.model(x), model(x))


def test_outputs_of_a_bare_checkpoint_follow_the_split(settings, trained, tmp_path: Path) -> None:
    """teacher.checkpoint=bare.pt with data.split_seed=0, then 1, in one cache: the key of a
    bare state_dict is its file's hash, so the outputs' key must cover the data. The
    second run's outputs are its own split's, as a fresh cache gives them."""
    _, teacher = trained
    bare = tmp_path / "bare.pt"
    torch.save(teacher.model.state_dict(), bare)
    cache = tmp_path / "cache"
    for seed in (0, 1):
        _, data, loaded = _prepare(
            settings, cache, f"teacher.checkpoint={bare}", f"data.split_seed={seed}"
        )
        source = cached_source(loaded.model, loaded.key, "val", data.val_x, cache, True, False)
    new = tmp_path / "new"
    fresh = cached_source(loaded.model, loaded.key, "val", data.val_x, new, True, False)
    assert torch.equal(source.logits, fresh.logits)
    assert len(list((cache / "teacher_outputs").glob("val-*-logits.pt"))) == 2


def test_state_dict_of_wrong_shape_is_refused(settings, tmp_path: Path) -> None:
    path = tmp_path / "light.pt"
    torch.save(light_nn((1, 8, 8), 10).state_dict(), path)
    with pytest.raises(CheckpointError) as info:
        _prepare(settings, tmp_path, "teacher=deep", f"teacher.checkpoint={path}")
    assert "does not fit" in str(info.value) and "\n" not in str(info.value)


def test_checkpoint_that_is_neither(settings, tmp_path: Path) -> None:
    path = tmp_path / "list.pt"
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="neither"):
        _prepare(settings, tmp_path, f"teacher.checkpoint={path}")


def test_the_teacher_key_names_its_weights(settings, tmp_path: Path) -> None:
    """A teacher retrained under the same recipe (its entry was damaged) has other weights
    on a GPU: another key, so its outputs are computed again, never mixed with the old."""
    from kdsweep.core.integrity import sealed, verified

    _, _, first = _prepare(settings, tmp_path)
    payload = verified(torch.load(first.path, weights_only=True))
    name = next(iter(payload["state_dict"]))
    payload["state_dict"][name] = payload["state_dict"][name] + 0.01
    atomic_torch_save(sealed(payload), first.path)
    _, _, again = _prepare(settings, tmp_path)
    assert not again.trained_now and again.path == first.path
    assert again.key != first.key


def test_the_teacher_key_covers_its_training_precision(settings) -> None:
    """The teacher trains under the run's trainer.precision (bf16 autocast on a GPU):
    another precision is another teacher, not the cached one."""
    from kdsweep.training.teacher import teacher_key

    data = load_splits(settings().data)
    keys = {teacher_key(settings(f"trainer.precision={p}"), data) for p in ("fp32", "bf16")}
    assert len(keys) == 2


# --- a teacher that teaches nothing ----------------------------------------------------------


@pytest.mark.parametrize(
    ("val_acc", "n_val", "classes", "weak"),
    [
        (11.0, 10_000, 10, True),  # surely above chance (p ~ 5e-4), by too little
        (66.67, 12, 3, True),  # 8 of 12: twice chance, but p = 0.019 on so few images
        (75.0, 12, 3, False),  # 9 of 12: p = 0.004
        (19.5, 1_000, 10, False),
        (54.0, 1_000, 2, True),  # 2 classes: p = 0.006, but it needs 55 %
        (55.0, 1_000, 2, False),
    ],
)
def test_clearly_above_chance_is_a_binomial_test_and_a_margin(
    val_acc: float, n_val: int, classes: int, weak: bool
) -> None:
    assert (weak_teacher_problem(val_acc, n_val, classes) is not None) == weak


def test_a_teacher_near_chance_is_refused_unless_allowed(settings, tmp_path: Path, caplog) -> None:
    """An untrained teacher (lr 1e-9) stops the run in one line; it stays cached and is
    refused again on reuse; teacher.allow_weak=true distils from it, with a warning."""
    weak = ("teacher.optimizer.lr=1e-9",)
    with pytest.raises(WeakTeacherError) as info:
        _prepare(settings, tmp_path, *weak)
    message = str(info.value)
    assert "\n" not in message and "chance is 10.00 %" in message
    for fix in ("teacher.epochs", "teacher.optimizer.lr", "BatchNorm", "teacher.allow_weak=true"):
        assert fix in message
    (cached,) = (tmp_path / "teachers").glob("*.pt")
    written = cached.stat().st_mtime_ns
    with pytest.raises(WeakTeacherError):
        _prepare(settings, tmp_path, *weak)
    assert cached.stat().st_mtime_ns == written  # reused, and refused again
    caplog.set_level("WARNING", logger="kdsweep")
    _, _, allowed = _prepare(settings, tmp_path, *weak, "teacher.allow_weak=true")
    assert not allowed.trained_now and allowed.path == cached
    assert "distilled from anyway (teacher.allow_weak=true)" in caplog.text


# --- cached vs live teacher outputs -------------------------------------------------------


def test_cached_outputs_equal_live_teacher(tmp_path: Path) -> None:
    torch.manual_seed(0)
    teacher = deep_nn((1, 8, 8), 10).eval()
    student = light_nn((1, 8, 8), 10, returns_hidden=True).eval()
    inputs = torch.randn(90, 1, 8, 8)
    labels = torch.randint(0, 10, (90,))
    kernel = teacher.hidden_width // student.hidden_width
    cached = cached_source(teacher, "k1", "train", inputs, tmp_path, True, True, kernel)
    live = live_source(teacher, kernel)
    kd = KnowledgeDistillation(temperature=3.0)
    cosine = CosineHidden()
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(90, generator=generator)
    for start in range(0, 90, 32):  # fixed batches, in shuffled order, last one short
        index = order[start : start + 32]
        x = inputs.index_select(0, index)
        c_logits, c_hidden = cached.for_batch(index, x)
        l_logits, l_hidden = live.for_batch(index, x)
        torch.testing.assert_close(c_logits, l_logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(c_hidden, l_hidden, rtol=1e-5, atol=1e-5)
        with torch.no_grad():
            s_logits, s_hidden = student.forward_with_hidden(x)
        y = labels.index_select(0, index)
        for loss in (kd, cosine):
            a = loss(StepInputs(y, s_logits, s_hidden, c_logits, c_hidden)).total
            b = loss(StepInputs(y, s_logits, s_hidden, l_logits, l_hidden)).total
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    files = sorted(p.name for p in (tmp_path / "teacher_outputs").glob("*.pt"))
    assert len(files) == 2
    assert any("logits" in f for f in files) and any("hidden" in f for f in files)


def test_cached_outputs_are_read_back_from_disk(tmp_path: Path) -> None:
    torch.manual_seed(0)
    teacher = light_nn((1, 8, 8), 10).eval()
    inputs = torch.randn(20, 1, 8, 8)
    first = cached_source(teacher, "k2", "val", inputs, tmp_path, True, False)
    assert first.hidden is None
    # A changed model under the same key must not be consulted: the cache is used.
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(1.0)
    second = cached_source(teacher, "k2", "val", inputs, tmp_path, True, False)
    assert torch.equal(first.logits, second.logits)
    # An unreadable entry is recomputed, not fatal.
    (path,) = (tmp_path / "teacher_outputs").glob("*-logits.pt")
    path.write_bytes(b"broken")
    third = cached_source(teacher, "k2", "val", inputs, tmp_path, True, False)
    assert not torch.equal(third.logits, first.logits)
    torch.testing.assert_close(third.logits, teacher(inputs))


# --- atomic writes ------------------------------------------------------------------------


def test_atomic_write_keeps_the_previous_file_when_the_writer_fails(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "file.bin"
    atomic_write_text(target, "good")
    with pytest.raises(RuntimeError), atomic_write(target) as handle:
        handle.write(b"half of the new cont")
        handle.flush()
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "good"
    assert os.listdir(target.parent) == ["file.bin"]  # no temporary file left behind


def test_atomic_torch_save_keeps_previous_checkpoint(tmp_path: Path) -> None:
    target = tmp_path / "ckpt.pt"
    atomic_torch_save({"w": torch.ones(3)}, target)
    with pytest.raises(Exception):  # noqa: B017 - pickling a lambda fails inside torch.save
        atomic_torch_save({"w": torch.zeros(3), "bad": lambda: None}, target)
    assert torch.equal(torch.load(target, weights_only=True)["w"], torch.ones(3))
    assert os.listdir(tmp_path) == ["ckpt.pt"]


def test_atomic_write_replaces_on_success(tmp_path: Path) -> None:
    target = tmp_path / "f.txt"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"


# --- damaged bytes inside a valid container -----------------------------------------------


def _zeroed(payload: dict) -> None:
    name = next(iter(payload["state_dict"]))
    payload["state_dict"][name] = torch.zeros_like(payload["state_dict"][name])


def _nan(payload: dict) -> None:
    name = next(iter(payload["state_dict"]))
    payload["state_dict"][name] = torch.full_like(payload["state_dict"][name], float("nan"))


def _wrong_shape(payload: dict) -> None:
    name = next(iter(payload["state_dict"]))
    payload["state_dict"][name] = torch.ones(3, 3)


def _garbled_metrics(payload: dict) -> None:
    payload["metrics"] = {"teacher_val_acc": "9x.1", "teacher_test_acc": None}


DAMAGE = {
    "zeroed weights": _zeroed,
    "NaN weights": _nan,
    "wrong-shape tensor": _wrong_shape,
    "garbled metrics": _garbled_metrics,
}


@pytest.mark.parametrize("damage", list(DAMAGE), ids=list(DAMAGE))
def test_a_cached_teacher_damaged_inside_a_valid_file_is_retrained_with_one_warning(
    settings, tmp_path: Path, caplog, damage: str
) -> None:
    _, _, first = _prepare(settings, tmp_path)
    payload = torch.load(first.path, weights_only=True)
    DAMAGE[damage](payload)
    torch.save(payload, first.path)  # a well-formed torch file, its content damaged
    caplog.set_level("WARNING", logger="kdsweep")
    _, _, again = _prepare(settings, tmp_path)
    assert again.trained_now
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "does not match its checksum" in warnings[0].getMessage()
    for a, b in zip(
        first.model.state_dict().values(), again.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)  # the same seed retrains the same teacher
    assert all(isinstance(v, float) for v in again.metrics.values())


def test_a_cached_teacher_without_a_checksum_is_retrained(settings, tmp_path: Path, caplog) -> None:
    _, _, first = _prepare(settings, tmp_path)
    payload = torch.load(first.path, weights_only=True)
    del payload["sha256"]  # as an older kdsweep wrote it
    torch.save(payload, first.path)
    caplog.set_level("WARNING", logger="kdsweep")
    _, _, again = _prepare(settings, tmp_path)
    assert again.trained_now and "no checksum" in caplog.text


def test_a_damaged_user_checkpoint_is_a_one_line_error(settings, trained, tmp_path: Path) -> None:
    _, teacher = trained
    payload = torch.load(teacher.path, weights_only=True)
    _zeroed(payload)
    damaged = tmp_path / "teacher.pt"
    torch.save(payload, damaged)
    with pytest.raises(CheckpointError, match="is damaged") as caught:
        _prepare(settings, tmp_path, "data.split_seed=0", f"teacher.checkpoint={damaged}")
    assert "\n" not in str(caught.value)


def test_an_unsealed_user_checkpoint_reports_measured_accuracy_not_its_claim(
    settings, trained, tmp_path: Path
) -> None:
    """What a user's file claims is not reported: its accuracy is measured on this run's
    splits (garbled or flattering claims alike)."""
    _, teacher = trained
    payload = torch.load(teacher.path, weights_only=True)
    del payload["sha256"]
    payload["metrics"] = {"teacher_val_acc": "garbage", "teacher_test_acc": 100.0}
    user_file = tmp_path / "teacher.pt"
    torch.save(payload, user_file)
    _, _, loaded = _prepare(
        settings, tmp_path, "data.split_seed=0", f"teacher.checkpoint={user_file}"
    )
    assert set(loaded.metrics) == {"teacher_val_acc", "teacher_test_acc"}
    assert loaded.metrics["teacher_test_acc"] < 100.0
    assert loaded.metrics["teacher_val_acc"] == pytest.approx(teacher.metrics["teacher_val_acc"])


@pytest.mark.parametrize(
    "kdsweep_format", [False, True], ids=["state_dict", "kdsweep, no checksum"]
)
def test_a_user_checkpoint_with_weights_that_are_not_finite_is_refused(
    settings, trained, tmp_path: Path, kdsweep_format: bool
) -> None:
    _, teacher = trained
    payload = torch.load(teacher.path, weights_only=True)
    del payload["sha256"]
    _nan(payload)
    user_file = tmp_path / "teacher.pt"
    torch.save(payload if kdsweep_format else payload["state_dict"], user_file)
    with pytest.raises(CheckpointError, match="not finite") as caught:
        _prepare(settings, tmp_path, "data.split_seed=0", f"teacher.checkpoint={user_file}")
    assert "\n" not in str(caught.value) and "teacher.checkpoint" in str(caught.value)


TENSOR_DAMAGE = {
    "zeroed": lambda t: torch.zeros_like(t),
    "NaN": lambda t: torch.full_like(t, float("nan")),
    "wrong shape": lambda t: t[:-1],
}


@pytest.mark.parametrize("damage", list(TENSOR_DAMAGE), ids=list(TENSOR_DAMAGE))
def test_damaged_cached_teacher_outputs_are_recomputed_with_one_warning(
    tmp_path: Path, caplog, damage: str
) -> None:
    torch.manual_seed(0)
    teacher = light_nn((1, 8, 8), 10).eval()
    inputs = torch.randn(20, 1, 8, 8)
    first = cached_source(teacher, "k3", "val", inputs, tmp_path, True, False)
    expected = first.logits.clone()  # the rows are memory-mapped: damage shows through
    (rows,) = (tmp_path / "teacher_outputs").glob("*-logits.f32")
    outputs = torch.from_file(str(rows), size=20 * 10).view(20, 10).clone()
    rows.write_bytes(TENSOR_DAMAGE[damage](outputs).numpy().tobytes())
    caplog.set_level("WARNING", logger="kdsweep")
    again = cached_source(teacher, "k3", "val", inputs, tmp_path, True, False)
    assert len([r for r in caplog.records if r.levelname == "WARNING"]) == 1
    assert "recomputing" in caplog.text
    assert torch.equal(again.logits, expected)


def test_cached_teacher_outputs_of_another_shape_under_a_valid_checksum_are_recomputed(
    tmp_path: Path, caplog
) -> None:
    """A sealed file can still be the wrong one (a key collision, a copied cache): its
    shape is checked against what this teacher gives."""
    from kdsweep.core.integrity import sealed

    torch.manual_seed(0)
    teacher = light_nn((1, 8, 8), 10).eval()
    inputs = torch.randn(20, 1, 8, 8)
    first = cached_source(teacher, "k4", "val", inputs, tmp_path, True, False)
    expected = first.logits.clone()  # the rows are memory-mapped: the rewrite shows through
    (path,) = (tmp_path / "teacher_outputs").glob("*-logits.pt")
    (rows,) = (tmp_path / "teacher_outputs").glob("*-logits.f32")
    other = torch.zeros(20, 7).numpy().tobytes()
    rows.write_bytes(other)
    digest = hashlib.sha256(other).hexdigest()
    torch.save(sealed({"shape": [20, 7], "rows_sha256": digest}), path)
    caplog.set_level("WARNING", logger="kdsweep")
    again = cached_source(teacher, "k4", "val", inputs, tmp_path, True, False)
    assert "this teacher gives [20, 10]" in caplog.text
    assert torch.equal(again.logits, expected)
