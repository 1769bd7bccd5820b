"""Sending a run's tracking journal to MLflow without ever failing the run because of it.

``Delivery`` sends each journalled write (``journal.Journal``) as it comes. A transient error
(connection refused or reset, a timeout, HTTP 429 / 5xx, the server's connection pool
exhausted, sqlite busy) is retried with a bounded back-off; what still cannot be sent stays
in the journal, one warning line says where and how much, and the next write (the next
evaluation, the run's end, a resumed study) sends the backlog first, in order. A permanent
error (a bad key, a value MLflow refuses) is a bug and raises.

MLflow's own HTTP client would retry an unreachable server for minutes in silence
(``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` = 7 with a factor-2 back-off, 120 s timeouts);
``tracking.client`` sets shorter defaults (``HTTP_DEFAULTS``) so that every wait here is one
that this module announces.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from uslearn.log import get_logger
from uslearn.study.journal import Journal, pending_journals

log = get_logger(__name__)

# MLflow's HTTP client settings unless the environment says otherwise: ≤ 2 tries of ≤ 10 s.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
# MLflow's limits per log_batch request.
MAX_METRICS, MAX_PARAMS, MAX_TAGS = 1000, 100, 100
_TRANSIENT_TEXT = (
    "api request to",  # MLflow's wrapper of connection errors, timeouts, too many 5xx
    "queuepool limit",  # the server's SQLAlchemy pool exhausted (answered as HTTP 400)
    "database is locked",
    "could not connect to server",
    "connection refused",
    "connection reset",
    "server closed the connection",
    "timed out",
    "temporarily unavailable",
    "too many requests",
)
_TRANSIENT_CODES = {
    "TEMPORARILY_UNAVAILABLE",
    "RESOURCE_EXHAUSTED",
    "REQUEST_LIMIT_EXCEEDED",
    "INTERNAL_ERROR",
}


def is_transient(err: BaseException) -> bool:
    """Return True when ``err`` is a tracking fault worth retrying (the server away or busy)."""
    if isinstance(err, (ConnectionError, TimeoutError)):
        return True
    code = getattr(err, "error_code", None)
    status = getattr(err, "get_http_status_code", lambda: None)()
    if code in _TRANSIENT_CODES or (isinstance(status, int) and (status == 429 or status >= 500)):
        return True
    text = str(err).lower()
    return any(part in text for part in _TRANSIENT_TEXT)


def reason(err: BaseException) -> str:
    """Return a short one-line reason for ``err`` (no URL repeated, at most 160 characters)."""
    text = " ".join(str(err).split()) or type(err).__name__
    for marker in ("Caused by ", "failed with exception "):
        if marker in text:
            text = text.split(marker, 1)[1]
    return text[:160]


def server_answers(tracking_uri: str, timeout_s: float = 3.0) -> bool:
    """Return False when an ``http(s)://`` server does not answer ``/health`` in ``timeout_s``.

    Other URIs (sqlite) have no cheap check: True, and the write itself decides.
    """
    if not tracking_uri.startswith(("http://", "https://")):
        return True
    try:
        with urllib.request.urlopen(tracking_uri.rstrip("/") + "/health", timeout=timeout_s):
            return True
    except Exception:  # noqa: BLE001 - any failure means "not now"
        return False


@dataclass(frozen=True)
class Patience:
    """How long to retry: the waits between tries, in seconds (their sum bounds the time).

    ``final``: nothing else waits on this run (its end), so retry even when the server is
    known to be away, with a line before each wait.
    """

    waits: tuple[float, ...]
    final: bool = False

    @property
    def total_s(self) -> float:
        """Return the longest time spent waiting."""
        return sum(self.waits)


QUIET_S = 10.0  # retries announce themselves once this long has passed
# During training: ≈ 15 s of retries (a busy server's pool frees up), then keep and go on.
DURING = Patience((0.5, 1.0, 2.0, 4.0, 8.0))
# At a run's end: ≈ 30 s, a line before each wait; a study's end and --resume send the rest.
AT_END = Patience((2.0, 4.0, 8.0, 16.0), final=True)


class Delivery:
    """Sends one run's journal to MLflow; keeps what cannot be sent (see the module docstring).

    Args:
        tracking_uri: the tracking URI.
        journal: the run's journal.
        label: how log lines name the run (``trial lam=2 seed=0``, ``run runs/lsd``).
        find_existing: returns the id of a run already created for this journal (searched by
            its trial id) or None; asked only when a create's answer was never recorded.
        send_files: uploads the run's files and model (``artifacts`` entries).
    """

    def __init__(
        self,
        tracking_uri: str,
        journal: Journal,
        label: str,
        find_existing: Callable[[], str | None] | None = None,
        send_files: Callable[[str, Mapping[str, Any]], None] | None = None,
    ):
        from uslearn.study.tracking import client

        self.uri = tracking_uri
        self.journal = journal
        self.label = label
        self.mlc = client(tracking_uri)
        self.find_existing = find_existing or (lambda: None)
        self.send_files = send_files
        self.away = False  # the last try failed: keep without retrying until it answers

    @property
    def backlog(self) -> int:
        """Return the number of journalled writes not sent yet."""
        return len(self.journal.pending())

    def write(self, op: str, patience: Patience | None = None, **fields: Any) -> None:
        """Journal one write, then send it and any backlog before it (see ``flush``)."""
        self.journal.append(op, **fields)
        self.flush(patience)

    def flush(self, patience: Patience | None = None) -> bool:
        """Send the backlog in order; return True when nothing is left to send.

        ``patience`` (default ``DURING``) bounds the retries. While the server is known to be
        away, a run in training makes one quick check instead, so that it is never held up
        by more than a few seconds per evaluation.
        """
        if not self.journal.pending():
            return True
        patience = patience or DURING
        waits = [] if self.away and not patience.final else list(patience.waits)
        attempt = 0
        began = time.monotonic()
        while True:
            attempt += 1
            try:
                if self.away and not server_answers(self.uri):
                    raise ConnectionError("no answer to /health")
                sent = self._send_pending()
            except Exception as err:
                if not is_transient(err):
                    raise
                if not waits:
                    self._say_kept(err)
                    return False
                wait = waits.pop(0)
                # Quiet for a blip (a busy pool frees up in a second), never for long: a line
                # once the wait would pass 10 s since the first failure.
                if patience.final or time.monotonic() - began + wait >= QUIET_S:
                    log.warning(
                        "MLflow at %s: %s; %s: retrying in %g s (try %d of %d), %d write(s) kept in %s",
                        self.uri, reason(err), self.label, wait, attempt,
                        len(patience.waits) + 1, self.backlog, self.journal.path,
                    )  # fmt: skip
                time.sleep(wait)
                continue
            if self.away:
                log.warning(
                    "MLflow at %s answers again: %s sent %d kept write(s)",
                    self.uri,
                    self.label,
                    sent,
                )
            self.away = False
            return True

    def _say_kept(self, err: BaseException | None) -> None:
        evaluations = sum(
            1
            for e in self.journal.pending()
            if e["op"] == "batch" and e.get("metrics") and not e.get("final")
        )
        if not self.away:
            log.warning(
                "MLflow at %s unreachable (%s): %s keeps its evaluations in %s (%d so far) and "
                "sends them when the server answers",
                self.uri, reason(err) if err else "no answer", self.label,
                self.journal.path, evaluations,
            )  # fmt: skip
        self.away = True

    def _send_pending(self) -> int:
        """Send every pending write in order (consecutive batches merged); return how many."""
        pending = self.journal.pending()
        done = 0
        while pending:
            group = _mergeable(pending)
            self._send(group)
            self.journal.mark_sent(group[-1]["seq"])
            done += len(group)
            pending = pending[len(group) :]
        return done

    def _send(self, group: Sequence[Mapping[str, Any]]) -> None:
        first = group[0]
        op = first["op"]
        if op == "create":
            self._create(first)
            return
        run_id = self.journal.run_id
        if run_id is None:
            raise RuntimeError(f"{self.label}: a journalled {op} before the run was created")
        if op == "batch":
            self._batch(run_id, group)
        elif op == "reopen":
            self.mlc.update_run(run_id, status="RUNNING")
        elif op == "end":
            self.mlc.set_terminated(run_id, status=first["status"], end_time=first["time"])
        elif op == "artifacts":
            if self.send_files is not None:
                self.send_files(run_id, first)
        else:
            raise RuntimeError(f"{self.label}: unknown journal entry {op!r}")

    def _create(self, entry: Mapping[str, Any]) -> None:
        if self.journal.run_id is not None:
            return  # created before; the journal lost only its ack
        existing = self.find_existing() if self.journal.creating else None
        if existing is None:
            self.journal.mark_creating()
            run = self.mlc.create_run(
                entry["experiment_id"],
                start_time=entry["time"],
                tags=entry["tags"],
                run_name=entry["run_name"],
            )
            existing = run.info.run_id
        self.journal.set_run_id(existing)

    def _batch(self, run_id: str, group: Sequence[Mapping[str, Any]]) -> None:
        from mlflow.entities import Metric, Param, RunTag

        metrics = [Metric(k, v, ts, step) for e in group for k, v, ts, step in e.get("metrics", ())]
        params = [Param(k, v) for e in group for k, v in e.get("params", ())]
        tags = [RunTag(k, v) for e in group for k, v in e.get("tags", ())]
        self.mlc.log_batch(run_id, metrics=metrics, params=params, tags=tags)


def _mergeable(pending: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Return the longest prefix of ``pending`` that one request can carry (batches merged)."""
    if pending[0]["op"] != "batch":
        return [pending[0]]
    group: list[Mapping[str, Any]] = []
    counts = [0, 0, 0]
    for entry in pending:
        if entry["op"] != "batch":
            break
        sizes = [len(entry.get(k, ())) for k in ("metrics", "params", "tags")]
        totals = [c + s for c, s in zip(counts, sizes)]
        if group and (totals[0] > MAX_METRICS or totals[1] > MAX_PARAMS or totals[2] > MAX_TAGS):
            break
        group.append(entry)
        counts = totals
    return group


