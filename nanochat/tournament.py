"""
The bookkeeping of an architecture tournament (scripts/tournament.py trains the contestants):
rounds, per-contestant step budgets, the state file that makes it resumable, ranking with seed
noise, the markdown tables and the plot.

A tournament folder ($NANOCHAT_BASE_DIR/tournament/<name>/) holds
    state.json          settings, and per contestant: status, reason, one result per (round, seed)
    round_<r>.md        the ranking of round r; results.md all rounds and the winner
    tournament.png      each contestant's loss curve across the rounds, eliminations marked
    <contestant>/       its checkpoints and metrics.jsonl (a contestant is a variant, or
                        variant_s<seed> with several seeds)
state.json is rewritten (atomically) after every contestant's round, so a killed tournament loses
at most the round of the contestant it was training; that one continues from its last checkpoint.
"""
import json
import math
import os

STATE_FILE = "state.json"


def parse_rounds(text):
    """'500:5,1000:3,2000:1' -> [(500, 5), (1000, 3), (2000, 1)]: steps of the round, survivors after it."""
    rounds = []
    for part in text.split(","):
        steps, sep, keep = part.strip().partition(":")
        try:
            steps, keep = int(steps), int(keep)
        except ValueError:
            raise ValueError(f"--rounds {text!r}: expected STEPS:SURVIVORS items, e.g. '500:5,1000:3,2000:1'") from None
        if not sep or steps <= 0 or keep <= 0:
            raise ValueError(f"--rounds {text!r}: {part.strip()!r} needs positive steps and survivors")
        if rounds and keep > rounds[-1][1]:
            raise ValueError(f"--rounds {text!r}: survivors cannot grow from one round to the next")
        rounds.append((steps, keep))
    return rounds


def round_steps(flops_per_token, rounds, budget):
    """
    {contestant: [steps of round 1, round 2, ...]}. budget "tokens": every contestant trains the
    round's steps (same batch, so the same tokens); "flops": the contestant with the fewest FLOPs
    per token trains the round's steps and the others as many as the same FLOPs buy (at least 1).
    """
    if budget not in ("tokens", "flops"):
        raise ValueError(f"budget must be 'tokens' or 'flops', got {budget!r}")
    cheapest = min(flops_per_token.values())
    out = {}
    for name, flops in flops_per_token.items():
        scale = 1.0 if budget == "tokens" else cheapest / flops
        out[name] = [max(1, round(steps * scale)) for steps, _ in rounds]
    return out


# -----------------------------------------------------------------------------
# state

def load_state(folder):
    path = os.path.join(folder, STATE_FILE)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def save_state(folder, state):
    """Atomic: a kill leaves the old file or the new one, never half of one."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, STATE_FILE)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(state, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(path + ".tmp", path)


def check_settings(state, settings):
    """A folder continues only the tournament it was started with; ValueError naming the first difference."""
    for key, value in settings.items():
        old = state["settings"].get(key)
        if old != value:
            raise ValueError(f"this tournament was started with {key} = {old!r}, not {value!r}: "
                             f"run it with the same settings, or give a new --name")


# -----------------------------------------------------------------------------
# ranking

def summarize(contestant, round_index):
    """Mean and spread (max - min) over seeds of a contestant's results in a round, with the other columns."""
    rows = [r for r in contestant["results"] if r["round"] == round_index]
    if not rows:
        return None
    vals = [r["val_bpb"] for r in rows]
    mean = sum(vals) / len(vals)

    def avg(key):
        xs = [r[key] for r in rows if r.get(key) is not None]
        return sum(xs) / len(xs) if xs else None
    return {"val_bpb": mean, "spread": max(vals) - min(vals) if len(vals) > 1 else None, "seeds": len(vals),
            "train_loss": avg("train_loss"), "tok_per_sec": avg("tok_per_sec"), "peak_memory": avg("peak_memory"),
            "steps": rows[0]["steps"], "tokens": rows[0]["tokens"], "flops": rows[0]["flops"]}


def rank(state, round_index, names):
    """
    The contestants of `names` that finished the round, best (lowest held-out bpb) first, each
    summary with "tie_with": the contestant ranked just above when the two differ by no more than
    the larger of their seed spreads (needs several seeds; with one there is no noise estimate).
    """
    ranked = []
    for name in names:
        s = summarize(state["contestants"][name], round_index)
        if s is not None:
            ranked.append((name, s))
    ranked.sort(key=lambda item: item[1]["val_bpb"])
    for (prev, a), (_, b) in zip(ranked, ranked[1:]):
        noise = max(a["spread"] or 0.0, b["spread"] or 0.0)
        b["tie_with"] = prev if noise > 0 and b["val_bpb"] - a["val_bpb"] <= noise else None
    if ranked:
        ranked[0][1]["tie_with"] = None
    return ranked


def _fmt(x, spec, none="n/a"):
    return none if x is None else format(x, spec)


