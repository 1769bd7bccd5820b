"""``uslearn predict``, ``uslearn curate`` and ``uslearn register``: use a trained model.

Heavy imports (torch, mlflow, ray) stay inside the handlers so that ``uslearn --help`` stays
fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from uslearn.data.cli import add_salt, available_cores
from uslearn.errors import UserError
from uslearn.strategies import registry

MODEL_HELP = (
    "the model: a 'uslearn train --out' directory, runs:/RUN_ID or models:/NAME/VERSION "
    "(MLflow URIs are looked up in --mlflow)"
)


def _add_mlflow(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mlflow",
        metavar="URI",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or runs/mlflow.db)",
    )


def _add_model(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help=MODEL_HELP)
    _add_mlflow(parser)
    parser.add_argument(
        "--device", default="auto", help="auto (a GPU when there is one), cpu or cuda[:i]"
    )
    parser.add_argument(
        "--batch-size", type=int, default=256, help="images per forward pass (default 256)"
    )


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``predict``, ``curate`` and ``register`` to the top-level parser."""
    predict = sub.add_parser(
        "predict",
        help="Label images with a trained model: a dataset split, an image folder or a DICOM export.",
        description=(
            "Score images with a trained model and write one row per image: image, "
            "score_<class>, label_<class> (0/1 after the model's validation-fitted thresholds) "
            "and labels (';'-joined). Files are read with the import rules (crop, colour-Doppler "
            "rejection, letterbox resize); unreadable or rejected ones are skipped and listed "
            "in <out>.rejected.csv. With labelled data, also writes Fig. 7 (a gallery of "
            "correct and incorrect predictions per class) and prints the weighted F1. See "
            "docs/PREDICT.md."
        ),
    )
    _add_model(predict)
    source = predict.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, metavar="DIR", help="a dataset directory")
    source.add_argument(
        "--images", type=Path, metavar="DIR", help="a folder of PNG/JPEG/BMP/TIFF frames"
    )
    source.add_argument("--dicom", type=Path, metavar="DIR", help="a DICOM export folder")
    predict.add_argument("--split", help="with --data: only this split (default: every row)")
    predict.add_argument(
        "--out", required=True, type=Path, help="predictions file (.csv, or .parquet)"
    )
    predict.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    predict.add_argument(
        "--ray", action="store_true", help="score as a Ray Data pipeline (local Ray or a cluster)"
    )
    predict.add_argument("--address", help="with --ray: the cluster (default: $RAY_ADDRESS)")
    predict.add_argument(
        "--ray-actors", type=int, help="with --ray: scoring actors (default: one per GPU)"
    )
    predict.add_argument(
        "--workers",
        type=int,
        default=available_cores(),
        help="decoding processes for files (default: all available cores)",
    )
    # Files get the ids an import with this salt gives them: no path reaches the outputs.
    add_salt(predict, "--images/--dicom: ")
    predict.add_argument(
        "--max-frames", type=int, default=0, help="--dicom: frames per cine loop (0 = all)"
    )
    predict.set_defaults(func=_predict)

    curate = sub.add_parser(
        "curate",
        help="Browse what a clustering model found in a dataset and pick the images to label next.",
        description=(
            f"For a clustering model ({', '.join(registry.names('clustering'))}): per-cluster "
            "contact sheets of the most typical "
            "and most ambiguous images, one self-contained HTML page, proposed labels per image "
            "(CSV and Label Studio JSON) and a ranked list of the images whose labelling would "
            "help most. See docs/PREDICT.md."
        ),
    )
    _add_model(curate)
    curate.add_argument("--data", required=True, type=Path, help="a dataset directory")
    curate.add_argument("--split", help="only this split (default: every row)")
    curate.add_argument("--out", required=True, type=Path, help="output directory (new)")
    curate.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    curate.add_argument(
        "--per-sheet", type=int, default=12, help="typical and ambiguous images per sheet (12)"
    )
    curate.add_argument(
        "--rank", type=int, default=200, help="length of the to-label list (default 200)"
    )
    curate.set_defaults(func=_curate)

    reg = sub.add_parser(
        "register",
        help="Register a run's model in the MLflow model registry.",
        description=(
            "Register the model a finished run logged as models:/NAME/<next version>: a run by "
            "id, or the best trial (by validation F1) of a study's latest invocation, without "
            "running anything again."
        ),
    )
    which = reg.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", help="the MLflow run id")
    which.add_argument(
        "--study", help="a finished study's name: register the best trial of its latest run"
    )
    reg.add_argument("--name", required=True, help="registered model name")
    _add_mlflow(reg)
    reg.set_defaults(func=_register)


