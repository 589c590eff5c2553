"""``kdsweep-report``: the command line that rebuilds a sweep's report from its stored
Optuna study (no training) or lists the studies in a storage.

    kdsweep-report --storage sqlite:///optuna.db --study kd_search [--out DIR]
    kdsweep-report --storage journal:optuna.journal.log --list
    python -m kdsweep.report.cli ...  (the same)

Errors a user can fix print one line ``kdsweep-report: error: ...`` and exit 2.
Heavy modules (optuna, matplotlib) are imported only once the arguments are parsed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from kdsweep.core.boundary import command
from kdsweep.core.errors import KdsweepError, first_line
from kdsweep.core.secrets import mask_secrets
from kdsweep.core.stores import WHOSE, existing_store_kind, journal_file, storage_file

PROG = "kdsweep-report"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Rebuild the multirun report of a kdsweep Optuna sweep from its storage.",
    )
    parser.add_argument(
        "--storage",
        required=True,
        help="Optuna storage URL: sqlite:///optuna.db, journal:PATH, postgresql://...",
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--study", help="name of the study to report on")
    what.add_argument("--list", action="store_true", help="list the studies in the storage")
    parser.add_argument(
        "--out", help="output folder (default: multirun_reports/<study name> under the cwd)"
    )
    return parser


def _open(url: str) -> Any:
    from kdsweep.sweep.studies import open_storage

    # Reading must not create: a typo in the path would otherwise yield an empty new study DB,
    # and opening MLflow's database as a study storage would add Optuna's tables to it.
    path = storage_file(url)
    if path is not None and not path.is_file():
        raise KdsweepError(
            f"--storage {url}: no such file {str(path)!r}: pass the sweep's"
            " hydra.sweeper.storage (e.g. sqlite:///optuna.db)"
        )
    kind = existing_store_kind(url) or "empty"
    if journal_file(url) is None and kind != "optuna":
        raise KdsweepError(
            f"--storage {url} is {WHOSE[kind]}, not an Optuna storage: pass the"
            " sweep's hydra.sweeper.storage (e.g. sqlite:///optuna.db), not tracking.uri"
        )
    return open_storage(url, read_only=True)


def _list(storage: Any, url: str, names: list[str]) -> None:
    import optuna
    from optuna.trial import TrialState

    from kdsweep.sweep.arms import ranked_trials
    from kdsweep.sweep.studies import count_states

    if not names:
        print(f"no studies in {mask_secrets(url)}")
        return
    header = ("study", "trials", "complete", "pruned", "fail", "running", "best")
    table = [header]
    for name in names:
        study = optuna.load_study(study_name=name, storage=storage)
        counts = count_states(study)
        ranked = ranked_trials(study)
        table.append(
            (
                name,
                str(sum(counts.values())),
                str(counts[TrialState.COMPLETE]),
                str(counts[TrialState.PRUNED]),
                str(counts[TrialState.FAIL]),
                str(counts[TrialState.RUNNING]),
                f"{ranked[0].values[0]:.2f}" if ranked else "-",
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        print("  ".join(cells).rstrip())


def _report(storage: Any, url: str, names: list[str], name: str, out: str | None) -> Path:
    if name not in names:
        known = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
        hint = f"studies there: {known}" if names else "it has no studies"
        raise KdsweepError(f"no study named {name!r} in {url} ({hint})")
    import optuna

    from kdsweep.report import report_dir_for, write_report
    from kdsweep.sweep.confirm import confirm_study_name

    def load(study_name: str) -> optuna.Study:
        # A cheap sampler: the report never samples, and TPE's setup would only cost time.
        sampler = optuna.samplers.RandomSampler()
        return optuna.load_study(study_name=study_name, storage=storage, sampler=sampler)

    confirm = confirm_study_name(name)
    out_dir = Path(out) if out else report_dir_for("multirun_reports", name)
    return write_report(
        load(name),
        out_dir,
        storage_url=url,
        confirm_study=load(confirm) if confirm in names else None,
    )


@command(
    PROG, interrupted="each report file is whole (written atomically); rerun to write them all"
)
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from optuna.exceptions import OptunaError
    from sqlalchemy.exc import SQLAlchemyError

    try:
        storage = _open(args.storage)
        names = sorted(s.study_name for s in storage.get_all_studies())
        if args.list:
            _list(storage, args.storage, names)
            return 0
        index = _report(storage, args.storage, names, args.study, args.out)
    except OSError as exc:
        raise KdsweepError(str(exc)) from exc
    except (SQLAlchemyError, OptunaError) as exc:
        # The storage back ends' own errors for a locked, corrupt or unreachable database
        # (SQLAlchemy wraps the driver's, psycopg2's): one line, not a traceback.
        raise KdsweepError(f"{args.storage}: {type(exc).__name__}: {first_line(exc)}") from exc
    print(index)
    return 0


if __name__ == "__main__":
    sys.exit(main())
