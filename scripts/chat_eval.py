"""
Evaluate a chat model.

    python -m scripts.chat_eval                           # built-in tasks (+ ARC/MMLU/GSM8K when downloaded)
    python -m scripts.chat_eval -a builtin --kinds addition --difficulties 2 -n 100
    python -m scripts.chat_eval -a arc-easy,mmlu -x 500   # at most 500 questions per task
    python -m scripts.chat_eval --download                # fetch ARC, MMLU, GSM8K (needs internet)

Built-in tasks: exact-match accuracy on held-out exercises (questions never seen in SFT), by kind
and difficulty, answered greedily with the calculator on. ARC and MMLU: multiple choice, the
answer is the letter with the highest logit. GSM8K: the number after '####' in the answer. Prints
a table, then one JSON line with every number.
"""
import json
import sys
import time

import torch

from nanochat.flags import add_device_args, add_model_source_args
from nanochat.common import ArgumentParser, compute_init, die, print0, UserError, autocast_ctx
from nanochat.checkpoint_manager import find_model_tag, get_checkpoints_dir, load_model
from nanochat.engine import Engine, reply_parts, reply_text
from nanochat.exercises import DIFFICULTIES, KINDS
from nanochat.tokenizer import render_for_completion

EXTERNAL = ["arc-easy", "arc-challenge", "mmlu", "gsm8k"]

# -----------------------------------------------------------------------------
# settings
parser = ArgumentParser(prog="python -m scripts.chat_eval", description="Evaluate a chat model: built-in exercises, ARC, MMLU, GSM8K.")
add_model_source_args(parser, source="sft")
parser.add_argument("-a", "--tasks", type=str, default="auto",
                    help=f"comma-separated: builtin, {', '.join(EXTERNAL)} (auto: builtin plus the downloaded ones)")
parser.add_argument("--kinds", type=str, default="", help=f"built-in exercise kinds, comma-separated (default all: {', '.join(KINDS)})")
parser.add_argument("--difficulties", type=str, default="", help="built-in difficulties, comma-separated (default 1,2,3,4,5)")
parser.add_argument("-n", "--num_per_cell", type=int, default=10, help="built-in problems per kind and difficulty (default 10)")
parser.add_argument("-x", "--max_problems", type=int, default=-1, help="at most this many problems of each external task (-1: all)")
parser.add_argument("--max_tokens", type=int, default=128, help="longest answer in tokens for generative tasks (GSM8K: at least 256)")
parser.add_argument("--batch_size", type=int, default=16, help="questions per forward pass for multiple choice")
parser.add_argument("--no_tools", action="store_true", help="evaluate without the calculator tool")
parser.add_argument("--seed", type=int, default=0, help="which held-out exercises (the test split is fixed, this picks from it)")
parser.add_argument("--download", action="store_true", help="download ARC, MMLU and GSM8K to $NANOCHAT_BASE_DIR/eval_data and exit")
parser.add_argument("-v", "--verbose", action="store_true", help="print every question and answer")
add_device_args(parser)
args = parser.parse_args()


def parse_list(text, allowed, what, cast=str):
    if not text:
        return list(allowed)
    try:
        items = [cast(x.strip()) for x in text.split(",") if x.strip()]
    except ValueError:
        die(f"bad {what}: {text!r}")
    for x in items:
        if x not in allowed:
            die(f"unknown {what} {x!r}; choose from {', '.join(map(str, allowed))}")
    return items


if args.download:
    from nanochat.download import DownloadError
    from nanochat.tasks import arc, gsm8k, mmlu
    jobs = [(arc.download_split, (subset, split)) for subset in ("Easy", "Challenge") for split in ("train", "validation", "test")]
    jobs += [(mmlu.download_split, (split,)) for split in ("validation", "test")]
    jobs += [(gsm8k.download_split, (split,)) for split in ("train", "test")]
    try:
        for fn, fn_args in jobs:
            print0(f"{fn.__module__.split('.')[-1]} {' '.join(fn_args)}: {fn(*fn_args)}")
    except DownloadError as e:
        die(str(e))
    sys.exit(0)

kinds = parse_list(args.kinds, KINDS, "kind")
difficulties = parse_list(args.difficulties, DIFFICULTIES, "difficulty", int)
if args.num_per_cell < 1:
    die("--num_per_cell must be at least 1")

# -----------------------------------------------------------------------------
# setup
try:
    _, _, _, _, device = compute_init(args.device_type)
    model_tag = args.model_tag or find_model_tag(get_checkpoints_dir(args.source))
    model, tokenizer, meta = load_model(args.source, device, phase="eval", model_tag=model_tag, step=args.step)
except UserError as e:
    die(str(e))
engine = Engine(model, tokenizer)
autocast = autocast_ctx(device.type, engine.dtype)


def load_external(name):
    """The task object, or None when its data is not downloaded."""
    from nanochat.tasks import arc, gsm8k, mmlu
    try:
        if name.startswith("arc-"):
            return arc.ARC(name.split("-")[1].capitalize(), "test")
        if name == "mmlu":
            return mmlu.MMLU("test")
        return gsm8k.GSM8K("test")
    except UserError:
        return None


if args.tasks == "auto":
    tasks = ["builtin"] + [name for name in EXTERNAL if load_external(name) is not None]
