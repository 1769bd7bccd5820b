"""The tracking journal of one training run: every MLflow write, on local disk before it is sent.

A run's writes (create the run, a batch of params / metrics / tags, its files, its end) are
appended to ``<run folder>/tracking/journal.jsonl`` first, each with a sequence number, and
``tracking/sent`` holds the highest number the server has taken. What is past it is pending:
sent again, in order, when the server answers (``delivery.Delivery``). Because a batch keeps the
timestamps it was journalled with, a batch sent twice (the process died between the server's
answer and the ``sent`` update) is stored once: MLflow's store keys a metric value by (key,
timestamp, step, value). The journal also answers, without asking the server, what a resumed
run needs: its run id, the last step it logged, whether its final metrics and its end were
logged. Nothing here imports MLflow.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from uslearn import files

FOLDER = "tracking"


class Journal:
    """The journal of the run whose output folder is ``run_dir`` (created on first write).

    Attributes:
        run_id: the MLflow run id once created (None before).
        creating: True when a create was sent but its answer never recorded (a retry must look
            for the run by its trial id before creating another).
        last_step: the highest ``step`` of any journalled batch (−inf when none).
        final_logged: a batch of final metrics is journalled.
        end_status: the status of a journalled end (None while the run is open).
    """

    def __init__(self, run_dir: str | Path):
        self.folder = Path(run_dir) / FOLDER
        self.path = self.folder / "journal.jsonl"
        self._sent_path = self.folder / "sent"
        self._run_path = self.folder / "run.json"
        self.entries: list[dict[str, Any]] = list(self._read())
        self.sent = int(self._sent_path.read_text()) if self._sent_path.is_file() else 0
        record = json.loads(self._run_path.read_text()) if self._run_path.is_file() else {}
        self.run_id: str | None = record.get("run_id")
        self.creating = bool(record.get("creating")) and self.run_id is None
        self.last_step = -math.inf
        self.final_logged = False
        self.end_status: str | None = None
        for entry in self.entries:
            self._note(entry)

    def _read(self) -> Iterator[dict[str, Any]]:
        if not self.path.is_file():
            return
        for line in self.path.read_text().splitlines():
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                # The last line of a process killed while appending: never sent, never acked.
                return

    def _note(self, entry: Mapping[str, Any]) -> None:
        if entry["op"] == "batch":
            steps = [m[3] for m in entry.get("metrics", ())]
            if entry.get("final"):
                self.final_logged = True
            elif steps:
                self.last_step = max(self.last_step, max(steps))
        elif entry["op"] == "end":
            self.end_status = entry["status"]

    def append(self, op: str, **fields: Any) -> dict[str, Any]:
        """Journal one write (durably: fsync'd) and return its entry (with its ``seq``)."""
        entry = {"seq": len(self.entries) + 1, "op": op, **fields}
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as handle:
            handle.write(json.dumps(entry, separators=(",", ":")) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.entries.append(entry)
        self._note(entry)
        return entry

    def pending(self) -> list[dict[str, Any]]:
        """Return the journalled writes the server has not taken yet, oldest first."""
        return [e for e in self.entries if e["seq"] > self.sent]

    def mark_sent(self, seq: int) -> None:
        """Record that every write up to ``seq`` was taken by the server."""
        self.sent = max(self.sent, seq)
        files.write_text(self._sent_path, str(self.sent), "the tracking journal")

    def mark_creating(self) -> None:
        """Record that a create request is about to be sent (see ``creating``)."""
        self.creating = True
        self.folder.mkdir(parents=True, exist_ok=True)
        files.write_text(self._run_path, json.dumps({"creating": True}), "the tracking journal")

    def set_run_id(self, run_id: str) -> None:
        """Record the run id the server gave."""
        self.run_id, self.creating = run_id, False
        files.write_text(self._run_path, json.dumps({"run_id": run_id}), "the tracking journal")

    def final_metrics(self) -> dict[str, float] | None:
        """Return the journalled final metrics, or None if none were journalled."""
        for entry in reversed(self.entries):
            if entry["op"] == "batch" and entry.get("final"):
                return {m[0]: float(m[1]) for m in entry["metrics"]}
        return None


def pending_journals(root: str | Path) -> list[Journal]:
    """Return the journals under ``root`` (one level: trial folders) with writes not sent."""
    found = []
    for path in sorted(Path(root).glob(f"*/{FOLDER}/journal.jsonl")):
        journal = Journal(path.parent.parent)
        if journal.pending():
            found.append(journal)
    return found
