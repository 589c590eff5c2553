"""Data splits: sizes, normalization, seeded and disjoint val/test, CIFAR files on disk."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from kdsweep.core.errors import DataError
from kdsweep.data import (
    CifarData,
    DigitsData,
    SyntheticData,
    load_digits_splits,
    load_splits,
    load_synthetic_splits,
)
from kdsweep.data.cifar import load_cifar_splits

# --- digits -------------------------------------------------------------------------------


def _raw_from_normalized(splits) -> tuple[float, float]:
    """Digits pixels are the integers 0..16 and every split has both: recover the affine
    normalization x -> (x - mean) / std from the data alone."""
    every = torch.cat([splits.train_x, splits.val_x, splits.test_x])
    lo, hi = every.min().item(), every.max().item()
    std = 16.0 / (hi - lo)
    return -lo * std, std


def _rows(x: np.ndarray) -> Counter:
    return Counter(map(bytes, np.rint(x).astype(np.int8).reshape(len(x), -1)))


def test_digits_shapes_and_sizes() -> None:
    conf = DigitsData()  # the defaults: test 20 %, val 18 % of the rest
    splits = load_digits_splits(conf)
    n = 1797
    n_test = round(n * conf.test_fraction)
    n_val = round((n - n_test) * conf.val_fraction)
    assert splits.test_x.shape == (n_test, 1, 8, 8)
    assert splits.val_x.shape == (n_val, 1, 8, 8)
    assert splits.train_x.shape == (n - n_test - n_val, 1, 8, 8)
    assert splits.input_shape == (1, 8, 8) and splits.num_classes == 10
    for x, y in ((splits.train_x, splits.train_y), (splits.val_x, splits.val_y)):
        assert x.dtype == torch.float32 and y.dtype == torch.int64 and len(x) == len(y)
    assert set(splits.train_y.tolist()) == set(range(10))


def test_digits_default_val_split_resolves_a_sweep_objective() -> None:
    """One val image must weigh at most 0.4 points of accuracy (>= 250 images), or a sweep
    cannot tell settings apart: 10 % (144 images) was 0.69 points each."""
    splits = load_digits_splits(DigitsData())
    assert len(splits.test_x) == 359 and len(splits.train_x) + len(splits.val_x) == 1438
    assert len(splits.val_x) == 259
    assert 100 / len(splits.val_x) <= 0.4


def test_digits_normalized_with_train_statistics() -> None:
    splits = load_digits_splits(DigitsData())
    assert abs(splits.train_x.mean().item()) < 1e-4
    assert splits.train_x.std().item() == pytest.approx(1.0, abs=1e-3)
    # val/test use the same (train) statistics, so they are not exactly centred
    assert abs(splits.test_x.mean().item()) > 1e-4
    mean, std = _raw_from_normalized(splits)
    raw_train = splits.train_x.numpy() * std + mean
    assert raw_train.mean() == pytest.approx(mean, abs=1e-3)
    assert raw_train.std() == pytest.approx(std, rel=1e-3)


@pytest.mark.parametrize("val_fraction", [0.1, 0.25, 0.5])
def test_digits_val_fraction_respected(val_fraction: float) -> None:
    splits = load_digits_splits(DigitsData(val_fraction=val_fraction))
    pool = len(splits.train_x) + len(splits.val_x)
    assert abs(len(splits.val_x) - val_fraction * pool) <= 1


def test_digits_splits_partition_the_data_set() -> None:
    """train + val + test is exactly the original data set (as a multiset of images with
    their labels): nothing is shared, nothing is lost."""
    splits = load_digits_splits(DigitsData(val_fraction=0.2))
    mean, std = _raw_from_normalized(splits)
    bunch = load_digits()

    def labelled(x: torch.Tensor, y: torch.Tensor) -> Counter:
        raw = np.rint(x.numpy() * std + mean).reshape(len(x), -1)
        assert np.allclose(raw, x.numpy().reshape(len(x), -1) * std + mean, atol=1e-3)
        return Counter(
            (bytes(row.astype(np.int8)), int(label))
            for row, label in zip(raw, y.tolist(), strict=True)
        )

    train = labelled(splits.train_x, splits.train_y)
    val = labelled(splits.val_x, splits.val_y)
    test = labelled(splits.test_x, splits.test_y)
    original = Counter(
        (bytes(row.astype(np.int8)), int(label))
        for row, label in zip(
            bunch.images.reshape(len(bunch.images), -1), bunch.target, strict=True
        )
    )
    assert train + val + test == original
    # Disjoint as samples; identical-looking duplicates in the source are the only overlap.
    duplicated = {key for key, count in original.items() if count > 1}
    assert not (set(val) & set(test)) - duplicated
    assert not (set(val) & set(train)) - duplicated


@pytest.mark.parametrize("relabelled", ["val", "test"])
def test_relabelled_images_are_other_data(relabelled: str) -> None:
    """The fingerprint keys the teacher's cache: the teacher picks its best epoch on val's
    labels and records its test accuracy, so a split with other labels is other data."""
    from kdsweep.data.splits import _split, assemble

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 1, 4, 4)), rng.integers(0, 3, 60)
    test_x, test_y = rng.normal(size=(10, 1, 4, 4)), rng.integers(0, 3, 10)
    conf = DigitsData(val_fraction=0.2)
    before = assemble(x, y, test_x, test_y, conf, 3)
    _, val_rows = _split(60, conf.val_fraction, conf.split_seed)
    if relabelled == "val":  # the training split's images and labels stay as they were
        y = y.copy()
        y[val_rows] = (y[val_rows] + 1) % 3
    else:
        test_y = (test_y + 1) % 3
    after = assemble(x, y, test_x, test_y, conf, 3)
    assert torch.equal(after.train_y, before.train_y)
    assert after.fingerprint != before.fingerprint


def test_digits_split_is_seeded() -> None:
    a = load_digits_splits(DigitsData(split_seed=3))
    b = load_digits_splits(DigitsData(split_seed=3))
    for name in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.fingerprint == b.fingerprint
    c = load_digits_splits(DigitsData(split_seed=4))
    assert not torch.equal(a.val_y, c.val_y) or not torch.equal(a.val_x, c.val_x)
    assert a.fingerprint != c.fingerprint
    # the test set is held out once, for good: split_seed reshuffles val only
    mean_a, std_a = _raw_from_normalized(a)
    mean_c, std_c = _raw_from_normalized(c)
    raw_a = np.rint(a.test_x.numpy() * std_a + mean_a)
    raw_c = np.rint(c.test_x.numpy() * std_c + mean_c)
    assert np.array_equal(raw_a, raw_c)
    assert torch.equal(a.test_y, c.test_y)


def test_load_splits_caches_per_config() -> None:
    conf = DigitsData(split_seed=11)
    assert load_splits(conf) is load_splits(DigitsData(split_seed=11))
    assert load_splits(DigitsData(split_seed=12)) is not load_splits(conf)


# --- synthetic ----------------------------------------------------------------------------


def test_synthetic_shapes_and_determinism() -> None:
    conf = SyntheticData(size=200, test_size=50, num_classes=4, val_fraction=0.25)
    a = load_synthetic_splits(conf)
    b = load_synthetic_splits(conf)
    assert a.train_x.shape == (150, 3, 32, 32)
    assert a.val_x.shape == (50, 3, 32, 32)
    assert a.test_x.shape == (50, 3, 32, 32)
    assert a.num_classes == 4 and int(a.train_y.max()) < 4
    for name in ("train_x", "train_y", "val_x", "test_x", "test_y"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    # per-channel normalization with the train split's statistics
    torch.testing.assert_close(a.train_x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4, rtol=0)
    other = load_synthetic_splits(
        SyntheticData(size=200, test_size=50, num_classes=4, val_fraction=0.25, split_seed=1)
    )
    assert not torch.equal(a.train_x, other.train_x)


def test_synthetic_other_sizes() -> None:
    s = load_synthetic_splits(
        SyntheticData(size=40, test_size=8, channels=1, image_size=16, num_classes=3)
    )
    assert s.input_shape == (1, 16, 16) and len(s.test_x) == 8


# --- CIFAR --------------------------------------------------------------------------------


def _check_affine_per_channel(loaded: torch.Tensor, raw: np.ndarray) -> None:
    """Each channel of ``loaded`` is (raw - m_c) / s_c with s_c > 0, pixel for pixel: the
    CHW layout of the files survived (a wrong transpose breaks this)."""
    for c in range(3):
        x = raw[:, c].reshape(-1).astype(np.float64)
        z = loaded[:, c].reshape(-1).double().numpy()
        slope, intercept = np.polyfit(x, z, 1)
        assert slope > 0
        assert np.abs(slope * x + intercept - z).max() < 1e-4


def test_cifar10_tiny_files_load(tiny_cifar) -> None:
    root, raw = tiny_cifar("cifar10", per_batch=8, test_size=10)
    conf = CifarData(name="cifar10", root=str(root), verify_checksum=False, val_fraction=0.25)
    splits = load_cifar_splits(conf)
    assert splits.num_classes == 10
    assert splits.input_shape == (3, 32, 32)
    assert len(splits.train_x) + len(splits.val_x) == 40
    assert len(splits.val_x) == 10
    assert splits.test_x.shape == (10, 3, 32, 32)
    # the test split keeps file order
    assert splits.test_y.tolist() == raw["test_y"].tolist()
    _check_affine_per_channel(splits.test_x, raw["test_x"])
    torch.testing.assert_close(
        splits.train_x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4, rtol=0
    )
    # every training label comes from the files (as a multiset)
    got = Counter(splits.train_y.tolist() + splits.val_y.tolist())
    assert got == Counter(raw["train_y"].tolist())


def test_cifar10_train_subset(tiny_cifar) -> None:
    root, raw = tiny_cifar("cifar10", per_batch=8, test_size=4)
    conf = CifarData(
        name="cifar10", root=str(root), verify_checksum=False, train_subset=20, val_fraction=0.1
    )
    splits = load_cifar_splits(conf)
    assert len(splits.train_x) + len(splits.val_x) == 20
    got = Counter(splits.train_y.tolist() + splits.val_y.tolist())
    assert got == Counter(raw["train_y"][:20].tolist())


@pytest.mark.parametrize("kind", ["cifar10", "cifar100"])
def test_cifar_checksums_are_checked_by_default(tiny_cifar, kind: str) -> None:
    """Hand-made files in CIFAR's format: present, parseable, wrong md5. The one line says
    so and names the switch, not torchvision's download=True."""
    root, _ = tiny_cifar(kind, per_batch=2, test_size=2)
    with pytest.raises(DataError) as info:
        load_cifar_splits(CifarData(name=kind, root=str(root), verify_checksum=True))
    message = str(info.value)
    assert "\n" not in message
    assert "data.verify_checksum=false" in message
    assert "md5" in message and "present" in message and "not found" not in message
    assert "download=True" not in message
    assert str(root.resolve()) in message


