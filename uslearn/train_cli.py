"""``uslearn train``: one strategy, one dataset, one run; flags come from the config dataclasses."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import json
import os
import re
import shutil
import sys
import typing
from collections.abc import Iterator
from pathlib import Path

from uslearn.config import load_yaml
from uslearn.data.cli import add_verify_data
from uslearn.data.dataset import Dataset
from uslearn.data.target import Output, check_output, normalise, target_lock
from uslearn.errors import EnvError, UserError, describe_os_error, is_environment_error
from uslearn.strategies.registry import STRATEGY_NAMES, config_classes, resolved_config
from uslearn.study.journal import FOLDER as JOURNAL_FOLDER
from uslearn.study.tracking import RUN_FILES

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
            "thresholds.json, per_class.csv, best.pt, package.json (--out is then a model package "
            "that 'uslearn predict --model' takes) and checkpoint/ into --out: a new or empty folder, "
            "or an earlier run's with --resume (same config; only the length may change) or "
            "--overwrite. With --mlflow the run logs the package as its MLflow model "
            "(runs:/RUN_ID/model). "
            "Exit 2 for bad input, 1 for a fault of the machine (disk full, permission denied)."
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
        "--resume",
        action="store_true",
        help="continue the run in --out from its checkpoint/ (same config; only --epochs or "
        "--steps may change)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run already in --out (its uslearn outputs only)",
    )
    add_verify_data(parser, "before training")
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
    # Everything a user gave is checked before torch is imported (seconds under load).
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
    if args.workers > 1 and (args.mlflow is not None or args.resume):
        raise UserError(
            "--workers > 1 runs without --mlflow and --resume here; use a study (Ray Train) for those"
        )
    if args.resume and args.overwrite:
        raise UserError("--resume continues the run in --out, --overwrite replaces it: give one")
    _check_init(resolved["init"])
    init = resolved["init"] if resolved["init"] not in ("random", "imagenet") else None
    check_out(args.out, args.resume, args.overwrite, [args.data, init, resolved.get("weights")])
    if args.mlflow is not None:
        from uslearn.study.tracking_uri import probe

        probe(args.mlflow)  # seconds, not MLflow's minutes of retries, for a wrong URI
    data = Dataset.open(args.data)
    if args.verify_data != "none":
        print(data.verify(args.verify_data), file=sys.stderr)
    with run_folder(args.out, args.resume, args.overwrite) as resume_from:
        final = _fit(args, config, data, resolved, resume_from)
    if not final:
        raise UserError("training returned no metrics")
    return 0


def _fit(
    args: argparse.Namespace, config: dict, data: Dataset, resolved: dict, resume_from
) -> dict[str, float]:
    """Train (imports torch), print the per-class table and the metrics; return them."""
    from uslearn.strategies import evaluation, run

    def show(metrics: dict[str, float], checkpoint: str | None) -> None:
        print(
            f"step {int(metrics['step']):>6}  loss {metrics.get('train/loss', float('nan')):.4f}  val F1 {metrics['val/f1_weighted']:.4f}",
            file=sys.stderr,
        )

    if args.workers > 1:
        from uslearn.strategies.distributed import run_local_ddp

        final = run_local_ddp(config, args.data, args.workers, args.out)[0]
    elif args.mlflow is None:
        final = run(config, data, report=show, out_dir=args.out, resume_from=resume_from)
    else:
        run_name = f"{args.strategy}-seed{resolved['seed']}"
        final = _run_tracked(args, config, data, run_name, show, resume_from)
    from uslearn.inference.package import PACKAGE_JSON, write_package

    if not (args.out / PACKAGE_JSON).is_file():  # a tracked run wrote it when logging its model
        write_package(args.out, data)  # --out is a model package ('uslearn predict --model')
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
    return final


def _run_tracked(
    args: argparse.Namespace, config: dict, data: Dataset, run_name: str, show, resume_from
) -> dict[str, float]:
    """Train with one MLflow run, logged by the same path as a study's trials; return metrics."""
    from uslearn.study import tracking

    tracked = tracking.TrackedRun(
        args.mlflow,
        tracking.experiment_id(args.mlflow, args.experiment),
        run_name,
        {"git_sha": tracking.git_sha()},
        run_dir=args.out,
    )
    # data_verified says how far the fingerprint logged was checked against the files.
    params = tracking.run_params(config, data.fingerprint, data_verified=args.verify_data)
    tracked.log_params(params)
    return tracking.tracked_run(tracked, config, data, args.out, show, resume_from)


def _check_init(init: str) -> None:
    """Refuse an ``init`` path that does not exist (before torch is imported to load it)."""
    if init not in ("random", "imagenet") and not Path(init).exists():
        raise UserError(
            f"--init {init}: no such file or folder; expected 'random', 'imagenet' or a "
            "clustering checkpoint (a .pt file or a run folder holding best.pt)"
        )


# What ``uslearn train`` writes into --out; any other name there is someone else's file.
OUTPUT_NAMES = frozenset((*RUN_FILES, "checkpoint", JOURNAL_FOLDER))
# Temporary files of ``uslearn.files.replacing`` (``.<name>.tmp-<pid>``) that a kill left.
_LEFTOVER = re.compile(r"\.(?P<name>.+)\.tmp-(?P<pid>\d+)")


