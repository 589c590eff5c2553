"""kdsweep: knowledge-distillation experiments composed with Hydra, swept with Optuna,
tracked in MLflow."""

__version__ = "0.1.0"
