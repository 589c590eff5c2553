"""A researcher's sweep: no silent no-ops (a rerun with other settings is refused, one that
finds nothing to do says so), trial-numbered job folders, a console a person reads, and the
README's sweep examples doing what their comments say."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from _helpers import FAST, load_trials, run, run_in_process, states, sweep_args

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # four sweeps through the CLI: ~9 s
def test_changed_settings_are_refused_and_nothing_to_do_is_said(
    tracked_workdir: Path, teacher_cache: Path
) -> None:
    args = sweep_args(tracked_workdir, "drift", 2, cache_dir=teacher_cache)
    first = run_in_process(tracked_workdir, args)
    assert first.returncode == 0, first.stderr[-3000:]
    trials = {
        t.number: t.state.name
        for t in load_trials(f"sqlite:///{tracked_workdir}/optuna.db", "drift")
    }
    assert trials == {0: "COMPLETE", 1: "COMPLETE"}
    # Job folders are named by the Optuna trial number.
    folders = sorted(p.name for p in (tracked_workdir / "multirun").iterdir() if p.is_dir())
    assert folders == ["trial-0", "trial-1"]

    again = run_in_process(tracked_workdir, args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "nothing to train" in again.stdout + again.stderr
    assert sorted(p.name for p in (tracked_workdir / "multirun").iterdir() if p.is_dir()) == folders
    # With Hydra's time-stamped sweep folders, a rerun that trains nothing makes none.
    stamped = [a for a in args if not a.startswith("hydra.sweep.dir=")]
    assert run_in_process(tracked_workdir, stamped).returncode == 0
    assert (
        not list(tracked_workdir.glob("multirun/20*"))
        and not (tracked_workdir / "outputs").exists()
    )

    changed = run_in_process(tracked_workdir, [*args, "trainer.epochs=2"])
    assert changed.returncode == 2
    (line,) = [ln for ln in changed.stderr.splitlines() if ln.startswith("kdsweep: error:")]
    assert "trainer.epochs: 1 -> 2" in line
    assert "hydra.sweeper.study_name=" in line and "allow_changed_settings=true" in line
    assert "Traceback" not in changed.stderr

    allowed = run_in_process(
        tracked_workdir,
        [*args, "trainer.epochs=2", "hydra.sweeper.n_trials=3",
         "hydra.sweeper.allow_changed_settings=true"],
    )  # fmt: skip
    assert allowed.returncode == 0, allowed.stderr[-3000:]
    done = load_trials(f"sqlite:///{tracked_workdir}/optuna.db", "drift")
    assert states(done) == {"COMPLETE": 3}


@pytest.mark.slow
def test_the_main_job_prints_at_most_40_lines(tracked_workdir: Path, teacher_cache: Path) -> None:
    """`kdsweep -m hparams_search=kd` (20 trials, 5-seed confirmation) on a non-terminal:
    one line a trial, a few for the stages, no control characters. A real process: its
    whole console is what is counted. It tracks into the seeded ./mlflow.db (the default)."""
    proc = run(tracked_workdir, ["-m", "hparams_search=kd", f"cache_dir={teacher_cache}",
                          "teacher.epochs=1", "trainer.device=cpu"], timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = (proc.stdout + proc.stderr).splitlines()
    assert len(lines) <= 40, "\n".join(lines)
    assert not any("\r" in ln or "\x1b" in ln for ln in lines)
    assert (
        sum(re.search(r"trial \d+ \(.*\): (COMPLETE|PRUNED)", ln) is not None for ln in lines) == 20
    )
    assert any("vs the same recipe without a teacher" in ln for ln in lines)


def readme_sweep_commands() -> list[tuple[str, str]]:
    """(command, comment) of each line of the README's sweep examples."""
    text = (REPO / "README.md").read_text()
    block = text.split("## Sweeps", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    out = []
    for line in block.strip().splitlines():
        command, _, comment = line.partition("  # ")
        out.append((command.strip(), comment.strip()))
    return out


@pytest.mark.slow
def test_the_readme_sweep_examples_do_what_their_comments_say(
    tracked_workdir: Path, teacher_cache: Path
) -> None:
    """Run in order in a fresh folder (tracking into its seeded ./mlflow.db), with tiny
    sizes (the same for every command, so they do not change the studies' settings): each
    trains what its comment says. In this process, but for the joblib example, whose
    workers are processes of their own anyway."""
    tiny = [*FAST, "teacher.epochs=1", f"cache_dir={teacher_cache}", "hydra.sweeper.n_trials=2",
            "hydra.sweeper.confirm.seeds=1", "hydra.sweeper.confirm.top_k=1",
            "data.size=200", "data.test_size=40"]  # fmt: skip
    commands = readme_sweep_commands()
    assert len(commands) == 8
    storage = f"sqlite:///{tracked_workdir}/optuna.db"

    def sweep(command: str) -> tuple[int, str]:
        words = shlex.split(command)[1:]  # without "kdsweep"
        words = [w.replace("n_trials=40", "n_trials=3") for w in words]
        extra = [t for t in tiny if not t.startswith("data.") or "data=synthetic" in words]
        if "data=synthetic" in words:  # one teacher epoch on 180 noisy images: near chance
            extra.append("teacher.allow_weak=true")
        if any(w.startswith("hydra.sweeper.n_trials=") for w in words):
            extra = [t for t in extra if not t.startswith("hydra.sweeper.n_trials=")]
        args = [*words[:2], *extra, *words[2:]]
        if "hydra/launcher=joblib" in words:
            proc = run(tracked_workdir, args, timeout=600)
        else:
            proc = run_in_process(tracked_workdir, args)
        return proc.returncode, proc.stdout + proc.stderr

    def finished(study: str) -> int:
        return sum(t.state.name in ("COMPLETE", "PRUNED") for t in load_trials(storage, study))

    results = [sweep(command) for command, _ in commands]
    codes = [code for code, _ in results]
    assert codes == [0, 0, 0, 2, 0, 0, 0, 0], [out[-2000:] for _, out in results]
    assert finished("kd-digits-light") == 3  # 2, nothing more, then continued to 3
    assert "nothing to train" in results[1][1]
    assert "trainer.epochs: 1 -> 3" in results[3][1]
    assert finished("kd-unpruned") == 2 and finished("kd-low-t") == 2
    low_t = [t.params["loss.temperature"] for t in load_trials(storage, "kd-low-t")]
    assert all(1 <= t <= 4 for t in low_t)
    assert finished("kd-synthetic-deep") == 2 and finished("kd-parallel") == 2
