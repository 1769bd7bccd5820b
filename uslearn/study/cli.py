"""`uslearn study`: Run a hyperparameter study (Ray Tune + Optuna, trials logged to MLflow)."""

from __future__ import annotations

import argparse

from uslearn.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `study` sub-command to the top-level parser."""
    parser = sub.add_parser(
        "study",
        help="Run a hyperparameter study (Ray Tune + Optuna, trials logged to MLflow).",
        description="Run a hyperparameter study (Ray Tune + Optuna, trials logged to MLflow).",
    )
    parser.set_defaults(func=_not_yet)


def _not_yet(args: argparse.Namespace) -> int:
    raise UserError("'uslearn study' is not available yet (it lands with the studies issue)")
