"""
Self-chat: the model talks to itself, and we measure how its talk holds up over the turns.

    python -m scripts.self_chat -i sft --turns 6 --samples 8
    python -m scripts.self_chat --persona_a "You are a curious student." --persona_b "You are a patient teacher."
    python -m scripts.self_chat -i sft -g d20 --other_source mid --other_step 4000 --temperatures 0.6,1.0

Two sides take turns. Side A gets --opener as its first user message (as if side B had said it),
then A and B reply in turn for --turns replies (A, B, A, ...). Each side sees the conversation
from its own seat: its own replies as assistant turns, the other side's as user turns, its
persona (--persona_a / --persona_b) as a system message (nanochat folds that into the first user
message); side B's view starts at A's first reply, since a chat starts with a user turn. Side B is
the same model unless --other_source / --other_tag / --other_step name another checkpoint.

For every temperature in --temperatures, --samples conversations (sample k uses the same seeds at
every temperature, so the temperatures are compared on the same draws). Per turn and temperature:
the mean entropy of the distribution each token was sampled from (re-scored, see
nanochat/text_metrics.py), distinct-1/2/3 over that turn's replies, repetition (seq-rep-n: the
share of a reply's n-grams that repeat earlier ones), self-BLEU across the samples, reply length.
A reply whose repetition is above --rep_threshold, or that repeats an earlier reply of its
conversation, ends that conversation (a printed line, and `stopped` in the JSONL); so does a
conversation whose next prompt would leave less than --max_tokens of the context.

Written to --out (default $NANOCHAT_BASE_DIR/self_chat/<checkpoint>): transcripts.jsonl (one
conversation a line), metrics.json, table.md and, when matplotlib is installed, self_chat.png.
"""
import json
import os
import time

from nanochat.checkpoint_manager import PHASE_DIRS, _atomic_write, find_model_tag, get_checkpoints_dir, load_model
from nanochat.common import ArgumentParser, UserError, compute_init, die, get_base_dir, print0
from nanochat.engine import Engine, reply_parts, reply_text
from nanochat.flags import add_device_args, add_model_source_args
from nanochat.text_metrics import collapse_reason, distinct_n, repeated_share, rescore, self_bleu, words
from nanochat.tokenizer import render_for_completion

# -----------------------------------------------------------------------------
# settings
parser = ArgumentParser(prog="python -m scripts.self_chat", description="The model talks to itself (side A and side B: "
                        "the same checkpoint, unless --other_source/--other_tag/--other_step name another for side B); "
                        "entropy, diversity and repetition per turn and temperature, a table and a plot.")
add_model_source_args(parser, source="sft", what="A-side model")  # side B's too, unless --other_* name another
parser.add_argument("--other_source", type=str, default=None, choices=list(PHASE_DIRS),
                    help="side B plays another checkpoint: its stage (default: side A's)")
parser.add_argument("--other_tag", type=str, default=None, help="side B's model tag (default: side A's -g, else the deepest)")
parser.add_argument("--other_step", type=int, default=None, help="side B's step (default: the latest)")
parser.add_argument("--turns", type=int, default=6, help="replies per conversation, the sides alternating A, B, A, ... (default 6)")
parser.add_argument("--samples", type=int, default=4, help="conversations per temperature (default 4)")
parser.add_argument("--temperatures", type=str, default="0.6,1.0", help="comma-separated sampling temperatures (default 0.6,1.0)")
parser.add_argument("-k", "--top_k", type=int, default=50, help="sample from the k most likely tokens (0 = all; default 50)")
parser.add_argument("--max_tokens", type=int, default=128, help="longest reply in tokens (default 128)")
parser.add_argument("--opener", type=str, default="Hi! What would you like to talk about today?",
                    help="the first message, to side A (as if from side B)")
parser.add_argument("--persona_a", type=str, default="", help="side A's system message (its role or persona)")
parser.add_argument("--persona_b", type=str, default="", help="side B's system message")
parser.add_argument("--rep_n", type=int, default=4, help="n of the repetition measure seq-rep-n (default 4)")
parser.add_argument("--rep_threshold", type=float, default=0.5,
                    help="a reply with more than this share of repeated n-grams ends its conversation (default 0.5)")
