"""`uslearn train`: Train one strategy (pica, lsd, supervised, fixmatch_one, fixmatch_two) on a dataset directory."""

from __future__ import annotations

import argparse

from uslearn.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `train` sub-command to the top-level parser."""
    parser = sub.add_parser(
        "train",
        help="Train one strategy (pica, lsd, supervised, fixmatch_one, fixmatch_two) on a dataset directory.",
        description="Train one strategy (pica, lsd, supervised, fixmatch_one, fixmatch_two) on a dataset directory.",
    )
    parser.set_defaults(func=_not_yet)


def _not_yet(args: argparse.Namespace) -> int:
    raise UserError("'uslearn train' is not available yet (it lands with the strategies issue)")
