"""``uslearn data ...``: import, import-dicom, import-labelstudio, split, check, gallery, locate
(phantom: uslearn/phantom).

Heavy imports stay inside the handlers so that ``uslearn --help`` stays fast.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from uslearn.config import finite_float
from uslearn.errors import UserError


def register(sub: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """Add the ``data`` command group to the top-level parser; return its sub-parsers.

    ``uslearn data phantom`` is added to them by the phantom package (``uslearn/cli.py``).
    """
    parser = sub.add_parser(
        "data",
        help="Datasets: import folders+CSV or DICOM exports, generate the synthetic phantom, split by patient, check, gallery.",
        description="Build, split, check and look at dataset directories (manifest.parquet + images.u8 + meta.json). See docs/DATA.md.",
    )
    data_sub = parser.add_subparsers(
        dest="data_command",
        metavar="{import,import-dicom,import-labelstudio,phantom,split,check,gallery,locate}",
    )
    data_sub.required = True
    _add_import(data_sub)
    _add_import_dicom(data_sub)
    _add_import_labelstudio(data_sub)
    _add_split(data_sub)
    _add_check(data_sub)
    _add_gallery(data_sub)
    _add_locate(data_sub)
    return data_sub


VERIFY_CHOICES = ("sample", "full", "none")


def add_verify_data(parser: argparse.ArgumentParser, when: str) -> None:
    """Add ``--verify-data sample|full|none`` (default sample) to a command that reads a dataset."""
    parser.add_argument(
        "--verify-data",
        choices=VERIFY_CHOICES,
        default="sample",
        help=f"check the dataset against its meta.json {when}: the manifest and a 16 MiB sample "
        "of the store (default), every byte (full), or not at all (none)",
    )


def _fraction_or_count(text: str) -> float:
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text}: expected a fraction in [0, 1) or a count >= 1")
    return value


def _add_split_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "splits (by patient; a value < 1 is a fraction of the labelled exams, >= 1 a count)"
    )
    group.add_argument(
        "--val", type=_fraction_or_count, default=0.2, help="validation exams (default 0.2)"
    )
    group.add_argument(
        "--test", type=_fraction_or_count, default=0.25, help="test exams (default 0.25)"
    )
    group.add_argument(
        "--labelled",
        type=_fraction_or_count,
        default=None,
        help="labelled training exams (default: every remaining labelled patient)",
    )
    group.add_argument("--seed", type=int, default=0, help="seed of the patient shuffle")


def available_cores() -> int:
    """Return the cores this process may run on (the default of every --workers)."""
    if hasattr(os, "sched_getaffinity"):  # Linux: the cores this process may run on
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def add_salt(parser: argparse.ArgumentParser, when: str = "") -> None:
    """Add ``--salt`` and ``--insecure-default-salt`` (see ``pseudonym.resolve_salt``)."""
    parser.add_argument("--salt", help=f"{when}pseudonymisation secret (default: $USLEARN_SALT)")
    parser.add_argument(
        "--insecure-default-salt",
        action="store_true",
        help=f"{when}use the public default salt (test data only: pseudonyms can be recomputed)",
    )


def _add_common_import(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="dataset directory to create")
    parser.add_argument(
        "--size", type=int, default=224, help="stored image side in pixels (default 224)"
    )
    add_salt(parser)
    parser.add_argument(
        "--workers",
        type=int,
        default=available_cores(),
        help="decoding processes (default: all available cores)",
    )
    parser.add_argument(
        "--skip-bad",
        action="store_true",
        help="skip unreadable/invalid items and list them in the rejected file instead of stopping",
    )
    parser.add_argument("--rejected", type=Path, help="rejected list (default: <out>.rejected.csv)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing uslearn dataset at --out (never any other folder or file)",
    )
    # Removed: source paths in the manifest broke the privacy rule (docs/DATA.md). Kept as a
    # hidden flag so that old scripts get a clear message rather than "unrecognized argument".
    parser.add_argument("--keep-paths", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--crop",
        choices=("auto", "none"),
        default="auto",
        help="crop to the ultrasound region before resizing (default auto)",
    )
    parser.add_argument(
        "--doppler-fraction",
        type=finite_float,
        default=0.01,
        help="reject a frame whose region has more coloured pixels than this (default 0.01); 1 keeps all",
    )
    parser.add_argument(
        "--doppler-chroma",
        type=int,
        default=64,
        help="a pixel is coloured when max-min of R,G,B exceeds this (default 64)",
    )
    _add_split_options(parser)


def _add_import(data_sub: argparse._SubParsersAction) -> None:
    parser = data_sub.add_parser(
        "import",
        help="import a folder of PNG/JPEG/BMP/TIFF frames and a labels CSV",
        description="Import image files listed in a labels CSV (columns path, patient_id, exam_id, labels[, split]).",
    )
    parser.add_argument(
        "--images", required=True, type=Path, help="folder the CSV paths are relative to"
    )
    parser.add_argument("--labels", type=Path, help="labels CSV (see docs/DATA.md)")
    parser.add_argument(
        "--include-unlisted",
        action="store_true",
        help="also import image files the CSV does not list, as unlabelled",
    )
    _add_common_import(parser)
    parser.set_defaults(func=_run_import)


def _add_import_dicom(data_sub: argparse._SubParsersAction) -> None:
    parser = data_sub.add_parser(
        "import-dicom",
        help="import a DICOM (PACS) export",
        description="Import every image frame under a DICOM folder; labels come from an optional CSV (path or sop_instance_uid, labels[, frame, split]).",
    )
    parser.add_argument("--dicom", required=True, type=Path, help="root folder of the export")
    parser.add_argument("--labels", type=Path, help="optional labels CSV (see docs/DATA.md)")
    parser.add_argument(
        "--max-frames",
        type=int,
        default=0,
        help="take at most this many evenly spaced frames of a cine loop (default 0 = all)",
    )
    _add_common_import(parser)
    parser.set_defaults(func=_run_import_dicom)


def _add_import_labelstudio(data_sub: argparse._SubParsersAction) -> None:
    parser = data_sub.add_parser(
        "import-labelstudio",
        help="write a new dataset version with the labels of a Label Studio JSON export",
        description=(
            "Read Label Studio's JSON export of a project made from 'uslearn curate' tasks and "
            "write a new dataset: the source's images (hard-linked), the annotated labels, and "
            "per image where its label came from (label_source: proposal_accepted, corrected, "
            "new or source). The source dataset is not touched. See docs/DATA.md."
        ),
    )
    parser.add_argument("--export", required=True, type=Path, help="Label Studio's JSON export")
    parser.add_argument(
        "--data", required=True, type=Path, help="the dataset the curate tasks were made from"
    )
    parser.add_argument("--out", required=True, type=Path, help="the new dataset directory")
    parser.add_argument(
        "--on-conflict",
        choices=("refuse", "latest", "majority"),
        default="refuse",
        help="when an image's annotations disagree: refuse (default), take the last updated "
        "one, or the label set most annotations chose (a tie is refused)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing uslearn dataset at --out"
    )
    parser.set_defaults(func=_run_import_labelstudio)


def _run_import_labelstudio(args: argparse.Namespace) -> int:
    from uslearn.data.relabel import import_labelstudio

    for line in import_labelstudio(
        args.data, args.export, args.out, args.on_conflict, args.overwrite
    ):
        print(line)
    return 0


def _settings(args: argparse.Namespace):
    from uslearn.data.images import Preprocess
    from uslearn.data.importers import ImportSettings

    if args.keep_paths:
        raise UserError(
            "--keep-paths was removed: source paths may hold patient names and nothing persisted "
            "may hold them; 'uslearn data locate' maps image ids back to files"
        )
    if args.workers < 1:
        raise UserError(f"--workers {args.workers}: expected at least 1")
    if not 0 <= args.doppler_fraction <= 1:
        raise UserError(f"--doppler-fraction {args.doppler_fraction}: expected 0..1")
    return ImportSettings(
        preprocess=Preprocess(
            size=args.size,
            crop=args.crop,
            doppler_fraction=args.doppler_fraction,
            doppler_chroma=args.doppler_chroma,
        ),
        workers=args.workers,
        skip_bad=args.skip_bad,
        overwrite=args.overwrite,
        splits={"val": args.val, "test": args.test, "labelled": args.labelled, "seed": args.seed},
        rejected=args.rejected,
    )


def _run_import(args: argparse.Namespace) -> int:
    from uslearn.data.importers import check_size, import_folder
    from uslearn.data.pseudonym import resolve_salt

    check_size(args.size)
    salt = resolve_salt(args.salt, args.insecure_default_salt)
    out = import_folder(
        args.images, args.labels, args.out, salt, _settings(args), args.include_unlisted
    )
    return _summarise(out)


def _run_import_dicom(args: argparse.Namespace) -> int:
    from uslearn.data.dicom import import_dicom
    from uslearn.data.importers import check_size
    from uslearn.data.pseudonym import resolve_salt

    check_size(args.size)
    salt = resolve_salt(args.salt, args.insecure_default_salt)
    out = import_dicom(args.dicom, args.out, salt, _settings(args), args.labels, args.max_frames)
    return _summarise(out)


def _summarise(out: Path) -> int:
    import json

    from uslearn.data.ingest import REPORT

    report = json.loads((out / REPORT).read_text())
    print(
        f"{out}: imported {report['imported']} images ({report['labelled']} labelled, "
        f"{report['patients']} patients, {report['exams']} exams); "
        f"rejected {report['rejected_total']} {report['rejected']}"
    )
    print(f"splits: {report['splits']}; next: uslearn data check {out}")
    return 0


def _add_split(data_sub: argparse._SubParsersAction) -> None:
    parser = data_sub.add_parser(
        "split",
        help="assign labelled/unlabelled/val/test by patient (keeps splits given in the CSV)",
        description="Reassign splits by patient in place (the image store is not rewritten).",
    )
    parser.add_argument("dataset", type=Path)
    _add_split_options(parser)
    parser.set_defaults(func=_run_split)


def _run_split(args: argparse.Namespace) -> int:
    from uslearn.data.dataset import Dataset
    from uslearn.data.splits import assign_splits, split_counts, write_splits

    dataset = Dataset.open(args.dataset)
    manifest = assign_splits(
        dataset.manifest, val=args.val, test=args.test, labelled=args.labelled, seed=args.seed
    )
    dataset = write_splits(dataset, manifest)
    print(split_counts(dataset.manifest).to_string())
    print(f"fingerprint {dataset.fingerprint}; next: uslearn data check {args.dataset}")
    return 0


def _add_check(data_sub: argparse._SubParsersAction) -> None:
    parser = data_sub.add_parser(
        "check",
        help="print counts and fail on leaks (patient in two splits, duplicate images) or gaps",
        description="Exit status 1 when a problem is found (see docs/DATA.md, 'Checks').",
    )
    parser.add_argument("dataset", type=Path)
    parser.add_argument(
        "--near-duplicate",
        type=finite_float,
        default=0.9,
        help="correlation from which two images count as near-duplicates (default 0.9; >1 disables)",
    )
    parser.add_argument(
        "--verify",
        choices=("full", "sample", "none"),
        default="full",
        help="check the files against meta.json's hashes: every byte (default), a 16 MiB sample, or not",
    )
    parser.add_argument(
        "--no-fingerprint", action="store_true", help="same as --verify none (kept for old scripts)"
    )
    parser.set_defaults(func=_run_check)


def _run_check(args: argparse.Namespace) -> int:
    from uslearn.data.check import check_dataset
    from uslearn.data.dataset import Dataset

    verify = "none" if args.no_fingerprint else args.verify
    report = check_dataset(Dataset.open(args.dataset), args.near_duplicate, verify=verify)
    print(report.format())
    return 0 if report.ok else 1


def _add_gallery(data_sub: argparse._SubParsersAction) -> None:
    parser = data_sub.add_parser(
        "gallery", help="write a labelled PNG grid of sample images per class and split"
    )
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="PNG file to write")
    parser.add_argument("--per-class", type=int, default=6, help="images per class (default 6)")
    parser.add_argument("--split", help="only this split (default: all, spread)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an earlier gallery at --out"
    )
    parser.set_defaults(func=_run_gallery)


def _run_gallery(args: argparse.Namespace) -> int:
    from uslearn.data.dataset import Dataset
    from uslearn.data.gallery import write_gallery

    dataset = Dataset.open(args.dataset)
    print(write_gallery(dataset, args.out, args.per_class, args.split, args.overwrite))
    return 0


def _add_locate(data_sub: argparse._SubParsersAction) -> None:
    parser = data_sub.add_parser(
        "locate",
        help="print the source file of image ids (e.g. from a rejected list), on this terminal only",
        description=(
            "Recompute the pseudonyms of the files under --images or --dicom with the import's "
            "salt and print the file of each given image id. Nothing is written: the output "
            "names source files and belongs on the operator's terminal."
        ),
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", type=Path, help="the folder given to 'data import'")
    source.add_argument("--dicom", type=Path, help="the folder given to 'data import-dicom'")
    parser.add_argument("ids", nargs="*", help="image ids (i-...); '-f' ids, or a rejected list")
    parser.add_argument(
        "--rejected", type=Path, help="a rejected list: locate every image_id in it"
    )
    parser.add_argument("--salt", help="the import's salt (default: $USLEARN_SALT)")
    parser.add_argument("--insecure-default-salt", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=available_cores(), help="header readers")
    parser.set_defaults(func=_run_locate)


def _run_locate(args: argparse.Namespace) -> int:
    from uslearn.data.locate import locate, read_ids
    from uslearn.data.pseudonym import resolve_salt

    salt = resolve_salt(args.salt, args.insecure_default_salt)
    ids = read_ids(args.ids, args.rejected)
    found = locate(ids, salt, images=args.images, dicom=args.dicom, workers=args.workers)
    for image_id in ids:
        print(f"{image_id}\t{found.get(image_id, '(not found: another folder or salt?)')}")
    return 0 if len(found) == len(set(ids)) else 1
