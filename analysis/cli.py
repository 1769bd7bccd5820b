"""`uslearn report`: Write a study's figures, tables and HTML report from its MLflow runs."""

from __future__ import annotations

import argparse
import os

from uslearn.config import finite_float


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `report` sub-command to the top-level parser."""
    parser = sub.add_parser(
        "report",
        help="Write a study's figures, tables and HTML report from its MLflow runs.",
        description=(
            "Write every figure (PNG + PDF) and table (CSV, Markdown, LaTeX) that a study's runs "
            "allow, and one self-contained report.html, then log them to the study's parent "
            "MLflow run under report/."
        ),
    )
    parser.add_argument("--study", required=True, help="study name (the runs' 'study' tag)")
    parser.add_argument(
        "--mlflow",
        "--tracking-uri",
        dest="tracking_uri",
        metavar="URI",
        default=None,
        help="MLflow tracking URI, as for train and study (default: $MLFLOW_TRACKING_URI or "
        "sqlite:///runs/mlflow.db); --tracking-uri is the same flag",
    )
    parser.add_argument(
        "--out", default=None, help="output directory (default: <runs dir>/reports/<study>)"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an earlier report at --out"
    )
    parser.add_argument(
        "--interval",
        choices=("t", "bootstrap"),
        default="t",
        help="confidence interval over seeds: Student t (default) or percentile bootstrap",
    )
    parser.add_argument("--level", type=finite_float, default=0.95, help="interval coverage (0.95)")
    parser.add_argument(
        "--invocation",
        default="latest",
        help="which run of the study: 'latest' (default), 'all', or a parent run id",
    )
    parser.add_argument("--checkpoint", default=None, help="clustering checkpoint for the t-SNE")
    parser.add_argument("--dataset", default=None, help="dataset directory for the t-SNE")
    parser.add_argument(
        "--log",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="log the report to the parent MLflow run (default: yes)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build the report; print where it is; return 0."""
    from uslearn.errors import UserError
    from uslearn.paths import default_tracking_uri, runs_dir

    if not 0.0 < args.level < 1.0:
        raise UserError(f"--level {args.level}: expected a coverage in (0, 1), e.g. 0.95")
    store = _require_store(args.tracking_uri or default_tracking_uri())
    from analysis.report import build_report
    from uslearn.data.target import Output, check_output

    out = args.out or runs_dir() / "reports" / args.study
    inputs = [store, args.checkpoint, args.dataset]
    check_output(out, args.overwrite, Output("an earlier report", True, _report_folder), inputs)
    report = build_report(
        args.study,
        out,
        args.tracking_uri,
        method=args.interval,
        level=args.level,
        invocation=args.invocation,
        checkpoint=args.checkpoint,
        dataset=args.dataset,
        log_to_mlflow=args.log,
    )
    print(report.html)
    for note in report.notes:
        print(f"note: {note}")
    return 0


def _report_folder(path) -> str:
    """Return "" when ``path`` is empty or holds an earlier report, else why not."""
    if not any(path.iterdir()) or (path / "report.html").is_file():
        return ""
    return "is not an earlier report (no report.html)"


def _require_store(uri: str) -> str | None:
    """Refuse a sqlite store that does not exist or is empty: MLflow would create one.

    Returns:
        The store's file (sqlite), None for a server or an in-memory store.
    """
    from uslearn.errors import UserError

    if uri.startswith(("http://", "https://")):
        from uslearn.study.tracking_uri import probe

        probe(uri)  # seconds and one line, not minutes of MLflow's retries
        return
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///").split("?", 1)[0]
    if path == ":memory:":
        return None
    if os.path.isfile(path) and os.path.getsize(path) > 0:
        return path
    raise UserError(
        f"no MLflow store at {path} (no runs yet, or another --mlflow / "
        "$MLFLOW_TRACKING_URI); nothing was created"
    )
