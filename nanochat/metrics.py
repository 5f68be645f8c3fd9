"""
What a training run writes next to its checkpoints, for plots and for comparing runs:

    metrics.jsonl   one JSON object per line:
                    {"kind": "train", "step", "tokens", "phase", "train_loss", "smooth_loss", "lrm",
                     "tok_per_sec", "mfu", "time"}                      at every logging step
                    {"kind": "eval", "step", "tokens", "phase", "val_bpb" or "val_loss", ...}
                                                                        at every evaluation
                    (a distillation, scripts/distill.py, adds "exercise_acc" and the teacher's
                     "teacher_val_bpb" or "teacher_val_loss" and "teacher_exercise_acc")
                    {"kind": "shares", "step", "tokens", "phase", "shares": {source: fraction}}
                                                                        at the end of a curriculum phase
    samples.jsonl   {"kind": "sample", "step", "tokens", "phase", "prompt", "completion"} at every sampling

`step` is the optimizer step after which the row holds (eval and samples: before step + 1 is
trained), `tokens` the training tokens seen by then. "phase" is null outside curricula.

A resumed run continues the same files: RunLog(..., resume_step=k) first drops what the stopped run
wrote after its checkpoint at step k (train rows past k; eval, shares and sample rows past k).
Eval, shares and sample rows at step k come after the save at k: they stay unless the resumed run
writes that kind at step k again, which replaces them. So no row appears twice (a metrics row that
an interrupted run wrote twice is kept once), and a run that does not evaluate again at k (say
--eval_every 0, a tournament's next round) keeps the evaluation it had.
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


def _written_up_to(row, step):
    """True for the rows a run wrote up to its checkpoint at `step` and, of other kinds than train, at that step."""
    return row.get("step", 0) <= step


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
                rows = [r for r in read_rows(path) if _written_up_to(r, resume_step)]
                _rewrite(path, _unique_steps(rows) if path == self.metrics_path else rows)
        self.resume_step, self.replaced = resume_step, set()

    def _append(self, path, row):
        if not self.enabled:
            return
        kind = (path, row.get("kind", "train"))
        if row.get("step") == self.resume_step and kind not in self.replaced and kind[1] != "train":
            # this run writes this kind at its resume step again: it replaces the stopped run's rows there
            self.replaced.add(kind)
            _rewrite(path, [r for r in read_rows(path) if not (r.get("step") == self.resume_step
                                                                and r.get("kind", "train") == kind[1])])
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    def metrics(self, **row):
        self._append(self.metrics_path, row)

    def sample(self, **row):
        self._append(self.samples_path, {"kind": "sample", **row})  # after the save at its step: dropped on resume
