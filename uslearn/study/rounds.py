"""An active-learning trial: rounds of acquire → reveal → train → evaluate, resumable by round.

The pool is the labelled split; its labels are the **oracle**'s, withheld: training sees a
view of the dataset in which every pool image not yet picked has labels -1 (and the round's
``labelled_ids`` file names the revealed ones), and the acquisition functions see no labels
at all (``acquisition.Pool``: scores, features, clusters and exam ids). Each round:

1. the acquisition function ranks the pool's remaining images with the previous round's model
   (round 0: at random, or by the deep-clustering model for ``cluster``) and the budget's
   exams (or images) are revealed;
2. the model is trained from its initialisation on every revealed label
   (``uslearn.strategies.run``: validation-fitted thresholds, best validation checkpoint);
3. it scores the whole pool (sigmoid scores and backbone features) for the next round, and
   its test metrics are logged to MLflow at the **number of labels** (the step axis:
   ``al/test_f1_weighted``, ``al/labels``, ``al/round``, ...).

``<out_dir>/rounds.json`` (replaced whole after each round) records every finished round's
picks and metrics; a trial started again (a killed process, ``--resume``) replays the
revealed picks, logs the finished rounds MLflow lacks (a round is logged once: its step is
its label count) and continues with the next round; a round cut short resumes its training
from the round's checkpoint.
"""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from uslearn import files
from uslearn.acquisition import Pool, entry, groups_of, select
from uslearn.data.dataset import CLASSES, Dataset
from uslearn.data.splits import labelled_rows
from uslearn.errors import UserError
from uslearn.log import get_logger
from uslearn.study.active import ActiveConfig

log = get_logger(__name__)
STATE = "rounds.json"
POOL_SCORES = "pool_scores.npz"
CLUSTER_SCORES = "cluster_scores.npz"


class Oracle:
    """The withheld labels of the labelled split: an answer only for an image that was picked."""

    def __init__(self, data: Dataset):
        self._data = data
        self.pool = labelled_rows(data, "labelled")  # dataset rows the oracle can answer
        self.revealed = np.zeros(len(data), bool)

    def reveal(self, rows: np.ndarray) -> None:
        """Reveal the labels of dataset ``rows`` (each must be in the pool)."""
        rows = np.asarray(rows, dtype=np.int64)
        if not np.isin(rows, self.pool).all():
            raise ValueError("the oracle answers only for images of the labelled pool")
        self.revealed[rows] = True

    def remaining(self) -> np.ndarray:
        """Return the pool rows not revealed yet."""
        return self.pool[~self.revealed[self.pool]]

    def revealed_rows(self) -> np.ndarray:
        """Return the revealed rows, sorted."""
        return np.flatnonzero(self.revealed)

    def view(self) -> Dataset:
        """Return the dataset as training sees it: the pool's unrevealed labels set to -1."""
        hidden = np.zeros(len(self._data), bool)
        hidden[self.pool] = True
        hidden &= ~self.revealed
        manifest = self._data.manifest.copy()
        manifest.loc[hidden, list(CLASSES)] = -1
        return dataclasses.replace(self._data, manifest=manifest)


def read_state(out_dir: Path, identity: dict[str, Any]) -> list[dict[str, Any]]:
    """Return the finished rounds recorded in ``out_dir`` (none for a new trial).

    Raises:
        UserError: the folder holds the rounds of another configuration.
    """
    path = out_dir / STATE
    if not path.is_file():
        return []
    saved = json.loads(path.read_text())
    if saved.get("identity") != identity:
        raise UserError(
            f"{path}: holds the rounds of another active-learning configuration; "
            "use a new output folder (or delete this one)"
        )
    return list(saved["rounds"])


def _write_state(out_dir: Path, identity: dict[str, Any], rounds: list[dict[str, Any]]) -> None:
    text = json.dumps({"identity": identity, "rounds": rounds}, indent=1)
    files.write_text(out_dir / STATE, text, "the active-learning rounds")


