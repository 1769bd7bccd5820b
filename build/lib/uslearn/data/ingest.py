"""The import engine shared by the folder and DICOM importers.

Planned items (files, each giving one or more manifest records) are decoded in parallel worker
processes, in a bounded window of chunks consumed in submission order, so the result is the
same for any number of workers and memory stays flat however many images there are. Accepted
images are appended to the store of a ``DatasetWriter``; at the end the manifest gets its
splits, ``import_report.json`` is written beside it and the dataset is renamed into place.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from uslearn.data.dataset import CLASSES, STORE, DatasetError
from uslearn.data.rejected import FILTER_REASONS, Rejection, show_skipped, write_rejected
from uslearn.data.splits import GIVEN, assign_splits
from uslearn.data.writer import DatasetWriter, die_with_parent
from uslearn.log import get_logger, progress

log = get_logger(__name__)

REPORT = "import_report.json"
# A decode result per record: (image or None, reason, detail).
Outcome = tuple[np.ndarray | None, str, str]


@dataclass
class Item:
    """One source file: the picklable ``task`` a worker decodes and the records it yields.

    Attributes:
        source: the file's path relative to the input folder (errors, rejected.csv).
        task: argument of the decode function (must pickle; keep it small).
        records: one manifest record per image the file yields (a DICOM file: per frame).
        frames: frame number of each record (None for single images), for rejected.csv.
        csv_line: the labels CSV line that lists the file, if one does.
    """

    source: str
    task: Any
    records: list[dict]
    frames: list[int | None] = field(default_factory=list)
    csv_line: int | None = None


def _worker_start(parent: int) -> None:
    """Make a decoding worker end when the import's process ends, however it ends.

    The worker's parent is the fork server, which exits when the import's process dies;
    ``die_with_parent`` turns that into a SIGKILL of the worker. The polling thread covers
    systems without it.
    """
    die_with_parent()

    def watch() -> None:
        while True:
            time.sleep(0.5)
            try:
                os.kill(parent, 0)
            except ProcessLookupError:
                os._exit(1)
            except PermissionError:
                pass

    threading.Thread(target=watch, daemon=True, name="uslearn-parent-watch").start()


def _run_chunk(fn: Callable[[Any], list[Outcome]], tasks: Sequence[Any]) -> list[list[Outcome]]:
    return [fn(task) for task in tasks]


# Modules the decode functions live in, imported once by the fork server, not per worker.
PRELOAD = ["uslearn.data.importers", "uslearn.data.dicom"]


class Workers:
    """The decoding processes of one import, shared by its passes (header scan, pixels).

    With ``n`` <= 1 everything runs in this process (no start-up cost; tests use it).
    Processes come from a fork server that has imported the decoders once: they start in
    milliseconds, and unlike plain ``fork`` they cannot inherit a lock held by a thread of
    the parent (Ray, tqdm, torch).
    """

    def __init__(self, n: int):
        self.n = max(1, int(n))
        self.pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> Workers:
        if self.n > 1:
            methods = multiprocessing.get_all_start_methods()
            context = multiprocessing.get_context(
                "forkserver" if "forkserver" in methods else "spawn"
            )
            if context.get_start_method() == "forkserver":
                context.set_forkserver_preload(PRELOAD)
            self.pool = ProcessPoolExecutor(
                max_workers=self.n,
                mp_context=context,
                initializer=_worker_start,
                initargs=(os.getpid(),),
            )
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
            self.pool = None

    def map(
        self, fn: Callable[[Any], Any], tasks: Sequence[Any], chunk_size: int = 0
    ) -> Iterator[Any]:
        """Yield ``fn(task)`` for every task, in order.

        At most ``2 * n`` chunks are in flight, so results never pile up in memory whatever
        the number of tasks; ``chunk_size`` 0 picks about four chunks per process (<= 32).
        """
        chunk_size = chunk_size or max(1, min(32, len(tasks) // (4 * self.n)))
        if self.pool is None or len(tasks) <= chunk_size:
            yield from map(fn, tasks)
            return
        chunks = [tasks[i : i + chunk_size] for i in range(0, len(tasks), chunk_size)]
        pending: list[Future] = []
        next_chunk = 0
        while pending or next_chunk < len(chunks):
            while next_chunk < len(chunks) and len(pending) < 2 * self.n:
                pending.append(self.pool.submit(_run_chunk, fn, chunks[next_chunk]))
                next_chunk += 1
            yield from pending.pop(0).result()


class StoreAppender:
    """Appends images to the store file of a ``DatasetWriter`` with ``os.pwrite``.

    Writing through the writer's memory map would keep every written page resident in this
    process (RSS grows by the whole store: ~5 GB for 100 000 images at 224 px); plain file
    writes go through the page cache, which the kernel can write back and drop.
    """

    def __init__(self, writer: DatasetWriter, block: int = 256):
        self.size, self.capacity, self.block = writer.size, writer.capacity, block
        self._fd: int | None = os.open(writer.tmp / STORE, os.O_RDWR)
        self._buffer: list[np.ndarray] = []
        self.rows = 0

    def append(self, image: np.ndarray) -> None:
        """Queue one (size, size) uint8 image as the next row."""
        if image.shape != (self.size, self.size) or image.dtype != np.uint8:
            raise DatasetError(f"image of shape {image.shape} {image.dtype}; expected store size")
        if self.rows + len(self._buffer) >= self.capacity:
            raise DatasetError(f"more images than the planned {self.capacity}")
        self._buffer.append(image)
        if len(self._buffer) >= self.block:
            self.flush()

    def flush(self) -> None:
        """Write the queued images to the file."""
        if self._buffer:
            data = np.stack(self._buffer).tobytes()
            os.pwrite(self._fd, data, self.rows * self.size * self.size)
            self.rows += len(self._buffer)
            self._buffer = []

    def close(self) -> None:
        """Flush and close the file (again: nothing)."""
        if self._fd is not None:
            self.flush()
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> StoreAppender:
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:  # on an error: close without writing the rest
            os.close(self._fd)
            self._fd = None


def decode_all(
    items: list[Item],
    decode: Callable[[Any], list[Outcome]],
    appender: StoreAppender,
    workers: Workers,
    skip_bad: bool,
    desc: str,
) -> tuple[list[dict], list[Rejection]]:
    """Decode every item into the store; return (records of stored rows, rejections).

    Raises:
        DatasetError: at the first item with a non-filter problem unless ``skip_bad``.
    """
    records: list[dict] = []
    rejections: list[Rejection] = []
    results = workers.map(decode, [item.task for item in items])
    for item, outcomes in progress(zip(items, results), total=len(items), desc=desc, unit="file"):
        frames = item.frames or [None] * len(item.records)
        for record, frame, (image, reason, detail) in zip(item.records, frames, outcomes):
            if image is not None:
                appender.append(image)
                records.append(record)
                continue
            if reason not in FILTER_REASONS and not skip_bad:
                where = item.source if frame is None else f"{item.source} (frame {frame})"
                raise DatasetError(
                    f"{where}: {reason}: {detail}. Fix or remove it, or pass --skip-bad to "
                    "skip such items and list them in the rejected file"
                )
            rejections.append(
                Rejection(item.source, frame, reason, detail, record["image_id"], item.csv_line)
            )
    appender.flush()
    return records, rejections


def build_manifest(records: list[dict]) -> pd.DataFrame:
    """Return the manifest frame of the stored records (split given or provisional)."""
    manifest = pd.DataFrame.from_records(records)
    given = manifest["split"].notna() & (manifest["split"] != "")
    manifest[GIVEN] = given.to_numpy()
    manifest["split"] = manifest["split"].where(given, "unlabelled")
    for cls in CLASSES:
        manifest[cls] = manifest[cls].astype(np.int8)
    return manifest


def finish_import(
    writer: DatasetWriter,
    appender: StoreAppender,
    records: list[dict],
    rejections: list[Rejection],
    report: dict,
    split_options: dict,
    rejected_path: Path,
    started: float,
) -> Path:
    """Assign splits, write the report and rejected list, commit; return the dataset path."""
    appender.close()
    if not records:
        raise DatasetError(
            f"no image could be imported ({len(rejections)} rejected, "
            f"{dict(Counter(r.reason for r in rejections))}); see the reasons above"
        )
    manifest = assign_splits(build_manifest(records), **split_options)
    seconds = time.perf_counter() - started
    labelled = (manifest[list(CLASSES)].to_numpy() >= 0).all(axis=1)
    report = {
        **report,
        "imported": len(manifest),
        "labelled": int(labelled.sum()),
        "unlabelled": int((~labelled).sum()),
        "patients": int(manifest["patient_id"].nunique()),
        "exams": int(manifest["exam_id"].nunique()),
        "rejected": dict(sorted(Counter(r.reason for r in rejections).items())),
        "rejected_total": len(rejections),
        "splits": manifest["split"].value_counts().to_dict(),
        "split_options": split_options,
        "seconds": round(seconds, 2),
        "images_per_second": round(len(manifest) / max(seconds, 1e-9), 1),
    }
    # Counts and settings only: no paths or identifiers, so the dataset can be shared.
    (writer.tmp / REPORT).write_text(json.dumps(report, indent=2, sort_keys=True))
    out = writer.commit(
        manifest, extra_meta={"import": {"imported": len(manifest)}}, n_rows=len(manifest)
    )
    write_rejected(rejections, rejected_path)
    show_skipped(rejections, rejected_path)
    log.info(
        "imported %d images (%d labelled) into %s in %.1f s; rejected %d %s",
        len(manifest),
        report["labelled"],
        out,
        seconds,
        len(rejections),
        report["rejected"],
    )
    return out