def replay(tracking_uri: str, run_dir: str | Path, patience: Patience | None = None) -> int:
    """Send what a run folder's journal kept; return the number of writes still kept."""
    from uslearn.study.run_model import send_run_files

    journal = Journal(run_dir)
    if not journal.pending():
        return 0
    delivery = Delivery(
        tracking_uri, journal, f"run {Path(run_dir).name}", send_files=send_run_files(tracking_uri)
    )
    delivery.flush(patience)
    return delivery.backlog


def replay_trials(tracking_uri: str, root: str | Path, when: str) -> dict[str, int]:
    """Send what the trial folders under ``root`` kept (``replay`` for each); return what is left.

    Returns:
        trial folder name -> writes still kept, for the trials that keep some.
    """
    journals = pending_journals(root)
    if not journals:
        return {}
    log.info("sending the MLflow writes %d trial(s) kept, %s", len(journals), when)
    left = {}
    for journal in journals:
        run_dir = journal.folder.parent
        still = replay(tracking_uri, run_dir)
        if still:
            left[run_dir.name] = still
    return left


def patiently(
    tracking_uri: str, what: str, call: Callable[[], Any], patience: Patience | None = None
):
    """Return ``call()``, retrying transient tracking errors with a line before each wait.

    For the study driver's own writes (the parent run), which have no journal: after
    ``patience`` it raises ``EnvError`` naming the URI and what it was doing.
    """
    from uslearn.errors import EnvError

    patience = patience or AT_END
    waits = list(patience.waits)
    attempt = 0
    while True:
        attempt += 1
        try:
            return call()
        except Exception as err:
            if not is_transient(err):
                raise
            if not waits:
                raise EnvError(
                    f"MLflow at {tracking_uri}: unreachable while {what} ({reason(err)}), "
                    f"for {patience.total_s:g} s"
                ) from None
            wait = waits.pop(0)
            log.warning(
                "MLflow at %s: %s while %s; retrying in %g s (try %d of %d)",
                tracking_uri, reason(err), what, wait, attempt, len(patience.waits) + 1,
            )  # fmt: skip
            time.sleep(wait)


def tracking_fault(err: BaseException) -> str | None:
    """Return one line for an MLflow client error that means the server is away, else None.

    The command lines print it instead of a traceback (exit 1: a fault of the machine).
    """
    if type(err).__module__.split(".")[0] != "mlflow" or not is_transient(err):
        return None
    url = (
        str(err).split("API request to ", 1)[-1].split(" ", 1)[0]
        if "API request to" in str(err)
        else ""
    )
    where = f" ({url})" if url else ""
    return f"the MLflow tracking server is unreachable{where}: {reason(err)}"
