"""`uslearn data`: Datasets: import folders+CSV or DICOM exports, generate the synthetic phantom, split by patient, check, gallery."""

from __future__ import annotations

import argparse

from uslearn.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `data` sub-command to the top-level parser."""
    parser = sub.add_parser(
        "data",
        help="Datasets: import folders+CSV or DICOM exports, generate the synthetic phantom, split by patient, check, gallery.",
        description="Datasets: import folders+CSV or DICOM exports, generate the synthetic phantom, split by patient, check, gallery.",
    )
    parser.set_defaults(func=_not_yet)


def _not_yet(args: argparse.Namespace) -> int:
    raise UserError("'uslearn data' is not available yet (it lands with the datasets issue)")
