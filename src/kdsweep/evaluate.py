"""``kdsweep-eval MODEL [overrides]``: a saved student on a data group's test split.

MODEL is an MLflow model URI (``runs:/<run_id>/student``, ``models:/<name>@champion``,
``models:/<name>/<version>``) or a ``state_dict.pt`` file (with the ``kdsweep.json`` a run
writes beside it, or built as the config's ``model`` group). The overrides compose
kdsweep's config as the ``kdsweep`` command does (``data=cifar10 data.root=...``,
``tracking.uri=...`` for the MLflow store, ``trainer.eval_batch_size=...``); the data group
is loaded as in training. The model is scored as the logged one serves: raw test images
in (the data set's pixel scale), the run's normalization its first layer (a state_dict's
network gets the data's). Prints accuracy, loss, parameter count and images/s. A logged
student is rebuilt from its weights (``state_dict.pt``) and the network its
``kdsweep.json`` names, under kdsweep's allow-list and this command line's
``allowed_targets``: the pickled MLflow model, which would run whatever code it names, is
never loaded.
``--export PATH.pt2`` also writes that model, raw pixels in, as a ``torch.export`` program
(batch size free) and checks that it loads and gives the same logits.

A model whose input shape or class count does not fit the data, a model name that does
not exist, a file that is not a state_dict: one line, exit 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdsweep.core.boundary import command
from kdsweep.core.errors import CheckpointError, KdsweepError, first_line
from kdsweep.core.files import atomic_write, directory_problem
from kdsweep.core.stores import attempt

URI_SCHEMES = ("runs:/", "models:/", "mlflow-artifacts:/", "file:", "s3://", "gs://", "http")
#: The model URIs that MLflow resolves through the tracking store (tracking.uri).
STORE_SCHEMES = ("runs:/", "models:/", "mlflow-artifacts:/")


@dataclass
class Loaded:
    """A model ready to score: a callable on image batches, and what it expects (raw
    pixels, as kdsweep's MLflow models take them, or normalized images)."""

    model: Any
    input_shape: list[int] | None
    num_classes: int | None
    source: str
    takes_raw_pixels: bool = False


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="kdsweep-eval",
        description="Evaluate a kdsweep student on a data group's test split.",
    )
    parser.add_argument("model", help="runs:/ID/student, models:/NAME@champion, or a state_dict")
    parser.add_argument(
        "overrides", nargs="*", help="config overrides, e.g. data=cifar10 tracking.uri=..."
    )
    parser.add_argument("--export", metavar="PATH.pt2", help="also write a torch.export program")
    parser.add_argument(
        "--overwrite", action="store_true", help="let --export replace an existing file"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    return parser.parse_args(argv)


def compose(overrides: list[str]) -> Any:
    """kdsweep's config with these overrides, checked by the one validation pass."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from kdsweep.config.folder import config_dir
    from kdsweep.config.validation import validate

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=config_dir(), job_name="kdsweep-eval"):
            cfg = hydra_compose(config_name="config", overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as exc:
        cause = exc.__cause__ or exc
        raise KdsweepError(first_line(cause)) from cause
    finally:
        GlobalHydra.instance().clear()
    return validate(cfg)


@contextlib.contextmanager
def _store(tracking_uri: str) -> Iterator[None]:
    """MLflow's global tracking and registry URIs (and the environment variables MLflow
    sets for them) pointed at ``tracking_uri``, then put back."""
    import mlflow

    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    saved_env = {name: os.environ.get(name) for name in names}
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    try:
        yield
    finally:
        # Put back what was set, not what it resolved to: pinning the resolved registry
        # kept every later client of this process on that store, whatever tracking URI it
        # named. None is MLflow's own "not set" (both setters accept it and then follow the
        # environment, as at import).
        mlflow.set_tracking_uri(saved_env["MLFLOW_TRACKING_URI"])
        mlflow.set_registry_uri(saved_env["MLFLOW_REGISTRY_URI"])
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def load_uri(uri: str, tracking_uri: str, allowed: tuple[str, ...] = ()) -> Loaded:
    """A kdsweep student logged to MLflow, as its served model computes (raw pixels in,
    the run's normalization first): rebuilt from the artifact's ``state_dict.pt`` (weights
    only) and the network its ``kdsweep.json`` names, under kdsweep's allow-list and
    ``allowed`` (this command line's). The pickled MLflow model is never loaded:
    unpickling runs whatever code the pickle names."""
    from kdsweep.run.tracking import check_store

    if uri.startswith(STORE_SCHEMES):
        check_store(tracking_uri, reading=True)  # seconds, not MLflow's minutes of retries
    import mlflow
    from mlflow.exceptions import MlflowException

    from kdsweep.core.masked_client import fail_fast
    from kdsweep.run.serving import on_raw_pixels
    from kdsweep.run.student import SPEC, STATE_DICT, Logits, read_spec, read_state_dict

    fail_fast()

    where = f"(tracking.uri={tracking_uri})"
    try:
        with _store(tracking_uri), tempfile.TemporaryDirectory(prefix="kdsweep-eval-") as tmp:
            folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp))
            if not (folder / STATE_DICT).is_file() or not (folder / SPEC).is_file():
                raise KdsweepError(
                    f"{uri} is not a kdsweep student (no {STATE_DICT} and {SPEC} in it):"
                    " kdsweep-eval rebuilds a student from its weights and never unpickles a"
                    " model; give a kdsweep student's URI or a state_dict file"
                )
            state = read_state_dict(folder / STATE_DICT)
            spec = read_spec(folder / STATE_DICT)
            normalization = json.loads((folder / SPEC).read_text()).get("input_normalization")
    except MlflowException as exc:
        raise KdsweepError(
            f"cannot load {uri} {where}: {first_line(exc)}: check the name, version or"
            " alias (mlflow ui lists them), or the tracking.uri"
        ) from exc
    except OSError as exc:
        raise KdsweepError(f"cannot load {uri} {where}: {first_line(exc)}") from exc
    except ImportError as exc:  # the client of an artifact store (s3://: boto3)
        raise KdsweepError(
            f"cannot load {uri} {where}: MLflow's client for it is not installed"
            f" ({first_line(exc)}): install it (s3://: pip install boto3), or give a"
            " runs:/ or models:/ URI of the tracking store, or a state_dict file"
        ) from exc
    assert spec is not None  # its file exists
    check_network(spec, allowed, uri)
    model = materialize(Loaded((Logits, spec, state), None, None, uri), spec.input_shape)
    if normalization:  # the served model's first layer
        model = on_raw_pixels(model, normalization["mean"], normalization["std"]).eval()
    return Loaded(model, spec.input_shape, spec.num_classes, uri, bool(normalization))


def check_network(spec: Any, allowed: tuple[str, ...], source: str) -> None:
    """The network a saved student's kdsweep.json names passes kdsweep's allow-list and
    ``allowed``, this command line's allowed_targets, never a list the file carries;
    checked before any data loads."""
    from kdsweep.run.student import SPEC

    spec.allowed = allowed
    try:
        spec.target.check_nested()
        spec.target.locate()
    except KdsweepError as exc:
        fix = " (on this command line)" if "allowed_targets=" in str(exc) else ""
        raise CheckpointError(f"{source}: its {SPEC} names the network: {exc}{fix}") from None


def load_file(path: Path, settings: Any) -> Loaded:
    """A state_dict file: its kdsweep.json names the network; else the config's model."""
    from kdsweep.run.student import (
        Logits,
        StudentSpec,
        read_spec,
        read_state_dict,
        spec_from_state_dict,
    )

    state = read_state_dict(path)
    channels, classes = spec_from_state_dict(state)
    spec = read_spec(path)
    if spec is None:  # a bare state_dict: the config's model group (validated), its sizes
        spec = StudentSpec(settings.model.identity(), [channels, -1, -1], classes)
        spec.allowed = settings.model.allowed
    else:
        check_network(spec, settings.model.allowed, str(path))
    return Loaded((Logits, spec, state), spec.input_shape, classes, str(path))


def check_fit(loaded: Loaded, input_shape: tuple[int, ...], num_classes: int, data: str) -> None:
    want = list(input_shape)
    have = loaded.input_shape
    if have is not None:
        same = len(have) == len(want) and all(h in (-1, w) for h, w in zip(have, want, strict=True))
        if not same:
            shown = "x".join("?" if d == -1 else str(d) for d in have)
            raise CheckpointError(
                f"{loaded.source} takes {shown} images, data={data} has"
                f" {'x'.join(map(str, want))}: evaluate it on the data it was trained on"
            )
    if loaded.num_classes is not None and int(loaded.num_classes) != num_classes:
        raise CheckpointError(
            f"{loaded.source} predicts {loaded.num_classes} classes, data={data} has"
            f" {num_classes}: evaluate it on the data it was trained on"
        )


def materialize(loaded: Loaded, input_shape: tuple[int, ...]) -> Any:
    """The callable model; a state_dict is loaded into its network now (the input's
    height and width known)."""
    if not isinstance(loaded.model, tuple):
        return loaded.model
    logits_cls, spec, state = loaded.model
    spec.input_shape = list(input_shape)
    try:
        net = spec.build()
        net.load_state_dict(state)
    except (RuntimeError, KeyError) as exc:
        raise CheckpointError(
            f"{loaded.source} does not fit a {spec.target.name} student for these images"
            f" ({first_line(exc)}): pass model=... as it was trained"
        ) from exc
    return logits_cls(net).eval()


def score(model: Any, data: Any, batch_size: int) -> dict[str, float]:
    """``model`` (raw pixels in) on the test split, through the training loop's evaluation
    (kdsweep.training.loop.evaluate): the split's normalized images are put back on the
    pixel scale on their way in, a batch at a time."""
    import torch

    from kdsweep.losses import CrossEntropy
    from kdsweep.nets import count_parameters
    from kdsweep.run.serving import Unstandardize
    from kdsweep.training.loop import evaluate

    scored = torch.nn.Sequential(Unstandardize(data.input_mean, data.input_std), model).eval()
    with torch.no_grad():
        scored(data.test_x[:2])  # warm-up: the timing below is steady-state throughput
    started = time.perf_counter()
    loss, acc = evaluate(scored, CrossEntropy(), data.test_x, data.test_y, None, batch_size)
    seconds = time.perf_counter() - started
    n = len(data.test_y)
    return {
        "test_acc": acc,
        "test_loss": loss,
        "parameters": float(count_parameters(model)),
        "images_per_s": n / seconds if seconds > 0 else float("inf"),
        "test_size": float(n),
    }


def export_problem(path: Path, overwrite: bool) -> str | None:
    """Why ``--export`` cannot write ``path``, checked before any work: an existing file
    is replaced only with --overwrite, a folder is never one."""
    fix = "choose another --export path"
    if path.is_dir():
        example = path / "student.pt2"
        return f"--export {path} is a folder, not a file: name the file, e.g. {example}"
    if path.exists() and not overwrite:
        return f"--export {path} exists: pass --overwrite to replace it, or {fix}"
    problem = directory_problem(path.parent, min_free=0)
    return None if problem is None else f"--export {path}: {problem}: {fix}"


def export(model: Any, example: Any, path: Path) -> float:
    """Write ``model`` (raw pixels in) as a torch.export program (batch size free),
    atomically; reload it and return the largest logit difference on ``example``."""
    import torch
    from torch.export import Dim

    program, error = attempt(  # the model's own code and torch's tracer: any error is why
        lambda: torch.export.export(model, (example[:2],), dynamic_shapes=[{0: Dim.AUTO}])
    )
    if error is not None:
        raise KdsweepError(f"torch.export cannot export this model: {first_line(error)}") from error
    try:
        with atomic_write(path) as handle:
            torch.export.save(program, handle)
    except OSError as exc:
        raise KdsweepError(
            f"--export {path}: cannot write it ({first_line(exc)}): choose another --export path"
        ) from exc
    reloaded = torch.export.load(str(path)).module()
    with torch.no_grad():
        return float((reloaded(example) - model(example)).abs().max())


def evaluate_model(
    source: str, overrides: list[str], export_path: str | None = None, overwrite: bool = False
) -> dict:
    if export_path:
        problem = export_problem(Path(export_path).expanduser(), overwrite)
        if problem:
            raise KdsweepError(problem)
    with tempfile.TemporaryDirectory(prefix="kdsweep-eval-") as scratch:
        # kdsweep-eval only reads: what loading the data caches (an image folder's
        # normalization statistics) goes to a folder removed at exit, never cache_dir.
        settings = compose([*overrides, f"cache_dir={scratch}"])
        import torch

        from kdsweep.data import load_splits
        from kdsweep.run.serving import on_raw_pixels, raw_pixels

        if source.startswith(URI_SCHEMES):
            loaded = load_uri(source, settings.tracking.uri, settings.model.allowed)
        else:
            loaded = load_file(Path(source).expanduser(), settings)
        data = load_splits(settings.data)
        check_fit(loaded, data.input_shape, data.num_classes, settings.data.name)
        normalization = (data.input_mean, data.input_std)
        model = materialize(loaded, data.input_shape)
        if not loaded.takes_raw_pixels:
            model = on_raw_pixels(model, *normalization)
        batch_size = settings.trainer.eval_batch_size
        torch.manual_seed(0)
        figures = score(model, data, batch_size)
        figures["model"] = source
        figures["data"] = settings.data.name
        if export_path:
            figures["export"] = export_path
            example = raw_pixels(data.test_x[:batch_size], *normalization)
            figures["export_max_abs_diff"] = export(model, example, Path(export_path).expanduser())
        return figures


@command("kdsweep-eval", interrupted="nothing was written")
def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    figures = evaluate_model(args.model, args.overrides, args.export, args.overwrite)
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print(
        f"{figures['model']} on {figures['data']} test ({int(figures['test_size'])} images):"
        f" accuracy {figures['test_acc']:.2f} %, loss {figures['test_loss']:.4f},"
        f" {int(figures['parameters']):,} parameters, {figures['images_per_s']:,.0f} images/s"
    )
    if args.export:
        print(
            f"exported to {args.export} (torch.export; reloaded, max |logit difference|"
            f" {figures['export_max_abs_diff']:.2e})"
        )


if __name__ == "__main__":
    main()
