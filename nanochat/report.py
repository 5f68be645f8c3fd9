"""
The report card of a pipeline run. Every stage writes its section when it finishes; scripts.report
puts them together:

    $NANOCHAT_BASE_DIR/report/
        header.json          `python -m scripts.report --reset`: the start time and the machine
        <stage>.json         one per stage: tok_train, base_train, mid_train, chat_sft, chat_rl, ...
        <stage>-<phase>.json an evaluation of one model: base_loss-base, base_eval-base, chat_eval-sft, ...
        report.md            `python -m scripts.report`: system, the sections in pipeline order, a summary

A section is one small JSON file (settings, metrics, tables, summary, wall time, peak memory),
written atomically by rank 0; a stage run again (a resume, a rerun) replaces its file, so it is
never there twice. Writing it never stops a run: when the folder cannot be written, one warning.
The summary table has a row per headline number (each section names its own, `summary=`) and a
column per model phase (base, mid, sft, rl); where two sections of a phase give the same row, the
later one in pipeline order wins (base_loss's val bpb over base_train's).
"""
import datetime
import glob
import json
import os
import platform
import subprocess
import sys
import time

from nanochat.common import get_base_dir, get_rank

PHASES = ["tokenizer", "base", "curriculum", "mid", "sft", "rl"]
# pipeline order within a phase; a training stage's phase is fixed, an evaluation's is the model's it reads
STAGES = {
    "tok_train": ("tokenizer", "Tokenizer training"), "tok_eval": ("tokenizer", "Tokenizer evaluation"),
    "base_train": ("base", "Base model training"), "mid_train": ("mid", "Mid-training"), "chat_sft": ("sft", "SFT"),
    "chat_rl": ("rl", "RL"), "base_loss": (None, "Bits per byte"), "base_eval": (None, "CORE"),
    "chat_eval": (None, "Chat evaluation"), "curriculum_train": ("curriculum", "Curriculum training"),
    "distill": (None, "Distillation"),
}
SUMMARY_ROWS = ["val bpb", "train bpb", "val loss", "CORE", "ARC-Easy", "ARC-Challenge", "MMLU", "GSM8K", "HumanEval",
                "built-in exercises", "RL task pass@1"]
VAL_ROWS = {"val_bpb": "val bpb", "val_loss": "val loss", "pass@1": "RL task pass@1"}  # a trainer's evaluate() keys
_IMPORTED = time.time()
_warned = False  # one warning per process when the folder cannot be written


def get_report_dir():
    return os.path.join(get_base_dir(), "report")


# -----------------------------------------------------------------------------
# measurements

def process_wall_s():
    """Seconds since this process started (Linux: from /proc, so the imports count; elsewhere: since this module loaded)."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, after the command name
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.time() - _IMPORTED


def peak_memory(device_type):
    """(bytes, what they are): the peak allocated on a CUDA device, else the process's peak resident set."""
    if str(device_type).startswith("cuda"):
        import torch
        return torch.cuda.max_memory_allocated(), "GPU allocated"
    try:
        import resource
    except ImportError:  # Windows
        return None, "max RSS"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss * (1 if sys.platform == "darwin" else 1024), "max RSS"  # bytes on macOS, KiB elsewhere


