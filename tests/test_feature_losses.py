"""The feature-map losses: attention transfer and the tutorial's hint, each against an
independent numpy float64 reference written from the paper's definition, and their
wiring (the teacher's maps, the hint regressor trained with the student and not saved)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_cli_in_process, settings_for
from kdsweep.losses import AttentionTransfer, Hint, StepInputs


def _ce(logits: np.ndarray, labels: np.ndarray) -> float:
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(labels)), labels].mean())


def _avg_pool(f: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Average pooling by whole blocks (the test shapes divide evenly)."""
    n, c, h, w = f.shape
    kh, kw = h // size[0], w // size[1]
    return f.reshape(n, c, size[0], kh, size[1], kw).mean(axis=(3, 5))


def _at_reference(student_maps, teacher_maps, logits, labels, weight, p, ce_w) -> float:
    """Zagoruyko & Komodakis: Q = vec(sum_c |F_c|^p) / ||.||_2 (the mean over channels,
    a constant factor, normalizes away); stage loss = mean over samples and positions of
    (Q_s - Q_t)^2; the larger map average-pooled to the smaller."""
    transfer = 0.0
    for f_s, f_t in zip(student_maps, teacher_maps, strict=True):
        size = (min(f_s.shape[2], f_t.shape[2]), min(f_s.shape[3], f_t.shape[3]))
        f_s, f_t = _avg_pool(f_s, size), _avg_pool(f_t, size)
        q = []
        for f in (f_s, f_t):
            a = (np.abs(f) ** p).sum(axis=1).reshape(len(f), -1)
            q.append(a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12))
        transfer += float(((q[0] - q[1]) ** 2).mean())
    return ce_w * _ce(logits, labels) + weight * transfer


