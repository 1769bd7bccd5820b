"""The study command line: ``python studies/<name>.py [flags]`` or ``uslearn study <name> [flags]``.

Every study script ends with ``sys.exit(main(SPEC, __file__))`` (or a builder function in place
of ``SPEC`` when the spec depends on what exists, e.g. a deep-clustering checkpoint). It lives
outside ``uslearn/study`` (as ``train_cli.py`` lives outside the strategies) because it runs a
study and then its analysis report: the study room never imports the analysis. Heavy imports
(ray, torch, mlflow) stay inside functions so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import math
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

from uslearn.config import finite_float
from uslearn.data.cli import add_verify_data
from uslearn.errors import UserError
from uslearn.study.profiles import PROFILES
from uslearn.study.resources import PLACEMENTS, Resources
from uslearn.study.spec import StudySpec

StudyLike = StudySpec | Callable[[argparse.Namespace], StudySpec]
STUDIES_DIR = Path(__file__).resolve().parents[1] / "studies"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the flags every study takes to ``parser``."""
    parser.add_argument(
        "--profile", choices=list(PROFILES), help="default: gpu if a GPU is visible, else cpu-demo"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the latest run of this study (finished trials are kept)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the trials, the resource plan and a time estimate; run nothing",
    )
    parser.add_argument(
        "--mlflow",
        metavar="URI",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or runs/mlflow.db)",
    )
    parser.add_argument(
        "--address",
        metavar="ADDR",
        help="Ray cluster to connect to (default: $RAY_ADDRESS, else a local Ray)",
    )
    parser.add_argument(
        "--data",
        metavar="DIR",
        help="dataset directory (default: the profile's phantom under data/)",
    )
    parser.add_argument(
        "--storage",
        metavar="DIR",
        help="Tune experiment storage (default: runs/studies; shared storage on a cluster)",
    )
    parser.add_argument(
        "--max-concurrent",
        type=int,
        metavar="N",
        help="at most N trials at once (default: what fits)",
    )
    parser.add_argument(
        "--num-gpus-per-trial",
        type=finite_float,
        metavar="G",
        help="GPUs per trial (0.5 packs two trials per GPU)",
    )
    parser.add_argument(
        "--workers-per-trial", type=int, metavar="N", help="DDP workers per trial (Ray Train)"
    )
    parser.add_argument(
        "--cpus-per-worker", type=finite_float, metavar="C", help="CPU cores per worker"
    )
    parser.add_argument(
        "--placement",
        choices=PLACEMENTS,
        help="where a DDP trial's workers go: PACK (default, fewest nodes) or STRICT_SPREAD "
        "(one node each), as Ray's placement strategies",
    )
    parser.add_argument("--seeds", type=int, metavar="N", help="run only the first N seeds")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value for every trial (repeatable)",
    )
    add_verify_data(parser, "once, before Ray starts (trials do not hash it again)")
    parser.add_argument(
        "--dc-init",
        metavar="PATH",
        help="deep-clustering checkpoint for DC-init arms (default: best LSD run in MLflow)",
    )
    parser.add_argument(
        "--smoke-test",
        action="store_true",
        help="one trial of the first cell on the tiny phantom, a few steps",
    )
    parser.add_argument(
        "--no-report", action="store_true", help="skip the analysis report at the end"
    )
    parser.add_argument(
        "--register",
        metavar="NAME",
        help="register the best trial by validation F1 as models:/NAME/<next version>",
    )