else:
    tasks = parse_list(args.tasks, ["builtin"] + EXTERNAL, "task")


def answer(conversation, max_tokens):
    """The model's greedy reply to a conversation's question: (text without tool calls, full text)."""
    ids = render_for_completion(tokenizer, conversation)
    out = engine.generate_batch(ids, max_tokens=max_tokens, temperature=0, tools=not args.no_tools)[0]
    parts = reply_parts(tokenizer, out)
    return reply_text(parts), tokenizer.decode(out)


@torch.inference_mode()
def run_categorical(task, indices):
    """Multiple choice by logits: the letter with the highest logit after <|assistant_start|>."""
    correct = 0
    for start in range(0, len(indices), args.batch_size):
        convs = [task[i] for i in indices[start:start + args.batch_size]]
        prompts = [render_for_completion(tokenizer, c) for c in convs]
        limit = model.config.sequence_len
        prompts = [p[-limit:] for p in prompts]
        T = max(len(p) for p in prompts)
        # right padding: causal attention never looks ahead, so each prompt's last position is unaffected
        ids = torch.full((len(prompts), T), tokenizer.get_bos_token_id(), dtype=torch.long, device=device)
        for r, p in enumerate(prompts):
            ids[r, :len(p)] = torch.tensor(p, device=device)
        with autocast:
            logits = model(ids)
        for r, (p, conv) in enumerate(zip(prompts, convs)):
            letter_ids = [tokenizer.encode(l)[0] for l in conv["letters"]]
            scores = logits[r, len(p) - 1, letter_ids]
            pick = conv["letters"][int(scores.argmax())]
            ok = pick == conv["answer"]
            correct += ok
            if args.verbose:
                print0(f"[{'ok' if ok else 'XX'}] {conv['messages'][0]['content'][:80]!r} -> {pick} (answer {conv['answer']})")
    return correct


def run_generative(task, indices, max_tokens):
    correct = 0
    for i in indices:
        conv = task[i]
        text, full = answer(conv, max_tokens)
        ok = task.evaluate(conv, text)
        correct += ok
        if args.verbose:
            print0(f"[{'ok' if ok else 'XX'}] {conv['messages'][-2]['content'][:80]!r} -> {full[:120]!r}")
    return correct

# -----------------------------------------------------------------------------
# evaluation
results, t0 = {}, time.time()
if "builtin" in tasks:
    from nanochat.tasks.builtin import ExerciseChat
    cells = {}
    for kind in kinds:
        for d in difficulties:
            task = ExerciseChat(args.num_per_cell, "test", kinds=[kind], difficulties=[d], seed=args.seed, multi_turn=0.0)
            cells[f"{kind}/{d}"] = run_generative(task, range(len(task)), args.max_tokens) / len(task)
    results["builtin"] = {
        "accuracy": sum(cells.values()) / len(cells),
        "by_kind": {k: sum(cells[f"{k}/{d}"] for d in difficulties) / len(difficulties) for k in kinds},
        "by_difficulty": {str(d): sum(cells[f"{k}/{d}"] for k in kinds) / len(kinds) for d in difficulties},
        "by_cell": cells,
        "num_per_cell": args.num_per_cell,
    }
for name in tasks:
    if name == "builtin":
        continue
    task = load_external(name)
    if task is None:
        die(f"{name} is not downloaded: run `python -m scripts.chat_eval --download` (needs internet)")
    n = len(task) if args.max_problems < 0 else min(args.max_problems, len(task))
    # a fixed spread of questions, not the first n (MMLU is sorted by subject)
    indices = sorted(torch.randperm(len(task), generator=torch.Generator().manual_seed(args.seed))[:n].tolist())
    if task.eval_type == "categorical":
        correct = run_categorical(task, indices)
    else:
        correct = run_generative(task, indices, max(args.max_tokens, 256))
    results[name] = {"accuracy": correct / n, "correct": correct, "total": n}
elapsed = time.time() - t0

# -----------------------------------------------------------------------------
# report
print0(f"\n{args.source} model {meta['model_config']['n_layer']} layers, step {meta['step']} | "
       f"{'calculator off' if args.no_tools else 'calculator on'} | {elapsed:.1f}s")
if "builtin" in results:
    r = results["builtin"]
    print0(f"\nbuilt-in exercises, held out, {args.num_per_cell} per cell (exact match)")
    print0(f"{'kind':<16}" + "".join(f"{'d' + str(d):>7}" for d in difficulties) + f"{'all':>7}")
    for k in kinds:
        print0(f"{k:<16}" + "".join(f"{r['by_cell'][f'{k}/{d}']:>7.0%}" for d in difficulties) + f"{r['by_kind'][k]:>7.0%}")
    print0(f"{'all':<16}" + "".join(f"{r['by_difficulty'][str(d)]:>7.0%}" for d in difficulties) + f"{r['accuracy']:>7.0%}")
others = [n for n in results if n != "builtin"]
if others:
    print0("")
    for name in others:
        r = results[name]
        print0(f"{name:<16}{r['accuracy']:>7.1%}  ({r['correct']}/{r['total']})")
print0(json.dumps({"source": args.source, "model_tag": model_tag, "step": meta["step"], "tools": not args.no_tools,
                   "seconds": round(elapsed, 1), "results": results}))
