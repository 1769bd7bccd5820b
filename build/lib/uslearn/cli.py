"""``uslearn`` command line: one dispatcher; each room registers its own sub-commands.

Sub-command modules must keep heavy imports (torch, ray, mlflow) inside their handlers so that
``uslearn --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
import traceback

from uslearn import __version__
from uslearn.errors import EnvError, UserError, describe_os_error, is_environment_error
from uslearn.log import configure


def build_parser() -> argparse.ArgumentParser:
    """Return the top-level parser with every sub-command (data, train, study, report, and
    register, predict, curate: using a trained model)."""
    from analysis import cli as report_cli
    from uslearn import predict_cli, study_cli, train_cli
    from uslearn.data import cli as data_cli
    from uslearn.phantom import cli as phantom_cli

    parser = argparse.ArgumentParser(
        prog="uslearn",
        description=(
            "Deep clustering (PICA, LSD), FixMatch and fine-tuning of ResNet18 for multi-label "
            "abdominal ultrasound, run as Ray + MLflow studies. Start with "
            "'uslearn data phantom --preset demo --out data/demo' or 'python studies/lambda_sensitivity.py'."
        ),
    )
    parser.add_argument("--version", action="version", version=f"uslearn {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-v: debug)"
    )
    sub = parser.add_subparsers(
        dest="command", metavar="{data,train,study,report,register,predict,curate}"
    )
    sub.required = True
    phantom_cli.register(data_cli.register(sub))
    train_cli.register(sub)
    study_cli.register(sub)
    report_cli.register(sub)
    predict_cli.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the process exit code.

    2 for bad input (``UserError``), 1 for a fault of the machine (``EnvError``, or an OSError
    such as disk full or permission denied), each as one line on stderr; ``-v`` adds the
    traceback of the latter.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    configure(args.verbose)
    try:
        return int(args.func(args) or 0)
    except UserError as err:
        print(f"uslearn {args.command}: error: {err}", file=sys.stderr)
        return 2
    except (EnvError, OSError) as err:
        if isinstance(err, OSError) and not is_environment_error(err):
            raise
        if args.verbose:
            traceback.print_exc()
        text = describe_os_error(err) if isinstance(err, OSError) else str(err)
        print(f"uslearn {args.command}: error: {text}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"uslearn {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
