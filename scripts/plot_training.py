"""
Plot training runs from the metrics.jsonl their checkpoint folders hold (see nanochat/metrics.py):
train loss (solid) and validation loss / bpb (markers) against training tokens or steps, several
runs overlaid, curriculum phases shaded and named. A distilled student's run (scripts/distill.py)
also draws its teacher's numbers (dotted) and both models' built-in exercise accuracy. Needs matplotlib (pip install -e .[plot]).

    python -m scripts.plot_training base/d4                         # -> <base dir>/base_checkpoints/d4/training.png
    python -m scripts.plot_training curriculum/demo base/d4 --out cmp.png   # two runs, demo's phases shaded
    python -m scripts.plot_training path/to/run_folder --x step --raw
    python -m scripts.plot_training path/to/metrics.jsonl

A RUN is a checkpoint folder, a metrics.jsonl file, or SOURCE/TAG (SOURCE: base, mid, sft, rl,
curriculum), which means $NANOCHAT_BASE_DIR/<SOURCE>_checkpoints/TAG.
"""
import os

from nanochat.checkpoint_manager import PHASE_DIRS, get_checkpoints_dir
from nanochat.common import ArgumentParser, UserError, die
from nanochat.metrics import METRICS_FILE, read_rows

FIG_SIZE = (11, 7)  # inches, at DPI: a 1100 x 700 PNG whatever the runs hold
DPI = 100
PHASE_COLOURS = ["#dbe9f6", "#fde7cf", "#dcefd9", "#efe0f3", "#fbf5c9", "#e4e4e4"]  # light, one per phase name
NO_MATPLOTLIB = "plotting needs matplotlib: pip install matplotlib (or pip install -e .[plot])"


def resolve_run(run):
    """RUN -> (name for the legend, path of its metrics.jsonl)."""
    if os.path.isfile(run):
        path = run
    elif os.path.isdir(run):
        path = os.path.join(run, METRICS_FILE)
    else:
        source, sep, tag = run.partition("/")
        if not sep or not tag or source not in PHASE_DIRS:
            raise UserError(f"{run}: no such folder or file, and not SOURCE/TAG with SOURCE one of {', '.join(PHASE_DIRS)}")
        return run, os.path.join(get_checkpoints_dir(source), tag, METRICS_FILE)
    folder = os.path.dirname(os.path.abspath(path))
    stage = os.path.basename(os.path.dirname(folder))
    sources = {d: s for s, d in PHASE_DIRS.items()}  # .../curriculum_checkpoints/demo -> curriculum/demo
    name = f"{sources[stage]}/{os.path.basename(folder)}" if stage in sources else os.path.basename(folder)
    return name, path


def load_run(run):
    """RUN -> (name, metrics path, rows); a one-line UserError when there is nothing to plot."""
    name, path = resolve_run(run)
    if not os.path.exists(path):
        raise UserError(f"{run}: no metrics file at {path}")
    rows = read_rows(path)
    if not rows:
        raise UserError(f"{run}: no rows in {path}")
    if not any(row.get(k) is not None for row in rows for k in ("train_loss", "smooth_loss", "val_loss", "val_bpb")):
        raise UserError(f"{run}: no loss rows in {path}")
    return name, path, rows


def is_train(row):
    return row.get("kind", "train") == "train"


