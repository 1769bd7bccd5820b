"""Reading Label Studio's JSON export of a project made from ``uslearn curate``'s tasks.

The project's tasks are ``label_studio_tasks.json`` (data: ``image``, ``image_id``,
``cluster``, ``proposed``) and its labelling interface ``label_studio_config.xml`` (a
multiple-choice ``organs``). The export (Label Studio: Export → JSON, or
``GET /api/projects/<id>/export?exportType=JSON``) is a list of those tasks, each with its
``annotations``. ``read_export`` turns it into one label set per image:

- an annotation's label set is its ``organs`` choices, read by the labels-CSV rules (known
  organ names, ``other`` only alone); one without any choice is refused (choose ``other``
  when no organ is visible, or skip the task);
- cancelled annotations (the annotator pressed *Skip*) are left out and counted, and a task
  whose every annotation was cancelled is *skipped*; drafts are never read;
- when the annotations of one image (one task or several) disagree, ``rule`` decides:
  ``refuse`` (default), ``latest`` (the last updated one) or ``majority`` (the label set most
  annotations chose; a tie is refused);
- where the label came from: ``proposal_accepted`` (equal to the model's proposal),
  ``corrected`` (differs from it) or ``new`` (the task carried no proposal). The proposal is
  the task's ``data.proposed``, else the prediction Label Studio attached to the annotation.

Annotators are recorded as ``ls-user-<Label Studio user id>``: never an e-mail or a name,
even where the export expanded them.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from uslearn.data.dataset import CLASSES, DatasetError
from uslearn.data.labels_csv import parse_labels

FROM_NAME = "organs"  # the Choices of curate's labelling config
RULES = ("refuse", "latest", "majority")
ACCEPTED, CORRECTED, NEW = "proposal_accepted", "corrected", "new"


@dataclass(frozen=True)
class Annotation:
    """One submitted (not cancelled) annotation of an image."""

    task: int | str
    annotation: int
    annotator: str
    labels: np.ndarray  # (C,) int8 multi-hot
    updated: str  # ISO time, "" when the export has none
    proposal: frozenset[str] | None  # the organs proposed with the task, None without any

    def text(self) -> str:
        """Return the label set as the labels CSV writes it ("liver;kidney")."""
        return ";".join(c for c, v in zip(CLASSES, self.labels) if v == 1)


@dataclass(frozen=True)
class ImageLabel:
    """The label set an image gets from the export, and where it came from."""

    image_id: str
    labels: np.ndarray
    source: str  # ACCEPTED, CORRECTED or NEW
    annotation: int
    annotator: str
    task: int | str
    resolved: bool  # the annotations disagreed and ``rule`` chose this one


@dataclass
class Export:
    """What ``read_export`` found: per image its label, and what was left out."""

    path: Path
    sha256: str
    tasks: int
    images: dict[str, ImageLabel]  # image_id → label, in export order
    skipped_tasks: list = field(default_factory=list)  # every annotation cancelled
    unannotated_tasks: list = field(default_factory=list)  # no annotation at all
    cancelled: int = 0  # cancelled annotations
    rule: str = "refuse"

    def sources(self) -> dict[str, int]:
        """Return the number of images per label source."""
        return dict(Counter(label.source for label in self.images.values()))


def _load(path: Path) -> tuple[list, str]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"--export {path}: no such file") from None
    except IsADirectoryError:
        raise DatasetError(
            f"--export {path}: a folder; expected Label Studio's JSON export"
        ) from None
    sha = hashlib.sha256(raw).hexdigest()
    try:
        tasks = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as err:
        raise DatasetError(
            f"{path}: not UTF-8 text (byte {err.start}); expected a JSON export"
        ) from None
    except json.JSONDecodeError as err:
        raise DatasetError(
            f"{path}: not valid JSON (line {err.lineno}, column {err.colno}: {err.msg}); "
            "expected Label Studio's JSON export (Export → JSON)"
        ) from None
    if not isinstance(tasks, list):
        raise DatasetError(
            f"{path}: a JSON {type(tasks).__name__}; expected Label Studio's JSON export, a list "
            "of tasks"
        )
    if not tasks:
        raise DatasetError(f"{path}: no tasks in the export; was the project empty?")
    return tasks, sha


def _choices(results: object, where: str) -> list[str]:
    """Return the ``organs`` choices of an annotation's ``result`` list."""
    if not isinstance(results, list):
        raise DatasetError(f"{where}: 'result' is {type(results).__name__}; expected a list")
    chosen: list[str] = []
    for item in results:
        if not isinstance(item, dict) or item.get("from_name") != FROM_NAME:
            continue  # another control of a customised interface (a comment, a rating)
        value = item.get("value")
        choices = value.get("choices") if isinstance(value, dict) else None
        if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
            raise DatasetError(
                f"{where}: the '{FROM_NAME}' result has no list of choices; expected "
                "{'value': {'choices': [organ, ...]}}"
            )
        chosen += choices
    return chosen


def _labels(choices: list[str], where: str) -> np.ndarray:
    if any(";" in c for c in choices):
        raise DatasetError(
            f"{where}: choice {next(c for c in choices if ';' in c)!r} is not an organ name"
        )
    return parse_labels(";".join(choices), where)


def _annotator(value: object) -> str:
    # The export names the user by id, or (expanded) by a dict with id, e-mail and names:
    # only the id is kept.
    user = value.get("id") if isinstance(value, dict) else value
    return f"ls-user-{user}" if isinstance(user, int) else "ls-user-unknown"