def _scalar(text: str) -> int | float | bool | str:
    """Return ``text`` as an int, float or bool when it reads as one, else the string."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def parse_sets(items: list[str]) -> dict[str, int | float | bool | str]:
    """Return ``--set KEY=VALUE`` items as a dict of scalars (the configs check the types).

    Raises:
        UserError: an item without ``=``, or a value that reads as nan or infinity.
    """
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {item!r}: expected KEY=VALUE")
        scalar = _scalar(value.strip())
        if isinstance(scalar, float) and not math.isfinite(scalar):
            raise UserError(f"--set {item.strip()}: expected a finite number")
        out[key.strip()] = scalar
    return out


def main(study: StudyLike, study_file: str, argv: list[str] | None = None) -> int:
    """Run a study from its script; return the exit code (2 for a user error)."""
    from uslearn.log import configure

    name = Path(study_file).stem
    try:  # the study's own docstring (its methods paragraph) is its --help text
        about = ast.get_docstring(ast.parse(Path(study_file).read_text())) or ""
    except (OSError, SyntaxError):
        about = ""
    parser = argparse.ArgumentParser(
        prog=f"studies/{name}.py",
        description=about,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    parser.add_argument("-v", "--verbose", action="count", default=0)
    args = parser.parse_args(argv)
    configure(args.verbose)
    given = sys.argv[1:] if argv is None else argv
    args.invocation = shlex.join(["python", _relative(study_file), *given])
    try:
        return run(study, args, study_file)
    except UserError as err:
        print(f"{name}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{name}: interrupted; continue with --resume", file=sys.stderr)
        return 130


def _resources(base: Resources, args: argparse.Namespace) -> Resources:
    """Return the profile's per-trial resources with the command-line overrides applied."""
    workers = args.workers_per_trial or base.workers
    gpus = base.gpus_per_worker
    if args.num_gpus_per_trial is not None:
        gpus = args.num_gpus_per_trial / workers
    cpus = args.cpus_per_worker or base.cpus_per_worker
    placement = getattr(args, "placement", None) or base.placement
    return Resources(
        workers=workers, gpus_per_worker=gpus, cpus_per_worker=cpus, placement=placement
    )


# Flags that shape the trials: a resumed run must rebuild exactly the plan it started with.
PLAN_OPTIONS = (
    "seeds",
    "set",
    "workers_per_trial",
    "num_gpus_per_trial",
    "cpus_per_worker",
    "placement",
    "smoke_test",
)


def plan_options(args: argparse.Namespace) -> dict:
    """Return the plan-shaping flags of ``args`` (saved with the run for ``--resume``)."""
    return {key: getattr(args, key) for key in PLAN_OPTIONS}


def _reuse_options(args: argparse.Namespace, saved: dict) -> None:
    """Set the plan-shaping flags of a resumed run from ``saved``; refuse different ones."""
    for key, value in saved.items():
        given = getattr(args, key, None)
        if given not in (None, [], False) and given != value:
            flag = "--" + key.replace("_", "-")
            raise UserError(
                f"--resume: {flag} {given!r} differs from the interrupted run's {value!r}; "
                "resume with the same flags (or none) or start a new run"
            )
        setattr(args, key, value)


def _relative(path: str) -> str:
    here = Path(path).resolve()
    try:
        return str(here.relative_to(STUDIES_DIR.parent))
    except ValueError:
        return str(here)


def run(study: StudyLike, args: argparse.Namespace, study_file: str) -> int:
    """Resolve, validate and run (or dry-run) a study; return the exit code."""
    from uslearn import paths
    from uslearn.study import dryrun, session
    from uslearn.study.spec import make_plan, validate

    args.tracking_uri = session.absolute_uri(args.mlflow or paths.default_tracking_uri())
    spec = study(args) if callable(study) else study
    storage = Path(args.storage).resolve() if args.storage else paths.runs_dir() / "studies"
    state, exp_dir = {}, None
    if args.resume:
        from uslearn.study.runner import latest_state

        exp_dir, state = latest_state(storage, spec.name)
        args.tracking_uri = args.mlflow and args.tracking_uri or state["tracking_uri"]
        _reuse_options(args, state.get("options", {}))
    profile, why = session.choose_profile(args, state)
    if state and profile != state["profile"]:
        raise UserError(
            f"--resume: the run being resumed ({exp_dir}) used profile '{state['profile']}', "
            f"not '{profile}'; drop --profile or start a new run"
        )
    prof = PROFILES[profile]
    res = _resources(spec.resources.get(profile, prof.resources), args)
    plan = make_plan(
        spec, profile, resources=res, num_seeds=args.seeds, overrides=parse_sets(args.set)
    )
    if args.smoke_test:
        plan = session.smoke(plan)
    validate(plan)
    print(session.header(plan, why, Path(study_file).name))
    data_path = session.data_path(args, state, plan)
    if args.dry_run:
        cluster = session.cluster_resources(args.address)
        counts, per_exam = session.dataset_counts(data_path)
        print(dryrun.describe(plan, cluster, counts, per_exam, args.max_concurrent))
        return 0
    from uslearn.study.runner import Invocation, execute, new_exp_dir
    from uslearn.study.tracking_uri import probe

    # Seconds, before Ray starts and before a phantom is generated (MLflow's own retries take
    # minutes to give up on an unreachable server).
    probe(args.tracking_uri)
    dataset = session.ensure_dataset(data_path, plan, args.smoke_test)
    verify = getattr(args, "verify_data", "sample")
    if verify != "none":
        # Once, here: the trials open the dataset without hashing it, and log this fingerprint.
        print(dataset.verify(verify))
    if state and state.get("fingerprint") != dataset.fingerprint:
        raise UserError(
            f"--resume: {data_path} changed since the study started (fingerprint "
            f"{dataset.fingerprint}, was {state.get('fingerprint')}); start a new run instead"
        )
    inv = Invocation(
        exp_dir=exp_dir or new_exp_dir(storage, spec.name, profile),
        tracking_uri=args.tracking_uri,
        data_path=dataset.root.resolve(),
        fingerprint=dataset.fingerprint,
        study_file=_relative(study_file),
        resume=args.resume,
        max_concurrent=args.max_concurrent,
        options=plan_options(args),
        command=getattr(args, "invocation", ""),
    )
    frame = execute(plan, inv, args.address)
    print(session.footer(plan, inv, frame))
    if not args.no_report:
        print("\n".join(report_lines(spec.name, inv)))
    if args.register:  # after the report: a refused registration loses nothing
        from uslearn.study.logged_models import register_best

        print(register_best(inv.tracking_uri, parent_run_id(inv), args.register))
    return 0 if (frame["status"] == "ok").all() else 1


