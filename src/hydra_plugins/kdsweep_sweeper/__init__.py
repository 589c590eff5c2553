"""kdsweep's Optuna sweeper for Hydra: pruning, resume, shared studies, reports."""
