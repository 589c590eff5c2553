"""The multirun report of a sweep, rebuilt from the stored Optuna study alone (no training).

This package re-exports what its callers use: the summary, its first sentences, the files:

- :mod:`kdsweep.results.summary` reads the study into a :class:`Summary` and words it;
- :mod:`kdsweep.results.confirmed` (with :mod:`kdsweep.core.stats`): the confirmation
  stage's paired-seed comparison and its statistics;
- :mod:`kdsweep.report.plots` draws the figures (matplotlib);
- :mod:`kdsweep.report.render` writes index.html and report.md (Jinja2 templates in
  ``templates/``), trials.csv and the plots, and names a study's report folder;
- :mod:`kdsweep.report_cli` is the ``kdsweep-report`` command.

What the sweeper stores and the report reads: study user attrs ``baselines``,
``tutorial_trial_number``, ``search_space``, ``n_trials``, ``sampler``,
``mlflow_parent_run_id``; trial user attrs ``mlflow_run_id``, ``history``, ``metrics``,
``error``; of the confirmation study ``<study>:confirm``: ``arms``, ``current_arms``,
``seeds``, ``teacher_seed`` and per trial ``arm``, ``seed``, ``metrics``. Every one of
them may be missing.
"""

from __future__ import annotations

from kdsweep.report.render import report_dir_for, write_report, write_report_files
from kdsweep.results.summary import headline, lead, summarize

__all__ = [
    "headline",
    "lead",
    "report_dir_for",
    "summarize",
    "write_report",
    "write_report_files",
]