def _write_arrays(path: Path, **arrays: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    with files.replacing(path, "the pool scores") as handle:
        handle.write(buffer.getvalue())


def _score(checkpoint: Path, data: Dataset, rows: np.ndarray, size: int, device: str):
    """Return every head's logits and the backbone features of ``rows`` under ``checkpoint``."""
    from uslearn import models
    from uslearn.strategies.context import resolve_device
    from uslearn.strategies.evaluation import predict

    network, _ = models.load_network(checkpoint)
    where = resolve_device(device)
    return predict(network.to(where), data, rows, size, where, features=True)


def cluster_pool(
    active: ActiveConfig, data: Dataset, pool: np.ndarray, size: int, device: str, out_dir: Path
) -> dict[str, np.ndarray]:
    """Return the deep-clustering model's clusters, probabilities and features of ``pool``
    (computed once per trial, kept in ``cluster_scores.npz``)."""
    path = out_dir / CLUSTER_SCORES
    if not path.is_file():
        from uslearn import models

        logits = _score(models.checkpoint_file(active.dc_model), data, pool, size, device)
        if "cluster" not in logits:
            raise UserError(f"dc_model {active.dc_model}: its network has no 'cluster' head")
        z = logits["cluster"] - logits["cluster"].max(axis=1, keepdims=True)
        probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)  # softmax over K clusters
        _write_arrays(path, rows=pool, probs=probs, features=logits["features"])
    saved = np.load(path)
    return {"rows": saved["rows"], "probs": saved["probs"], "features": saved["features"]}


def make_pool(
    data: Dataset,
    oracle: Oracle,
    active: ActiveConfig,
    previous: Path | None,
    clusters: dict[str, np.ndarray] | None,
) -> tuple[np.ndarray, Pool]:
    """Return (dataset rows of the candidates, their ``Pool``): no labels, only model outputs."""
    remaining = oracle.remaining()
    exam = data.manifest["exam_id"].to_numpy()
    fields: dict[str, Any] = {"group": groups_of(exam[remaining], active.budget_unit)}
    if previous is not None:
        saved = np.load(previous / POOL_SCORES)
        at = {int(r): i for i, r in enumerate(saved["rows"])}
        take = np.array([at[int(r)] for r in remaining], dtype=np.int64)
        known = np.array([at[int(r)] for r in oracle.revealed_rows()], dtype=np.int64)
        thresholds = json.loads((previous / "thresholds.json").read_text())
        fields.update(
            scores=saved["scores"][take],
            features=saved["features"][take],
            labelled_features=saved["features"][known],
            thresholds=np.array([float(thresholds[c]) for c in CLASSES]),
        )
    if clusters is not None:
        at = {int(r): i for i, r in enumerate(clusters["rows"])}
        take = np.array([at[int(r)] for r in remaining], dtype=np.int64)
        fields.update(
            cluster_probs=clusters["probs"][take],
            clusters=clusters["probs"][take].argmax(axis=1),
            cluster_features=clusters["features"][take],
        )
    return remaining, Pool(**fields)


def round_metrics(record: dict[str, Any]) -> dict[str, float]:
    """Return what a finished round logs: ``al/*`` at step = its number of labels."""
    m = record["metrics"]
    return {
        "step": float(record["labels"]),
        "al/labels": float(record["labels"]),
        "al/exams": float(record["exams"]),
        "al/round": float(record["round"]),
        "al/test_f1_weighted": m["test/f1_weighted"],
        "al/test_precision_weighted": m["test/precision_weighted"],
        "al/test_recall_weighted": m["test/recall_weighted"],
        "al/val_f1_weighted": m["val/f1_weighted"],
        "val/f1_weighted": m["val/f1_weighted"],
        "test/f1_weighted": m["test/f1_weighted"],
    }


