"""Where Hydra finds kdsweep's config groups."""

from pathlib import Path


def config_dir() -> str:
    """conf/ ships inside the wheel; a source checkout (editable install) uses the repo's."""
    package = Path(__file__).resolve().parents[1]
    packaged = package / "conf"
    if packaged.is_dir():
        return str(packaged)
    return str(package.parents[1] / "conf")
