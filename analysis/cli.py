"""`uslearn report`: Write a study's figures, tables and HTML report from its MLflow runs."""

from __future__ import annotations

import argparse

from uslearn.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `report` sub-command to the top-level parser."""
    parser = sub.add_parser(
        "report",
        help="Write a study's figures, tables and HTML report from its MLflow runs.",
        description="Write a study's figures, tables and HTML report from its MLflow runs.",
    )
    parser.set_defaults(func=_not_yet)


def _not_yet(args: argparse.Namespace) -> int:
    raise UserError("'uslearn report' is not available yet (it lands with the analysis issue)")