parser.add_argument("--no_tools", action="store_true", help="do not run the calculator tool")
parser.add_argument("--seed", type=int, default=42, help="seed of the first reply; every reply of every sample has its own (default 42)")
parser.add_argument("--no_plot", action="store_true", help="do not draw self_chat.png (drawn when matplotlib is installed)")
parser.add_argument("--out", type=str, default=None, help="output folder (default $NANOCHAT_BASE_DIR/self_chat/<checkpoint>)")
add_device_args(parser)
args = parser.parse_args()
try:
    temperatures = list(dict.fromkeys(float(t) for t in args.temperatures.split(",") if t.strip()))  # in order, once each
except ValueError:
    die(f"--temperatures {args.temperatures!r}: expected comma-separated numbers, e.g. 0.6,1.0")
if not temperatures or any(t < 0 for t in temperatures):
    die(f"--temperatures {args.temperatures!r}: need at least one temperature, none negative")
if args.turns < 1 or args.samples < 1 or args.max_tokens < 1 or args.top_k < 0 or args.rep_n < 1:
    die("need --turns, --samples, --max_tokens and --rep_n >= 1, and --top_k >= 0")
if not 0 <= args.rep_threshold <= 1:
    die(f"--rep_threshold must be between 0 and 1, got {args.rep_threshold}")
if not args.opener.strip():
    die("--opener is empty")
top_k = args.top_k or None

# -----------------------------------------------------------------------------
# setup: side A's model, and side B's when it is another checkpoint


def load_side(source, tag, step):
    tag = tag or find_model_tag(get_checkpoints_dir(source))
    model, tokenizer, meta = load_model(source, device, phase="eval", model_tag=tag, step=step)
    return model, tokenizer, f"{source}_{tag}_step{meta['step']}"


try:
    device = compute_init(args.device_type)[4]
    model_a, tokenizer, name_a = load_side(args.source, args.model_tag, args.step)
    other = (args.other_source, args.other_tag, args.other_step)
    model_b, name_b = model_a, name_a
    if any(x is not None for x in other):
        model_b, _, name_b = load_side(args.other_source or args.source, args.other_tag or args.model_tag, args.other_step)
        model_b = model_a if name_b == name_a else model_b
except UserError as e:
    die(str(e))
models = {"A": model_a, "B": model_b}
names = {"A": name_a, "B": name_b}
# replies stay within the length each model was trained on, as in chat_cli; one engine per model (on CUDA
# an engine holds its decoder's cast weights and graphs)
engines = {"A": Engine(model_a, tokenizer, max_context=model_a.config.sequence_len)}
engines["B"] = engines["A"] if model_b is model_a else Engine(model_b, tokenizer, max_context=model_b.config.sequence_len)
personas = {"A": args.persona_a, "B": args.persona_b}
STOPS = {tokenizer.encode_special("<|assistant_end|>"), tokenizer.get_bos_token_id()}
out_dir = args.out or os.path.join(get_base_dir(), "self_chat", name_a if name_b == name_a else f"{name_a}_vs_{name_b}")
os.makedirs(out_dir, exist_ok=True)
print0(f"side A: {name_a}" + (f" | side B: {name_b}" if name_b != name_a else " (both sides)") + f" | output: {out_dir}")


def view(side, history):
    """The conversation as `side` sees it: its own messages as the assistant's, the other's as the user's."""
    messages = [{"role": "system", "content": personas[side]}] if personas[side] else []
    for who, content in history:
        if who == side and not any(m["role"] == "user" for m in messages):
            continue  # a chat starts with a user turn: side B's view starts at A's first reply
        if who == side:
            messages.append({"role": "assistant", "content": content or ""})
        else:
            messages.append({"role": "user", "content": content if isinstance(content, str) else reply_text(content)})
    return messages


def sample_reply(side, prompt, temperature, seed):
    """One reply from the engine: its token ids (with the stop token when it emitted one) and which ones the tool forced."""
    ids, forced = [], []
    for column, was_forced in engines[side].generate(prompt, num_samples=1, max_tokens=args.max_tokens, temperature=temperature,
                                                     top_k=top_k, seed=seed, tools=not args.no_tools, return_forced=True):
        ids.append(column[0])
        forced.append(was_forced[0])
        if column[0] in STOPS and not was_forced[0]:
            break
    return ids, forced


