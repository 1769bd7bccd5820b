"""The MLflow ``python_function`` face of a model package.

``mlflow.pyfunc.load_model(uri).predict(frame)`` with ``frame`` a DataFrame whose ``image``
column holds, per row, one of:

- a path (str) of an image file (PNG, JPEG, BMP, TIFF),
- the encoded bytes of such a file,
- a decoded frame: a uint8 array (H, W) gray or (H, W, 3) RGB (nested lists are accepted, as
  the MLflow scoring server delivers them).

Each frame goes through the import rules the training data went through (crop to the
ultrasound region, colour-Doppler rejection, letterbox resize to the stored size). With
``params={"prepared": True}`` the rows are taken as stored images already: uint8 arrays of the
stored size, as in a dataset's ``images.u8``.

The result has one row per input row: ``image`` (the path, or the row number), ``score_<class>``
and ``label_<class>`` for the classes in contract order, ``labels`` (';'-joined) and ``error``
(empty, or why the row was not scored: its scores are NaN and its labels -1).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import Model, ModelSignature
from mlflow.types.schema import AnyType, ColSpec, ParamSchema, ParamSpec, Schema

from uslearn.data.images import ImageRejected, read_image_file
from uslearn.inference.output import prediction_frame
from uslearn.inference.package import MLFLOW_ARTIFACT, ModelPackage
from uslearn.strategies.evaluation import EVAL_BATCH

# The "models from code" file MLflow stores with the model and runs to load it.
ENTRY = Path(__file__).with_name("pyfunc_entry.py")


def requirements() -> list[str]:
    """Return the pip requirements of a saved model (the versions installed here).

    ``uslearn`` itself is not on PyPI: install this repository where the model is loaded.
    """
    from importlib.metadata import version

    names = ("torch", "torchvision", "numpy", "pandas", "pillow", "scipy", "mlflow")
    return [f"{n}=={version(n).split('+')[0]}" for n in names]


def save(package: ModelPackage, path: str | Path, mlflow_model: Model | None = None) -> Path:
    """Save ``package`` as an MLflow ``python_function`` model directory at ``path``; return it.

    Args:
        package: the loaded package; its files become the model's artifact ``package``.
        path: a new directory.
        mlflow_model: the ``Model`` whose ids (run, logged model) the ``MLmodel`` file records.
    """
    with tempfile.TemporaryDirectory() as tmp:
        files = package.save(Path(tmp) / MLFLOW_ARTIFACT)
        mlflow.pyfunc.save_model(
            path=str(path),
            python_model=str(ENTRY),
            artifacts={MLFLOW_ARTIFACT: str(files)},
            signature=signature(package),
            pip_requirements=requirements(),
            metadata=package.describe(),
            mlflow_model=mlflow_model,
        )
    return Path(path)


def signature(package: ModelPackage) -> ModelSignature:
    """Return the MLflow signature: an ``image`` column in, scores/labels/error out."""
    outputs = [ColSpec("string", "image")]
    outputs += [ColSpec("double", f"score_{c}") for c in package.classes]
    outputs += [ColSpec("long", f"label_{c}") for c in package.classes]
    outputs += [ColSpec("string", "labels"), ColSpec("string", "error")]
    return ModelSignature(
        # Any: a path, encoded bytes or a pixel array (see the module docstring).
        inputs=Schema([ColSpec(AnyType(), "image")]),
        outputs=Schema(outputs),
        params=ParamSchema([ParamSpec("prepared", "boolean", False)]),
    )


def _decode(value) -> np.ndarray:
    """Return the uint8 frame of one ``image`` cell (path, bytes or array)."""
    if isinstance(value, (str, os.PathLike)):
        return read_image_file(value)
    if isinstance(value, (bytes, bytearray)):
        # Through a file so the bytes meet exactly the import's decoding rules.
        with tempfile.NamedTemporaryFile(suffix=".img") as handle:
            handle.write(value)
            handle.flush()
            return read_image_file(handle.name)
    array = np.asarray(value)
    if array.dtype != np.uint8:
        if array.dtype.kind not in "iu" or array.size == 0 or array.min() < 0 or array.max() > 255:
            raise ImageRejected("unreadable", f"expected uint8 pixels, got {array.dtype}")
        array = array.astype(np.uint8)
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ImageRejected("unreadable", f"expected (H, W) or (H, W, 3), got {array.shape}")
    return array


def predict_frame(package: ModelPackage, column, prepared: bool = False) -> pd.DataFrame:
    """Return the predictions of an ``image`` column (see the module docstring)."""
    values = list(column)
    images: list[np.ndarray] = []
    kept: list[int] = []
    errors = [""] * len(values)
    for i, value in enumerate(values):
        try:
            frame = _decode(value)
            if prepared:
                package.check_prepared(frame[None])
                images.append(frame)
            else:
                images.append(package.prepare(frame))
            kept.append(i)
        except ImageRejected as err:
            errors[i] = str(err)
    scores = np.full((len(values), len(package.classes)), np.nan)
    for start in range(0, len(images), EVAL_BATCH):
        block = np.stack(images[start : start + EVAL_BATCH])
        scores[kept[start : start + EVAL_BATCH]] = package.score(block).scores
    names = [v if isinstance(v, str) else str(i) for i, v in enumerate(values)]
    frame = prediction_frame(package, names, scores)  # NaN scores compare False: label 0
    bad = np.array([bool(e) for e in errors], dtype=bool)
    frame.loc[bad, [c for c in frame.columns if c.startswith("label_")]] = -1
    frame.loc[bad, "labels"] = ""
    frame["error"] = errors
    return frame


class PackagedModel(mlflow.pyfunc.PythonModel):
    """``python_function`` model over a ``ModelPackage`` (artifact ``package``)."""

    def load_context(self, context) -> None:
        """Load the package from the model's artifacts onto the GPU when there is one."""
        self.package = ModelPackage.load(context.artifacts[MLFLOW_ARTIFACT]).to("auto")

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        """Return one prediction row per row of ``model_input`` (see the module docstring)."""
        if isinstance(model_input, pd.DataFrame):
            if "image" not in model_input:
                raise ValueError(
                    f"expected a column 'image', got columns {list(model_input.columns)}"
                )
            column = model_input["image"]
        elif isinstance(model_input, np.ndarray) and model_input.ndim == 3:
            column = list(model_input)  # a (N, H, W) stack of frames
        else:
            raise ValueError("expected a DataFrame with an 'image' column or a (N, H, W) array")
        return predict_frame(self.package, column, bool((params or {}).get("prepared", False)))
