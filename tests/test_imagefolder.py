"""data=imagefolder: the user's images in class folders, streamed through a DataLoader.

Tiny generated folder trees (3 classes of 32x32 PNGs) in tmp_path; runs go through the
command line in process. The teacher's outputs on a streamed split are cached in
memory-mapped files, reused and verified; bad folders are one line, exit 2."""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from _helpers import mlflow_runs, run_in_process, sweep_args, unique
from conftest import db_path, isolated_overrides
from kdsweep.core.errors import DataError
from kdsweep.data import ImageFolderData, ImageSplit, load_splits
from kdsweep.data.imagefolder import ResizedTo, _check_image, load_image
from kdsweep.nets import deep_nn
from kdsweep.training.teacher_outputs import cached_source

CLASSES = ("cat", "dog", "eel")
# workers=0: a tiny folder decodes faster than worker processes start. allow_weak: on 12
# (or 5) validation images no teacher is clearly above chance (p < 0.01: 9 of 12 right).
FOLDER = ("data=imagefolder", "data.workers=0", "teacher.allow_weak=true")


def make_tree(root: Path, splits: dict[str, int], classes: tuple[str, ...] = CLASSES) -> Path:
    """``root/<split>/<class>/<i>.png``: per class, noisy images of its own brightness."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, per_class in splits.items():
        for level, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = rng.normal(40 + 70 * level, 25, size=(32, 32, 3))
                Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def full_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tree(tmp_path_factory.mktemp("full"), {"train": 20, "val": 4, "test": 4})


@pytest.fixture(scope="module")
def train_only(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tree(tmp_path_factory.mktemp("bare"), {"train": 20})


def conf(root: Path, tmp_path: Path, **keys: object) -> ImageFolderData:
    return ImageFolderData(root=str(root), cache_dir=str(tmp_path), **{"workers": 0, **keys})


def test_given_folders_are_the_splits(full_tree: Path, tmp_path: Path) -> None:
    data = load_splits(conf(full_tree, tmp_path))
    assert isinstance(data.train_x, ImageSplit)
    assert (len(data.train_y), len(data.val_y), len(data.test_y)) == (60, 12, 12)
    assert data.num_classes == 3 and data.input_shape == (3, 32, 32)
    # Only the labels are held in memory; the images stay on disk.
    assert data.nbytes == sum(y.nbytes for y in (data.train_y, data.val_y, data.test_y))
    # Normalized with the training split's statistics: about mean 0, std 1 there.
    batch = data.train_x[:60]
    assert batch.shape == (60, 3, 32, 32)
    assert batch.mean().abs() < 0.05 and abs(batch.std().item() - 1) < 0.05
    stats = list((tmp_path / "data_stats").glob("imagefolder-*.pt"))
    assert len(stats) == 1


def test_every_image_format_decodes_to_the_same_rgb_pixels(tmp_path: Path) -> None:
    """PNG and JPEG go through torchvision.io, the rest through PIL: the same pixels."""
    from PIL import Image

    rgb = np.random.default_rng(1).integers(0, 256, size=(6, 5, 3), dtype=np.uint8)
    expected = torch.from_numpy(rgb).permute(2, 0, 1)
    for name in ("a.png", "a.bmp", "a.PNG", "a.tiff"):
        Image.fromarray(rgb).save(tmp_path / name)
        assert torch.equal(load_image(str(tmp_path / name)), expected), name
    Image.fromarray(rgb).convert("RGBA").save(tmp_path / "alpha.png")
    assert torch.equal(load_image(str(tmp_path / "alpha.png")), expected)
    Image.fromarray(rgb[..., 0]).save(tmp_path / "grey.png")
    assert torch.equal(load_image(str(tmp_path / "grey.png")), expected[:1].repeat(3, 1, 1))
    wide = (rgb[..., 0].astype(np.uint16) << 8) | rgb[..., 0]  # 16-bit grey
    Image.fromarray(wide).save(tmp_path / "deep.png")
    assert torch.equal(load_image(str(tmp_path / "deep.png")), expected[:1].repeat(3, 1, 1))
    jpeg = load_image(str(tmp_path / "a.png"))
    Image.fromarray(rgb).save(tmp_path / "a.jpg", quality=100)
    assert load_image(str(tmp_path / "a.jpg")).shape == jpeg.shape


def test_only_images_of_another_size_are_resized() -> None:
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    assert ResizedTo(32)(image) is image
    assert ResizedTo(16)(image).shape == (3, 16, 16)
    assert ResizedTo(32)(image[:, :20]).shape == (3, 32, 32)


def test_statistics_are_cached_and_verified(
    full_tree: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = conf(full_tree, tmp_path).load()
    (stats,) = (tmp_path / "data_stats").glob("imagefolder-*.pt")
    written = stats.stat().st_mtime_ns
    assert conf(full_tree, tmp_path).load().input_mean == first.input_mean
    assert stats.stat().st_mtime_ns == written  # read, not recomputed
    tampered = torch.load(stats, weights_only=True)
    tampered["mean"] = [0.0, 0.0, 0.0]  # changed after sealing: the checksum no longer fits
    torch.save(tampered, stats)
    assert conf(full_tree, tmp_path).load().input_mean == first.input_mean
    assert "normalization statistics" in caplog.text and "recomputing" in caplog.text


def test_missing_folders_are_seeded_shares_of_train(train_only: Path, tmp_path: Path) -> None:
    data = load_splits(conf(train_only, tmp_path, val_fraction=0.2, test_fraction=0.1))
    assert (len(data.train_y), len(data.val_y), len(data.test_y)) == (43, 11, 6)
    # test stays put when split_seed moves val; val moves.
    other = conf(train_only, tmp_path, val_fraction=0.2, test_fraction=0.1, split_seed=1)
    moved = other.load()
    assert moved.test_x.dataset.indices == data.test_x.dataset.indices
    assert moved.val_x.dataset.indices != data.val_x.dataset.indices
    assert moved.fingerprint != data.fingerprint


def test_an_image_rewritten_in_place_is_other_data(tmp_path: Path) -> None:
    """New pixels under the same name, size and modification time: other statistics,
    another fingerprint (so another teacher and other cached outputs)."""
    from PIL import Image

    root = make_tree(tmp_path / "images", {"train": 20})
    image = root / "train" / "cat" / "0.bmp"  # uncompressed: new pixels, the same size
    Image.new("RGB", (32, 32), (10, 10, 10)).save(image)
    first = conf(root, tmp_path).load()
    before = image.stat()
    Image.new("RGB", (32, 32), (250, 250, 250)).save(image)
    os.utime(image, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert image.stat().st_size == before.st_size
    assert image.stat().st_mtime_ns == before.st_mtime_ns
    again = conf(root, tmp_path).load()
    assert again.fingerprint != first.fingerprint
    assert again.train_x.content != first.train_x.content or (
        again.val_x.content != first.val_x.content
    )
    assert again.input_mean != first.input_mean  # recomputed, not the old file's figures


def _loop(root: Path) -> str:
    (root / "train" / "cat" / "loop").symlink_to(root / "train" / "cat")
    return "train/cat/loop/0.png is the same file as train/cat/0.png"


def _linked_into_test(root: Path) -> str:
    os.link(root / "train" / "dog" / "3.png", root / "test" / "dog" / "9.png")
    return "test/dog/9.png is the same file as train/dog/3.png"


def _linked_twice(root: Path) -> str:
    (root / "train" / "eel" / "again.png").symlink_to(root / "train" / "cat" / "1.png")
    return "train/eel/again.png is the same file as train/cat/1.png"


@pytest.mark.parametrize("link", [_loop, _linked_into_test, _linked_twice])
def test_a_file_met_twice_is_one_line(link, tmp_path: Path) -> None:  # noqa: ANN001
    """A symbolic link loop (ImageFolder follows it about 40 levels deep: that class 40
    times over), a hard link from test/ into train/ (a leak), a link to another image."""
    root = make_tree(tmp_path / "images", {"train": 12, "test": 3})
    expected = link(root)
    with pytest.raises(DataError) as info:
        conf(root, tmp_path).load()
    message = str(info.value)
    assert expected in message and "remove the link" in message and "\n" not in message


def test_an_image_that_vanishes_while_read_is_one_line(
    full_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kdsweep.data import imagefolder

    real = imagefolder._read_file

    def vanishing(path: str):  # noqa: ANN202
        if path.endswith("3.png"):
            return real(path + ".gone")
        return real(path)

    monkeypatch.setattr(imagefolder, "_read_file", vanishing)
    with pytest.raises(DataError, match=r"cannot read .*3\.png\.gone \(No such file"):
        conf(full_tree, tmp_path).load()


def _png(root: Path) -> Path:
    return root / "train" / "cat" / "0.png"


def _cut_short(root: Path) -> str:
    _png(root).write_bytes(_png(root).read_bytes()[:-12])  # no IEND chunk
    return "train/cat/0.png is a broken image (truncated PNG file)"


def _random_bytes(root: Path) -> str:
    _png(root).write_bytes(np.random.default_rng(0).bytes(300))
    return "train/cat/0.png is not an image PIL recognizes"


def _zero_bytes(root: Path) -> str:
    _png(root).write_bytes(b"")
    return "train/cat/0.png is empty (0 bytes)"


def _bomb(root: Path) -> str:
    """A TIFF over PIL's decompression-bomb limit (lowered by the test to 2,000 pixels),
    where PIL only warns, then decodes (up to twice the limit): refused before any decode."""
    from PIL import Image

    Image.new("L", (50, 50)).save(root / "train" / "dog" / "big.tiff", compression="tiff_deflate")
    return "train/dog/big.tiff is too large to decode safely (Image size (2500 pixels) exceeds"


def _tiff_named_png(root: Path) -> str:
    from PIL import Image

    Image.new("RGB", (8, 8)).save(_png(root), format="TIFF")
    return "train/cat/0.png holds a TIFF image under another format's name: convert it"


def _float_pixels(root: Path) -> str:
    from PIL import Image

    Image.new("F", (8, 8), 0.5).save(root / "train" / "eel" / "f.tiff")
    return "train/eel/f.tiff is a TIFF image in PIL mode F, which has no faithful RGB"


def _no_extension(root: Path) -> str:
    (root / "train" / "cat" / "photo").write_bytes(_png(root).read_bytes())
    return "train/cat/photo is not named as an image"


def _class_folder_a_file(root: Path) -> str:
    (root / "train" / "fox").write_bytes(b"a zip, say")
    return "train/fox is a file where train/ holds class folders"


def _hidden_class_folder(root: Path) -> str:
    (root / "train" / ".cache").mkdir()
    return "train/.cache is a hidden folder where train/ holds class folders"


def _val_a_broken_link(root: Path) -> str:
    (root / "val").symlink_to(root / "gone")
    return "images/val is not a folder: data.root's val/ holds <class>/<images>"


def _unreadable(root: Path) -> str:
    (root / "test" / "dog" / "1.png").chmod(0)  # tests run as root: open is refused below
    return "cannot read " + str(root / "test" / "dog" / "1.png") + " (Permission denied)"


@pytest.mark.parametrize(
    "spoil",
    [
        _cut_short,
        _random_bytes,
        _zero_bytes,
        _bomb,
        _tiff_named_png,
        _float_pixels,
        _no_extension,
        _class_folder_a_file,
        _hidden_class_folder,
        _val_a_broken_link,
        _unreadable,
    ],
)
def test_a_bad_file_is_one_line_at_load(
    spoil, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # noqa: ANN001
    """Found when the files are listed and hashed, before any statistics or teacher."""
    import builtins

    from PIL import Image

    from kdsweep.data import imagefolder

    root = make_tree(tmp_path / "images", {"train": 4, "test": 2})
    expected = spoil(root)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)

    def as_a_user(path, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if os.stat(path).st_mode & 0o777 == 0:
            raise PermissionError(13, "Permission denied", str(path))
        return builtins.open(path, *args, **kwargs)

    monkeypatch.setattr(imagefolder, "open", as_a_user, raising=False)
    with pytest.raises(DataError) as info:
        conf(root, tmp_path / "cache").load()
    message = str(info.value)
    assert expected in message.replace(str(root) + "/", "") or expected in message, message
    assert "\n" not in message and "BytesIO" not in message
    assert not (tmp_path / "cache").exists()  # nothing computed, nothing cached


def test_litter_is_skipped(tmp_path: Path) -> None:
    """macOS's AppleDouble forks (._x.png, not images), .DS_Store, hidden files and
    folders inside a class, Thumbs.db: left out, as if absent."""
    root = make_tree(tmp_path / "images", {"train": 4, "test": 2})
    clean = conf(root, tmp_path).load()
    cat = root / "train" / "cat"
    (cat / "._0.png").write_bytes(b"\x00\x05\x16\x07 Mac OS X resource fork")
    (root / "train" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (cat / ".ipynb_checkpoints").mkdir()
    (cat / ".ipynb_checkpoints" / "1-checkpoint.png").write_bytes((cat / "1.png").read_bytes())
    (cat / "Thumbs.db").write_bytes(b"thumbnails")
    littered = conf(root, tmp_path).load()
    assert len(littered.train_y) == len(clean.train_y)
    assert littered.fingerprint == clean.fingerprint


def test_every_image_mode_decodes_to_rgb(tmp_path: Path) -> None:
    """Palette, CMYK, grey with alpha, 16-bit TIFF and PGM: RGB, the 16-bit scaled down
    (PIL's convert("RGB") clips 16-bit grey to white)."""
    from PIL import Image

    grey = np.random.default_rng(2).integers(0, 256, size=(6, 5), dtype=np.uint8)
    expected = torch.from_numpy(grey).expand(3, -1, -1)
    wide = (grey.astype(np.uint16) << 8) | grey
    for name, mode in (("deep.tiff", "I;16"), ("deep.pgm", "I")):
        Image.fromarray(wide).save(tmp_path / name)
        assert Image.open(tmp_path / name).mode == mode
        _check_image(str(tmp_path / name), (tmp_path / name).read_bytes())  # not refused
        assert torch.equal(load_image(str(tmp_path / name)), expected), name
    rgb = Image.fromarray(np.stack([grey, 255 - grey, grey // 2], axis=-1))
    for name, image in {
        "cmyk.tiff": rgb.convert("CMYK"),
        "cmyk.jpg": rgb.convert("CMYK"),
        "palette.png": rgb.convert("P"),
        "palette.bmp": rgb.convert("P"),
        "grey-alpha.png": rgb.convert("LA"),
    }.items():
        image.save(tmp_path / name, **({"quality": 100} if name.endswith("jpg") else {}))
        reference = torch.from_numpy(np.array(Image.open(tmp_path / name).convert("RGB")))
        decoded = load_image(str(tmp_path / name))
        assert decoded.shape == (3, 6, 5) and decoded.dtype == torch.uint8, name
        difference = (decoded.int() - reference.permute(2, 0, 1).int()).abs().max()
        assert difference <= 2, name  # JPEG's CMYK: PIL's and libjpeg's rounding


def test_an_image_broken_while_training_is_one_line(full_tree: Path, tmp_path: Path) -> None:
    """In a DataLoader worker: the worker's traceback is not the message."""
    root = tmp_path / "images"
    shutil.copytree(full_tree, root)
    data = conf(root, tmp_path, workers=1).load()
    (root / "train" / "dog" / "3.png").unlink()
    with pytest.raises(DataError) as info:
        list(data.train_x.batches(16))
    message = str(info.value)
    assert message.startswith(f"cannot read {root}/train/dog/3.png (No such file")
    assert "\n" not in message and "worker" not in message


def test_a_jpeg_cut_short_is_one_line_when_decoded(tmp_path: Path) -> None:
    """PIL's verify() reads only a JPEG's header: the cut is found at its first decode,
    named without torchvision's C++ source location."""
    from PIL import Image

    Image.new("RGB", (32, 32), (9, 99, 199)).save(tmp_path / "a.jpg")
    whole = (tmp_path / "a.jpg").read_bytes()
    (tmp_path / "a.jpg").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError) as info:
        load_image(str(tmp_path / "a.jpg"))
    assert str(info.value).startswith(f"cannot read {tmp_path}/a.jpg (Image is incomplete")
    assert ".cpp" not in str(info.value)


@pytest.mark.slow  # a run through the CLI: ~6 s
def test_an_image_gone_mid_run_fails_its_run_in_one_line(
    full_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, empty_mlflow_db: Path
) -> None:
    """Gone once the run has started (the data loaded, the teacher trained): one line
    naming the file, exit 2, the MLflow run FAILED with the line as its error."""
    from kdsweep.core.masked_client import MaskedClient
    from kdsweep.data import imagefolder

    runs: list[object] = []
    create_run = MaskedClient.create_run

    def recorded(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        runs.append(create_run(*args, **kwargs))
        return runs[-1]

    real = imagefolder._decoded
    gone = str(full_tree / "train" / "dog" / "3.png")

    def vanishing(path: str) -> torch.Tensor:
        if path == gone and runs:
            raise FileNotFoundError(2, "No such file or directory", path)
        return real(path)

    monkeypatch.setattr(MaskedClient, "create_run", recorded)
    monkeypatch.setattr(imagefolder, "_decoded", vanishing)
    shutil.copyfile(empty_mlflow_db, db_path(tmp_path))  # MLflow's migrations: 2-4 s
    args = [*FOLDER, f"data.root={full_tree}", *isolated_overrides(tmp_path)]
    result = run_in_process(tmp_path, args)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("kdsweep: error:")]
    assert line.startswith(f"kdsweep: error: cannot read {gone} (No such file or directory)")
    (logged,) = mlflow_runs(f"sqlite:///{db_path(tmp_path)}")
    assert logged.info.status == "FAILED"
    assert f"cannot read {gone}" in logged.data.tags["error"]


def test_streamed_batches_follow_the_order(full_tree: Path, tmp_path: Path) -> None:
    split = load_splits(conf(full_tree, tmp_path)).train_x
    order = torch.randperm(len(split))
    seen = list(split.batches(16, order))
    assert torch.equal(torch.cat([index for index, _ in seen]), order)
    assert torch.allclose(seen[0][1][3], split[order[3] : order[3] + 1][0])


def test_teacher_outputs_are_memory_mapped_reused_and_verified(
    full_tree: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = load_splits(conf(full_tree, tmp_path))
    torch.manual_seed(0)
    teacher = deep_nn(data.input_shape, data.num_classes).eval()
    first = cached_source(teacher, "t", "train", data.train_x, tmp_path, True, False)
    rows = list((tmp_path / "teacher_outputs").glob("train-*-logits.f32"))
    assert len(rows) == 1 and rows[0].stat().st_size == 60 * 3 * 4
    assert first.logits is not None and first.logits.shape == (60, 3)
    with torch.no_grad():
        expected = teacher(data.train_x[:60])
    assert torch.allclose(first.logits, expected, atol=1e-4)
    written, reference = rows[0].stat().st_mtime_ns, first.logits.clone()
    again = cached_source(teacher, "t", "train", data.train_x, tmp_path, True, False)
    assert torch.equal(again.logits, first.logits)
    assert rows[0].stat().st_mtime_ns == written  # reused, not rewritten
    # One flipped byte (in place: mapped tensors see it): the checksum catches it, and the
    # rows are recomputed, with a warning.
    damaged = bytearray(rows[0].read_bytes())
    damaged[5] ^= 0xFF
    rows[0].write_bytes(bytes(damaged))
    healed = cached_source(teacher, "t", "train", data.train_x, tmp_path, True, False)
    assert "does not match its checksum" in caplog.text
    assert torch.equal(healed.logits, reference)


@pytest.mark.parametrize(
    ("tree", "extra"),
    [
        ("full_tree", []),
        ("train_only", ["data.augment=true", "data.labelled_fraction=0.5"]),
    ],
)
def test_a_single_run(tree: str, extra: list[str], tmp_path: Path, request) -> None:  # noqa: ANN001
    root = request.getfixturevalue(tree)
    args = [*FOLDER, f"data.root={root}", *extra, *isolated_overrides(tmp_path)]
    result = run_in_process(tmp_path, [*args, "trainer.save_model=best"])
    assert result.returncode == 0, result.stderr[-3000:]
    (logged,) = mlflow_runs(f"sqlite:///{db_path(tmp_path)}")
    assert logged.info.status == "FINISHED" and "test_acc" in logged.data.metrics
    # train_only: 49 training images (60 - 6 test - 5 val), about half of each class's
    # labels kept; full_tree: train/ is all training images, every label kept.
    assert logged.data.metrics["labelled_size"] == (24 if extra else 60)
    assert list((tmp_path / "cache" / "teacher_outputs").glob("val-*-logits.f32"))
    # Augmented training images differ every epoch: the teacher runs live on them.
    cached_train = list((tmp_path / "cache" / "teacher_outputs").glob("train-*-logits.f32"))
    assert bool(cached_train) == (not extra)
    # kdsweep-eval scores the logged student on the streamed test split: the run's figure.
    from kdsweep.evaluate import evaluate_model

    unused = tmp_path / "eval-cache"  # kdsweep-eval reads: it writes no cache, not even here
    figures = evaluate_model(f"runs:/{logged.info.run_id}/student", [*args, f"cache_dir={unused}"])
    assert figures["test_acc"] == pytest.approx(logged.data.metrics["test_acc"], abs=1e-6)
    assert not unused.exists()


def test_a_sweep(full_tree: Path, tmp_path: Path) -> None:
    args = sweep_args(tmp_path, unique("imagefolder"), 2, *FOLDER, f"data.root={full_tree}")
    result = run_in_process(tmp_path, args)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    trials = [r for r in runs if r.data.tags.get("kdsweep.role") == "trial"]
    assert len(trials) == 2 and all(r.info.status == "FINISHED" for r in trials)


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({"train": ["a", "b"], "test": ["a", "c"]}, "test/ has classes ['a', 'c'], train/ has"),
        ({"train": ["a"]}, "no images under"),
        ({}, "has no train/ folder"),
    ],
)
def test_bad_folders_are_one_line(layout: dict, message: str, tmp_path: Path) -> None:
    root = tmp_path / "images"
    for split, classes in layout.items():
        for name in classes:
            (root / split / name).mkdir(parents=True)
            if split != "train" or len(classes) > 1:  # one class folder left empty
                make_tree(root / "x", {split: 1}, (name,))
                (root / "x" / split / name / "0.png").rename(root / split / name / "0.png")
    result = run_in_process(tmp_path, [*FOLDER, f"data.root={root}", *isolated_overrides(tmp_path)])
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert mlflow_runs(f"sqlite:///{db_path(tmp_path)}") == []


@pytest.mark.slow
def test_bench_row_h_produces_every_figure(tmp_path: Path) -> None:
    """benchmarks/bench.py row h at smoke size: every figure, never how fast."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench

    out = tmp_path / "bench.json"
    argv = ["--smoke", "--only", "h", "--device", "cpu", "--json", str(out)]
    assert bench.main([*argv, "--workdir", str(tmp_path / "work")]) == 0
    rows = {row["key"]: row for row in json.loads(out.read_text())["rows"]}
    assert sorted(rows) == ["h1", "h2", "h3"]
    for row in rows.values():
        assert row["error"] is None and math.isfinite(row["figure"]), row
    details = rows["h1"]["details"]
    assert details["streamed_images_per_s"] > 0 and details["seed_images_per_s"] > 0
    assert rows["h3"]["details"]["decoded_bytes"] == 540 * 3 * 32 * 32 * 4
