"""
scripts/plot_training: phase spans from metrics rows, and the script run as the user runs it
(a subprocess) on two runs it makes: a curriculum with phases and val_bpb, a plain run with val_loss.
"""
import json
import math
import os
import struct
import subprocess
import sys

import pytest

from nanochat.checkpoint_manager import PHASE_DIRS
from nanochat.metrics import METRICS_FILE
from scripts.plot_training import DPI, FIG_SIZE, NO_MATPLOTLIB, phase_spans

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENS_PER_STEP = 4096
# the curriculum's phases by step: "stories" comes back after "voice"
PHASES = [("structure", 1, 8), ("stories", 9, 16), ("voice", 17, 24), ("stories", 25, 30)]


def phase_of(step):
    return next(name for name, first, last in PHASES if first <= step <= last)


def train_row(step, phase=None, floor=3.0):
    smooth = floor + 7.0 * math.exp(-step / 10)
    return {"kind": "train", "step": step, "tokens": step * TOKENS_PER_STEP, "phase": phase, "train_loss": smooth + 0.3 * math.sin(step),
            "smooth_loss": smooth, "lrm": 1.0, "tok_per_sec": 1e4, "mfu": 0.0, "time": step}


def curriculum_rows():
    rows = []
    for step in range(1, 31):
        rows.append(train_row(step, phase_of(step)))
        ends_phase = any(step == last for _, _, last in PHASES)
        if ends_phase:
            rows.append({"kind": "shares", "step": step, "tokens": step * TOKENS_PER_STEP, "phase": phase_of(step),
                         "shares": {"synthetic": 0.6, "fineweb": 0.4}})
        if step % 4 == 0 or ends_phase:
            # an eval at a phase boundary carries the next phase: spans must not follow it
            phase = phase_of(min(step + 1, 30))
            rows.append({"kind": "eval", "step": step, "tokens": step * TOKENS_PER_STEP, "phase": phase,
                         "val_bpb": 1.0 + 2.0 * math.exp(-step / 12)})
    return rows


def plain_rows():
    rows = [train_row(step, floor=3.5) for step in range(1, 41)]
    rows += [{"kind": "eval", "step": s, "tokens": s * TOKENS_PER_STEP, "phase": None, "val_loss": 3.2 + 6.0 * math.exp(-s / 10)}
             for s in (0, 10, 20, 30, 40)]
    return rows


def write_run(folder, rows):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, METRICS_FILE), "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return str(folder)


def run_script(base_dir, *args, pythonpath=None):
    env = dict(os.environ, NANOCHAT_BASE_DIR=str(base_dir), OMP_NUM_THREADS="1")
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join([pythonpath] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return subprocess.run([sys.executable, "-m", "scripts.plot_training", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def png_size(path):
    """(width, height) from the PNG signature and IHDR chunk."""
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


@pytest.fixture
def runs(tmp_path):
    demo = write_run(tmp_path / PHASE_DIRS["curriculum"] / "demo", curriculum_rows())
    plain = write_run(tmp_path / "elsewhere" / "plain", plain_rows())
    return tmp_path, demo, plain


def test_phase_spans():
    rows = curriculum_rows()
    t = TOKENS_PER_STEP
    assert phase_spans(rows, x="step") == [("structure", 1, 8), ("stories", 8, 16), ("voice", 16, 24), ("stories", 24, 30)]
    assert phase_spans(rows) == [("structure", t, 8 * t), ("stories", 8 * t, 16 * t), ("voice", 16 * t, 24 * t),
                                 ("stories", 24 * t, 30 * t)]
    assert phase_spans(plain_rows()) == []
    # a row without a phase ends a span; the next span starts where that row's training ended
    rows = [train_row(1, "a"), train_row(2, "a"), train_row(3), train_row(4, "a"), {"kind": "eval", "step": 4, "phase": "b"}]
    assert phase_spans(rows, x="step") == [("a", 1, 2), ("a", 3, 4)]


def test_plot_two_runs(runs):
    pytest.importorskip("matplotlib")
    base_dir, demo, plain = runs
    r = run_script(base_dir, "curriculum/demo", plain)  # SOURCE/TAG, resolved under NANOCHAT_BASE_DIR
    assert r.returncode == 0, r.stderr
    out = os.path.join(demo, "training.png")  # default: in the first run's folder
    assert r.stdout.strip().splitlines()[-1] == out
    assert os.path.getsize(out) > 10_000
    assert png_size(out) == (FIG_SIZE[0] * DPI, FIG_SIZE[1] * DPI)


def test_plot_metrics_path_and_options(runs):
    matplotlib_image = pytest.importorskip("matplotlib.image")
    base_dir, demo, plain = runs
    out = str(base_dir / "plots" / "plain.png")
    r = run_script(base_dir, os.path.join(plain, METRICS_FILE), "--x", "step", "--raw", "--out", out)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == out
    assert matplotlib_image.imread(out).shape[:2] == (FIG_SIZE[1] * DPI, FIG_SIZE[0] * DPI)


def test_bad_runs_are_one_line_errors(runs, tmp_path):
    base_dir, demo, plain = runs
    empty = tmp_path / PHASE_DIRS["sft"] / "empty"
    empty.mkdir(parents=True)
    (empty / METRICS_FILE).write_text("")
    for run, says in [("base/nope", "no metrics file"), ("sft/empty", "no rows"), ("nowhere/at/all", "no such folder")]:
        r = run_script(base_dir, demo, run)
        assert r.returncode == 1
        assert "Traceback" not in r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {run}: ") and says in lines[0], r.stderr


def test_without_matplotlib(runs, tmp_path):
    base_dir, demo, plain = runs
    fake = tmp_path / "fake"
    (fake / "matplotlib").mkdir(parents=True)
    (fake / "matplotlib" / "__init__.py").write_text("raise ImportError('no matplotlib here')\n")
    r = run_script(base_dir, demo, pythonpath=str(fake))
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [f"error: {NO_MATPLOTLIB}"]
    assert NO_MATPLOTLIB == "plotting needs matplotlib: pip install matplotlib (or pip install -e .[plot])"
    assert not os.path.exists(os.path.join(demo, "training.png"))