def _tracking_uri(args: argparse.Namespace, model: str | None = None) -> str:
    """Return the tracking URI, checked within seconds when the command will talk to it.

    ``model``: the --model given; a model folder needs no tracking server, a ``runs:/`` or
    ``models:/`` reference does (``register`` always does: it passes None).
    """
    from uslearn.paths import default_tracking_uri
    from uslearn.study.tracking_uri import probe

    uri = args.mlflow or default_tracking_uri()
    if model is None or model.startswith(("runs:/", "models:/")):
        probe(uri)  # seconds and one line, not MLflow's retries then "not found"
    return uri


def _inputs(args: argparse.Namespace) -> list:
    """Return what the command reads from disk: outputs may land in none of them."""
    model = Path(args.model)
    found = [getattr(args, name, None) for name in ("data", "images", "dicom")]
    return [*found, model if model.exists() else None]


def _open_source(args: argparse.Namespace, package):
    from uslearn.inference import sources

    if args.split is not None and args.data is None:
        raise UserError("--split applies to --data only")
    if args.data is not None:
        from uslearn.data.dataset import Dataset

        data = Dataset.open(args.data)
        package.check_data(data)
        return sources.from_dataset(data, args.split, package.preprocess)
    from uslearn.data.pseudonym import resolve_salt

    salt = resolve_salt(args.salt, args.insecure_default_salt)
    if args.images is not None:
        return sources.from_images(args.images, package.preprocess, salt)
    return sources.from_dicom(
        args.dicom, package.preprocess, salt, args.max_frames, max(1, args.workers)
    )


def _predict(args: argparse.Namespace) -> int:
    uri = _tracking_uri(args, args.model)  # before the heavy imports: seconds for a bad URI
    from uslearn.data.rejected import show_skipped, write_rejected
    from uslearn.inference import output
    from uslearn.inference.score import rejection_summary, score_source
    from uslearn.study.logged_models import open_model

    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size}: expected >= 1")
    if args.out.suffix not in (".csv", ".parquet"):
        raise UserError(f"--out {args.out}: expected a .csv or .parquet file")
    output.check_out(args.out, args.overwrite, _inputs(args), figure=args.data is not None)
    package = open_model(args.model, uri)
    source = _open_source(args, package)
    if args.ray:
        from uslearn.inference.ray_batch import score_source_ray

        scored = score_source_ray(
            package, source, args.batch_size, args.ray_actors, args.device, args.address
        )
        where = "Ray Data"
    else:
        package.to(args.device)
        scored = score_source(package, source, args.batch_size, max(1, args.workers))
        where = str(package.device)
    rejected = output.rejected_path(args.out)
    if scored.rejections:
        write_rejected(scored.rejections, rejected)
        show_skipped(scored.rejections, rejected)  # paths on the terminal only
    if not scored.image:
        raise UserError(
            f"no image could be scored ({rejection_summary(scored.rejections)}; see {rejected})"
        )
    frame = output.write_predictions(package, scored, args.out)
    print(
        f"{len(frame)} images scored in {scored.seconds:.1f} s ({scored.images_per_second:.0f} "
        f"img/s, decoding included, {where}) → {args.out}"
    )
    if scored.rejections:
        print(f"{rejection_summary(scored.rejections)}: listed in {rejected}")
    if source.data is not None:
        _labelled_report(package, scored, source.data, args.out)
    return 0


