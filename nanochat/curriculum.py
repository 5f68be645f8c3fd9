"""
Curricula: training in phases that change the data mixture, the exercise difficulty and the
learning rate (scripts/curriculum_train.py). A curriculum is a small JSON file:

    {
      "description": "what it is for",
      "warmup_steps": 500,                 optional: linear LR warmup at the start of a run
      "final_lr_frac": 0.1,                optional: where each phase's cosine ends
      "phases": [
        {"name": "structure", "steps": 2000,
         "mixture": {"exercises": 60, "tinystories": 20, "pretrain": 15, "personal": 5},
         "difficulty": [1, 3],             the exercises' difficulty, ramped from start to end (or one number)
         "lr_mult": 1.0,                   this phase's learning rates times this
         "exercise_kinds": ["addition"]},  optional: which exercise kinds (default all)
        ...
      ]
    }

Mixture weights are relative (60 and 0.6 mean the same if all are given so). Sources:
"exercises" (generated, endless), "personal" (--personal PATH), "pretrain" (the --data shards),
or any data source nanochat.dataset knows: "fineweb", "builtin", "tinystories", a --text name,
or a folder of parquet shards. Steps count across the phases: phase 2 starts where phase 1 ends.

The learning rate of step s in phase p: warmup(s) x p.lr_mult x a half cosine over p from 1 to
final_lr_frac. The difficulty at s ramps linearly from p's first to its last step.
"""
import json
import math
import os
from dataclasses import dataclass

from nanochat.common import UserError
from nanochat.exercises import DIFFICULTIES, KINDS

ALIASES = {"synthetic": "exercises"}


@dataclass
class Phase:
    name: str
    start: int            # its first step
    steps: int
    mixture: dict         # {source: weight}, weights summing to 1
    difficulty: tuple     # (at its first step, at its last)
    lr_mult: float
    exercise_kinds: tuple

    @property
    def end(self):
        return self.start + self.steps


def _phase(i, raw, start, where):
    if not isinstance(raw, dict):
        raise UserError(f"{where}: each phase is an object with name, steps, mixture, difficulty, lr_mult")
    unknown = set(raw) - {"name", "steps", "mixture", "difficulty", "lr_mult", "exercise_kinds"}
    if unknown:
        raise UserError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    name = str(raw.get("name", f"phase{i + 1}"))
    steps = raw.get("steps")
    if not isinstance(steps, int) or steps <= 0:
        raise UserError(f"{where}: steps must be a positive integer, got {steps!r}")
    mixture = raw.get("mixture")
    if not isinstance(mixture, dict) or not mixture:
        raise UserError(f"{where}: mixture must be an object like {{\"exercises\": 60, \"pretrain\": 40}}")
    if any(not isinstance(w, (int, float)) or w < 0 for w in mixture.values()) or sum(mixture.values()) <= 0:
        raise UserError(f"{where}: mixture weights must be non-negative numbers, not all zero")
    total = float(sum(mixture.values()))
    mixture = {ALIASES.get(k, k): w / total for k, w in mixture.items() if w > 0}
    difficulty = raw.get("difficulty", [DIFFICULTIES[0], DIFFICULTIES[-1]])
    difficulty = (difficulty, difficulty) if isinstance(difficulty, (int, float)) else tuple(difficulty)
    if len(difficulty) != 2 or not all(isinstance(d, (int, float)) and DIFFICULTIES[0] <= d <= DIFFICULTIES[-1] for d in difficulty):
        raise UserError(f"{where}: difficulty must be a number or [start, end] within 1..5, got {raw.get('difficulty')!r}")
    lr_mult = raw.get("lr_mult", 1.0)
    if not isinstance(lr_mult, (int, float)) or lr_mult < 0:
        raise UserError(f"{where}: lr_mult must be a number >= 0, got {lr_mult!r}")
    kinds = tuple(raw.get("exercise_kinds", KINDS))
    if not kinds or any(k not in KINDS for k in kinds):
        raise UserError(f"{where}: exercise_kinds must name kinds among {', '.join(KINDS)}")
    return Phase(name, start, steps, mixture, tuple(float(d) for d in difficulty), float(lr_mult), kinds)


def load_curriculum(path):
    """(phases, settings) from a curriculum JSON file; settings: warmup_steps, final_lr_frac. Raises UserError."""
    if not os.path.isfile(path):
        raise UserError(f"no curriculum file {path}")
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("phases"), list) or not raw["phases"]:
        raise UserError(f"{path}: needs a non-empty \"phases\" list")
    phases, start = [], 0
    for i, p in enumerate(raw["phases"]):
        phases.append(_phase(i, p, start, f"{path}: phase {i + 1}"))
        start += phases[-1].steps
    names = [p.name for p in phases]
    if len(set(names)) != len(names):
        raise UserError(f"{path}: phase names must differ, got {names}")
    settings = {"warmup_steps": raw.get("warmup_steps", 0), "final_lr_frac": raw.get("final_lr_frac", 0.1),
                "description": raw.get("description", "")}
    if not isinstance(settings["warmup_steps"], int) or settings["warmup_steps"] < 0:
        raise UserError(f"{path}: warmup_steps must be an integer >= 0")
    if not isinstance(settings["final_lr_frac"], (int, float)) or not 0 <= settings["final_lr_frac"] <= 1:
        raise UserError(f"{path}: final_lr_frac must be between 0 and 1")
    return phases, settings


def with_personal_frac(phases, frac):
    """--personal_frac: 'personal' is frac of every phase, the other sources scaled to fill the rest."""
    out = []
    for p in phases:
        others = {k: w for k, w in p.mixture.items() if k != "personal"}
        total = sum(others.values())
        if total <= 0:
            raise UserError(f"phase {p.name}: --personal_frac needs other sources in the mixture")
        mixture = {k: w / total * (1 - frac) for k, w in others.items()}
        mixture["personal"] = frac
        out.append(Phase(p.name, p.start, p.steps, mixture, p.difficulty, p.lr_mult, p.exercise_kinds))
    return out


def phase_at(phases, step):
    """The phase that trains step (the last one for steps past the end)."""
    for p in phases:
        if step < p.end:
            return p
    return phases[-1]


def difficulty_at(phase, step):
    """Linear from the phase's first difficulty at its first step to its last at its last step."""
    lo, hi = phase.difficulty
    return lo + (hi - lo) * min(max(step - phase.start, 0) / max(phase.steps - 1, 1), 1.0)


def lr_at(phases, step, first_step=0, warmup_steps=0, final_lr_frac=0.1):
    """LR multiplier of a step: warmup from the run's first step, times the phase's lr_mult, times its cosine."""
    p = phase_at(phases, step)
    t = (step - p.start) / p.steps  # 0 at the phase's first step, (steps - 1) / steps at its last
    cosine = final_lr_frac + (1 - final_lr_frac) * 0.5 * (1 + math.cos(math.pi * t))
    warmup = min(1.0, (step - first_step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    return warmup * p.lr_mult * cosine


def sources_of(phases):
    """Every source any phase draws from, in first-use order."""
    names = []
    for p in phases:
        names += [k for k in p.mixture if k not in names]
    return names
