"""Hyperparameter sweeps: a sweep is one run of ``kdsweep -m`` over a persistent Optuna
study. It asks the study for trials, launches each as a Hydra job (a training run whose
overrides carry the sampled parameters), and tells the study how each ended; a rerun, or
another worker on the same storage, continues the same study until n_trials are finished.

The parts:

- ``settings``: the sweeper's options as one checked ``SweepSettings``; the search space.
- ``core``: ``StudySweep``, ask -> launch -> tell, resume, stale trials, the baseline.
- ``finish``: the end of an invocation: best trial, report, the parent run's summary.
- ``studies``: Optuna storages (``storage_file``), the pruner, the cross-process study
  lock, trial ids, heartbeats and the stale trials of dead sweepers.
- ``parent_run``: the study's MLflow parent run; closing runs a dead job left open.
- ``trial_hooks``: the job's side: per-epoch reports to its trial, so the pruner can act.

The Hydra plugin (``hydra_plugins.kdsweep_sweeper``) builds a ``StudySweep``; nothing is
imported here, so that a job (which needs only ``trial_hooks``) stays light.
"""
