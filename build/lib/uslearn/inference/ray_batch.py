"""``uslearn predict --ray``: the same scoring as ``score.score_source``, as a Ray Data pipeline.

    from_items(work items) → map_batches(decode, CPU tasks) → map_batches(_ActorScorer, actors)

Decoding (the import rules of ``sources.Decoder``) runs as stateless CPU tasks spread over the
cluster; scoring runs in a pool of actors that each receive the model package once, on one
GPU each when the cluster has GPUs (else on CPUs). Every output row carries its work item and
frame position, so the driver restores the source order: the result equals the single-process
one (same ids, same rejections; scores equal up to float rounding of other batch shapes).

Workers read the inputs by path: on a multi-node cluster the dataset or image folder must be
on storage every node sees (the same requirement as a study's dataset).
"""

from __future__ import annotations

import os
import time

import numpy as np

from uslearn.data.rejected import Rejection
from uslearn.errors import UserError
from uslearn.inference.package import ModelPackage
from uslearn.inference.score import Scored
from uslearn.inference.sources import Decoder, Source, encode_task
from uslearn.log import get_logger, progress_enabled
from uslearn.strategies.evaluation import EVAL_BATCH

log = get_logger(__name__)


def _decode_batch(batch: dict[str, np.ndarray], decoder: Decoder) -> dict[str, np.ndarray]:
    """Return one row per image of the batch's work items: ids, positions, pixels or a reason."""
    outcomes = decoder(list(batch["task"]))
    size = decoder.preprocess.size
    rows: dict[str, list] = {k: [] for k in ("item", "sub", "image", "frame", "reason", "detail")}
    pixels = []
    for item, ids, frames, results in zip(batch["item"], batch["ids"], batch["frames"], outcomes):
        for sub, (image_id, frame, (image, reason, detail)) in enumerate(zip(ids, frames, results)):
            rows["item"].append(int(item))
            rows["sub"].append(sub)
            rows["image"].append(str(image_id))
            rows["frame"].append(int(frame))
            rows["reason"].append(reason)
            rows["detail"].append(detail)
            pixels.append(image if image is not None else np.zeros((size, size), np.uint8))
    out = {k: np.array(v) for k, v in rows.items()}
    out["pixels"] = np.stack(pixels) if pixels else np.zeros((0, size, size), np.uint8)
    return out