def _git(*args):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        p = subprocess.run(["git", "-C", root, *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return p.stdout.strip() if p.returncode == 0 else None


def system_info():
    import torch
    info = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "cpu_cores": os.cpu_count(), "cpu_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None}
    try:
        info["ram_bytes"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        info["ram_bytes"] = None
    if torch.cuda.is_available():
        props = [torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count())]
        info.update(gpu_count=len(props), gpu_names=sorted({p.name for p in props}),
                    gpu_memory_bytes=sum(p.total_memory for p in props), cuda=torch.version.cuda)
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    info["git_commit"] = commit
    info["git_dirty"] = bool(status) if status is not None else None
    return info


# -----------------------------------------------------------------------------
# writing

def _warn_once(message):
    global _warned
    if not _warned:
        _warned = True
        print(f"warning: report section not written ({message}); the run itself is fine", file=sys.stderr, flush=True)


def section_key(stage, phase):
    fixed = STAGES.get(stage, (None,))[0]
    return stage if phase in (None, fixed) else f"{stage}-{phase}"


def append_section(stage, settings=None, metrics=None, tables=(), summary=None, wall_s=None, peak_mem=None, device=None,
                   phase=None, title=None):
    """
    Write (or replace) the section of a stage. phase: the model phase it belongs to (an evaluation: the
    source it read; a training stage: its own, by default). tables: [(title, [column, ...], [[cell, ...], ...])].
    summary: {row name: number} for the summary table. wall_s defaults to this process's age, peak_mem to
    peak_memory(device). Rank 0 only; returns the path written, or None.
    """
    if get_rank() != 0:
        return None
    phase = phase or STAGES.get(stage, (None,))[0] or "other"
    device = str(device or "cpu")
    mem, mem_kind = peak_memory(device) if peak_mem is None else (peak_mem, "peak")
    section = {
        "stage": stage, "phase": phase, "title": title or STAGES.get(stage, (None, stage))[1],
        "finished": datetime.datetime.now().isoformat(timespec="seconds"),
        "wall_s": process_wall_s() if wall_s is None else float(wall_s), "peak_mem": mem, "peak_mem_kind": mem_kind,
        "device": device, "world_size": int(os.environ.get("WORLD_SIZE", 1)),
        "settings": dict(settings or {}), "metrics": dict(metrics or {}),
        "tables": [{"title": t, "columns": list(c), "rows": [list(r) for r in rows]} for t, c, rows in tables],
        "summary": {k: v for k, v in (summary or {}).items() if v is not None},
    }
    try:
        from nanochat.checkpoint_manager import _atomic_write
        text = json.dumps(section, indent=1, default=str)  # settings may hold paths and the like
        folder = get_report_dir()
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, section_key(stage, phase) + ".json")
        _atomic_write(path, lambda f: f.write(text.encode("utf-8")))
        return path
    except (OSError, TypeError, ValueError) as e:
        _warn_once(f"{type(e).__name__}: {e}")
        return None


def append_training(stage, trainer, result, metrics=None, summary=None, tables=(), phase=None):
    """The section of a training stage, from its Trainer and the summary trainer.run returned."""
    tokens = result["step"] * trainer.tokens_per_step
    tok_per_sec = result.get("tok_per_sec")
    mfu = (100 * trainer.num_flops_per_token * tok_per_sec / (trainer.peak_flops * trainer.world_size)
           if tok_per_sec and trainer.peak_flops else None)
    m = {"steps": result["step"], "tokens": tokens, "parameters": trainer.orig_model.num_params(),
         "tokens per step": trainer.tokens_per_step, "device batch": f"{trainer.B} x {trainer.T}",
         "grad accumulation": trainer.grad_accum_steps, "training time (s)": result["total_time"],
         "tokens/s": round(tok_per_sec) if tok_per_sec else None, "MFU %": round(mfu, 2) if mfu else None}
    for key, value in result["val"].items():
        m[key] = value
    first_key = next(iter(result["val"]), None)
    if first_key is not None:  # first_val and min_val follow the first key evaluate() returns
        m[f"{first_key} (first eval)"], m[f"{first_key} (best)"] = result["first_val"], result["min_val"]
    m.update(metrics or {})
    rows = {VAL_ROWS[k]: v for k, v in result["val"].items() if k in VAL_ROWS}
    rows.update(summary or {})
    return append_section(stage, settings=trainer.user_config, metrics={k: v for k, v in m.items() if v is not None},
                          tables=tables, summary=rows, device=trainer.device, phase=phase)


def reset(started=None):
    """Clear the report folder and write its header (the start time and the machine)."""
    folder = get_report_dir()
    os.makedirs(folder, exist_ok=True)
    for path in glob.glob(os.path.join(folder, "*.json")) + [os.path.join(folder, "report.md")]:
        if os.path.exists(path):
            os.remove(path)
    header = {"started": started or datetime.datetime.now().isoformat(timespec="seconds"), "system": system_info()}
    path = os.path.join(folder, "header.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(header, f, indent=1)
    return path


# -----------------------------------------------------------------------------
# reading and rendering

def read_sections(folder=None):
    """The sections, in pipeline order (phase, then stage; unknown stages after the known ones of their phase)."""
    folder = folder or get_report_dir()
    sections = []
    for path in glob.glob(os.path.join(folder, "*.json")):
        if os.path.basename(path) == "header.json":
            continue
        try:
            with open(path, encoding="utf-8") as f:
                sections.append(json.load(f))
        except (OSError, json.JSONDecodeError):
            print(f"warning: skipping unreadable report section {path}", file=sys.stderr)
    order = list(STAGES)
    def key(s):
        phase = PHASES.index(s["phase"]) if s["phase"] in PHASES else len(PHASES)
        return phase, order.index(s["stage"]) if s["stage"] in order else len(order), s.get("finished", "")
    return sorted(sections, key=key)


def fmt(v):
    if isinstance(v, bool) or v is None:
        return "-" if v is None else str(v)
    if isinstance(v, int):
        return f"{v:,d}"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4f}" if abs(v) >= 0.01 or v == 0 else f"{v:.3g}"
    return str(v)


def fmt_duration(seconds):
    s = int(round(seconds))
    return f"{s // 3600}h {s % 3600 // 60:02d}m {s % 60:02d}s" if s >= 3600 else f"{s // 60}m {s % 60:02d}s"


def md_table(columns, rows):
    cell = lambda v: fmt(v).replace("|", "\\|")
    lines = ["| " + " | ".join(map(cell, columns)) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(map(cell, r)) + " |" for r in rows])


