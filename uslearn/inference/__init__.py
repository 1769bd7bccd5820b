"""Using trained models: the model package, ``uslearn predict``, ``uslearn curate``, registration.

    package.py    ModelPackage: weights + classes + thresholds + sizes + preprocessing (+ Algorithm 1)
    pyfunc.py     its MLflow python_function face (signature, predict on paths/bytes/arrays)
    tracking.py   log a run's model, register it, open DIR | runs:/ID | models:/NAME/VERSION
    sources.py    dataset rows, image folders, DICOM exports as ordered work (import rules)
    score.py      batched single-process scoring;  ray_batch.py: the same as a Ray Data pipeline
    output.py     the predictions file;  curate.py: clusters, proposals, the to-label ranking
    cli.py        the predict / curate / register commands

``open_model`` and ``ModelPackage`` load on first use (they import torch), so that importing
this package (the CLI's parser does) stays cheap.
"""


def __getattr__(name: str):
    if name == "ModelPackage":
        from uslearn.inference.package import ModelPackage

        return ModelPackage
    if name == "open_model":
        from uslearn.inference.tracking import open_model

        return open_model
    raise AttributeError(f"module 'uslearn.inference' has no attribute {name!r}")


__all__ = ["ModelPackage", "open_model"]