def series(rows, x, key, kind):
    """(xs, ys) of the rows of `kind` that have both x and `key`."""
    pts = [(r[x], r[key]) for r in rows if r.get("kind", "train") == kind and r.get(x) is not None and r.get(key) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def phase_spans(rows, x="tokens"):
    """
    Contiguous runs of train rows with the same phase -> [(name, x_start, x_end)], in order; a phase
    that comes back after another gets a second span. A train row stands for the training since the
    row before it, so a span starts at the x of the train row before its first (its own first row
    for the run's first row) and ends at its last row. Rows of other kinds (eval, shares) are
    ignored: at a phase boundary they may carry either phase. Rows with phase null belong to no span.
    """
    spans, prev_x, prev_phase = [], None, None
    for row in rows:
        if not is_train(row) or row.get(x) is None:
            continue
        phase = row.get("phase")
        if phase is not None and phase == prev_phase:
            spans[-1] = (phase, spans[-1][1], row[x])  # the span goes on
        elif phase is not None:
            spans.append((phase, row[x] if prev_x is None else prev_x, row[x]))
        prev_x, prev_phase = row[x], phase
    return spans


def shade_phases(axes, spans):
    """A light band per span, the same colour for the same phase name, the name at the top of the band."""
    colours = {}
    if spans:
        lo, hi = axes[0].get_ylim()
        axes[0].set_ylim(lo, hi + 0.08 * (hi - lo))  # room for the names above the curves
    for name, start, end in spans:
        colour = colours.setdefault(name, PHASE_COLOURS[len(colours) % len(PHASE_COLOURS)])
        for ax in axes:
            ax.axvspan(start, end, color=colour, alpha=0.8, lw=0, zorder=0)
        axes[0].text((start + end) / 2, 0.98, str(name), transform=axes[0].get_xaxis_transform(),
                     ha="center", va="top", fontsize=9, color="#444444", clip_on=True)


def plot(runs, out, x, raw):
    """runs: [(name, rows)]. Draws the figure and writes it to `out` (PNG)."""
    try:
        import matplotlib
        matplotlib.use("Agg")  # no screen needed
        import matplotlib.pyplot as plt
        from matplotlib.lines import Line2D
        from matplotlib.ticker import EngFormatter
    except ImportError:
        die(NO_MATPLOTLIB)
    train_key = "train_loss" if raw else "smooth_loss"
    has_bpb = any(r.get("val_bpb") is not None for _, rows in runs for r in rows)
    has_acc = any(r.get("exercise_acc") is not None for _, rows in runs for r in rows)  # a distillation's retention curve
    has_teacher = any(k.startswith("teacher_") for _, rows in runs for r in rows for k in r)
    ratios = [3] + [2] * (has_bpb + has_acc)
    fig, axes = plt.subplots(len(ratios), 1, figsize=FIG_SIZE, dpi=DPI, sharex=True, squeeze=False,
                             layout="constrained", gridspec_kw={"height_ratios": ratios})
    axes = list(axes[:, 0])
    loss_ax, bpb_ax = axes[0], axes[1] if has_bpb else None
    acc_ax = axes[-1] if has_acc else None
    handles = []
    for i, (name, rows) in enumerate(runs):
        colour = f"C{i % 10}"
        xs, ys = series(rows, x, train_key, "train")
        if not xs and not raw:
            xs, ys = series(rows, x, "train_loss", "train")  # a run that logged only the raw loss
        loss_ax.plot(xs, ys, color=colour, lw=1.4, zorder=2)
        xs, ys = series(rows, x, "val_loss", "eval")
        loss_ax.plot(xs, ys, color=colour, lw=0.8, ls="--", marker="o", ms=4, zorder=3)
        if bpb_ax is not None:
            xs, ys = series(rows, x, "val_bpb", "eval")
            bpb_ax.plot(xs, ys, color=colour, lw=0.8, ls="--", marker="o", ms=4, zorder=3)
        for ax, key in ((loss_ax, "val_loss"), (bpb_ax, "val_bpb"), (acc_ax, "exercise_acc")):
            if ax is not None:  # a distilled student's teacher: dotted, in the student's colour
                xs, ys = series(rows, x, "teacher_" + key, "eval")
                ax.plot(xs, ys, color=colour, lw=1.2, ls=":", marker="x", ms=4, zorder=3)
        if acc_ax is not None:
            xs, ys = series(rows, x, "exercise_acc", "eval")
            acc_ax.plot(xs, ys, color=colour, lw=0.8, ls="--", marker="o", ms=4, zorder=3)
        handles.append(Line2D([], [], color=colour, lw=3, label=name))
    handles.append(Line2D([], [], color="black", lw=1.4, label="train loss (raw)" if raw else "train loss (smoothed)"))
    handles.append(Line2D([], [], color="black", lw=0.8, ls="--", marker="o", ms=4, label="validation"))
    if has_teacher:
        handles.append(Line2D([], [], color="black", lw=1.2, ls=":", marker="x", ms=4, label="its teacher"))
    spans = next((s for s in (phase_spans(rows, x) for _, rows in runs) if s), [])
    shade_phases(axes, spans)
    loss_ax.set_ylabel("loss (nats / token)")
    if bpb_ax is not None:
        bpb_ax.set_ylabel("val bpb (bits / byte)")
    if acc_ax is not None:
        acc_ax.set_ylabel("built-in exercises (accuracy)")
    axes[-1].set_xlabel("training tokens" if x == "tokens" else "step")
    if x == "tokens":
        axes[-1].xaxis.set_major_formatter(EngFormatter())
    for ax in axes:
        ax.grid(True, alpha=0.3, zorder=1)
    loss_ax.set_title("training: " + ", ".join(name for name, _ in runs), fontsize=11)
    loss_ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)
    fig.savefig(out)
    plt.close(fig)


if __name__ == "__main__":
    parser = ArgumentParser(description="Plot train and validation loss of training runs (metrics.jsonl) to a PNG.",
                            epilog="RUN: a checkpoint folder, a metrics.jsonl file, or SOURCE/TAG such as base/d4, "
                                   f"sft/ittybitty, curriculum/demo (SOURCE: {', '.join(PHASE_DIRS)})")
    parser.add_argument("runs", nargs="+", metavar="RUN", help="the runs to draw, overlaid (phases of the first with phases are shaded)")
    parser.add_argument("--out", type=str, default="", help="PNG to write (default: training.png in the first RUN's folder)")
    parser.add_argument("--x", type=str, default="tokens", choices=["tokens", "step"], help="x axis (default: training tokens)")
    loss = parser.add_mutually_exclusive_group()
    loss.add_argument("--smooth", dest="raw", action="store_false", default=False,
                      help="train loss as the run's smoothed (EMA) loss, smooth_loss (the default: raw loss is noisy)")
    loss.add_argument("--raw", dest="raw", action="store_true", help="train loss as logged per step, train_loss")
    args = parser.parse_args()

    try:
        loaded = [load_run(run) for run in args.runs]
    except UserError as e:
        die(str(e))
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(loaded[0][1])), "training.png")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    plot([(name, rows) for name, _, rows in loaded], out, args.x, args.raw)
    print(out)