def converse(temperature, k, label):
    """One conversation of up to --turns replies; returns its JSONL record."""
    history, turns, stopped = [("B", args.opener)], [], None
    for t in range(1, args.turns + 1):
        side = "A" if t % 2 == 1 else "B"
        prompt = render_for_completion(tokenizer, {"messages": view(side, history)})
        limit = engines[side].context_limit()
        if len(prompt) + args.max_tokens > limit:
            # the engine would cut the prompt, and the re-scoring would no longer see what it saw
            stopped = {"turn": t, "side": side, "reason": f"context full: a {len(prompt)}-token prompt leaves less than "
                       f"--max_tokens {args.max_tokens} of the {limit}-token context"}
            break
        seed = args.seed + k * args.turns + (t - 1)
        ids, forced = sample_reply(side, prompt, temperature, seed)
        entropies, _ = rescore(models[side], prompt, ids, temperature, top_k)
        entropies = [round(e, 4) for e, f in zip(entropies, forced) if not f]  # the tool's tokens were not sampled
        parts = reply_parts(tokenizer, ids)
        text = reply_text(parts)
        finished = bool(ids) and ids[-1] in STOPS
        turn = {"turn": t, "side": side, "seed": seed, "text": text, "tokens": len(ids) - finished, "finished": finished,
                "rep": round(repeated_share(words(text), args.rep_n), 4),
                "entropy": round(sum(entropies) / len(entropies), 4) if entropies else None, "token_entropy": entropies}
        if any(p["type"] != "text" for p in parts):
            turn["parts"] = parts
        turns.append(turn)
        history.append((side, parts))
        snippet = " ".join(text.split()) or "(empty)"
        print0(f"{label} turn {t}/{args.turns} {side}: {turn['tokens']} tokens, entropy {_fmt(turn['entropy'], '.2f')}, "
               f"rep-{args.rep_n} {turn['rep']:.2f} | {snippet[:70]}{'...' if len(snippet) > 70 else ''}")
        reason = collapse_reason(text, [x["text"] for x in turns[:-1]], args.rep_n, args.rep_threshold)
        if reason:
            stopped = {"turn": t, "side": side, "reason": reason}
            break
    if stopped:
        print0(f"{label} stopped at turn {stopped['turn']} (side {stopped['side']}): {stopped['reason']}")
    return {"temperature": temperature, "sample": k, "top_k": top_k, "models": names, "personas": personas,
            "opener": args.opener, "turns": turns, "stopped": stopped}

# -----------------------------------------------------------------------------
# metrics, table, plot


def _fmt(x, spec):
    return "n/a" if x is None else format(x, spec)


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def summarize(replies, stops):
    """The measures of a set of replies (one turn's across the samples, or all of a temperature's)."""
    toks = [words(r["text"]) for r in replies]
    ents = [e for r in replies for e in r["token_entropy"]]
    row = {"replies": len(replies), "entropy": _mean(ents)}  # token-weighted: every sampled token counts once
    row.update({f"distinct_{n}": distinct_n(toks, n) for n in (1, 2, 3)})
    row.update({"rep": _mean([r["rep"] for r in replies]), "self_bleu": self_bleu(toks),
                "length": _mean([r["tokens"] for r in replies]), "stopped": stops})
    return row


def compute_metrics(conversations):
    per_turn, overall = [], []
    for temperature in temperatures:
        convs = [c for c in conversations if c["temperature"] == temperature]
        rows = []
        for t in range(1, args.turns + 1):
            replies = [c["turns"][t - 1] for c in convs if len(c["turns"]) >= t]
            stops = sum(1 for c in convs if c["stopped"] and c["stopped"]["turn"] == t)
            if replies or stops:
                rows.append({"temperature": temperature, "turn": t, "side": "A" if t % 2 else "B", **summarize(replies, stops)})
        per_turn += rows
        everything = summarize([r for c in convs for r in c["turns"]], sum(1 for c in convs if c["stopped"]))
        everything["self_bleu"] = _mean([r["self_bleu"] for r in rows])  # self-BLEU compares samples at the same turn
        overall.append({"temperature": temperature, "conversations": len(convs), **everything})
    return per_turn, overall


COLUMNS = [("entropy", "entropy (nats)", ".3f"), ("distinct_1", "distinct-1", ".3f"), ("distinct_2", "distinct-2", ".3f"),
           ("distinct_3", "distinct-3", ".3f"), ("rep", f"rep-{args.rep_n}", ".3f"), ("self_bleu", "self-BLEU", ".3f"),
           ("length", "length (tokens)", ".1f")]


