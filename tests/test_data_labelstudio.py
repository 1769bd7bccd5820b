"""``uslearn data import-labelstudio`` on hand-made exports in Label Studio's JSON format.

The exports here follow what Label Studio 1.23 wrote in ``tests/test_labelstudio_server.py``
(task ``id``, ``data``, ``annotations`` with ``id``, ``completed_by``, ``result``,
``was_cancelled``, ``updated_at`` and the attached ``prediction``); that test runs the same
import on a real server's export.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest

from uslearn.cli import main
from uslearn.data.check import check_dataset
from uslearn.data.dataset import CLASSES, Dataset
from uslearn.data.labelstudio import read_export
from uslearn.data.relabel import write_relabelled


def choices(*organs):
    return [
        {
            "from_name": "organs",
            "to_name": "image",
            "type": "choices",
            "value": {"choices": list(organs)},
        }
    ]


def annotation(aid, organs, user=1, updated="2026-12-07T10:00:00Z", cancelled=False):
    return {
        "id": aid,
        "completed_by": user,
        "result": [] if cancelled else choices(*organs),
        "was_cancelled": cancelled,
        "updated_at": updated,
        "created_at": updated,
    }


def task(tid, image_id, *annotations, proposed="liver"):
    data = {"image": f"/data/local-files/?d=images/{image_id}.png", "image_id": image_id}
    if proposed is not None:
        data["proposed"] = proposed
    return {"id": tid, "data": data, "annotations": list(annotations), "predictions": [tid]}


def write_export(tmp_path, tasks, name="export.json"):
    path = tmp_path / name
    path.write_text(json.dumps(tasks))
    return path


def pool(data, n):
    """Return ``n`` unlabelled-split image ids of different patients, and their patients."""
    m = data.manifest[data.manifest["split"] == "unlabelled"].drop_duplicates("patient_id")
    return m["image_id"].tolist()[:n], m["patient_id"].tolist()[:n]


def hashes(root):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.iterdir())}


def run(args, capsys):
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_accepted_corrected_new_and_skipped_make_a_new_version(tiny_phantom, tmp_path, capsys):
    data = Dataset.open(tiny_phantom)
    before = hashes(tiny_phantom)
    (a, b, c, d), patients = pool(data, 4)
    labelled = data.manifest.loc[data.manifest["split"] == "test", "image_id"].iloc[0]
    export = write_export(
        tmp_path,
        [
            task(11, a, annotation(101, ["liver"])),  # the proposal, accepted
            task(12, b, annotation(102, ["liver", "kidney"], user=2)),  # corrected
            task(13, c, annotation(103, ["other"]), proposed=None),  # no proposal: new
            task(14, d, annotation(104, [], cancelled=True)),  # skipped
            task(
                15, labelled, annotation(105, ["spleen"]), proposed=""
            ),  # a test image, relabelled
            task(16, a),  # never annotated
        ],
    )
    out = tmp_path / "v2"
    code, printed, err = run(
        [
            "data",
            "import-labelstudio",
            "--export",
            str(export),
            "--data",
            str(tiny_phantom),
            "--out",
            str(out),
        ],
        capsys,
    )
    assert code == 0, err
    assert "4 images labelled from 6 tasks (corrected 1, new 2, proposal_accepted 1)" in printed
    assert "1 task(s) skipped" in printed and ": 14" in printed
    assert "1 task(s) without annotation" in printed and ": 16" in printed
    assert hashes(tiny_phantom) == before  # the source is untouched
    new = Dataset.open(out)
    m = new.manifest.set_index("image_id")
    row = lambda i: m.loc[i, list(CLASSES)].to_numpy().tolist()  # noqa: E731
    one_hot = lambda *names: [int(c in names) for c in CLASSES]  # noqa: E731
    assert row(a) == one_hot("liver") and m.loc[a, "label_source"] == "proposal_accepted"
    assert row(b) == one_hot("liver", "kidney") and m.loc[b, "label_source"] == "corrected"
    assert m.loc[b, "annotator"] == "ls-user-2" and m.loc[b, "annotation_id"] == 102
    assert row(c) == one_hot("other") and m.loc[c, "label_source"] == "new"
    assert row(d) == [-1] * len(CLASSES) and m.loc[d, "label_source"] == "source"
    assert m.loc[labelled, "split"] == "test" and m.loc[labelled, "label_source"] == "new"
    untouched = ~m.index.isin([a, b, c, labelled])
    old = data.manifest.set_index("image_id")
    assert (
        (m.loc[untouched, list(CLASSES)] == old.loc[m.index[untouched], list(CLASSES)]).all().all()
    )
    assert (m.loc[untouched, "label_source"] == "source").all()
    # Patients a, b, c move to labelled with all their images; d's stays in the pool.
    for patient, moved in zip(patients, (True, True, True, False)):
        splits = set(m.loc[m["patient_id"] == patient, "split"])
        assert splits == ({"labelled"} if moved else {"unlabelled"}), (patient, splits)
    assert check_dataset(new).ok, check_dataset(new).format()
    assert new.fingerprint != data.fingerprint
    assert os.path.samefile(out / "images.u8", tiny_phantom / "images.u8")  # linked, not copied
    assert (out / "phantom_truth.parquet").is_file()
    meta = new.meta
    assert meta["parent"]["fingerprint"] == data.fingerprint
    assert meta["labelstudio"]["export_sha256"] == hashlib.sha256(export.read_bytes()).hexdigest()
    assert meta["labelstudio"]["moved_to_labelled"]["patients"] == 3
    assert (
        meta["labelstudio"]["skipped_tasks"] == 1
        and meta["labelstudio"]["cancelled_annotations"] == 1
    )


def test_a_second_round_keeps_where_earlier_labels_came_from(tiny_phantom, tmp_path):
    data = Dataset.open(tiny_phantom)
    (a, b), _ = pool(data, 2)
    first = write_export(tmp_path, [task(1, a, annotation(1, ["kidney"]))], "first.json")
    v2 = write_relabelled(data, read_export(first), tmp_path / "v2")
    second = write_export(tmp_path, [task(2, b, annotation(7, ["liver"]))], "second.json")
    v3 = Dataset.open(write_relabelled(Dataset.open(v2), read_export(second), tmp_path / "v3"))
    m = v3.manifest.set_index("image_id")
    assert m.loc[a, "label_source"] == "corrected" and m.loc[a, "annotation_id"] == 1
    assert m.loc[b, "label_source"] == "proposal_accepted" and m.loc[b, "annotation_id"] == 7


def test_disagreeing_annotations_are_refused_unless_a_rule_is_given(tiny_phantom, tmp_path):
    data = Dataset.open(tiny_phantom)
    (a,), _ = pool(data, 1)
    export = write_export(
        tmp_path,
        [
            task(5, a, annotation(1, ["liver"], user=1, updated="2026-12-07T10:00:00Z")),
            task(6, a, annotation(2, ["kidney"], user=2, updated="2026-12-07T11:00:00Z")),
            task(7, a, annotation(3, ["kidney"], user=3, updated="2026-12-07T09:00:00+00:00")),
            task(8, a, annotation(4, ["liver"], user=4, updated="2026-12-07T08:00:00Z")),
        ],
    )
    with pytest.raises(
        Exception,
        match=rf"image {a}: its annotations disagree .*annotation 1 \(task 5, ls-user-1\): liver",
    ):
        read_export(export)
    with pytest.raises(Exception, match="no majority among 4 annotations"):
        read_export(export, "majority")
    latest = read_export(export, "latest").images[a]
    assert latest.annotation == 2 and latest.resolved and latest.source == "corrected"
    export = write_export(tmp_path, json.loads(export.read_text())[:3])
    assert read_export(export, "majority").images[a].annotation == 2  # kidney 2 : liver 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[{", r"export.json: not valid JSON \(line 1, column 3"),
        ('{"tasks": []}', r"a JSON dict; expected Label Studio's JSON export, a list of tasks"),
        ("[]", r"no tasks in the export"),
        (
            '[{"id": 3, "image": "x", "organs": "liver"}]',
            r"task 3 \(item 1\): no 'data' object \(this looks like the JSON-MIN",
        ),
        (
            '[{"id": 3, "data": {"image": "x"}}]',
            r"task 3 \(item 1\): no data.image_id; expected tasks written by uslearn curate",
        ),
    ],
)
def test_malformed_exports_are_refused_with_the_line(tmp_path, content, message):
    path = tmp_path / "export.json"
    path.write_text(content)
    with pytest.raises(Exception, match=message):
        read_export(path)


def test_unknown_organs_empty_choices_and_unknown_images_are_refused(
    tiny_phantom, tmp_path, capsys
):
    data = Dataset.open(tiny_phantom)
    (a,), _ = pool(data, 1)
    cases = [
        (
            [task(9, a, annotation(4, ["liver", "heart"]))],
            r"task 9 \(item 1\), annotation 4: unknown organ name 'heart'",
        ),
        (
            [task(9, a, annotation(4, ["other", "liver"]))],
            r"annotation 4: 'other' means no organ of interest",
        ),
        (
            [task(9, a, annotation(4, []))],
            r"annotation 4: no organ chosen for image .*choose 'other'",
        ),
        (
            [task(9, "i-nowhere", annotation(4, ["liver"]))],
            r"task 9: image i-nowhere is not in .*tiny",
        ),
    ]
    out = tmp_path / "out"
    for tasks, message in cases:
        export = write_export(tmp_path, tasks)
        args = ["data", "import-labelstudio", "--export", str(export), "--data", str(tiny_phantom)]
        code, _, err = run([*args, "--out", str(out)], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert __import__("re").search(message, err), err
        assert not out.exists()
    # The new dataset may not replace the source.
    export = write_export(tmp_path, [task(9, a, annotation(4, ["liver"]))])
    args = ["data", "import-labelstudio", "--export", str(export), "--data", str(tiny_phantom)]
    code, _, err = run([*args, "--out", str(tiny_phantom), "--overwrite"], capsys)
    assert code == 2 and "is the input" in err, err


def test_the_proposal_comes_from_the_attached_prediction_without_data_proposed(
    tiny_phantom, tmp_path
):
    data = Dataset.open(tiny_phantom)
    (a, b), _ = pool(data, 2)
    with_prediction = annotation(1, ["liver", "kidney"])
    with_prediction["prediction"] = {"id": 3, "result": choices("kidney", "liver")}
    export = write_export(
        tmp_path,
        [
            task(1, a, with_prediction, proposed=None),
            task(2, b, annotation(2, ["liver"]), proposed=None),
        ],
    )
    images = read_export(export).images
    assert images[a].source == "proposal_accepted" and images[b].source == "new"
    # A proposal against the label rules (older curate: 'other' with an organ) is only compared.
    old_task = task(3, b, annotation(3, ["liver"]), proposed="other;Liver")
    assert read_export(write_export(tmp_path, [old_task])).images[b].source == "corrected"
    assert np.array_equal(images[a].labels, [int(c in ("liver", "kidney")) for c in CLASSES])


def test_labelling_every_patient_of_the_pool_says_the_split_is_now_empty(
    tiny_phantom, tmp_path, capsys
):
    data = Dataset.open(tiny_phantom)
    ids, patients = pool(data, 100)
    export = write_export(
        tmp_path, [task(k, i, annotation(k, ["liver"])) for k, i in enumerate(ids)]
    )
    args = ["data", "import-labelstudio", "--export", str(export), "--data", str(tiny_phantom)]
    code, printed, err = run([*args, "--out", str(tmp_path / "all")], capsys)
    assert code == 0, err
    assert f"{len(patients)} patient(s) with" in printed
    assert "note: every patient of the unlabelled split now has a labelled image" in printed
    assert not check_dataset(Dataset.open(tmp_path / "all")).ok  # the empty split, as said