def _labelled_report(package, scored, data, out: Path) -> None:
    """Print the weighted F1 of the labelled rows and draw Fig. 7 beside ``out``."""
    from sklearn.metrics import f1_score

    from analysis.gallery import fig7, save_png
    from uslearn.inference import output

    found = output.labelled(package, scored, data)
    if not len(found):
        return
    f1 = f1_score(found.y_true, found.y_pred, average="weighted", zero_division=0)
    print(
        f"weighted F1 on the {len(found)} labelled images: {f1:.4f} (the model's thresholds, "
        "fitted on validation when it was trained)"
    )
    images = output.RowView(data.images, found.rows)
    figure = fig7(images, found.y_true, found.y_pred, found.scores, package.classes)
    print(f"Fig. 7: {save_png(figure, output.fig7_path(out))}")


def _curate(args: argparse.Namespace) -> int:
    uri = _tracking_uri(args, args.model)  # before the heavy imports: seconds for a bad URI
    import shutil
    import tempfile

    from analysis import curation as pictures
    from uslearn.data.dataset import Dataset
    from uslearn.data.target import check_output
    from uslearn.inference import curate, sources
    from uslearn.inference.output import RowView
    from uslearn.inference.score import score_source
    from uslearn.study.logged_models import open_model

    if args.per_sheet < 1 or args.rank < 1:
        raise UserError("--per-sheet and --rank: expected >= 1")
    check_output(args.out, args.overwrite, curate.CURATE, _inputs(args))
    package = open_model(args.model, uri)
    if not package.is_clustering:
        raise UserError(
            f"--model {args.model}: a {package.family} model ({package.strategy}); curate needs "
            f"a clustering model ({', '.join(registry.names('clustering'))}) whose clusters it can "
            "show"
        )
    data = Dataset.open(args.data)
    package.check_data(data)
    source = sources.from_dataset(data, args.split, package.preprocess)
    package.to(args.device)
    scored = score_source(package, source, args.batch_size, features=True)
    result = curate.curate(package, scored, data, args.per_sheet, args.rank)
    images = RowView(data.images, scored.rows)
    facts = {
        "model": args.model,
        **package.describe(),
        "data": f"{data.root} ({data.fingerprint})",
        "images": f"{len(scored.image)} ({args.split or 'every split'})",
        "clusters": f"{result.n_clusters} of {package.cluster_labels.shape[0]} hold images",
    }
    # Written beside the target and renamed into place: no half-written output, and an
    # existing folder stays until the new one is complete.
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{args.out.name}.partial-", dir=args.out.parent))
    try:
        curate.write_tables(result, package, data, tmp)
        sheets = pictures.write_sheets(result, images, tmp)
        pictures.write_page(result, sheets, images, facts, tmp)
        if args.out.exists():
            shutil.rmtree(args.out)
        tmp.rename(args.out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"{len(scored.image)} images in {result.n_clusters} clusters: contact sheets, "
        f"{len(result.ranking)} images to label next → {args.out / 'index.html'}"
    )
    return 0


def _register(args: argparse.Namespace) -> int:
    from uslearn.study.logged_models import register_best, register_run

    uri = _tracking_uri(args)
    if args.study is not None:
        print(register_best(uri, _latest_parent(uri, args.study), args.name))
        return 0
    version = register_run(uri, args.run, args.name)
    print(f"registered run {args.run} as models:/{args.name}/{version.version}")
    return 0


def _latest_parent(tracking_uri: str, study: str) -> str:
    """Return the id of the latest parent run (one invocation) of ``study``.

    Raises:
        UserError: the store has no run of that study.
    """
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    found = client.search_runs(
        experiments,
        f"tags.study = '{study}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
    )
    parents = [r for r in found if "mlflow.parentRunId" not in r.data.tags]
    if not parents:
        raise UserError(
            f"--study {study}: no finished run of that study in {tracking_uri} (its name is "
            "the study file's, e.g. lambda_sensitivity)"
        )
    return parents[0].info.run_id


__all__ = ["register"]