def _conv3x3(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """A 3x3 convolution with padding 1, by its definition."""
    n, _, h, wd = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((n, w.shape[0], h, wd))
    for i in range(h):
        for j in range(wd):
            patch = padded[:, :, i : i + 3, j : j + 3]
            out[:, :, i, j] = np.einsum("ncij,ocij->no", patch, w) + b
    return out


def _tensor(*shape: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


@pytest.mark.parametrize(
    ("batch", "student_maps", "teacher_maps", "weight", "p", "ce_w"),
    [
        (4, [(16, 4, 4), (16, 2, 2)], [(32, 4, 4), (32, 2, 2)], 1000.0, 2.0, 1.0),
        (3, [(8, 8, 8), (16, 4, 4), (32, 2, 2)], [(4, 8, 8), (8, 4, 4), (8, 2, 2)], 10.0, 2.0, 0.5),
        (5, [(6, 8, 8)], [(12, 4, 4)], 1.0, 3.0, 0.0),  # a larger student map is pooled
        (2, [(3, 2, 2)], [(5, 4, 4)], 250.0, 1.5, 1.0),  # a larger teacher map is pooled
    ],
)
def test_attention_transfer_matches_the_papers_definition(
    batch, student_maps, teacher_maps, weight, p, ce_w
) -> None:
    f_s = [_tensor(batch, *shape, seed=i) for i, shape in enumerate(student_maps)]
    f_t = [_tensor(batch, *shape, seed=10 + i) for i, shape in enumerate(teacher_maps)]
    logits, labels = _tensor(batch, 7, seed=99), torch.arange(batch) % 7
    loss = AttentionTransfer(weight=weight, p=p, ce_weight=ce_w)
    out = loss(StepInputs(labels, logits, student_features=f_s, teacher_features=f_t))
    expected = _at_reference(
        [f.numpy() for f in f_s], [f.numpy() for f in f_t], logits.numpy(), labels.numpy(),
        weight, p, ce_w,
    )  # fmt: skip
    assert out.total.item() == pytest.approx(expected, rel=1e-10)
    assert out.terms["attention"].item() >= 0


def test_attention_transfer_is_zero_for_maps_that_attend_alike() -> None:
    """Q normalizes the attention map: a teacher map that is the student's times 3, with
    other channels, gives the same attention and no transfer term."""
    f = torch.rand(2, 4, 4, 4, dtype=torch.float64)
    teacher = torch.cat([3 * f, 3 * f], dim=1)
    out = AttentionTransfer()(
        StepInputs(torch.tensor([0, 1]), _tensor(2, 3, seed=1), None, None, None, 1, [f], [teacher])
    )
    assert out.terms["attention"].item() == pytest.approx(0.0, abs=1e-20)


@pytest.mark.parametrize(
    ("batch", "student_shape", "teacher_shape", "fm_w", "ce_w"),
    [(4, (16, 2, 2), (32, 2, 2), 0.25, 0.75), (2, (3, 4, 4), (5, 4, 4), 1.0, 0.0)],
)
def test_hint_matches_the_tutorials_definition(
    batch, student_shape, teacher_shape, fm_w, ce_w
) -> None:
    loss = Hint(feature_map_weight=fm_w, ce_weight=ce_w)
    (regressor,) = loss.attach([(1, 8, 8), student_shape], [(1, 8, 8), teacher_shape])
    regressor.double()
    assert regressor.in_channels == student_shape[0]
    assert regressor.out_channels == teacher_shape[0]
    f_s, f_t = _tensor(batch, *student_shape, seed=1), _tensor(batch, *teacher_shape, seed=2)
    logits, labels = _tensor(batch, 10, seed=3), torch.arange(batch) % 10
    out = loss(StepInputs(labels, logits, student_features=[f_s], teacher_features=[f_t]))
    weight = regressor.weight.detach().numpy()
    bias = regressor.bias.detach().numpy()
    mse = float(((_conv3x3(f_s.numpy(), weight, bias) - f_t.numpy()) ** 2).mean())
    expected = ce_w * _ce(logits.numpy(), labels.numpy()) + fm_w * mse
    assert out.total.item() == pytest.approx(expected, rel=1e-10)


def test_feature_losses_refuse_pairs_they_cannot_compare() -> None:
    with pytest.raises(ValueError, match="2 stages, the teacher 3"):
        AttentionTransfer().attach([(16, 4, 4), (16, 2, 2)], [(8, 8, 8), (16, 4, 4), (32, 2, 2)])
    with pytest.raises(ValueError, match="their sizes differ"):
        Hint().attach([(16, 4, 4)], [(32, 2, 2)])


def test_the_hint_regressor_trains_with_the_student_and_is_not_saved(
    tmp_path: Path, teacher_cache: Path
) -> None:
    from kdsweep.data import load_splits
    from kdsweep.run.experiment import TrialHooks, execute
    from kdsweep.run.plan import plan_run
    from kdsweep.run.tracking import RunTracker

    settings = settings_for(
        "loss=hint", "teacher.epochs=1", "trainer.epochs=1", "trainer.progress=none",
        f"cache_dir={teacher_cache}", "tracking.enabled=false", "trainer.save_model=none",
    )  # fmt: skip
    plan = plan_run(settings)
    (regressor,) = plan.loss_modules
    before = regressor.weight.detach().clone()
    execute(plan, RunTracker(settings.tracking, "hint", local_dir=tmp_path), TrialHooks())
    assert not torch.equal(before, regressor.weight)  # it was trained
    assert not any("regressor" in key for key in plan.student.state_dict())
    assert load_splits(settings.data).num_classes == plan.student.classifier[-1].out_features


@pytest.mark.parametrize("loss", ["hint", "at"])
@pytest.mark.parametrize("data", ["digits", pytest.param("synthetic", marks=pytest.mark.slow)])
def test_each_feature_loss_trains_one_epoch_from_the_cli(
    tracked_workdir: Path, teacher_cache: Path, loss: str, data: str
) -> None:
    tiny = ["data.size=200", "data.test_size=40", "teacher.allow_weak=true"]  # near chance
    extra = tiny if data == "synthetic" else []
    if data == "digits":  # the digits teacher the other CLI tests share
        extra.append(f"cache_dir={teacher_cache}")
    proc = run_cli_in_process(tracked_workdir, f"loss={loss}", f"data={data}", *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "the teacher runs live on every batch" in proc.stdout + proc.stderr


METHODS = ("ce", "kd", "hint", "at", "dkd", "dist")
PAIRS = {
    "tutorial": ("model=light", "teacher=deep"),
    "resnet": ("model=resnet8x4", "teacher=resnet32x4"),
}
DATA = {
    "digits": ("data=digits", "data.test_fraction=0.75"),
    # One teacher epoch on 108 noisy images is near chance, on purpose: the matrix tests
    # that each method trains, not what the teacher teaches.
    "synthetic": (
        "data=synthetic",
        "data.size=120",
        "data.test_size=20",
        "teacher.allow_weak=true",
    ),
}


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory) -> Path:
    """One teacher per (data, pair) for the whole matrix below."""
    return tmp_path_factory.mktemp("methods-cache")


@pytest.mark.slow
@pytest.mark.parametrize("pair", list(PAIRS))
@pytest.mark.parametrize("data", list(DATA))
@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_one_epoch_on_each_data_set_and_pair(
    tracked_workdir: Path, shared_cache: Path, method: str, data: str, pair: str
) -> None:
    proc = run_cli_in_process(
        tracked_workdir, f"loss={method}", *DATA[data], *PAIRS[pair], f"cache_dir={shared_cache}",
        "trainer.threads=1", "trainer.save_model=none",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "objective (val acc" in proc.stdout + proc.stderr
