"""Crash-safe state: a write that dies half-way (an exception while pickling, a full disk,
a failed rename, a SIGKILL) leaves the previous good file, never a torn one, and cleans up
its temporary file where the process survives. Checked for kdsweep.files itself, the
teacher checkpoint cache, the teacher-output cache and the sweep report."""

from __future__ import annotations

import errno
import io
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
import torch
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from _helpers import compose, wait_for
from kdsweep.core import files
from kdsweep.core.files import (
    atomic_save_figure,
    atomic_torch_save,
    atomic_write,
    atomic_write_text,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _temp_files(directory: Path) -> list[Path]:
    return [p for p in Path(directory).rglob("*") if p.name.endswith(".tmp")]


class Bomb:
    """Pickling this raises: a crash in the middle of torch.save."""

    def __reduce__(self):  # noqa: ANN204
        raise RuntimeError("crash while pickling")


def _good(path: Path) -> dict[str, torch.Tensor]:
    state = {"w": torch.arange(10_000, dtype=torch.float32), "b": torch.ones(3)}
    atomic_torch_save(state, path)
    return state


def _assert_intact(path: Path, state: dict[str, torch.Tensor]) -> None:
    loaded = torch.load(path, weights_only=True)
    assert loaded.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(loaded[key], value)


def _half_written_save(real_save):  # noqa: ANN001, ANN202
    """A torch.save that writes the first half of the bytes, then the disk is full."""

    def save(obj, f, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    return save


# --- kdsweep.files ----------------------------------------------------------------------------


def test_pickling_error_half_way_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    target = tmp_path / "ckpt.pt"
    state = _good(target)
    before = target.read_bytes()
    with pytest.raises(RuntimeError, match="crash while pickling"):
        atomic_torch_save({"w": torch.zeros(10_000), "z": Bomb()}, target)
    assert target.read_bytes() == before
    _assert_intact(target, state)
    assert _temp_files(tmp_path) == []


def test_disk_full_half_way_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "ckpt.pt"
    state = _good(target)
    monkeypatch.setattr(torch, "save", _half_written_save(torch.save))
    with pytest.raises(OSError, match="No space left"):
        atomic_torch_save({"w": torch.zeros(10_000)}, target)
    _assert_intact(target, state)
    assert _temp_files(tmp_path) == []


@pytest.mark.parametrize("step", ["fsync", "chmod", "replace"])
def test_failure_while_committing_keeps_the_previous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    target = tmp_path / "ckpt.pt"
    state = _good(target)

    def fail(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EIO, f"{step} failed")

    monkeypatch.setattr(files.os, step, fail)
    with pytest.raises(OSError, match=f"{step} failed"):
        atomic_torch_save({"w": torch.zeros(3)}, target)
    monkeypatch.undo()
    _assert_intact(target, state)
    assert _temp_files(tmp_path) == []


def test_text_and_figure_writes_are_atomic(tmp_path: Path) -> None:
    target = tmp_path / "report.md"
    atomic_write_text(target, "# good\n")
    with pytest.raises(ValueError), atomic_write(target, "w") as handle:
        handle.write("# half")
        raise ValueError("crash mid-write")
    assert target.read_text() == "# good\n"

    png = tmp_path / "plot.png"
    atomic_save_figure(lambda handle: handle.write(b"\x89PNG good"), png)

    def broken(handle) -> None:  # noqa: ANN001
        handle.write(b"\x89PNG half")
        raise RuntimeError("renderer died")

    with pytest.raises(RuntimeError):
        atomic_save_figure(broken, png)
    assert png.read_bytes() == b"\x89PNG good"
    assert _temp_files(tmp_path) == []


def test_sigkill_mid_write_leaves_the_previous_checkpoint(tmp_path: Path) -> None:
    """A process killed while saving cannot clean up, but the target is untouched: the
    stray temporary file is hidden (.NAME.*.tmp) and never read; the next save works."""
    target = tmp_path / "ckpt.pt"
    state = _good(target)
    script = textwrap.dedent(
        """
        import sys, time, torch
        from kdsweep.core.files import atomic_torch_save

        class Stall:
            def __reduce__(self):
                print("writing", flush=True)
                time.sleep(120)
                return (int, (0,))

        atomic_torch_save({"w": torch.zeros(10_000), "stall": Stall()}, sys.argv[1])
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(target)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "writing"
        wait_for(lambda: _temp_files(tmp_path), 30, "the temporary file")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    _assert_intact(target, state)
    (stray,) = _temp_files(tmp_path)
    assert stray.name.startswith(".ckpt.pt.")
    atomic_torch_save({"w": torch.zeros(3)}, target)
    assert torch.equal(torch.load(target, weights_only=True)["w"], torch.zeros(3))
    # A fresh temporary file may be another writer's, in progress: it stays...
    assert _temp_files(tmp_path) == [stray]
    # ...until it is old enough to be an orphan; the next save of that target removes it.
    old = stray.stat().st_mtime - files.ORPHAN_AGE_S - 60
    os.utime(stray, (old, old))
    other = tmp_path / ".other.pt.abc.tmp"  # another target's: not ours to remove
    other.write_bytes(b"x")
    os.utime(other, (old, old))
    atomic_torch_save({"w": torch.ones(3)}, target)
    assert _temp_files(tmp_path) == [other]
    assert torch.equal(torch.load(target, weights_only=True)["w"], torch.ones(3))


# --- the teacher checkpoint and teacher-output caches ---------------------------------------


@pytest.fixture
def digits(tmp_path: Path):  # noqa: ANN201
    from kdsweep.config.validation import validate
    from kdsweep.data import load_splits

    settings = validate(compose("teacher.epochs=1", f"cache_dir={tmp_path / 'cache'}"))
    return settings, load_splits(settings.data)


def test_crash_while_caching_the_teacher_leaves_no_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, digits
) -> None:
    from kdsweep.training import teacher as teacher_module

    settings, data = digits

    def quick_train(settings, data, device):  # noqa: ANN001, ANN202
        torch.manual_seed(0)
        return teacher_module._new_model(settings, data), {"teacher_val_acc": 50.0}

    monkeypatch.setattr(teacher_module, "_train_teacher", quick_train)
    real_save = torch.save
    monkeypatch.setattr(torch, "save", _half_written_save(real_save))
    with pytest.raises(OSError, match="No space left"):
        teacher_module.prepare_teacher(settings, data, torch.device("cpu"))
    teachers = tmp_path / "cache" / "teachers"
    assert [p for p in teachers.iterdir() if p.suffix != ".lock"] == []  # no torn checkpoint

    monkeypatch.setattr(torch, "save", real_save)
    trained = teacher_module.prepare_teacher(settings, data, torch.device("cpu"))
    assert trained.trained_now
    reused = teacher_module.prepare_teacher(settings, data, torch.device("cpu"))
    assert not reused.trained_now  # the retry's checkpoint is complete and loads
    assert reused.path == trained.path
    assert _temp_files(tmp_path) == []


def test_crash_while_caching_teacher_outputs_keeps_the_good_entries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, digits
) -> None:
    from kdsweep.nets import deep_nn
    from kdsweep.training.teacher_outputs import cached_source

    settings, data = digits
    cache = tmp_path / "cache"
    torch.manual_seed(0)
    model = deep_nn(data.input_shape, data.num_classes)
    cached_source(model, "k", "val", data.val_x, cache, need_logits=True, need_hidden=False)
    (logits_file,) = (cache / "teacher_outputs").glob("val-*-logits.pt")
    before = logits_file.read_bytes()

    real_save = torch.save
    monkeypatch.setattr(torch, "save", _half_written_save(real_save))
    with pytest.raises(OSError, match="No space left"):
        cached_source(model, "k", "val", data.val_x, cache, need_logits=True, need_hidden=True)
    assert logits_file.read_bytes() == before  # the good entry is untouched
    assert list((cache / "teacher_outputs").glob("*-hidden.pt")) == []  # no torn entry
    assert _temp_files(tmp_path) == []

    monkeypatch.setattr(torch, "save", real_save)
    source = cached_source(model, "k", "val", data.val_x, cache, need_logits=True, need_hidden=True)
    with torch.no_grad():
        logits, hidden = model.eval().forward_with_hidden(data.val_x)
    assert torch.allclose(source.logits, logits)
    assert torch.allclose(source.hidden, hidden)


# --- the sweep report -------------------------------------------------------------------------


def _study(n_complete: int) -> optuna.Study:
    study = optuna.create_study(study_name="atomic", direction="maximize")
    dist = {"loss.temperature": FloatDistribution(1.0, 8.0)}
    for i in range(n_complete):
        acc = 60.0 + i
        study.add_trial(
            create_trial(
                state=TrialState.COMPLETE,
                value=acc,
                params={"loss.temperature": 1.0 + i},
                distributions=dist,
                intermediate_values={1: acc - 5, 2: acc},
                user_attrs={
                    "history": [
                        {"epoch": 1, "train_loss": 1.0, "val_loss": 1.1, "val_acc": acc - 5},
                        {"epoch": 2, "train_loss": 0.5, "val_loss": 0.6, "val_acc": acc},
                    ],
                    "metrics": {"objective": acc, "test_acc": acc - 1},
                },
            )
        )
    return study


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}


def test_report_crash_mid_write_leaves_whole_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kdsweep.report import write_report

    out = tmp_path / "report"
    write_report(_study(3), out)
    old = _snapshot(out)
    assert {"index.html", "report.md", "trials.csv"} <= old.keys()

    real_replace = os.replace

    def replace(src, dst):  # noqa: ANN001, ANN202
        if Path(dst).name == "report.md":  # the crash comes after trials.csv was written
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", replace)
    with pytest.raises(OSError, match="No space left"):
        write_report(_study(4), out)
    monkeypatch.undo()

    new = _snapshot(out)
    assert _temp_files(out) == []
    # Files written before the crash are the new, whole versions; the rest the old ones.
    assert new["report.md"] == old["report.md"]
    assert new["index.html"] == old["index.html"]
    assert new["trials.csv"] != old["trials.csv"]
    assert new["trials.csv"].decode().count("\n") == old["trials.csv"].decode().count("\n") + 1
    # Every PNG is whole.
    for name, data in new.items():
        if name.endswith(".png"):
            assert data.startswith(b"\x89PNG") and data.rstrip().endswith(b"IEND\xaeB`\x82"), name

    # A rebuild after the crash completes the report.
    write_report(_study(4), out)
    assert "report.md" in _snapshot(out)
    assert _snapshot(out)["report.md"] != old["report.md"]


def test_report_plot_crash_never_leaves_a_torn_png(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A figure whose rendering dies half-way: the report says so, and lists only whole
    images (the previous build's image of that plot is dropped, not left stale)."""
    import re

    from kdsweep.report import plots as report_plots
    from kdsweep.report import write_report

    out = tmp_path / "report"
    write_report(_study(3), out)
    assert (out / "history.png").is_file()

    real = report_plots.atomic_save_figure

    def dies_on_history(save, path):  # noqa: ANN001, ANN202
        if Path(path).name == "history.png":

            def half(handle) -> None:  # noqa: ANN001
                handle.write(b"\x89PNG\r\n\x1a\n half")
                raise RuntimeError("renderer died")

            return real(half, path)
        return real(save, path)

    monkeypatch.setattr(report_plots, "atomic_save_figure", dies_on_history)
    write_report(_study(4), out)
    index = (out / "index.html").read_text()
    assert "not drawn" in index
    for name in re.findall(r'src="([^"]+\.png)"', index):
        data = (out / name).read_bytes()
        assert data.rstrip().endswith(b"IEND\xaeB`\x82"), name
    assert not (out / "history.png").exists() or "history.png" in index
    assert _temp_files(out) == []