def _proposal(data: dict, annotation: dict, where: str) -> frozenset[str] | None:
    """Return the organ names proposed with the task (None without a proposal, or an empty one).

    Only compared with the annotation, never stored: a proposal that breaks the label rules
    (``other`` with an organ, from an older curate) still tells accepted from corrected.
    """
    if isinstance(data.get("proposed"), str):
        names = data["proposed"].split(";")
    else:
        prediction = annotation.get("prediction")
        results = prediction.get("result") if isinstance(prediction, dict) else None
        if not isinstance(results, list):
            return None
        names = _choices(results, f"{where}, its prediction")
    proposed = frozenset(n.strip().lower() for n in names if n.strip())
    return proposed or None


def _time(text: object) -> str:
    """Return an ISO time that sorts like the moment it names ("" when absent or unreadable)."""
    if not isinstance(text, str):
        return ""
    try:
        moment = _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return ""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=_dt.timezone.utc)
    return moment.astimezone(_dt.timezone.utc).isoformat()


def _task_annotations(task: object, n: int, path: Path, export: Export) -> tuple[str, list]:
    """Return (image id, submitted annotations) of one exported task; count what it left out."""
    if not isinstance(task, dict):
        raise DatasetError(f"{path}: item {n} is a {type(task).__name__}; expected a task object")
    tid = task.get("id", f"#{n}")
    where = f"{path}: task {tid} (item {n})"
    data = task.get("data")
    if not isinstance(data, dict):
        hint = " (this looks like the JSON-MIN export: export as JSON)" if FROM_NAME in task else ""
        raise DatasetError(f"{where}: no 'data' object{hint}; expected Label Studio's JSON export")
    image_id = data.get("image_id")
    if not isinstance(image_id, str) or not image_id:
        raise DatasetError(
            f"{where}: no data.image_id; expected tasks written by uslearn curate "
            "(label_studio_tasks.json)"
        )
    annotations = task.get("annotations", [])
    if not isinstance(annotations, list):
        raise DatasetError(
            f"{where}: 'annotations' is {type(annotations).__name__}; expected a list"
        )
    found = []
    for a in annotations:
        if not isinstance(a, dict):
            raise DatasetError(f"{where}: an annotation is {type(a).__name__}; expected an object")
        aid = a.get("id")
        at = f"{where}, annotation {aid}"
        if a.get("was_cancelled"):
            export.cancelled += 1
            continue
        choices = _choices(a.get("result"), at)
        if not choices:
            raise DatasetError(
                f"{at}: no organ chosen for image {image_id}; choose 'other' when no organ of "
                "interest is visible, or skip the task"
            )
        found.append(
            Annotation(
                task=tid,
                annotation=aid if isinstance(aid, int) else -1,
                annotator=_annotator(a.get("completed_by")),
                labels=_labels(choices, at),
                updated=_time(a.get("updated_at") or a.get("created_at")),
                proposal=_proposal(data, a, where),
            )
        )
    if not annotations:
        export.unannotated_tasks.append(tid)
    elif not found:
        export.skipped_tasks.append(tid)
    return image_id, found


def _describe(a: Annotation) -> str:
    return f"annotation {a.annotation} (task {a.task}, {a.annotator}): {a.text() or '-'}"


def _resolve(
    image_id: str, found: list[Annotation], rule: str, path: Path
) -> tuple[Annotation, bool]:
    """Return the annotation that gives ``image_id`` its label, and whether they disagreed."""
    latest = max(found, key=lambda a: (a.updated, a.annotation))
    sets = Counter(a.labels.tobytes() for a in found)
    if len(sets) == 1:
        return latest, False
    if rule == "latest":
        return latest, True
    if rule == "majority":
        (top, n), (_, runner_up) = sets.most_common(2)
        if n > runner_up:
            agreeing = [a for a in found if a.labels.tobytes() == top]
            return max(agreeing, key=lambda a: (a.updated, a.annotation)), True
        reason = f"no majority among {len(found)} annotations"
    else:
        reason = "its annotations disagree"
    shown = "; ".join(_describe(a) for a in found[:4])
    raise DatasetError(
        f"{path}: image {image_id}: {reason} ({shown}); resolve them in Label Studio or pass "
        "--on-conflict latest|majority"
    )


def read_export(path: str | Path, rule: str = "refuse") -> Export:
    """Return one label per annotated image of a Label Studio JSON export (module docstring).

    Raises:
        DatasetError: one line naming the export, the task and what was expected: unreadable
            or malformed JSON, a task not written by uslearn curate, an unknown organ, an
            annotation without a choice, or annotations that disagree under ``rule``.
    """
    if rule not in RULES:
        raise DatasetError(f"--on-conflict {rule}: expected one of {', '.join(RULES)}")
    path = Path(path)
    tasks, sha = _load(path)
    export = Export(path=path, sha256=sha, tasks=len(tasks), images={}, rule=rule)
    per_image: dict[str, list[Annotation]] = {}
    for n, task in enumerate(tasks, start=1):
        image_id, found = _task_annotations(task, n, path, export)
        if found:
            per_image.setdefault(image_id, []).extend(found)
    for image_id, found in per_image.items():
        chosen, resolved = _resolve(image_id, found, rule, path)
        if chosen.proposal is None:
            source = NEW
        else:
            chosen_names = {c for c, v in zip(CLASSES, chosen.labels) if v == 1}
            source = ACCEPTED if chosen.proposal == chosen_names else CORRECTED
        export.images[image_id] = ImageLabel(
            image_id,
            chosen.labels,
            source,
            chosen.annotation,
            chosen.annotator,
            chosen.task,
            resolved,
        )
    return export
