"""The training objectives, behind one interface so the loop never branches on them.

Each loss is a dataclass whose fields are its config keys and their defaults:
``conf/loss/<name>.yaml`` starts from the ``_target_`` node made of them
(kdsweep.config.schema); ``hydra.utils.instantiate`` builds it once, its fields typing the
keys and ``__post_init__`` checking their ranges (kdsweep.config.targets). Adding a loss
is one subclass of Objective exported here and one YAML naming
``/schema/loss/<Class>`` (or, outside kdsweep, a YAML with its ``_target_`` and keys).

- base: the interface (Objective, StepInputs, LossOutput, Taps: the layers it reads);
- tutorial: the seed tutorial's CE, KD, cosine and MultiMargin;
- logits: DIST and DKD;
- features: attention transfer and the hint, on stage feature maps.

The package imports torch only inside the formulas, so that a config is checked (and a
typo refused) before torch's ~2 s import. Each loss returns its total and its unweighted
component terms (for logging). Formulas follow the seed notes (DESIGN.md section 5).
"""

from kdsweep.losses.base import (
    LossOutput,
    Objective,
    StepInputs,
    Taps,
    check_weights,
    dry_run,
)
from kdsweep.losses.features import AttentionTransfer, Hint
from kdsweep.losses.logits import DIST, DKD
from kdsweep.losses.tutorial import (
    CosineHidden,
    CrossEntropy,
    KnowledgeDistillation,
    MultiMargin,
    soft_target_loss,
)

__all__ = [
    "DIST",
    "DKD",
    "AttentionTransfer",
    "CosineHidden",
    "CrossEntropy",
    "Hint",
    "KnowledgeDistillation",
    "LossOutput",
    "MultiMargin",
    "Objective",
    "StepInputs",
    "Taps",
    "check_weights",
    "dry_run",
    "soft_target_loss",
]
