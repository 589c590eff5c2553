"""Every kdsweep symbol the benchmark uses, imported in this one place.

The benchmark imports kdsweep like any user would; the other modules of ``benchmarks/`` take
kdsweep's Python API from here only, so a change to that API is an edit of this file (and
of the call sites named beside each symbol). Importing this module imports torch.

The benchmark also uses kdsweep's command line (``python -m kdsweep``, rows c, d, i and j,
see sweeps.py and fronts.py) and its config groups by name (``data=digits``, ``loss=ce``,
``hparams_search=kd``, ``hparams_search=kd_front``, ``hydra/sweeper=kdsweep``,
``optimizer.lr``, ``trainer.*``).
"""

from __future__ import annotations

from kdsweep.config.schema import TrainerConf

# Configs: SyntheticData(size=, test_size=) (bench, memory); KnowledgeDistillation(
# temperature=, soft_target_weight=, ce_weight=) (loops); TrainerConf(epochs=, batch_size=, device=,
# progress=, objective=), also read: seed, eval_batch_size; replaced: precision,
# channels_last, compile (loops, gpu).
# Data: load_splits(conf) -> TensorSplits (.to(), train/val/test x and y, input_shape,
# num_classes, fingerprint, nbytes); TensorSplits(...) is built positionally in loops.
# Streamed: ImageFolderData(root=, workers=, cache_dir=).load() -> TensorSplits whose
# train/val/test x are ImageSplits (len, slices, .dataset.indices) (streamed).
from kdsweep.data import DigitsData, ImageFolderData, SyntheticData, TensorSplits, load_splits

# Objectives: CrossEntropy(), KnowledgeDistillation(temperature=, ...) (loops, gpu, memory).
from kdsweep.losses import CrossEntropy, KnowledgeDistillation

# Models: deep_nn / light_nn(input_shape, num_classes, width=) -> SeedNet (loops, gpu,
# memory, fronts).
from kdsweep.nets import SeedNet, deep_nn, light_nn

# Costs: measure_costs(network, input_shape, device, which) -> {name: value}; COSTS, the
# names it measures (fronts).
from kdsweep.nets.costs import COSTS, measure_costs

# A search's front: front_trials(study) -> its non-dominated completed trials;
# front_hypervolume(study, reference) -> float, objectives minimized (fronts).
from kdsweep.results.front import front_hypervolume
from kdsweep.sweep.arms import front_trials

# A teacher's outputs per batch: TeacherSource(logits=) (loops, gpu, memory).
from kdsweep.training.batches import TeacherSource

# Devices: resolve_device("auto" | "cpu" | "cuda" | ...) -> torch.device (bench).
from kdsweep.training.devices import resolve_device

# Training: fit(model, objective, optimizer, train_x, train_y, val_x, val_y, trainer,
# train_source, val_source) (loops, gpu, memory).
from kdsweep.training.loop import fit

# Teacher outputs: cached_source(teacher, teacher_key, split, inputs, cache_dir,
# need_logits=True, need_hidden=False), passed positionally (loops, gpu, memory).
from kdsweep.training.teacher_outputs import cached_source

__all__ = [
    "COSTS",
    "CrossEntropy",
    "DigitsData",
    "ImageFolderData",
    "KnowledgeDistillation",
    "SeedNet",
    "SyntheticData",
    "TeacherSource",
    "TensorSplits",
    "TrainerConf",
    "cached_source",
    "deep_nn",
    "fit",
    "front_hypervolume",
    "front_trials",
    "light_nn",
    "load_splits",
    "measure_costs",
    "resolve_device",
]