def _is_leftover(path: Path) -> bool:
    found = _LEFTOVER.fullmatch(path.name)
    return found is not None and found["name"] in (*OUTPUT_NAMES, "checkpoint.pt")


def has_run(out: Path) -> bool:
    """Return True when ``out`` holds an earlier ``uslearn train``'s outputs.

    Its weights (``best.pt``, ``checkpoint/``) or its ``config.json`` (a resolved config:
    ``strategy`` and ``family``) say so; a file that merely shares a name does not.
    """
    saved = [out / "best.pt", out / "checkpoint" / "checkpoint.pt", out / "checkpoint" / "best.pt"]
    if any(path.is_file() for path in saved):
        return True
    try:
        config = json.loads((out / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and {"strategy", "family"} <= set(config)


def _foreign(out: Path) -> list[str]:
    """Return the names in ``out`` that an earlier ``uslearn train`` did not write."""
    if not out.is_dir():
        return []
    run = has_run(out)
    foreign = []
    for entry in out.iterdir():
        if _is_leftover(entry):
            continue
        if entry.name == "checkpoint" and entry.is_dir():
            # A killed run may leave checkpoint/ empty or with temporary files only.
            foreign += [
                f"checkpoint/{p.name}"
                for p in entry.iterdir()
                if not _is_leftover(p) and not (run and p.name in ("checkpoint.pt", "best.pt"))
            ]
        elif entry.name == JOURNAL_FOLDER and (entry / "run.json").is_file():
            continue  # the MLflow journal of a run started with --mlflow (study/journal.py)
        elif not (run and entry.name in RUN_FILES):
            foreign.append(entry.name)
    return sorted(foreign)


def _run_folder(out: Path) -> str:
    """Return "" when ``out`` holds nothing but an earlier run's outputs, else why not."""
    foreign = _foreign(out)
    if not foreign:
        return ""
    return (
        f"holds files that uslearn did not write ({', '.join(foreign[:3])}"
        f"{', ...' if len(foreign) > 3 else ''}); give a new or empty folder"
    )


RUN_FOLDER = Output("a uslearn run folder", True, _run_folder)


def check_out(out: Path, resume: bool, overwrite: bool, inputs: list = ()) -> None:
    """Refuse an --out that a run would mix with other files or replace without being asked.

    ``out`` may be new, empty, or hold only uslearn's outputs: those of an earlier run need
    ``--resume`` (with its checkpoint) or ``--overwrite``. It lies in none of ``inputs`` (the
    data, an --init checkpoint, --weights): ``check_output``'s rule. Nothing is written here.

    Raises:
        UserError: naming --out and what to do.
    """
    # An existing folder is the run's to continue or replace (below): overwrite=True here.
    check_output(out, True, RUN_FOLDER, inputs)
    if not has_run(out):
        return
    if resume and not (out / "checkpoint" / "checkpoint.pt").is_file():
        raise UserError(
            f"--resume: {out} holds a run's outputs but no checkpoint/checkpoint.pt to continue "
            "from; --overwrite trains it again from scratch"
        )
    if not (resume or overwrite):
        raise UserError(
            f"--out {out}: holds an earlier run; --resume continues it, --overwrite replaces it, "
            "or give a new --out"
        )


@contextlib.contextmanager
def run_folder(out: Path, resume: bool, overwrite: bool) -> Iterator[Path | None]:
    """Hold --out for one run; yield the checkpoint folder to resume from, or None.

    A lock beside ``out`` (``.<name>.lock``) keeps a second command from writing the same
    folder meanwhile; leftovers of a killed run's writes are removed, and with ``overwrite``
    the earlier run's outputs (other files stay: ``check_out`` refused any).

    Raises:
        UserError: another uslearn command holds the folder.
        EnvError: ``out`` cannot be created or written (permission denied, read-only disk).
    """
    out = normalise(out)
    checkpoint = out / "checkpoint"
    with contextlib.ExitStack() as stack:
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            stack.enter_context(target_lock(out))
            created = not os.path.lexists(out)
            out.mkdir(exist_ok=True)
            if not os.access(out, os.W_OK | os.X_OK):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(out))
            for folder in (out, checkpoint):
                for path in folder.glob(".*.tmp-*") if folder.is_dir() else []:
                    if _is_leftover(path):
                        path.unlink()
            if overwrite:
                for name in OUTPUT_NAMES:
                    target = out / name
                    shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
        except OSError as err:
            if not is_environment_error(err):
                raise
            raise EnvError(
                f"--out {describe_os_error(err, out, 'preparing the run folder')}"
            ) from err
        found = resume and (checkpoint / "checkpoint.pt").is_file()
        if resume and not found:
            print(f"no checkpoint in {checkpoint}: starting from scratch", file=sys.stderr)
        try:
            yield checkpoint if found else None
        except BaseException:
            if created:  # a run that failed before writing anything leaves no empty folder
                for folder in (checkpoint, out):
                    with contextlib.suppress(OSError):
                        folder.rmdir()
            raise
