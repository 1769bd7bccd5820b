"""Read a study's MLflow runs into tidy pandas frames (docs/CONTRACTS.md "MLflow").

One row per child run (= one trial): its params as typed columns, typed as the run configs
declare them (``lam`` is a float, ``seed`` an int, ``strategy`` a string), its strategy's
``family`` (logged, or from the registry for runs logged before it was), its final metrics
under their MLflow names (``test/f1_weighted``), and its ids. ``per_class`` turns the ``test/<metric>/<class>`` columns
into a long frame, one row per run × class × metric. Nothing here knows about Ray or torch.
"""

from __future__ import annotations

import pandas as pd

from uslearn.data.dataset import CLASSES
from uslearn.errors import UserError
from uslearn.log import get_logger
from uslearn.strategies import registry

log = get_logger(__name__)

# Params that identify an arm, in the order frames are sorted by (with the swept knobs).
METRICS_ATTR = "metrics"  # frame.attrs key: the names of the metric columns
ARM_PARAMS = ("strategy", "init_kind", "label_fraction", *registry.hyperparameters())
PER_CLASS_METRICS = ("f1", "precision", "recall", "support")
_MISSING = {"None", "none", "nan", "NaN", ""}
# Columns every frame returned by ``load`` carries besides params and metrics.
ID_COLUMNS = (
    "run_id",
    "run_name",
    "parent_run_id",
    "study",
    "experiment_id",
    "status",
    "start_time",
    "git_sha",
    "uslearn_version",
    "artifact_uri",
)


class RunsError(UserError):
    """A study or experiment whose runs cannot give what an analysis needs."""