class _ActorScorer:
    """A Ray Data actor: loads the model once, then scores the decoded batches it is given."""

    def __init__(self, package: ModelPackage, device: str, threads: int):
        import torch

        torch.set_num_threads(max(1, threads))
        self.package = package.to(device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = batch["reason"] == ""
        n, c = len(ok), len(self.package.classes)
        scores = np.full((n, c), np.nan)
        cluster = np.full(n, -1, dtype=np.int64)
        if ok.any():
            scored = self.package.score(batch["pixels"][ok])
            scores[ok] = scored.scores
            if scored.cluster is not None:
                cluster[ok] = scored.cluster
        kept = {k: v for k, v in batch.items() if k != "pixels"}
        return {**kept, "scores": scores, "cluster": cluster}


def plan_resources(
    resources: dict[str, float], device: str, actors: int | None
) -> tuple[int, float, float]:
    """Return (actors, GPUs per actor, CPUs per actor) for the cluster's ``resources``.

    One actor per GPU when the cluster has GPUs and ``device`` allows them; on CPUs one actor
    per core (each actor runs torch on one thread), leaving the decoding tasks room to run.

    Raises:
        UserError: ``--device cuda`` on a cluster without GPUs.
    """
    gpus, cpus = resources.get("GPU", 0.0), resources.get("CPU", 1.0)
    if device.startswith("cuda") and gpus < 1:
        raise UserError(f"--device {device}: the Ray cluster has no GPU")
    if device != "cpu" and gpus >= 1:
        return actors or int(gpus), 1.0, 1.0
    return actors or max(1, int(cpus) - 1), 0.0, 1.0


def score_source_ray(
    package: ModelPackage,
    source: Source,
    batch_size: int = EVAL_BATCH,
    actors: int | None = None,
    device: str = "auto",
    address: str | None = None,
) -> Scored:
    """Score every image of ``source`` with a Ray Data pipeline; return it in source order.

    Args:
        package: the model (on the CPU; each actor moves its copy to its device).
        source: what to score.
        batch_size: work items per decode task and images per scoring call.
        actors: scoring actors (default: one per GPU, else one per CPU core but one).
        device: ``auto`` (GPUs when the cluster has them), ``cpu`` or ``cuda``.
        address: Ray cluster address (default: ``$RAY_ADDRESS``, else a new local Ray).
    """
    import ray
    from ray.data import DataContext

    started = time.perf_counter()
    owns_ray = not ray.is_initialized()
    if owns_ray:
        # "local" starts a Ray of our own: a bare ray.init() would join any cluster already
        # running on this machine, whose workers may run another installation.
        address = address or os.environ.get("RAY_ADDRESS") or "local"
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    try:
        context = DataContext.get_current()
        context.enable_progress_bars = progress_enabled()
        n_actors, gpus, cpus = plan_resources(ray.cluster_resources(), device, actors)
        log.info("Ray Data: %d scoring actor(s), %g GPU / %g CPU each", n_actors, gpus, cpus)
        items = [
            {
                "item": i,
                "task": encode_task(source.kind, item.task),
                "ids": [r["image_id"] for r in item.records],
                "frames": [-1 if f is None else int(f) for f in item.frames]
                or [-1] * len(item.records),
            }
            for i, item in enumerate(source.items)
        ]
        decoder = Decoder(source.kind, source.root, source.preprocess)
        scored = (
            ray.data.from_items(items)
            .map_batches(_decode_batch, fn_kwargs={"decoder": decoder}, batch_size=batch_size)
            .map_batches(
                _ActorScorer,
                fn_constructor_kwargs={
                    "package": package,
                    "device": "cuda" if gpus else "cpu",
                    "threads": int(cpus),
                },
                batch_size=batch_size,
                compute=ray.data.ActorPoolStrategy(size=n_actors),
                num_gpus=gpus,
                num_cpus=cpus,
            )
        )
        parts = list(scored.iter_batches(batch_format="numpy", batch_size=None))
    finally:
        if owns_ray:
            ray.shutdown()
    return _assemble(parts, source, time.perf_counter() - started)


def _assemble(parts: list[dict[str, np.ndarray]], source: Source, seconds: float) -> Scored:
    """Return the scored rows in source order (item, then frame position) and the rejections."""
    parts = [p for p in parts if len(p["item"])]
    if not parts:
        return Scored(image=[], scores=np.zeros((0, 0)), rejections=list(source.rejections))
    names = ("item", "sub", "image", "frame", "reason", "detail", "scores", "cluster")
    columns = {k: np.concatenate([p[k] for p in parts]) for k in names}
    order = np.lexsort((columns["sub"], columns["item"]))
    columns = {k: v[order] for k, v in columns.items()}
    ok = columns["reason"] == ""
    rejections = list(source.rejections)
    bad = {k: columns[k][~ok] for k in ("item", "frame", "reason", "detail", "image")}
    for item, frame, reason, detail, image_id in zip(*bad.values()):
        frame = None if int(frame) < 0 else int(frame)
        rejections.append(
            Rejection(
                source.items[int(item)].source, frame, str(reason), str(detail), str(image_id)
            )
        )
    cluster = columns["cluster"][ok]
    rows = None
    if source.kind == "data":
        rows = np.array([source.items[int(i)].task for i in columns["item"][ok]], dtype=np.int64)
    return Scored(
        image=[str(x) for x in columns["image"][ok]],
        scores=columns["scores"][ok],
        cluster=cluster if (cluster >= 0).any() else None,
        rows=rows,
        rejections=rejections,
        seconds=seconds,
    )