def render_system(info):
    if info.get("gpu_count"):
        gpu = (f"{info['gpu_count']} x {', '.join(info['gpu_names'])} ({info['gpu_memory_bytes'] / 2**30:.1f} GiB in all), "
               f"CUDA {info.get('cuda')}")
    else:
        gpu = "CPU (no CUDA GPU)"
    ram = f"{info['ram_bytes'] / 2**30:.1f} GiB" if info.get("ram_bytes") else "unknown"
    usable = f" ({info['cpu_usable']} usable)" if info.get("cpu_usable") not in (None, info.get("cpu_cores")) else ""
    commit = info.get("git_commit")
    git = "not a git checkout" if not commit else f"{commit[:12]} ({'dirty: uncommitted changes' if info.get('git_dirty') else 'clean'})"
    return "\n".join([f"- accelerator: {gpu}", f"- torch {info['torch']}, Python {info['python']}, {info['platform']}",
                      f"- CPU: {info['cpu_cores']} cores{usable}, RAM {ram}", f"- git: {git}"])


def render_section(s):
    mem = f"{s['peak_mem'] / 2**30:.2f} GiB ({s['peak_mem_kind']})" if s.get("peak_mem") else "unknown"
    where = s["device"] + (f" x {s['world_size']}" if s.get("world_size", 1) > 1 else "")
    out = [f"## {s['title']} ({section_key(s['stage'], s['phase'])})", "",
           f"finished {s['finished']} | wall time {fmt_duration(s['wall_s'])} | peak memory {mem} | {where}", ""]
    if s["metrics"]:
        out += [md_table(["metric", "value"], list(s["metrics"].items())), ""]
    for t in s["tables"]:
        out += [f"**{t['title']}**", "", md_table(t["columns"], t["rows"]), ""]
    if s["settings"]:
        out += ["settings: " + ", ".join(f"`{k}={v}`" for k, v in s["settings"].items()), ""]
    return "\n".join(out)


def summary_table(sections):
    """(columns, rows): a row per headline number, a column per phase that has one; the later section wins a cell."""
    cells = {}
    for s in sections:
        for name, value in s["summary"].items():
            cells.setdefault(name, {})[s["phase"]] = value
    phases = [p for p in PHASES + sorted({s["phase"] for s in sections} - set(PHASES)) if any(p in c for c in cells.values())]
    # "CORE (partial)" goes where CORE would; names the list does not know go last, in the order met
    rank = lambda n: SUMMARY_ROWS.index(n.split(" (")[0]) if n.split(" (")[0] in SUMMARY_ROWS else len(SUMMARY_ROWS)
    names = sorted(cells, key=rank)
    return ["metric"] + [p.upper() for p in phases], [[n] + [cells[n].get(p) for p in phases] for n in names]


def generate(gpu_hourly_cost=None, folder=None):
    """Write report.md from the header and the sections; returns its path."""
    folder = folder or get_report_dir()
    os.makedirs(folder, exist_ok=True)
    header_path = os.path.join(folder, "header.json")
    header = None
    if os.path.exists(header_path):
        with open(header_path, encoding="utf-8") as f:
            header = json.load(f)
    sections = read_sections(folder)
    now = datetime.datetime.now().isoformat(timespec="seconds")
    out = ["# nanochat report", ""]
    if header:
        out += [f"run started {header['started']} | report written {now}", "", "## System", "", render_system(header["system"]), ""]
    else:
        out += [f"report written {now} (no `python -m scripts.report --reset` before the run: no start time; "
                "the system is this machine's now)", "", "## System", "", render_system(system_info()), ""]
    out += [render_section(s) for s in sections]
    columns, rows = summary_table(sections)
    total = sum(s["wall_s"] for s in sections)
    out += ["## Summary", "", md_table(columns, rows) if rows else "(no headline numbers yet)", "",
            f"- total wall time: {fmt_duration(total)} (the sum of {len(sections)} stage wall time{'s' * (len(sections) != 1)})"]
    if header and sections:
        since = datetime.datetime.fromisoformat(max(s["finished"] for s in sections)) - datetime.datetime.fromisoformat(header["started"])
        out.append(f"- from the reset to the last stage's end: {fmt_duration(since.total_seconds())}")
    if gpu_hourly_cost is not None:
        out.append(f"- cost: {total / 3600:.2f} h x ${gpu_hourly_cost:.2f}/h = ${total / 3600 * gpu_hourly_cost:.2f}")
    path = os.path.join(folder, "report.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(out) + "\n")
    return path
