"""Bad inputs fail fast and cleanly: a non-zero exit, one short line naming the problem
(Hydra's own compose errors: a first line naming it), no traceback, and no half-written
state: no MLflow run, no Optuna study, no partial teacher checkpoint or cache file.

The one exception is a loss that diverges (NaN/inf): it can only show in training, so its
MLflow run exists and must end FAILED; inside a sweep the trial fails and the sweep goes
on, within hydra.sweeper.max_failure_rate.

The rows call the real CLI entry in this process (what they test is the command's
answer, not the process); the rows marked ``subprocess`` run ``python -m kdsweep``, so the
one-line errors are also checked end to end."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from _helpers import (
    FAST,
    children_of,
    load_study,
    load_trials,
    mlflow_runs,
    run,
    run_in_process,
    states,
    sweep_args,
    unique,
)

KDSWEEP_ERROR = "kdsweep: error:"


@dataclass(frozen=True)
class Bad:
    args: tuple[str, ...]  # overrides; {placeholders} are filled from the row's paths
    message: str  # what the error line must contain
    code: int = 2  # kdsweep's user errors exit 2; Hydra's compose errors and NaN exit 1
    hydra_error: bool = False  # Hydra reports it (a few lines, the first names it)
    mlflow: str | None = None  # the one run's expected status, if a run may exist
    slow: bool = False  # one row per class runs by default; its siblings with -m slow
    teacher_cached: bool = False  # the student fails after its teacher trained: kept, valid
    subprocess: bool = False  # run as `python -m kdsweep` (end to end), not in this process


def _slow(row: Bad) -> Bad:
    return replace(row, slow=True)


SWEEP = ("-m", "hparams_search=kd", "hydra.sweeper.baselines=false")
LONG = "x" * 600  # a study name

ROWS = {
    # Hydra's refusals of a command line: one line naming the choices or the way out.
    "unknown group option": Bad(
        ("model=nope",), "Could not find 'model/nope': pick one of deep, light", subprocess=True
    ),
    "unknown key": Bad(("loss.nope=1",), "Could not override 'loss.nope': no such key"),
    "unknown key appended": Bad(("+loss.nope=1",), "loss.nope: Key 'nope' not in"),
    "key of another loss": Bad(("+loss.margin=1",), "loss.margin: Key 'margin' not in"),
    "wrong type": Bad(("trainer.epochs=abc",), "trainer.epochs: Value 'abc'"),
    "zero temperature": Bad(
        ("loss.temperature=0",), "loss.temperature must be > 0", subprocess=True
    ),
    "negative temperature": Bad(("loss.temperature=-2",), "loss.temperature must be > 0"),
    "negative loss weight": Bad(("loss.ce_weight=-0.5",), "loss.ce_weight must be"),
    "all loss weights zero": Bad(("loss.ce_weight=0", "loss.soft_target_weight=0"), "are all 0"),
    "zero lr": Bad(("optimizer.lr=0",), "optimizer.lr must be > 0"),
    "negative lr": Bad(("optimizer.lr=-0.01",), "optimizer.lr must be > 0"),
    "zero batch size": Bad(("trainer.batch_size=0",), "trainer.batch_size must be >= 1"),
    "zero epochs": Bad(("trainer.epochs=0",), "trainer.epochs must be >= 1"),
    "zero val fraction": Bad(("data.val_fraction=0",), "data.val_fraction must be in (0, 1)"),
    "val fraction above 1": Bad(("data.val_fraction=1.5",), "data.val_fraction must be in (0, 1)"),
    "zero labelled fraction": Bad(
        ("data.labelled_fraction=0",), "data.labelled_fraction must be in (0, 1]"
    ),
    "labelled fraction negative": _slow(
        Bad(("data.labelled_fraction=-0.1",), "data.labelled_fraction must be in (0, 1]")
    ),
    "labelled fraction above 1": _slow(
        Bad(("data.labelled_fraction=1.5",), "data.labelled_fraction must be in (0, 1]")
    ),
    "labelled fraction NaN": _slow(
        Bad(("data.labelled_fraction=nan",), "data.labelled_fraction must be in (0, 1]")
    ),
    "teacher's labelled fraction NaN": _slow(
        Bad(("teacher.labelled_fraction=nan",), "teacher.labelled_fraction must be in (0, 1]")
    ),
    "augmenting 8x8 digits": Bad(("data.augment=true",), "data.augment=true is for"),
    "unknown device": Bad(("trainer.device=tpu",), "trainer.device must be one of"),
    "missing CIFAR files": Bad(("data=cifar10", "data.root={empty}"), "cifar10 not found"),
    "missing teacher checkpoint": Bad(("teacher.checkpoint={missing}",), "does not exist"),
    "corrupt teacher checkpoint": Bad(
        ("teacher.checkpoint={garbage}",), "is corrupt or not a torch file"
    ),
    "teacher trained on other data": Bad(
        ("teacher.checkpoint={other_teacher}", "data.split_seed=1"), "was trained on other data"
    ),
    "cosine with a plain student": Bad(("loss=cosine", "model=light"), "use model=modified"),
    "attention transfer across unequal stages": Bad(
        ("loss=at", "model=light", "teacher=resnet32x4"), "the student has 2 stages, the teacher 3"
    ),
    "a feature loss's weight below 0": _slow(Bad(("loss=at", "loss.weight=-1"), "weight must")),
    "hint weights all zero": _slow(
        Bad(("loss=hint", "loss.feature_map_weight=0", "loss.ce_weight=0"), "are all 0")
    ),
    "attention power 0": _slow(Bad(("loss=at", "loss.p=0"), "loss.p must be > 0")),
    "nesterov without momentum": Bad(
        ("optimizer=sgd_nesterov", "optimizer.momentum=0"), "optimizer.momentum must be > 0"
    ),
    "nesterov with dampening": Bad(
        ("optimizer=sgd_nesterov", "optimizer.dampening=0.5"), "optimizer.dampening must be 0"
    ),
    "multimargin p=3": Bad(("loss=multimargin", "loss.p=3"), "loss.p must be 1 or 2"),
    "run dir under a file": Bad(("hydra.run.dir={afile}/sub",), "/sub cannot be created ("),
    "sweep dir under a file": Bad(
        (*SWEEP, "hydra.sweep.dir={afile}/sweep"), "/sweep cannot be created ("
    ),
    # KD: the cache must stay empty, so the check came before the teacher's training.
    "unreachable tracking server": Bad(
        ("tracking.uri=http://127.0.0.1:1",), "MLflow does not answer at tracking.uri="
    ),
    "unreachable sweep storage": Bad(
        (*SWEEP, "hydra.sweeper.storage=postgresql://nobody@127.0.0.1:1/x"),
        "cannot open the Optuna storage",
    ),
    "sweep over a parameter the loss lacks": Bad(
        (*SWEEP, "loss=ce"), "search parameter loss.temperature is not in the config"
    ),
    "sweep with a bad fixed value": Bad(
        (*SWEEP, "loss.temperature=0"), "loss.temperature must be > 0"
    ),
    "sweep of zero trials": Bad(
        (*SWEEP, "hydra.sweeper.n_trials=0"), "n_trials and n_jobs must be >= 1", subprocess=True
    ),
    "unknown pruner": Bad(
        (*SWEEP, "hydra/sweeper/pruner=bogus"),
        "Could not find 'hydra/sweeper/pruner/bogus': pick one of hyperband, median",
    ),
    "pruner by its old key": _slow(
        Bad(
            (*SWEEP, "hydra.sweeper.pruner.name=none"),
            "hydra.sweeper.pruner.name is gone: pick the pruner with hydra/sweeper/pruner=",
        )
    ),
    "pruner outside the allow-list": _slow(
        Bad(
            (*SWEEP, "hydra.sweeper.pruner._target_=mypkg.Pruner"),
            "hydra.sweeper.pruner._target_=mypkg.Pruner: Target 'mypkg.Pruner' is not in the",
        )
    ),
    "pruner that is not a pruner": _slow(
        Bad(
            (*SWEEP, "hydra/sweeper/pruner=none", "hydra.sweeper.pruner._target_=torch.nn.ReLU"),
            "built a ReLU, not an Optuna pruner",
        )
    ),
    "loss diverges (NaN) in a run": Bad(
        ("loss=ce", "optimizer.lr=1e8"), "lower optimizer.lr", code=1, mlflow="FAILED"
    ),
    # Adam's update itself overflows before any loss is non-finite (it was a traceback).
    "optimizer step overflows": Bad(
        ("loss=ce", "optimizer.lr=1e38"), "lower optimizer.lr", code=1, mlflow="FAILED"
    ),
    # Non-finite before any update: the lr cannot be the cause, the loss's settings are;
    # the loss's dry run finds it before the teacher trains (issue 27 class 8).
    "loss non-finite on the first batch": Bad(
        ("loss.temperature=1e38",),
        "loss=kd: temperature=1e+38, soft_target_weight=0.25, ce_weight=0.75 gives a loss of"
        " nan on a test batch: change the loss's settings",
    ),
    "loss weight overflows on the first batch": _slow(
        Bad(
            ("loss.soft_target_weight=1e38",),
            "soft_target_weight=1e+38",
            code=1,
            mlflow="FAILED",
            teacher_cached=True,
        )
    ),
    # The teacher trains before the run exists: no run; the fix names the teacher's lr.
    "teacher diverges": _slow(
        Bad(("teacher.optimizer.lr=1e38",), "lower teacher.optimizer.lr", code=1)
    ),
    # Data a study would rank wrongly (issue 27: class 1): a symbolic link loop trained on
    # its class about 40 times over. Found before the study exists.
    "sweep over images with a link loop": Bad(
        (*SWEEP, "data=imagefolder", "data.root={looped}", "data.workers=0"),
        "train/a/loop/0.png is the same file as train/a/0.png",
    ),
    # A broken image (issue 27: class 5) is found when the files are hashed, before the
    # statistics, the teacher or the run: once a traceback after the teacher trained.
    "image folder with a truncated PNG": Bad(
        ("data=imagefolder", "data.root={broken}", "data.workers=0"),
        "train/b/3.png is a broken image (truncated PNG file): replace it with a whole copy",
    ),
    "sweep over images with a truncated PNG": _slow(
        Bad(
            (*SWEEP, "data=imagefolder", "data.root={broken}", "data.workers=0"),
            "train/b/3.png is a broken image",
        )
    ),
    # A teacher not clearly above chance stops the run: it would teach nothing (issue 27:
    # class 6). It stays cached, sealed: a reuse is refused again.
    "teacher near chance": Bad(
        ("teacher.optimizer.lr=1e-9",), "chance is 10.00 %", teacher_cached=True
    ),
    "teacher checkpoint near chance": _slow(
        Bad(("teacher.checkpoint={untrained}",), "or teacher.checkpoint; or set teacher.allow_weak")
    ),
    # --- devices this machine lacks (issue 13: item 10) ---
    "device cuda absent": Bad(("trainer.device=cuda:7",), "trainer.device=cuda:7 is not available"),
    "device cuda": _slow(Bad(("trainer.device=cuda:64",), "is not available")),
    "device mps absent": _slow(Bad(("trainer.device=mps",), "trainer.device=mps is not available")),
    "device index not a number": Bad(("trainer.device=cuda:x",), "cuda:N with N a number"),
    # --- NaN, infinite, huge and negative values ---
    "weight decay NaN": Bad(("optimizer.weight_decay=nan",), "optimizer.weight_decay must be"),
    "weight decay inf": _slow(Bad(("optimizer.weight_decay=inf",), "weight_decay must be")),
    "weight decay negative": _slow(Bad(("optimizer.weight_decay=-1",), "weight_decay must be")),
    "momentum NaN": Bad(
        ("optimizer=sgd_nesterov", "optimizer.momentum=nan"), "optimizer.momentum must be > 0"
    ),
    "lr NaN": _slow(Bad(("optimizer.lr=nan",), "optimizer.lr must be > 0")),
    "lr inf": _slow(Bad(("optimizer.lr=inf",), "optimizer.lr must be > 0")),
    "teacher lr NaN": _slow(Bad(("teacher.optimizer.lr=nan",), "teacher.optimizer.lr must be")),
    "teacher lr zero": _slow(Bad(("teacher.optimizer.lr=0",), "teacher.optimizer.lr must be")),
    "temperature NaN": Bad(("loss.temperature=nan",), "loss.temperature must be > 0"),
    "temperature inf": _slow(Bad(("loss.temperature=inf",), "loss.temperature must be > 0")),
    "loss weight NaN": _slow(Bad(("loss.ce_weight=nan",), "loss.ce_weight must be")),
    "margin NaN": _slow(Bad(("loss=multimargin", "loss.margin=nan"), "loss.margin must be > 0")),
    "noise NaN": Bad(("data=synthetic", "data.noise=nan"), "data.noise must be a finite"),
    "noise negative": _slow(Bad(("data=synthetic", "data.noise=-1"), "data.noise must be")),
    "dropout NaN": _slow(Bad(("model.dropout=nan",), "model.dropout must be in [0, 1)")),
    "dropout 1": _slow(Bad(("model.dropout=1",), "model.dropout must be in [0, 1)")),
    "width that builds no network": Bad(
        ("+model.width=0",), "model.width must be a finite number >= 0.03125 for light_nn"
    ),
    "sweep over a width that builds no network": _slow(
        Bad(
            (*SWEEP, "+model.width=choice(0,0.5)"),
            "search space +model.width=CategoricalDistribution(choices=(0, 0.5)): at 0,",
        )
    ),
    "width that leaves a layer empty": _slow(
        Bad(("model=resnet8x4", "+model.width=0.01"), "model.width must be a finite number")
    ),
    "seed negative": Bad(("trainer.seed=-1",), "trainer.seed must be in [0, 4294967295]"),
    "seed 2**32": _slow(Bad(("trainer.seed=4294967296",), "trainer.seed must be in [0,")),
    "seed huge": _slow(Bad(("trainer.seed=10000000000000000000000",), "trainer.seed")),
    "teacher seed negative": _slow(Bad(("teacher.seed=-3",), "teacher.seed must be in [0,")),
    "split seed negative": _slow(Bad(("data.split_seed=-5",), "data.split_seed must be in")),
    "teacher epochs zero": _slow(Bad(("teacher.epochs=0",), "teacher.epochs must be >= 1")),
    "teacher batch zero": _slow(Bad(("teacher.batch_size=0",), "teacher.batch_size must be")),
    "eval batch zero": _slow(Bad(("trainer.eval_batch_size=0",), "eval_batch_size must be")),
    "objective not a choice": _slow(Bad(("trainer.objective=worst",), "trainer.objective")),
    "empty experiment name": _slow(Bad(("tracking.experiment=",), "must not be empty")),
    "optimizer target outside torch.optim": Bad(
        ("optimizer._target_=os.system",), "must name a torch.optim class"
    ),
    "loss target outside kdsweep": _slow(
        Bad(("loss._target_=os.system",), "loss._target_ must be one of")
    ),
    "target that does not import": Bad(
        ("model._target_=torchvision.models.no_such_net",), "check the name, and that its"
    ),
    "target outside allowed_targets": _slow(
        Bad(("model._target_=mypkg.Net",), "'allowed_targets=[mypkg.*]'")
    ),
    "target that builds the wrong type": _slow(
        Bad(("model._target_=torch.optim.SGD",), "must name a torch nn.Module")
    ),
    # --- the allow-list names what builds parts, nested targets included (issue 27: 2);
    # {{ }} are braces: the rows' arguments are format strings ---
    "a code loader nested in the loss": Bad(
        ("+loss.extra={{_target_:torch.load,f:x.pt}}",),
        "loss.extra._target_=torch.load: Target 'torch.load' is not in the Hydra execution",
    ),
    "a sampler that runs a hub": Bad(
        (*SWEEP, "hydra.sweeper.sampler._target_=torch.hub.load"),
        "hydra.sweeper.sampler cannot be built (Target 'torch.hub.load' is not in the Hydra",
    ),
    "torch.load as the model": _slow(
        Bad(("model._target_=torch.load",), "'allowed_targets=[torch.load]'")
    ),
    "a C++ extension build nested in the optimizer": _slow(
        Bad(
            ("+optimizer.betas={{_target_:torch.utils.cpp_extension.load,name:x,sources:[]}}",),
            "optimizer.betas._target_=torch.utils.cpp_extension.load: Target",
        )
    ),
    "a downloading data set nested in the data": _slow(
        Bad(
            ("+data.extra={{_target_:torchvision.datasets.MNIST,root:.,download:true}}",),
            "data.extra._target_=torchvision.datasets.MNIST: Target",
        )
    ),
    "eval in a list": _slow(
        Bad(
            ("+model.returns_hidden=[1,{{_target_:builtins.eval,source:x}}]",),
            "model.returns_hidden.1._target_=builtins.eval: Target 'builtins.eval' cannot be",
        )
    ),
    "os.system nested in the teacher": _slow(
        Bad(
            ("+teacher.model.act={{_target_:os.system,command:true}}",),
            "teacher.model.act._target_=os.system: Target 'os.system' cannot be authorized",
        )
    ),
    "a torchvision builder picked by name": _slow(
        Bad(("teacher.model._target_=torchvision.models.get_model",), "picks a callable by name")
    ),
    "a schedule leading to torch.hub.load": _slow(
        Bad(
            ("trainer.scheduler._target_=torch.optim.optimizer.torch.hub.load",),
            "(resolved from 'torch.optim.optimizer.torch.hub.load') is not in the Hydra",
        )
    ),
    "a code loader nested in the sampler": _slow(
        Bad(
            (
                *SWEEP,
                "hydra/sweeper/sampler=cmaes",
                "hydra.sweeper.sampler.independent_sampler={{_target_:torch.hub.load}}",
            ),
            "hydra.sweeper.sampler cannot be built (Target 'torch.hub.load' is not in the Hydra",
        )
    ),
    "a code loader nested in the pruner": _slow(
        Bad(
            (*SWEEP, "+hydra.sweeper.pruner.extra={{_target_:torch.hub.load}}"),
            "hydra.sweeper.pruner.extra._target_=torch.hub.load: Target",
        )
    ),
    "layer the model lacks": Bad(
        ("loss=at", "loss.student_layers=[nope]"), "model=light has no layer 'nope'"
    ),
    # --- the cache folder ---
    "cache_dir is a file": Bad(
        ("cache_dir={afile}",), "is a file, not a folder): give cache_dir a writable"
    ),
    "cache_dir under a file": _slow(Bad(("cache_dir={afile}/sub",), "cannot hold the teacher")),
    # --- splits that leave nothing to test, validate or train on ---
    "no test image": Bad(("data.test_fraction=0.0001",), "leaves no test image"),
    "test fraction NaN": _slow(Bad(("data.test_fraction=nan",), "test_fraction must be in")),
    "one training image": Bad(("data.val_fraction=0.99999",), "leaves 0 to train on"),
    "no val image": _slow(Bad(("data.val_fraction=0.0001",), "and 0 to validate")),
    "val fraction NaN": _slow(Bad(("data.val_fraction=nan",), "val_fraction must be in (0, 1)")),
    "tiny synthetic set": _slow(Bad(("data=synthetic", "data.size=5"), "of 5 training images")),
    "tiny CIFAR subset": _slow(
        Bad(("data=cifar10", "data.train_subset=5"), "of 5 training images")
    ),
    "missing CIFAR-100 files": _slow(
        Bad(("data=cifar100", "data.root={empty}"), "cifar100 not found")
    ),
    # --- a half-created MLflow database (issue 13: item 8) ---
    "half-created mlflow.db": Bad(("tracking.uri=sqlite:///{halfdb}",), "is half-created"),
    "mlflow.db with a partial schema": _slow(
        Bad(("tracking.uri=sqlite:///{partialdb}",), "has a partial schema")
    ),
    "mlflow.db not a database": _slow(
        Bad(("tracking.uri=sqlite:///{garbagedb}",), "is not a usable SQLite database")
    ),
    # --- the sweep's own settings, before any study, run or file (items 6, 10, 11) ---
    "reversed interval": Bad((*SWEEP, "loss.temperature=interval(4,1)"), "search space:"),
    "log interval through 0": Bad((*SWEEP, "optimizer.lr=tag(log, interval(0, 0.01))"), "low > 0"),
    "reversed range": Bad((*SWEEP, "trainer.batch_size=range(3,1)"), "search space:"),
    "empty range": _slow(Bad((*SWEEP, "trainer.batch_size=range(1,1)"), "search space:")),
    "range reaching a bad value": Bad(
        (*SWEEP, "loss.temperature=interval(0, 4)"), "at 0.0, loss.temperature must be > 0"
    ),
    "lr range through 0": _slow(
        Bad((*SWEEP, "optimizer.lr=interval(-1, 0.1)"), "optimizer.lr must be > 0")
    ),
    "epochs range from 0": _slow(
        Bad((*SWEEP, "trainer.epochs=range(0,3)"), "trainer.epochs must be >= 1")
    ),
    "weight decay range below 0": _slow(
        Bad((*SWEEP, "optimizer.weight_decay=interval(-1,0)"), "weight_decay must be")
    ),
    "choice without the enqueued value": Bad(
        (*SWEEP, "loss.temperature=choice(3.0,4.0)"), "enqueue_trials gives loss.temperature=2.0"
    ),
    "group choice without the enqueued option": _slow(
        Bad(
            ("-m", "hparams_search=kd_optimizer", "optimizer=choice(sgd_nesterov)"),
            "enqueue_trials gives optimizer=adam",
        )
    ),
    "pruner startup negative": Bad(
        (*SWEEP, "hydra.sweeper.pruner.n_startup_trials=-1"),
        "hydra.sweeper.pruner (MedianPruner with n_startup_trials=-1, n_warmup_steps=2) cannot",
    ),
    "pruner warmup negative": _slow(
        Bad((*SWEEP, "hydra.sweeper.pruner.n_warmup_steps=-1"), "n_warmup_steps=-1")
    ),
    "hyperband reduction 0": Bad(
        (*SWEEP, "hydra/sweeper/pruner=hyperband", "hydra.sweeper.pruner.reduction_factor=0"),
        "(HyperbandPruner with min_resource=1, reduction_factor=0) cannot prune",
    ),
    "halving min resource 0": _slow(
        Bad(
            (
                *SWEEP,
                "hydra/sweeper/pruner=successive_halving",
                "hydra.sweeper.pruner.min_resource=0",
            ),
            "min_resource` is 0, but must be",
        )
    ),
    "sampler outside the whitelist": Bad(
        (*SWEEP, "hydra.sweeper.sampler._target_=os.system"), "hydra.sweeper.sampler cannot be"
    ),
    "empty storage": Bad((*SWEEP, "hydra.sweeper.storage="), "hydra.sweeper.storage is empty"),
    "empty study name": Bad((*SWEEP, "hydra.sweeper.study_name="), "must be 1 to 200 characters"),
    "600-character study name": Bad(
        (*SWEEP, f"hydra.sweeper.study_name={LONG}"), "must be 1 to 200 characters, got 600"
    ),
    "grace period 0": Bad(
        (*SWEEP, "hydra.sweeper.grace_period=0"), "must be at least twice heartbeat_interval"
    ),
    "grace period under two beats": _slow(
        Bad((*SWEEP, "hydra.sweeper.grace_period=15"), "at least twice heartbeat_interval")
    ),
    "heartbeat 0": _slow(
        Bad((*SWEEP, "hydra.sweeper.heartbeat_interval=0"), "heartbeat_interval must be > 0")
    ),
    "sweep on an absent device": Bad((*SWEEP, "trainer.device=cuda:7"), "is not available"),
    "sweep with a negative seed": _slow(Bad((*SWEEP, "trainer.seed=-1"), "trainer.seed must be")),
    "sweep training on one image": _slow(
        Bad((*SWEEP, "data.val_fraction=0.99999"), "leaves 0 to train on")
    ),
    "sweep with a cache_dir file": _slow(Bad((*SWEEP, "cache_dir={afile}"), "is a file")),
    "sweep with MLflow unreachable": Bad(
        (*SWEEP, "tracking.uri=http://127.0.0.1:1"), "MLflow does not answer at tracking.uri="
    ),
    "sweep with a half-created mlflow.db": _slow(
        Bad((*SWEEP, "tracking.uri=sqlite:///{halfdb}"), "is half-created")
    ),
    "sweep of zero jobs": _slow(Bad((*SWEEP, "hydra.sweeper.n_jobs=0"), "must be >= 1")),
    "failure rate above 1": _slow(
        Bad((*SWEEP, "hydra.sweeper.max_failure_rate=2"), "max_failure_rate must be in")
    ),
    "confirm seeds negative": _slow(
        Bad((*SWEEP, "hydra.sweeper.confirm.seeds=-1"), "confirm.seeds must be >= 0")
    ),
    "confirm top_k 0": _slow(Bad((*SWEEP, "hydra.sweeper.confirm.top_k=0"), "top_k >= 1")),
    "confirm first seed negative": _slow(
        Bad((*SWEEP, "hydra.sweeper.confirm.first_seed=-1"), "first_seed must be in")
    ),
    "unknown cost": Bad(
        (*SWEEP, "hydra.sweeper.costs=[params,flops]"),
        "hydra.sweeper.costs: unknown cost 'flops': pick from params, macs, latency_ms",
    ),
    "cost listed twice": _slow(
        Bad(
            (*SWEEP, "hydra.sweeper.costs=[params,macs,params]"),
            "hydra.sweeper.costs lists params twice: name each cost once",
        )
    ),
    # --- issue 25: the front of a search with costs ---
    "confirm front_k 0": Bad(
        (*SWEEP, "hydra.sweeper.confirm.front_k=0"),
        "hydra.sweeper.confirm.front_k=0: give the number of front points to confirm, >= 1",
    ),
    "front tolerance negative": _slow(
        Bad((*SWEEP, "hydra.sweeper.front.tolerance=-1"), "front.tolerance=-1.0 must be a finite")
    ),
    "front tolerance NaN": _slow(
        Bad((*SWEEP, "hydra.sweeper.front.tolerance=nan"), "front.tolerance=nan must be a finite")
    ),
    "front tolerance infinite": _slow(
        Bad((*SWEEP, "hydra.sweeper.front.tolerance=inf"), "front.tolerance=inf must be a finite")
    ),
    "costs with a pruner that keeps rungs": _slow(
        Bad(
            (*SWEEP, "hydra.sweeper.costs=[params]", "hydra/sweeper/pruner=hyperband"),
            "hydra.sweeper.costs=['params'] with HyperbandPruner: its rungs cannot be kept",
        )
    ),
    "custom search space": _slow(
        Bad((*SWEEP, "hydra.sweeper.custom_search_space=a.b"), "is not supported")
    ),
    # --- issue 26: several workers from one command ---
    "zero workers": Bad((*SWEEP, "hydra.sweeper.workers=0"), "workers=0 is not a worker count"),
    "workers neither auto nor a count": _slow(
        Bad((*SWEEP, "hydra.sweeper.workers=many"), "workers=many is not a worker count")
    ),
    "zero workers per device": _slow(
        Bad((*SWEEP, "hydra.sweeper.workers_per_device=0"), "workers_per_device=0 must be >= 1")
    ),
    "workers on an in-memory storage": _slow(
        Bad(
            (*SWEEP, "hydra.sweeper.workers=2", "hydra.sweeper.storage=sqlite://"),
            "is in this process's memory: the workers=2 processes cannot share it",
        )
    ),
    "workers with a launcher that runs jobs elsewhere": Bad(
        (*SWEEP, "hydra.sweeper.workers=2", "hydra/launcher=submitit_local"),
        "workers=2 with hydra/launcher=submitit_local: that launcher already runs the jobs",
    ),
    "workers with several jobs each": _slow(
        Bad(
            (*SWEEP, "hydra.sweeper.workers=2", "hydra.sweeper.n_jobs=2"),
            "runs one trial per worker at a time: leave hydra.sweeper.n_jobs at 1",
        )
    ),
    # --- issue 21: absurd plans, reserved names, crossed stores, the whole search space ---
    "confirmation of a million seeds": Bad(
        (*SWEEP, "hydra.sweeper.confirm.enabled=true", "hydra.sweeper.confirm.seeds=1000000"),
        "plans up to 6000000 confirmation runs (6 arms x 1000000 seeds), more than 10000",
    ),
    "a million trials": _slow(
        Bad((*SWEEP, "hydra.sweeper.n_trials=1000000"), "plans more than 10000 trials")
    ),
    "confirmation seeds past the seed range": Bad(
        (
            *SWEEP,
            "hydra.sweeper.confirm.enabled=true",
            "hydra.sweeper.confirm.first_seed=4294967295",
        ),
        "runs past the largest seed 4294967295",
    ),
    "study named as a companion": Bad(
        (*SWEEP, "hydra.sweeper.study_name=kd-digits-light:confirm"),
        "hydra.sweeper.study_name=kd-digits-light:confirm ends with :confirm",
    ),
    "sweep storage is the tracking store": Bad(
        (*SWEEP, "hydra.sweeper.storage=sqlite:///{halfdb}", "tracking.uri=sqlite:///{halfdb}"),
        "is the store tracking.uri names",
    ),
    "group choice of a missing model": Bad(
        (*SWEEP, "model=choice(light,nope)"), "search space model=nope: In 'config': Could not"
    ),
    "group choice the student cannot serve": Bad(
        (*SWEEP, "loss=choice(kd,cosine)"), "search space loss=cosine: loss=cosine needs a student"
    ),
    "pair whose stages a feature loss cannot match": Bad(
        ("-m", "hparams_search=at", "model=light", "teacher=resnet32x4"),
        "the student has 2 stages, the teacher 3",
    ),
    "group choice of a teacher the loss cannot pair": _slow(
        Bad(
            ("-m", "hparams_search=at", "teacher=choice(deep,resnet32x4)"),
            "search space teacher=resnet32x4: loss=at pairs the stages",
        )
    ),
    # Issue 27 class 8: the loss's dry run refuses it before the teacher trains (the cache
    # stays empty) in a single run too, not in an MLflow run that then fails.
    "loss formula overflows in a single run": Bad(
        ("loss=dist", "loss.tau=1e200"),
        "loss=dist: beta=1, gamma=1, tau=1e+200, ce_weight=1 overflows (OverflowError) on a test",
    ),
    "single run with a temperature that divides to inf": _slow(
        Bad(("loss.temperature=1e-38",), "gives a loss of nan on a test batch")
    ),
    # --- issue 27 class 5: what a user writes first (tests/_mistakes.py), one line before
    # the teacher trains (its cache stays empty) and before any MLflow run ---
    "a key the replaced option left": Bad(
        ("allowed_targets=[_mistakes.*]", "model._target_=_mistakes.Tiny"),
        "model.dropout: _mistakes.Tiny does not take dropout",
    ),
    "a torchvision teacher keeping the replaced option's key": _slow(
        Bad(
            ("teacher.model._target_=torchvision.models.resnet18",),
            "remove it with ~teacher.model.dropout",
        )
    ),
    "a network whose forward raises": Bad(
        ("allowed_targets=[_mistakes.*]", "model._target_=_mistakes.ForwardRaises"),
        "its forward fails on two training images of shape (2, 1, 8, 8) (RuntimeError: mat1",
    ),
    "a network with 3 logits for 10 classes": Bad(
        ("allowed_targets=[_mistakes.*]", "model._target_=_mistakes.ThreeLogits"),
        "returns shape (2, 3) for two images, not their logits of shape (2, 10)",
    ),
    "a network that returns a dict": _slow(
        Bad(
            ("allowed_targets=[_mistakes.*]", "model._target_=_mistakes.DictOut"),
            "returns a dict for two images",
        )
    ),
    "a network without parameters": Bad(
        ("allowed_targets=[_mistakes.*]", "model._target_=_mistakes.NoParameters"),
        "model=NoParameters (_mistakes.NoParameters) has no trainable parameters",
    ),
    "a network whose __init__ raises": _slow(
        Bad(
            ("allowed_targets=[_mistakes.*]", "teacher.model._target_=_mistakes.InitRaises"),
            "teacher.model._target_=_mistakes.InitRaises cannot be built (KeyError: 'backbone')",
        )
    ),
    "pretrained weights offline": Bad(
        (
            "allowed_targets=[_mistakes.*]",
            "teacher.model._target_=_mistakes.downloading",
            "+teacher.model.weights=IMAGENET1K_V1",
        ),
        "teacher.model.weights=IMAGENET1K_V1: the weights cannot be downloaded here",
    ),
    "a loss whose __post_init__ raises": Bad(
        (
            "allowed_targets=[_mistakes.*]",
            "loss._target_=_mistakes.PostInitRaises",
            "~loss.temperature",
            "~loss.soft_target_weight",
            "~loss.ce_weight",
        ),
        "loss._target_=_mistakes.PostInitRaises cannot be built (RuntimeError: this loss needs",
    ),
    "a loss whose flags miss what it reads": Bad(
        (
            "allowed_targets=[_mistakes.*]",
            "loss._target_=_mistakes.WrongFlagsKD",
            "~loss.soft_target_weight",
            "~loss.ce_weight",
        ),
        "reads batch.teacher_logits, which is None in training unless WrongFlagsKD.needs_teacher",
    ),
    "a loss that fails on the network's outputs": _slow(
        Bad(
            (
                "allowed_targets=[_mistakes.*]",
                "loss._target_=_mistakes.ForwardFails",
                "~loss.temperature",
                "~loss.soft_target_weight",
                "~loss.ce_weight",
            ),
            "loss=ForwardFails fails on model=light (kdsweep.nets.light_nn)'s outputs",
        )
    ),
    "fixed value that overflows a formula": Bad(
        ("-m", "hparams_search=dist", "hydra.sweeper.baselines=false", "loss.tau=1e200"),
        "tau=1e+200, ce_weight=1 overflows (OverflowError) on a test batch",
    ),
    "range that overflows a formula": _slow(
        Bad(
            (*SWEEP, "loss.temperature=interval(1, 1e200)"),
            "at 1e+200, loss=kd: temperature=1e+200",
        )
    ),
    "range to a temperature that divides to inf": _slow(
        Bad((*SWEEP, "loss.temperature=interval(1e-38, 1)"), "gives a loss of nan")
    ),
}


@pytest.fixture(scope="module")
def other_teacher(cached_teacher: Path) -> Path:
    """A real kdsweep teacher checkpoint, trained on digits with data.split_seed=0 (the
    session's cached teacher, whatever other teachers its cache holds by now)."""
    return cached_teacher


def _paths(tmp_path: Path, other_teacher: Path) -> dict[str, Path]:
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"PK\x03\x04 this is not a torch checkpoint" * 10)
    afile = tmp_path / "afile"
    afile.write_text("a file, not a directory\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    looped = tmp_path / "images"  # train/a/loop is train/a
    from PIL import Image

    for name in ("a", "b"):
        (looped / "train" / name).mkdir(parents=True)
        for i in range(12):
            Image.new("RGB", (8, 8), (i, i, i)).save(looped / "train" / name / f"{i}.png")
    (looped / "train" / "a" / "loop").symlink_to(looped / "train" / "a")
    broken = tmp_path / "broken"  # train/b/3.png cut short: no IEND chunk
    shutil.copytree(looped, broken, ignore=shutil.ignore_patterns("loop"))
    (broken / "train" / "b" / "3.png").write_bytes(
        (looped / "train" / "b" / "3.png").read_bytes()[:-12]
    )
    untrained = tmp_path / "untrained.pt"  # a bare state_dict of the default teacher
    import torch

    from kdsweep.nets import deep_nn

    torch.manual_seed(0)
    torch.save(deep_nn((1, 8, 8), 10).state_dict(), untrained)
    return {
        **_broken_databases(tmp_path),
        "garbage": garbage,
        "afile": afile,
        "empty": empty,
        "missing": tmp_path / "no-such-teacher.pt",
        "other_teacher": other_teacher,
        "untrained": untrained,
        "looped": looped,
        "broken": broken,
    }


def _broken_databases(tmp_path: Path) -> dict[str, Path]:
    """MLflow SQLite files an interrupted creation leaves (an hour old: no live creator)."""
    import os
    import sqlite3
    import time

    made = {}
    for name, statements in {
        "halfdb": [
            "CREATE TABLE alembic_version (version_num VARCHAR(32))",
            "INSERT INTO alembic_version VALUES ('1b5f0d9ad7c1')",
            "CREATE TABLE experiments (experiment_id INTEGER)",
            "CREATE TABLE _alembic_tmp_experiments (experiment_id INTEGER)",
        ],
        "partialdb": ["CREATE TABLE experiments (experiment_id INTEGER)"],
    }.items():
        path = tmp_path / f"{name}.db"
        with sqlite3.connect(path) as db:
            for statement in statements:
                db.execute(statement)
        db.close()
        made[name] = path
    made["garbagedb"] = tmp_path / "garbage.db"
    made["garbagedb"].write_bytes(b"not a database, but not empty either" * 100)
    old = time.time() - 3600
    for path in made.values():
        os.utime(path, (old, old))
    return made


def _error_line(stderr: str, hydra_error: bool) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    ours = [line for line in lines if line.startswith(KDSWEEP_ERROR)]
    if hydra_error:
        assert not ours, stderr
        return lines[0]
    assert len(ours) == 1, stderr  # ONE line
    return ours[0]


@pytest.mark.parametrize(
    "row",
    [
        pytest.param(r, id=name, marks=[pytest.mark.slow] if r.slow else [])
        for name, r in ROWS.items()
    ],
)
def test_bad_input_fails_cleanly(
    tmp_path: Path, other_teacher: Path, empty_mlflow_db: Path, row: Bad
) -> None:
    paths = _paths(tmp_path, other_teacher)
    if row.mlflow is not None:  # a run will exist: skip the new database's migrations
        shutil.copyfile(empty_mlflow_db, tmp_path / "mlflow.db")
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cache = tmp_path / "cache"
    isolated = [
        f"tracking.uri={tracking}",
        f"cache_dir={cache}",
        f"hydra.run.dir={tmp_path / 'out'}",
        f"hydra.sweep.dir={tmp_path / 'multirun'}",
        f"hydra.sweeper.storage={storage}",
        f"hydra.sweeper.report_dir={tmp_path / 'reports'}",
        f"hydra.sweeper.study_name={unique('bad')}",
        *FAST,
    ]
    args = [a.format(**paths) for a in row.args]
    multirun = "-m" in args
    # The row's own settings win; a single run has no hydra.sweeper node to override.
    keys = {a.split("=")[0] for a in args}
    isolated = [
        a
        for a in isolated
        if a.split("=")[0] not in keys
        and (multirun or not a.startswith(("hydra.sweep.", "hydra.sweeper.")))
    ]
    command = ["-m"] if multirun else []
    argv = [*command, *isolated, *(a for a in args if a != "-m")]
    proc = run(tmp_path, argv, timeout=300) if row.subprocess else run_in_process(tmp_path, argv)

    assert proc.returncode == row.code, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    line = _error_line(proc.stderr, row.hydra_error)
    assert row.message in line, proc.stderr[-3000:]
    assert len(line) < 600

    # No half-written state.
    runs = mlflow_runs(tracking)
    if row.mlflow is None:
        assert runs == []
    else:
        (only,) = runs
        assert only.info.status == row.mlflow
        assert row.message in only.data.tags["error"]
    if (tmp_path / "optuna.db").exists():
        import optuna

        assert optuna.get_all_study_names(storage) == []
    if cache.exists():
        leftovers = [p for p in cache.rglob("*") if p.is_file() and not p.name.endswith(".lock")]
        if row.teacher_cached:  # what the teacher left is whole and sealed: only temp files
            leftovers = [p for p in leftovers if p.name.endswith(".tmp")]
        assert leftovers == [], leftovers  # no checkpoint, no output cache, no temp file
    assert paths["afile"].read_text() == "a file, not a directory\n"


def _nan_sweep_args(tmp_path: Path, study: str, cache: Path, *extra: str) -> list[str]:
    # The first trial's lr diverges; later ones are sampled from the normal range.
    return sweep_args(
        tmp_path,
        study,
        2,
        "hydra.sweeper.enqueue_trials=[{optimizer.lr:1e8}]",
        *extra,
        cache_dir=cache,
    )


@pytest.mark.filterwarnings("ignore:Fixed parameter optimizer.lr")  # lr=1e8 on purpose
def test_diverging_trial_fails_and_the_sweep_goes_on(
    tmp_path: Path, teacher_cache: Path, empty_mlflow_db: Path
) -> None:
    shutil.copyfile(empty_mlflow_db, tmp_path / "mlflow.db")
    study_name = unique("nan")
    args = _nan_sweep_args(
        tmp_path, study_name, teacher_cache, "hydra.sweeper.max_failure_rate=0.5"
    )
    proc = run_in_process(tmp_path, args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr + proc.stdout

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    trials = load_trials(storage, study_name)
    assert states(trials) == {"FAIL": 1, "COMPLETE": 2}
    failed = next(t for t in trials if t.state.name == "FAIL")
    assert failed.number == 0
    assert failed.params["optimizer.lr"] == 1e8
    assert "lower optimizer.lr" in failed.user_attrs["error"]

    parent_id = load_study(storage, study_name).user_attrs["mlflow_parent_run_id"]
    children = children_of(mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}"), parent_id)
    by_trial = {int(c.data.tags["optuna.trial_number"]): c for c in children}
    assert len(by_trial) == 3
    assert by_trial[0].info.status == "FAILED"
    assert "lower optimizer.lr" in by_trial[0].data.tags["error"]
    assert {by_trial[n].info.status for n in by_trial if n != 0} == {"FINISHED"}


@pytest.mark.slow
def test_too_many_failures_stop_the_sweep_with_one_line(
    tmp_path: Path, teacher_cache: Path, empty_mlflow_db: Path
) -> None:
    shutil.copyfile(empty_mlflow_db, tmp_path / "mlflow.db")
    study_name = unique("nan-stop")
    args = _nan_sweep_args(tmp_path, study_name, teacher_cache, "hydra.sweeper.max_failure_rate=0")
    proc = run_in_process(tmp_path, args)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr + proc.stdout
    line = _error_line(proc.stderr, hydra_error=False)
    assert "1 of 1 trials failed" in line and "max_failure_rate=0.0" in line

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    assert states(load_trials(storage, study_name)) == {"FAIL": 1}  # stopped at once
    runs = mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent_id = load_study(storage, study_name).user_attrs["mlflow_parent_run_id"]
    statuses = {r.info.run_id: r.info.status for r in runs}
    assert statuses.pop(parent_id) == "FAILED"
    assert list(statuses.values()) == ["FAILED"]


def test_a_loss_from_the_base_class_gets_the_outputs_it_reads() -> None:
    """Issue 27 class 5: a subclass of Objective without the six flags read the teacher's
    logits as None mid-run, after its MLflow run existed. The dry run gives it the flags
    for what it read, so the loop hands it those outputs and the run uses a teacher."""
    from _mistakes import FlaglessKD, WrongFlagsKD
    from kdsweep.losses import dry_run

    loss = FlaglessKD()
    assert not loss.uses_teacher and not loss.needs_teacher_logits
    dry_run(loss)
    assert loss.uses_teacher and loss.needs_teacher_logits
    assert not (loss.needs_teacher_hidden or loss.needs_student_features)
    assert not FlaglessKD.needs_teacher_logits  # the instance's, not every instance's
    with pytest.raises(ValueError, match="set needs_teacher_logits: ClassVar"):
        dry_run(WrongFlagsKD())


def test_eval_of_a_store_without_its_client_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib.util

    if importlib.util.find_spec("botocore") is not None:
        pytest.skip("boto3 is installed: s3:// would be asked over the network")
    from kdsweep.evaluate import main

    with pytest.raises(SystemExit) as exit_info:
        main(["s3://bucket/x", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("kdsweep-eval: error: cannot load s3://bucket/x") and "boto3" in err


LOSS_KEYS_OF_KD = ("~loss.temperature", "~loss.soft_target_weight", "~loss.ce_weight")


def test_a_replaced_target_is_named_after_itself(settings) -> None:  # noqa: ANN001
    """Overriding only teacher.model._target_ kept the option's name: the log called a
    resnet18 teacher "deep". The name follows the target; an option's own stays."""
    replaced = settings(
        "teacher.model._target_=torchvision.models.resnet18", "~teacher.model.dropout"
    )
    assert replaced.teacher_model.name == "resnet18"
    assert settings().teacher_model.name == "deep"
    assert settings("model.name=mine").model.name == "mine"
    # A loss option starts from its class's schema node (no _target_ in its YAML): a
    # replaced loss target is named after that target too.
    ce = settings("loss._target_=kdsweep.losses.CrossEntropy", *LOSS_KEYS_OF_KD)
    assert ce.loss.name == "CrossEntropy"
    assert settings().loss.name == "kd"