def test_cifar_files_present_but_unreadable(tiny_cifar) -> None:
    root, _ = tiny_cifar("cifar10", per_batch=2, test_size=2)
    (root / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    for verify in (True, False):
        with pytest.raises(DataError) as info:
            load_cifar_splits(CifarData(name="cifar10", root=str(root), verify_checksum=verify))
        message = str(info.value)
        assert "\n" not in message and "unreadable" in message
        assert "verify_checksum" not in message  # switching it off would not help


def test_cifar_partly_missing_is_not_a_checksum_problem(tiny_cifar) -> None:
    root, _ = tiny_cifar("cifar10", per_batch=2, test_size=2)
    (root / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(DataError) as info:
        load_cifar_splits(CifarData(name="cifar10", root=str(root)))
    message = str(info.value)
    assert "not found" in message and "test_batch" in message
    assert "verify_checksum" not in message and "download=True" not in message


def test_cifar100_tiny_files_load(tiny_cifar) -> None:
    root, raw = tiny_cifar("cifar100", per_batch=6, test_size=5)
    conf = CifarData(name="cifar100", root=str(root), verify_checksum=False)
    splits = load_cifar_splits(conf)
    assert splits.num_classes == 100
    assert len(splits.train_x) + len(splits.val_x) == 30
    assert splits.test_y.tolist() == raw["test_y"].tolist()
    _check_affine_per_channel(splits.test_x, raw["test_x"])


@pytest.mark.parametrize(
    ("name", "folder"), [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")]
)
def test_missing_cifar_says_where_to_put_the_files(tmp_path: Path, name: str, folder: str) -> None:
    root = tmp_path / "nowhere"
    with pytest.raises(DataError) as info:
        load_cifar_splits(CifarData(name=name, root=str(root)))
    message = str(info.value)
    assert "\n" not in message
    assert str(root.resolve()) in message
    assert folder in message
    assert "data.download" in message
    assert "download=True" not in message  # torchvision's wording, not a kdsweep key
    assert "verify_checksum" not in message  # files missing is not a checksum problem
    assert not root.exists() or not any(root.iterdir())  # nothing was downloaded


def test_cifar_through_the_composed_config(tmp_path: Path, settings, tiny_cifar) -> None:
    root, _ = tiny_cifar("cifar10", per_batch=4, test_size=3)
    s = settings("data=cifar10", f"data.root={root}", "data.verify_checksum=false")
    splits = load_splits(s.data)
    assert splits.input_shape == (3, 32, 32) and len(splits.test_x) == 3
