"""The repository itself: what the project needs must not be hidden by .gitignore.

A clean clone (CI, a new user) only has tracked files. A broad ignore pattern once hid
conf/data/ (``data/`` meant for downloaded data sets), so every run failed there with
"Could not find 'data/digits'" while passing in the working copy.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NEEDED = ("conf", "src", "tests", ".ci")


def _git(*args: str, ok: tuple[int, ...] = (0,)) -> list[str]:
    done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
    assert done.returncode in ok, done.stderr
    return [line for line in done.stdout.splitlines() if line]


@pytest.fixture(scope="module")
def in_git_checkout() -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout (an installed copy has no .gitignore to check)")


@pytest.mark.usefixtures("in_git_checkout")
def test_no_project_file_is_git_ignored() -> None:
    ignored = _git("ls-files", "--others", "--ignored", "--exclude-standard", "--", *NEEDED)
    generated = ("__pycache__/", ".pyc", ".pytest_cache/", ".ruff_cache/")
    hidden = [p for p in ignored if not any(g in p or p.endswith(g) for g in generated)]
    assert hidden == [], f"git ignores files the project needs: {hidden[:5]}"


@pytest.mark.usefixtures("in_git_checkout")
def test_every_config_group_option_would_reach_a_clone() -> None:
    # A config file the working copy has but git would neither track nor show as new.
    on_disk = {str(p.relative_to(ROOT)) for p in (ROOT / "conf").rglob("*.yaml")}
    # check-ignore exits 1 when none of the paths is ignored.
    ignored = set(_git("check-ignore", "--no-index", *sorted(on_disk), ok=(0, 1)))
    assert not ignored, f"ignored config files: {sorted(ignored)}"
    assert any(p.startswith("conf/data/") for p in on_disk - ignored)
