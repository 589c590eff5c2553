"""Row j of the benchmark: the accuracy-vs-size search (``hparams_search=kd_front``: the
student's width, the KD knobs and the learning rate; costs [params]) through the
``kdsweep -m`` command line.

j1. Epochs trained by the front sweep with kdsweep's cost-aware pruning (median among
    the trials that cost no more: kdsweep.sweep.cost_pruning) against the same sweep
    unpruned, same sampler seed and trial count.
j2. The hypervolume of each sweep's front (val accuracy maximized, parameters minimized;
    kdsweep.results.front.front_hypervolume), both against one reference point: accuracy
    0 % and 1.1 x the largest parameter count on either front.
j3. What measuring a trial's costs takes (kdsweep.nets.costs.measure_costs, the costs a
    kd_front trial measures: params and macs), against the median wall time of one
    trial of the unpruned sweep. Timed in this process over every width of the search.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from pathlib import Path

from sweeps import PRUNING_DATA, Progress, run_sweep, train_teacher

SEARCH = ("hparams_search=kd_front",)
#: The widths hparams_search=kd_front chooses from (conf/hparams_search/kd_front.yaml).
WIDTHS = (0.125, 0.25, 0.5, 1.0, 2.0)
#: What a kd_front trial measures: the two every run logs, and its sweep's costs [params].
TRIAL_COSTS = ("params", "macs")


def _study(workdir: Path):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{workdir / 'optuna.db'}"
    (summary,) = optuna.get_all_study_summaries(storage)
    return optuna.load_study(study_name=summary.study_name, storage=storage)


def measure_front_pruning(
    root: Path,
    cache_dir: Path,
    n_trials: int,
    epochs: int,
    seed: int,
    extra: Sequence[str],
    timeout: float,
    progress: Progress,
) -> dict[str, object]:
    """Rows j1 and j2: the kd_front sweep with its own pruner (median among the
    cheaper-or-equal trials, from the first finished) and with none."""
    from _kdsweep_api import front_hypervolume, front_trials

    common = [
        f"trainer.epochs={epochs}",
        *PRUNING_DATA,
        f"hydra.sweeper.sampler.seed={seed}",
        # The search's own front is what is compared: no baseline, no confirmation.
        "hydra.sweeper.baselines=false",
        "hydra.sweeper.confirm.enabled=false",
        *extra,
    ]
    train_teacher(root, "j", cache_dir, common, timeout, progress)
    outcomes, studies = {}, {}
    arms = {"pruned": [], "none": ["hydra/sweeper/pruner=none"]}
    for name, pruner in arms.items():
        workdir = root / f"j-{name}"
        outcomes[name] = run_sweep(
            workdir,
            f"j-{name}",
            n_trials,
            cache_dir,
            SEARCH,
            [*pruner, *common],
            timeout,
            progress,
        )
        studies[name] = _study(workdir)
    fronts = {name: front_trials(study) for name, study in studies.items()}
    if not all(fronts.values()):
        raise RuntimeError("a sweep of row j completed no trial")
    largest = max(t.values[1] for front in fronts.values() for t in front)
    reference = (0.0, 1.1 * largest)  # minimized terms: -accuracy, params
    volumes = {name: front_hypervolume(study, reference) for name, study in studies.items()}
    pruned, full = outcomes["pruned"], outcomes["none"]
    return {
        "trials": n_trials,
        "epochs_per_trial": epochs,
        "epochs_pruned": pruned.epochs_trained,
        "epochs_unpruned": full.epochs_trained,
        "epochs_saved": 1 - pruned.epochs_trained / full.epochs_trained,
        "hypervolume_pruned": volumes["pruned"],
        "hypervolume_unpruned": volumes["none"],
        "hypervolume_ratio": volumes["pruned"] / volumes["none"],
        "reference_point": {"val_acc": 0.0, "params": reference[1]},
        "front_pruned": [[t.number, *t.values] for t in fronts["pruned"]],
        "front_unpruned": [[t.number, *t.values] for t in fronts["none"]],
        "states_pruned": pruned.states,
        "states_unpruned": full.states,
        "wall_s_pruned": pruned.wall_s,
        "wall_s_unpruned": full.wall_s,
        "trial_wall_s_median": statistics.median(full.trial_wall_s),
        "commands": [" ".join(o.command[1:]) for o in outcomes.values()],
    }


def measure_cost_measurement(repeats: int, progress: Progress) -> dict[str, float]:
    """Row j3's numerator: seconds measure_costs takes for one kd_front student (median
    over repeats of every width), for what a trial measures and for all three costs."""
    import torch

    from _kdsweep_api import COSTS, light_nn, measure_costs

    shape = (1, 8, 8)  # digits
    timings: dict[str, list[float]] = {"trial": [], "all": []}
    for _ in range(repeats):
        for width in WIDTHS:
            network = light_nn(input_shape=shape, num_classes=10, width=width)
            for key, which in (("trial", TRIAL_COSTS), ("all", COSTS)):
                started = time.perf_counter()
                measure_costs(network, shape, torch.device("cpu"), which)
                timings[key].append(time.perf_counter() - started)
    result = {
        "trial_costs_s": statistics.median(timings["trial"]),
        "all_costs_s": statistics.median(timings["all"]),
    }
    progress(
        f"j3: measuring {'+'.join(TRIAL_COSTS)} {1000 * result['trial_costs_s']:.1f} ms,"
        f" all three {1000 * result['all_costs_s']:.1f} ms (median)"
    )
    return result