def run_rounds(
    tracked: Any,
    train: dict[str, Any],
    active: ActiveConfig,
    data_path: str | Path,
    out_dir: Path,
    report: Callable[[dict[str, float], str | None], None],
) -> dict[str, float]:
    """Run (or continue) every round of one active-learning trial; return the last round's
    final metrics (``test/*``, ``val/f1_weighted``) and ``rounds_done``.

    Args:
        tracked: the trial's ``tracking.TrackedRun`` (None: log nothing).
        train: the flat training config each round runs (``strategy``, ``init``, ...).
        active: the trial's active-learning knobs.
        data_path: the dataset directory (its labelled split is the pool).
        out_dir: the trial folder (``rounds.json`` and one ``round_<i>/`` per round).
        report: receives each round's metrics (Tune's report), no checkpoint.
    """
    from uslearn.strategies import run
    from uslearn.strategies.registry import parse_config

    cfg, _ = parse_config({**train, "labelled_ids": ""})
    data = Dataset.open(data_path)
    oracle = Oracle(data)
    if len(oracle.pool) == 0:
        raise UserError(f"{data.root}: the labelled split has no labelled images to pick from")
    out_dir.mkdir(parents=True, exist_ok=True)
    identity = {"train": dict(sorted(train.items())), "active": dataclasses.asdict(active)}
    done = read_state(out_dir, identity)
    ids = data.manifest["image_id"].to_numpy()
    row_of = {image_id: row for row, image_id in enumerate(ids)}
    for record in done:  # replay: the revealed labels, and the rounds MLflow may lack
        oracle.reveal(np.array([row_of[i] for i in record["picked"]], dtype=np.int64))
        if tracked is not None:
            tracked.log_metrics(round_metrics(record))
    clusters = None
    if active.dc_model:
        clusters = cluster_pool(active, data, oracle.pool, cfg.image_size, cfg.device, out_dir)
    function = entry(active.acquisition)
    exam = data.manifest["exam_id"].to_numpy()
    final: dict[str, float] = dict(done[-1]["final"]) if done else {}
    for index in range(len(done), active.rounds):
        previous = out_dir / f"round_{index - 1:02d}" if index > 0 else None
        if not len(oracle.remaining()):
            log.info("round %d: the pool is exhausted; stopping", index)
            break
        # Round 0 has no model yet: a function that needs one starts from random picks.
        name = function.name if (index > 0 or not function.needs_model) else "random"
        candidates, pool = make_pool(data, oracle, active, previous, clusters)
        picks = candidates[select(name, pool, active.round_budget(index), cfg.seed * 1000 + index)]
        oracle.reveal(picks)
        round_dir = out_dir / f"round_{index:02d}"
        round_dir.mkdir(exist_ok=True)
        revealed = oracle.revealed_rows()
        ids_file = round_dir / "labelled_ids.txt"
        files.write_text(ids_file, "".join(f"{i}\n" for i in ids[revealed]), "the revealed ids")
        resume = round_dir / "checkpoint"
        final = run(
            {**train, "labelled_ids": str(ids_file)},
            oracle.view(),
            out_dir=round_dir,
            resume_from=resume if (resume / "checkpoint.pt").is_file() else None,
        )
        logits = _score(round_dir / "best.pt", data, oracle.pool, cfg.image_size, cfg.device)
        scores = 1.0 / (1.0 + np.exp(-logits["multilabel"]))
        _write_arrays(
            round_dir / POOL_SCORES, rows=oracle.pool, scores=scores, features=logits["features"]
        )
        record = {
            "round": index,
            "acquisition": name,
            "labels": int(len(revealed)),
            "exams": int(len(np.unique(exam[revealed]))),
            "picked": [str(i) for i in ids[picks]],
            "metrics": {k: v for k, v in final.items() if k.count("/") < 2},
            "final": final,
        }
        done.append(record)
        _write_state(out_dir, identity, done)
        shutil.rmtree(resume, ignore_errors=True)  # optimiser state: the round is over
        if previous is not None:
            (previous / "best.pt").unlink(missing_ok=True)  # the last round's weights stay
        log.info(
            "round %d (%s): %d labels, test F1 %.3f",
            index,
            name,
            record["labels"],
            final["test/f1_weighted"],
        )
        metrics = round_metrics(record)
        if tracked is not None:
            tracked.log_metrics(metrics)
        report(metrics, None)
    # The final metrics carry no al/* key: the final log would repeat the last round's point.
    return {**final, "rounds_done": float(len(done))}