def load(
    study: str | None = None,
    experiment: str | None = None,
    tracking_uri: str | None = None,
    *,
    invocation: str = "latest",
    statuses: tuple[str, ...] = ("FINISHED",),
    require: tuple[str, ...] = ("test/f1_weighted",),
) -> pd.DataFrame:
    """Return one row per child (trial) run of a study or an experiment.

    Args:
        study: the ``study`` tag; child runs of that study's parent run(s) are read.
        experiment: an MLflow experiment name; alone, every child run in it is read, with
            ``study`` it narrows the search to that experiment.
        tracking_uri: MLflow tracking URI; ``uslearn.paths.default_tracking_uri()`` if None.
        invocation: with ``study``: ``"latest"`` (children of the most recent parent run),
            ``"all"`` (every invocation of the study) or a parent run id.
        statuses: run statuses kept (failed or still running trials are left out by default).
        require: metrics every kept run must have.

    Returns:
        A frame with ``ID_COLUMNS``, one typed column per param, one float column per metric
        (its last logged value), sorted by strategy, params and seed.

    Raises:
        RunsError: no study/experiment given, the experiment or study has no runs, or a
            required metric is missing from some runs (their ids are named).
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    from uslearn.paths import default_tracking_uri

    if study is None and experiment is None:
        raise RunsError("give a study name (--study) or an experiment name")
    uri = tracking_uri or default_tracking_uri()
    client = MlflowClient(uri)
    search = {"search_all_experiments": True}
    if experiment is not None:
        found = client.get_experiment_by_name(experiment)
        if found is None:
            raise RunsError(f"MLflow store {uri} has no experiment named '{experiment}'")
        search = {"experiment_ids": [found.experiment_id]}
    where = f"study '{study}'" if study else f"experiment '{experiment}'"
    filter_string = f"tags.study = '{_quote(study)}'" if study else ""
    mlflow.set_tracking_uri(uri)
    raw = mlflow.search_runs(filter_string=filter_string, output_format="pandas", **search)
    if raw.empty:
        raise RunsError(f"{where} has no runs in the MLflow store {uri}")
    raw = raw.astype({c: object for c in raw.columns if c.startswith("tags.")})
    parent_col = "tags.mlflow.parentRunId"
    if parent_col not in raw:
        raw[parent_col] = None
    is_child = raw[parent_col].notna()
    children = raw[is_child]
    if study is not None:
        children = children[children[parent_col].isin(_parents(raw[~is_child], invocation, where))]
    if children.empty:
        raise RunsError(f"{where} has no trial (child) runs in the MLflow store {uri}")
    kept = children[children["status"].isin(statuses)]
    if len(kept) < len(children):
        log.warning(
            "%s: left out %d run(s) whose status is not in %s",
            where,
            len(children) - len(kept),
            list(statuses),
        )
    if kept.empty:
        raise RunsError(f"{where} has no runs with status in {list(statuses)}")
    frame = tidy(kept)
    require_metrics(frame, require, where)
    return frame


def _quote(text: str) -> str:
    return text.replace("'", "\\'")


def _parents(parents: pd.DataFrame, invocation: str, where: str) -> list[str]:
    """Return the parent run ids selected by ``invocation`` (latest, all or one id)."""
    if parents.empty:
        raise RunsError(f"{where} has no parent run (a study run is a parent with child trials)")
    if invocation == "all":
        return parents["run_id"].tolist()
    if invocation == "latest":
        return [parents.sort_values("start_time")["run_id"].iloc[-1]]
    if invocation not in set(parents["run_id"]):
        raise RunsError(f"{where} has no parent run with id '{invocation}'")
    return [invocation]


def tidy(raw: pd.DataFrame) -> pd.DataFrame:
    """Return ``mlflow.search_runs`` output as a typed frame (see ``load``)."""
    out = pd.DataFrame(index=raw.index)
    out["run_id"] = raw["run_id"].astype(str)
    out["run_name"] = raw.get("tags.mlflow.runName", pd.Series(None, index=raw.index))
    out["parent_run_id"] = raw.get("tags.mlflow.parentRunId")
    for tag in ("study", "git_sha", "uslearn_version"):
        out[tag] = raw.get(f"tags.{tag}", pd.Series(None, index=raw.index, dtype=object))
    for col in ("experiment_id", "status", "start_time", "artifact_uri"):
        out[col] = raw[col]
    params = {c.removeprefix("params."): raw[c] for c in raw.columns if c.startswith("params.")}
    for name, values in params.items():
        if name in out:
            raise RunsError(f"param '{name}' collides with the id column of the same name")
        out[name] = typed_param(name, values)
    if "dataset_fingerprint" not in out and "tags.dataset_fingerprint" in raw:
        out["dataset_fingerprint"] = raw["tags.dataset_fingerprint"]
    if "init_kind" not in out and "init" in out:
        out["init_kind"] = out["init"].map(init_kind)
    if "strategy" in out:
        # Runs logged before ``family`` was a param get it from the registry.
        known = out["strategy"].map(
            lambda s: registry.ENTRIES[s].family if s in registry.ENTRIES else None
        )
        out["family"] = out["family"].fillna(known) if "family" in out else known
    # All metric columns at once: one insert per metric fragments the frame (pandas warns).
    metrics = {
        col.removeprefix("metrics."): raw[col].astype(float)
        for col in raw.columns
        if col.startswith("metrics.")
    }
    out = out.drop(columns=[name for name in metrics if name in out])
    out = pd.concat([out, pd.DataFrame(metrics, index=raw.index)], axis=1)
    order = [c for c in (*ARM_PARAMS, "seed") if c in out]
    out = out.sort_values([*order, "run_id"], kind="stable").reset_index(drop=True)
    # Which columns are metrics: ``epoch``, ``step``, ``k`` have no '/' but are no settings.
    out.attrs[METRICS_ATTR] = sorted(metrics)
    return out


def typed_param(name: str, values: pd.Series) -> pd.Series:
    """Return one param column converted from MLflow's strings to its type.

    A config field takes its declared type (``registry.param_types``): floats become float64,
    ints nullable Int64; "True"/"False" become booleans, other all-numeric columns numbers;
    "None" and empty strings become missing.

    Raises:
        RunsError: a numeric config field holds a value that is not a number.
    """
    cleaned = values.astype(object).where(~values.isin(_MISSING) & values.notna(), None)
    present = cleaned.dropna()
    kind = registry.param_types().get(name)
    if kind in (int, float):
        numbers = pd.to_numeric(cleaned, errors="coerce")
        bad = present[numbers[present.index].isna()]
        if not bad.empty:
            raise RunsError(f"param '{name}' should be a number but is '{bad.iloc[0]}'")
        if kind is int:
            return numbers.round().astype("Int64")
        return numbers.astype(float)
    if not present.empty and present.isin(["True", "False"]).all():
        return cleaned.map({"True": True, "False": False, None: None})
    numbers = pd.to_numeric(cleaned, errors="coerce")
    if not present.empty and numbers[present.index].notna().all():
        return numbers
    return cleaned.astype(object)


def init_kind(init: object) -> str | None:
    """Return the kind of an ``init`` param: random, imagenet or clustering (a checkpoint)."""
    if init is None or (isinstance(init, float) and pd.isna(init)):
        return None
    return init if init in ("random", "imagenet") else "clustering"


def require_metrics(frame: pd.DataFrame, metrics: tuple[str, ...] | list[str], where: str) -> None:
    """Check that every run in ``frame`` has each metric; return None.

    Raises:
        RunsError: naming the first missing metric and (up to five of) the runs without it.
    """
    for metric in metrics:
        if metric not in frame:
            raise RunsError(f"{where}: no run logged the metric '{metric}'")
        missing = frame.loc[frame[metric].isna(), "run_id"].tolist()
        if missing:
            shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise RunsError(
                f"{where}: metric '{metric}' is missing from {len(missing)} of {len(frame)} "
                f"runs ({shown})"
            )


def per_class(frame: pd.DataFrame, id_columns: tuple[str, ...] | None = None) -> pd.DataFrame:
    """Return the long per-class form: one row per run × class × metric.

    Args:
        frame: a frame from ``load``.
        id_columns: columns copied onto every row; default ``run_id``, the params that identify
            an arm (``ARM_PARAMS``) and ``seed``, those present in ``frame``.

    Returns:
        Columns ``*id_columns, class, metric, value``; ``class`` is categorical in the contract
        order, ``metric`` one of ``PER_CLASS_METRICS``.

    Raises:
        RunsError: if no ``test/<metric>/<class>`` column exists.
    """
    if id_columns is None:
        id_columns = ("run_id", *[p for p in (*ARM_PARAMS, "seed") if p in frame])
    columns = {
        f"test/{m}/{c}": (m, c)
        for m in PER_CLASS_METRICS
        for c in CLASSES
        if f"test/{m}/{c}" in frame
    }
    if not columns:
        raise RunsError("no per-class metric (test/f1/<class> ...) was logged by these runs")
    long = frame[[*id_columns, *columns]].melt(
        id_vars=list(id_columns), var_name="name", value_name="value"
    )
    long["metric"] = long["name"].map(lambda n: columns[n][0])
    long["class"] = pd.Categorical(long["name"].map(lambda n: columns[n][1]), categories=CLASSES)
    return long.drop(columns="name")[[*id_columns, "class", "metric", "value"]]


def parent_run(frame: pd.DataFrame, tracking_uri: str | None = None) -> dict:
    """Return the (single) parent run of ``frame``'s runs: id, params and tags.

    Raises:
        RunsError: when the runs come from more than one parent run.
    """
    from mlflow.tracking import MlflowClient

    from uslearn.paths import default_tracking_uri

    ids = frame["parent_run_id"].dropna().unique()
    if len(ids) != 1:
        raise RunsError(f"expected the runs of one parent run, found {len(ids)}: {list(ids)}")
    run = MlflowClient(tracking_uri or default_tracking_uri()).get_run(ids[0])
    return {
        "run_id": ids[0],
        "experiment_id": run.info.experiment_id,
        "params": dict(run.data.params),
        "tags": dict(run.data.tags),
    }