def table(per_turn, overall):
    lines = [f"# self-chat: {names['A']}" + (f" (A) vs {names['B']} (B)" if names["B"] != names["A"] else ""), "",
             f"{args.samples} conversations per temperature, up to {args.turns} replies of up to {args.max_tokens} tokens, "
             f"top-k {args.top_k or 'off'}; entropy of the sampling distribution per token; distinct-n over a turn's replies; "
             f"rep-{args.rep_n}: share of a reply's {args.rep_n}-grams repeating earlier ones; self-BLEU across the samples "
             f"(BLEU-4, add-one smoothing for n >= 2); words are lowercased words and punctuation marks.", ""]
    head = "| turn | side | replies | " + " | ".join(c[1] for c in COLUMNS) + " | stopped here |"
    for summary in overall:
        temperature = summary["temperature"]
        lines += [f"## temperature {temperature:g}", "", head, "|" + "---|" * (len(COLUMNS) + 4)]
        rows = [r for r in per_turn if r["temperature"] == temperature] + [dict(summary, turn="all", side="")]
        for r in rows:
            lines.append(f"| {r['turn']} | {r['side']} | {r['replies']} | " + " | ".join(_fmt(r[key], spec) for key, _, spec in COLUMNS)
                         + f" | {r['stopped']} |")
        lines.append("")
    return "\n".join(lines)


def plot(per_turn, path):
    """The measures against the turn, one line per temperature. Raises ImportError without matplotlib."""
    import matplotlib
    matplotlib.use("Agg")  # no screen needed
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    panels = [("entropy (nats)", ["entropy"]), ("distinct-1 / -2 / -3", ["distinct_1", "distinct_2", "distinct_3"]),
              (f"rep-{args.rep_n}", ["rep"]), ("self-BLEU", ["self_bleu"]), ("length (tokens)", ["length"]),
              ("conversations still going", ["replies"])]
    fig, axes = plt.subplots(2, 3, figsize=(13, 7), sharex=True)
    for ax, (title, keys) in zip(axes.flat, panels):
        for i, temperature in enumerate(temperatures):
            for key, style in zip(keys, ["-", "--", ":"]):
                pts = [(r["turn"], r[key]) for r in per_turn if r["temperature"] == temperature and r[key] is not None]
                if pts:
                    ax.plot(*zip(*pts), style, marker="o", ms=4, color=f"C{i % 10}",
                            label=f"T={temperature:g}" if style == "-" else None)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes[-1]:
        ax.set_xlabel("turn")
    axes.flat[0].legend()
    fig.suptitle(f"self-chat: {names['A']}" + (f" vs {names['B']}" if names["B"] != names["A"] else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_text(path, text):
    _atomic_write(path, lambda f: f.write(text.encode("utf-8")))

# -----------------------------------------------------------------------------
# the conversations
# transcripts.jsonl.partial grows as conversations finish (what a kill leaves); the final files are written atomically
partial = os.path.join(out_dir, "transcripts.jsonl.partial")
conversations, interrupted, t0 = [], False, time.time()
with open(partial, "w", encoding="utf-8") as f:
    try:
        for temperature in temperatures:
            for k in range(args.samples):
                c = converse(temperature, k, f"[T={temperature:g} conversation {k + 1}/{args.samples}]")
                conversations.append(c)
                f.write(json.dumps(c, ensure_ascii=False) + "\n")
                f.flush()
    except KeyboardInterrupt:
        interrupted = True
        print0(f"\ninterrupted: writing the {len(conversations)} finished conversations")
n_replies = sum(len(c["turns"]) for c in conversations)
print0(f"{len(conversations)} conversations, {n_replies} replies in {time.time() - t0:.1f}s")

per_turn, overall = compute_metrics(conversations)
settings = {k: v for k, v in vars(args).items()}
settings.update(temperatures=temperatures, models=names, interrupted=interrupted)
write_text(os.path.join(out_dir, "transcripts.jsonl"), "".join(json.dumps(c, ensure_ascii=False) + "\n" for c in conversations))
os.remove(partial)
write_text(os.path.join(out_dir, "metrics.json"), json.dumps({"settings": settings, "per_turn": per_turn, "overall": overall}, indent=1))
md = table(per_turn, overall)
write_text(os.path.join(out_dir, "table.md"), md + "\n")
print0("\n" + md)
try:
    if args.no_plot:
        print0(f"wrote transcripts.jsonl, metrics.json and table.md to {out_dir}")
    else:
        plot(per_turn, os.path.join(out_dir, "self_chat.png"))
        print0(f"wrote transcripts.jsonl, metrics.json, table.md and self_chat.png to {out_dir}")
except ImportError:
    print0(f"wrote transcripts.jsonl, metrics.json and table.md to {out_dir} (no plot: pip install matplotlib)")