def round_table(state, round_index, ranked, keep):
    """The markdown table of one round: rank, contestant, held-out bpb (spread), train loss, tokens/s, memory, params."""
    lines = [f"| rank | contestant | val bpb | spread | train loss | tokens | FLOPs | tok/s | peak mem GiB | params | active | result |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for i, (name, s) in enumerate(ranked):
        c = state["contestants"][name]
        result = "continues" if i < keep else "eliminated"
        if s.get("tie_with"):
            result += f" (tie with {s['tie_with']}: within seed noise)"
        mem = None if not s["peak_memory"] else s["peak_memory"] / 2**30
        lines.append(f"| {i + 1} | {name} | {s['val_bpb']:.4f} | {_fmt(s['spread'], '.4f', '-')} | "
                     f"{_fmt(s['train_loss'], '.4f')} | {s['tokens']:,} | {flops_str(s['flops'])} | {_fmt(s['tok_per_sec'], ',.0f')} | "
                     f"{_fmt(mem, '.2f')} | {c['params'] / 1e6:.1f}M | {c['active'] / 1e6:.1f}M | {result} |")
    out = [r for r, c in state["contestants"].items() if c.get("eliminated_in") == round_index and c.get("reason")
           and not c["reason"].startswith("ranked")]
    for name in out:
        lines.append(f"| - | {name} | - | - | - | - | - | - | - | {state['contestants'][name]['params'] / 1e6:.1f}M | "
                     f"{state['contestants'][name]['active'] / 1e6:.1f}M | eliminated: {state['contestants'][name]['reason']} |")
    return "\n".join(lines)


def write_round(folder, state, round_index, ranked, keep, note):
    text = f"# Round {round_index}\n\n{state.get('header', '')}\n\n{note}\n\n{round_table(state, round_index, ranked, keep)}\n"
    with open(os.path.join(folder, f"round_{round_index}.md"), "w", encoding="utf-8") as f:
        f.write(text)
    return text


def write_results(folder, state, n_rounds, winner_line):
    parts = [f"# Tournament {state['settings']['name']}\n", state.get("header", ""), ""]
    for r in range(1, n_rounds + 1):
        path = os.path.join(folder, f"round_{r}.md")
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:  # the header is said once, above
                text = f.read().replace(f"# Round {r}", f"## Round {r}", 1).replace(state.get("header", "") + "\n\n", "", 1)
            parts.append(text)
    parts.append(f"## Winner\n\n{winner_line}\n")
    with open(os.path.join(folder, "results.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(parts))


# -----------------------------------------------------------------------------
# plot

def plot(folder, state, out, metrics_of):
    """
    Above: each contestant's smoothed training loss against tokens. Below: its held-out bpb at
    every round's end as the gap to the best at that point (the differences that decide a
    tournament are small next to the loss itself), an x where it was eliminated; round ends are
    dotted lines. metrics_of(name) -> its metrics rows. Raises ImportError without matplotlib.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax_train, ax_val) = plt.subplots(2, 1, figsize=(11, 8), sharex=True)
    curves = {}
    for name in state["contestants"]:
        rows = metrics_of(name)
        train = [(r["tokens"], r["smooth_loss"]) for r in rows if r.get("kind") == "train" and r.get("smooth_loss") is not None]
        val = [(r["tokens"], r["val_bpb"]) for r in rows if r.get("kind") == "eval" and r.get("val_bpb") is not None]
        curves[name] = (train, val)
    best = {}
    for _, val in curves.values():
        for t, v in val:
            best[t] = min(v, best.get(t, v))
    for i, (name, (train, val)) in enumerate(curves.items()):
        colour = f"C{i % 10}"
        if train:
            ax_train.plot(*zip(*train), color=colour, lw=1.2, label=name)
        gaps = [(t, v - best[t]) for t, v in val]
        if gaps:
            ax_val.plot(*zip(*gaps), color=colour, marker="o", lw=1.2, label=name)
        c = state["contestants"][name]
        if c["status"] == "eliminated" and gaps:
            ax_val.plot(*gaps[-1], marker="x", color="black", ms=10, mew=2)
            ax_val.annotate(f"{name.split('_')[0]} out (r{c.get('eliminated_in')})", gaps[-1], textcoords="offset points",
                            xytext=(5, 2), fontsize=7)
    for t in sorted(best):
        for ax in (ax_train, ax_val):
            ax.axvline(t, color="grey", ls=":", lw=0.8)
    ax_train.set_ylabel("train loss (smoothed)")
    ax_val.set_ylabel("held-out bpb - the best at that point")
    ax_val.set_xlabel("training tokens")
    ax_train.legend(fontsize=7, ncol=2)
    ax_train.set_title(f"tournament {state['settings']['name']}: x = eliminated")
    for ax in (ax_train, ax_val):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def human_count(n):
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}K" if n >= 1e3 else str(n)


def flops_str(x):
    return f"{x:.2e}" if x and math.isfinite(x) else "n/a"
