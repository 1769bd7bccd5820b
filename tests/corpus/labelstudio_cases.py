"""import-labelstudio with exports that are malformed, name unknown organs or images, disagree."""

from __future__ import annotations

import json
from pathlib import Path

from corpus.world import Case, World, assert_in, case
from uslearn.data.dataset import Dataset


def _task(tid: int, image_id: str, *organ_sets: list[str], proposed: str = "liver") -> dict:
    annotations = [
        {
            "id": 100 * tid + k,
            "completed_by": k + 1,
            "result": [{"from_name": "organs", "type": "choices", "value": {"choices": organs}}],
            "was_cancelled": False,
            "updated_at": f"2026-12-07T10:0{k}:00Z",
        }
        for k, organs in enumerate(organ_sets)
    ]
    data = {"image": f"/data/local-files/?d=images/{image_id}.png", "image_id": image_id}
    return {"id": tid, "data": {**data, "proposed": proposed}, "annotations": annotations}


def _argv(w: World, tasks: list | str, *extra: str) -> tuple[list[str], list[Path]]:
    """Return an import-labelstudio of the copied dataset with ``tasks`` as its export."""
    ds = w.dataset()
    export = w.root / "export.json"
    export.write_text(tasks if isinstance(tasks, str) else json.dumps(tasks))
    argv = ["data", "import-labelstudio", "--export", str(export), "--data", str(ds)]
    return [*argv, "--out", str(w.root / "v2"), *extra], [ds, export]


def _pool(w: World) -> list[str]:
    """Return the image ids of the export's unlabelled patient (its fourth)."""
    m = Dataset.open(w.base / "ds").manifest
    return m.loc[m["split"] == "unlabelled", "image_id"].tolist()


@case("import-labelstudio: an export that is not JSON (a CSV export)")
def _(w):
    argv, watch = _argv(w, "id,image,organs\n1,x.png,liver\n")
    return Case(argv, 2, r"export.json: not valid JSON \(line 1, column 1", "error", watch)


@case("import-labelstudio: an annotation names an organ the dataset does not have")
def _(w):
    argv, watch = _argv(w, [_task(7, _pool(w)[0], ["liver", "heart"])])
    message = r"task 7 \(item 1\), annotation 700: unknown organ name 'heart'; allowed: liver"
    return Case(argv, 2, message, "error", watch)


@case("import-labelstudio: two annotators disagree on an image")
def _(w):
    image = _pool(w)[0]
    argv, watch = _argv(w, [_task(3, image, ["liver"], ["kidney"])])
    message = rf"image {image}: its annotations disagree .*--on-conflict latest\|majority"
    return Case(argv, 2, message, "error", watch)


@case("import-labelstudio: a task whose image is not in the dataset")
def _(w):
    argv, watch = _argv(w, [_task(4, _pool(w)[0], ["liver"]), _task(5, "i-elsewhere", ["liver"])])
    return Case(argv, 2, r"task 5: image i-elsewhere is not in .*ds", "error", watch)


@case("import-labelstudio: --out is the source dataset")
def _(w):
    argv, watch = _argv(w, [_task(4, _pool(w)[0], ["liver"])], "--overwrite")
    argv[argv.index("--out") + 1] = str(watch[0])
    return Case(argv, 2, r"--out .*ds is the input", "error", watch)


@case("import-labelstudio: disagreement resolved by --on-conflict latest, a task skipped")
def _(w):
    first, second = _pool(w)[:2]
    skipped = _task(9, second)
    skipped["annotations"] = [{"id": 1, "result": [], "was_cancelled": True}]
    tasks = [_task(3, first, ["liver"], ["kidney"]), skipped]
    argv, watch = _argv(w, tasks, "--on-conflict", "latest")

    def check(output: str) -> None:
        assert_in("1 images labelled from 2 tasks (corrected 1)", output)
        assert_in("1 task(s) skipped, their images left as they were: 9", output)
        m = Dataset.open(w.root / "v2").manifest.set_index("image_id")
        assert m.loc[first, "kidney"] == 1 and m.loc[first, "annotation_id"] == 301, m.loc[first]
        assert (m.loc[[first, second], "split"] == "labelled").all()  # the patient moved

    return Case(argv, 0, r"next: uslearn data check", "ok", watch, check=check)
