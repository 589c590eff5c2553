"""The ``width`` multiplier of kdsweep's own networks: the student's size as a setting
(``+model.width=0.5``, or a search dimension, ``+model.width=choice(0.5,1,2)``).

Every conv's channels and every hidden layer's units scale with it, rounded to the
nearest whole unit; the input, the classes and the layers' arrangement do not change. At
1.0 a network is exactly the published one (same state_dict), so a config that does not
set ``width`` keeps its meaning: conf/model leaves the key out and the builders default it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from kdsweep.core.errors import ConfigError

KEY = "model.width"


def scaled(units: Sequence[int], width: float, network: str) -> list[int]:
    """``units`` (channels, hidden units) times ``width``, rounded half up. A width that
    is not a finite number, or so small that a layer would have no unit left, is one line
    naming ``model.width`` and the range that builds ``network``."""
    narrowest = min(units)
    # round half up: the narrowest layer keeps one unit down to half a unit's worth
    smallest = 0.5 / narrowest
    number = isinstance(width, (int, float)) and not isinstance(width, bool)
    if not number or not math.isfinite(width) or width < smallest:
        raise ConfigError(
            f"{KEY} must be a finite number >= {smallest:g} for {network} (its narrowest"
            f" layer, {narrowest} wide, keeps at least 1 unit; 1.0 is the published"
            f" network), got {width!r}"
        )
    return [math.floor(n * width + 0.5) for n in units]