def parent_run_id(inv) -> str:
    """Return the MLflow parent run id of a study invocation (from its state file)."""
    from uslearn.study.runner import STATE_FILE

    return json.loads((inv.exp_dir / STATE_FILE).read_text())["parent_run_id"]


def report_lines(study: str, inv) -> list[str]:
    """Write the analysis report of this invocation; return the lines naming its files."""
    from analysis.report import build_report

    parent = parent_run_id(inv)
    try:
        report = build_report(
            study,
            inv.exp_dir / "report",
            inv.tracking_uri,
            invocation=parent,
            dataset=inv.data_path,
        )
    except UserError as err:
        return [f"report: not written ({err})"]
    lines = [f"report: {report.html}"]
    for section in report.sections:
        figures = [str(p) for p in section.files if p.suffix == ".png"]
        if figures:
            lines.append(f"  {section.title}: {', '.join(figures)}")
    lines += [f"  note: {n}" for n in report.notes]
    return lines


def load_study(name: str) -> tuple[StudyLike, str]:
    """Return (SPEC or build function, file) of ``studies/<name>.py`` or of a path.

    Raises:
        UserError: no such study file, or it defines neither ``SPEC`` nor ``build``.
    """
    path = Path(name)
    if path.suffix != ".py":
        # The working directory's studies/ first (a checkout), then the package's own.
        candidates = [Path.cwd() / "studies" / f"{name}.py", STUDIES_DIR / f"{name}.py"]
        path = next((c for c in candidates if c.is_file()), candidates[-1])
    if not path.is_file():
        known = sorted(p.stem for p in STUDIES_DIR.glob("*.py"))
        raise UserError(f"no study file {path}; known studies: {known}")
    module_spec = importlib.util.spec_from_file_location(f"uslearn_studies.{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    study = getattr(module, "SPEC", None) or getattr(module, "build", None)
    if study is None:
        raise UserError(f"{path}: defines neither SPEC nor build(args)")
    return study, str(path)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``study`` sub-command to the top-level parser."""
    parser = sub.add_parser(
        "study",
        help="Run a study of studies/ (Ray Tune + Optuna, trials logged to MLflow).",
        description="Run a study of studies/ (e.g. lambda_sensitivity), flags as for its script.",
    )
    parser.add_argument("name", help="study name in studies/ or path of a study file")
    add_arguments(parser)
    parser.set_defaults(func=_run_command)


def _run_command(args: argparse.Namespace) -> int:
    study, file = load_study(args.name)
    args.invocation = shlex.join(["uslearn", *sys.argv[1:]])
    return run(study, args, file)
