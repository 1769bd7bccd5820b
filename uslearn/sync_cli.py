"""``uslearn sync PATH``: send the MLflow writes that runs kept while their server was away.

A run (``uslearn train --mlflow``, a study trial) journals every MLflow write in its folder
(``tracking/``, see ``uslearn.study.journal``) and keeps what the server did not take. A study's
``--resume`` sends its trials' kept writes; this command sends those of any run folder, or of
every run folder below a path (a study's storage), to the URI each run was logged to.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from uslearn.errors import EnvError, UserError


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``uslearn sync`` to the top-level parser."""
    parser = sub.add_parser(
        "sync",
        help="Send the MLflow writes that runs kept while their server was away.",
        description=(
            "Find the run folders at or below PATH whose MLflow journal (tracking/) holds writes "
            "the server did not take, and send them, in order and once, to the tracking URI "
            "each run was logged to (or --mlflow). Exit 1 while some cannot be sent."
        ),
    )
    parser.add_argument("path", type=Path, help="a run folder, or a folder holding run folders")
    parser.add_argument("--mlflow", metavar="URI", help="send to this tracking URI instead")
    parser.set_defaults(func=_sync)


def kept_runs(path: Path) -> list[Path]:
    """Return the run folders at or below ``path`` whose journal holds unsent writes."""
    from uslearn.study.journal import FOLDER, Journal

    journals = [path / FOLDER / "journal.jsonl"] if (path / FOLDER).is_dir() else []
    journals += sorted(path.rglob(f"*/{FOLDER}/journal.jsonl"))
    return [j.parent.parent for j in journals if Journal(j.parent.parent).pending()]


def _sync(args: argparse.Namespace) -> int:
    from uslearn.study.delivery import AT_END, replay
    from uslearn.study.journal import Journal
    from uslearn.study.tracking_uri import probe

    if not args.path.is_dir():
        raise UserError(f"{args.path}: not a folder (expected a run folder or a study's storage)")
    runs = kept_runs(args.path)
    if not runs:
        print(f"{args.path}: no run keeps MLflow writes; nothing to send")
        return 0
    left = 0
    for run_dir in runs:
        create = next((e for e in Journal(run_dir).entries if e["op"] == "create"), {})
        uri = args.mlflow or create.get("tracking_uri")
        if uri is None:
            raise UserError(f"{run_dir}: its journal does not name a tracking URI; pass --mlflow")
        probe(uri)
        still = replay(uri, run_dir, AT_END)
        left += still
        print(f"{run_dir}: {'sent' if not still else f'{still} write(s) still kept'} ({uri})")
    if left:
        raise EnvError(f"{left} write(s) could not be sent yet; run 'uslearn sync' again later")
    print(f"sent the kept writes of {len(runs)} run(s)", file=sys.stderr)
    return 0
