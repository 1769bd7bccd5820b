"""``uslearn train``: one strategy, one dataset, one run; flags come from the config dataclasses."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from pathlib import Path

from uslearn.config import load_yaml
from uslearn.strategies.registry import STRATEGY_NAMES, config_classes

# Flags whose name in the issue/paper differs from the config field.
ALIASES = {"image_size": ["--size"]}
_SKIP = {"strategy", "workers"}


def _config_fields() -> dict[str, tuple[dataclasses.Field, type, list[str]]]:
    """Return field name -> (field, its type, the strategies that read it), registry order."""
    out: dict[str, tuple[dataclasses.Field, type, list[str]]] = {}
    for strategy in STRATEGY_NAMES:
        for cls in config_classes(strategy):
            hints = typing.get_type_hints(cls)
            for f in dataclasses.fields(cls):
                if f.name not in _SKIP:
                    out.setdefault(f.name, (f, hints[f.name], []))[2].append(strategy)
    return out


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``uslearn train`` to the top-level parser."""
    parser = sub.add_parser(
        "train",
        help=f"Train one strategy ({', '.join(STRATEGY_NAMES)}) on a dataset directory.",
        description=(
            "Train one strategy on a dataset directory and evaluate it as the paper does: thresholds "
            "fitted on validation, per-class precision/recall/F1 on test. Writes metrics.json, "
            "thresholds.json, per_class.csv, best.pt and checkpoint/ into --out."
        ),
    )
    parser.add_argument(
        "--data",
        required=True,
        type=Path,
        help="dataset directory (e.g. made by 'uslearn data phantom')",
    )
    parser.add_argument("--strategy", required=True, choices=STRATEGY_NAMES)
    parser.add_argument(
        "--out",
        required=True,
        type=Path,
        help="output directory for metrics, thresholds and checkpoints",
    )
    parser.add_argument("--config", type=Path, help="YAML file of config keys (flags override it)")
    parser.add_argument(
        "--mlflow",
        metavar="URI",
        help="log one MLflow run (params, metrics, artifacts) to this tracking URI",
    )
    parser.add_argument(
        "--experiment", default="uslearn-train", help="MLflow experiment name (with --mlflow)"
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue from --out/checkpoint if it exists"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="DDP processes on this machine (gloo on CPU, nccl on GPUs); --batch-exams is per process",
    )
    group = parser.add_argument_group(
        "run configuration (default; the strategies that read it, when not all of them)"
    )
    fields = _config_fields()
    for name, (f, kind, strategies) in fields.items():
        flag = "--" + name.replace("_", "-")
        readers = "" if len(strategies) == len(STRATEGY_NAMES) else f"; {', '.join(strategies)}"
        doc = f"({f.default}{readers})"
        if kind is bool:
            group.add_argument(
                flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=doc
            )
        else:
            group.add_argument(flag, *ALIASES.get(name, []), dest=name, default=None, help=doc)
    parser.set_defaults(func=_train, _config_fields=list(fields))


def _train(args: argparse.Namespace) -> int:
    from uslearn.errors import UserError
    from uslearn.strategies import evaluation, resolved_config, run

    config = load_yaml(args.config) if args.config else {}
    config.update(
        {
            name: getattr(args, name)
            for name in args._config_fields
            if getattr(args, name) is not None
        }
    )
    config["strategy"] = args.strategy
    config["workers"] = args.workers
    resolved = resolved_config(config)  # validates every key before any work starts
    resume_from = (
        args.out / "checkpoint"
        if args.resume and (args.out / "checkpoint" / "checkpoint.pt").is_file()
        else None
    )
    if args.resume and resume_from is None:
        print(f"no checkpoint in {args.out / 'checkpoint'}: starting from scratch", file=sys.stderr)
    if args.mlflow is not None:
        from uslearn.study.tracking import probe

        probe(args.mlflow)  # seconds, not MLflow's minutes of retries, for a wrong URI
    args.out.mkdir(parents=True, exist_ok=True)

    def show(metrics: dict[str, float], checkpoint: str | None) -> None:
        print(
            f"step {int(metrics['step']):>6}  loss {metrics.get('train/loss', float('nan')):.4f}  val F1 {metrics['val/f1_weighted']:.4f}",
            file=sys.stderr,
        )

    if args.workers > 1:
        if args.mlflow is not None or resume_from is not None:
            raise UserError(
                "--workers > 1 runs without --mlflow and --resume here; use a study (Ray Train) for those"
            )
        from uslearn.strategies.distributed import run_local_ddp

        final = run_local_ddp(config, args.data, args.workers, args.out)[0]
    elif args.mlflow is None:
        final = run(config, args.data, report=show, out_dir=args.out, resume_from=resume_from)
    else:
        run_name = f"{args.strategy}-seed{resolved['seed']}"
        final = _run_tracked(args, config, run_name, show, resume_from)
    import pandas as pd

    report = pd.read_csv(args.out / "per_class.csv", index_col="class")
    print(evaluation.format_report(report))
    print(
        json.dumps(
            {k: round(v, 4) for k, v in final.items() if "/" not in k or k.count("/") == 1},
            indent=1,
        )
    )
    print(f"outputs in {args.out}")
    if not final:
        raise UserError("training returned no metrics")
    return 0


def _run_tracked(
    args: argparse.Namespace, config: dict, run_name: str, show, resume_from
) -> dict[str, float]:
    """Train with one MLflow run, logged by the same path as a study's trials; return metrics."""
    from uslearn.data.dataset import Dataset
    from uslearn.study import tracking

    data = Dataset.open(args.data)
    tracked = tracking.TrackedRun(
        args.mlflow,
        tracking.experiment_id(args.mlflow, args.experiment),
        run_name,
        {"git_sha": tracking.git_sha()},
    )
    tracked.log_params(tracking.run_params(config, data.fingerprint))
    return tracking.tracked_run(tracked, config, data, args.out, show, resume_from)
