"""
What a training run writes next to its checkpoints, for plots and for comparing runs:

    metrics.jsonl   one JSON object per line:
                    {"kind": "train", "step", "tokens", "phase", "train_loss", "smooth_loss", "lrm",
                     "tok_per_sec", "mfu", "time"}                      at every logging step
                    {"kind": "eval", "step", "tokens", "phase", "val_bpb" or "val_loss", ...}
                                                                        at every evaluation
                    {"kind": "shares", "step", "tokens", "phase", "shares": {source: fraction}}
                                                                        at the end of a curriculum phase
    samples.jsonl   {"kind": "sample", "step", "tokens", "phase", "prompt", "completion"} at every sampling

`step` is the optimizer step after which the row holds (eval and samples: before step + 1 is
trained), `tokens` the training tokens seen by then. "phase" is null outside curricula.

A resumed run continues the same files: RunLog(..., resume_step=k) first drops what the stopped run
wrote after its checkpoint at step k (train rows past k; eval, shares and sample rows from k on,
since those come after the save at step k and are written again), so no row appears twice (a
metrics row that an interrupted run wrote twice is kept once).
Lines are flushed as they are written; a half-written last line (a killed process) is skipped.
"""
import json
import os

METRICS_FILE = "metrics.jsonl"
SAMPLES_FILE = "samples.jsonl"


def read_rows(path):
    """The rows of a JSONL file (missing file: none); lines that do not parse are skipped."""
    rows = []
    if not os.path.exists(path):
        return rows
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill
            if isinstance(row, dict):
                rows.append(row)
    return rows


def _written_before_save(row, step):
    """True for the rows a run wrote up to (and including) its checkpoint at `step`."""
    if row.get("step", 0) < step:
        return True
    return row.get("step") == step and row.get("kind", "train") == "train"


def _unique_steps(rows):
    """One metrics row per (kind, step, phase): the first, should an interrupted run have written one twice."""
    seen, out = set(), []
    for row in rows:
        key = (row.get("kind"), row.get("step"), row.get("phase"))
        if key not in seen:
            seen.add(key)
            out.append(row)
    return out


def _rewrite(path, rows):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    os.replace(tmp, path)


class RunLog:
    """Appends metrics and samples rows (rank 0 only: other ranks get a RunLog that writes nothing)."""

    def __init__(self, out_dir, resume_step=None, enabled=True):
        self.enabled = enabled and out_dir is not None
        self.metrics_path = os.path.join(out_dir, METRICS_FILE) if out_dir else None
        self.samples_path = os.path.join(out_dir, SAMPLES_FILE) if out_dir else None
        if not self.enabled:
            return
        os.makedirs(out_dir, exist_ok=True)
        for path in (self.metrics_path, self.samples_path):
            if resume_step is None:
                if os.path.exists(path):
                    os.remove(path)  # a fresh run starts fresh files
            elif os.path.exists(path):
                rows = [r for r in read_rows(path) if _written_before_save(r, resume_step)]
                _rewrite(path, _unique_steps(rows) if path == self.metrics_path else rows)

    def _append(self, path, row):
        if not self.enabled:
            return
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    def metrics(self, **row):
        self._append(self.metrics_path, row)

    def sample(self, **row):
        self._append(self.samples_path, {"kind": "sample", **row})  # after the save at its step: dropped on resume
