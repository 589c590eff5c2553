"""Hyperparameter sweeps: a sweep is one run of ``kdsweep -m`` over a persistent Optuna
study. It asks the study for trials, launches each as a Hydra job (a training run whose
overrides carry the sampled parameters), and tells the study how each ended; a rerun, or
another worker on the same storage, continues the same study until n_trials are finished.

The parts:

- ``settings``: the sweeper's options as one checked ``SweepSettings``; the search space.
- ``checks``: the start-up checks, before any study, run or file exists.
- ``drift``: what defines a study, so a rerun with other settings cannot silently continue.
- ``core``: ``StudySweep``, the sweep's state and the one job path: ask -> launch -> tell.
- ``jobs``: a job for one Optuna trial (search, baseline or confirmation), how one ended.
- ``baseline``: the references the report compares against (the CE baseline run).
- ``arms``: what the confirmation compares: the search's trials ranked, the top ones, the
  ablation (no teacher), the reference setting and CE at the default recipe.
- ``confirm``: the confirmation stage, the candidates retrained with fresh paired seeds,
  in the companion study that also holds the CE baseline.
- ``recovery``: what a dead or interrupted sweeper left behind, made whole.
- ``studies``: Optuna storages, the pruner, the cross-process study lock, trial ids.
- ``liveness``: whether a trial's sweeper is alive: Optuna's heartbeat, and its pid.
- ``workers``: ``hydra.sweeper.workers``: one command starts K sweep loops on the study,
  watches them, replaces a dead one once, and finishes the sweep itself.
- ``worker_slots``: which worker sees which GPU and how many CPU threads each gets (pure).
- ``parent_run``: the study's MLflow parent run; closing runs a dead job left open.
- ``live``: the one live progress line on a terminal.
- ``trial_hooks``: the job's side: per-epoch reports to its trial, so the pruner can act.

The Hydra plugin (``hydra_plugins.kdsweep_sweeper``) builds a ``StudySweep``; nothing is
imported here, so that a job (which needs only ``trial_hooks``) stays light.
"""
