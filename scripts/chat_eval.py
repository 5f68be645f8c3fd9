"""
Evaluate a chat model on the standard sets and the built-in exercises.

    python -m scripts.chat_eval                                  # builtin + every set that is downloaded
    python -m scripts.chat_eval -a ARC-Easy,MMLU -x 500          # at most 500 questions per set
    python -m scripts.chat_eval -a builtin --kinds addition --difficulties 2 -n 100
    python -m scripts.chat_eval --download                       # fetch every set from the hub (needs internet)
    python -m scripts.chat_eval --download --task_name MMLU      # one set

Sets (names in any case; several with , or |):
  builtin        held-out exercises (never seen in SFT), by kind and difficulty: exact match, the calculator on
  ARC-Easy, ARC-Challenge, MMLU   multiple choice: the letter whose logit is highest after <|assistant_start|>
  GSM8K          greedy generation with the calculator tool; the number after '####' must equal the reference's
  HumanEval      greedy generation; the code runs against the set's tests in nanochat.sandbox (pass@1)
Answers are greedy. Prints a progress line every ~10 s, then a table, then one JSON line with every number.
Downloads go to $NANOCHAT_BASE_DIR/eval_data/ (NANOCHAT_HF_URL replaces https://huggingface.co, HF_TOKEN is sent).
"""
import json
import re
import sys
import time

import torch

from nanochat.flags import add_device_args, add_model_source_args
from nanochat.common import ArgumentParser, compute_init, die, print0, UserError, autocast_ctx
from nanochat.exercises import DIFFICULTIES, KINDS
from nanochat import report

SETS = ["ARC-Easy", "ARC-Challenge", "MMLU", "GSM8K", "HumanEval"]
MAX_TOKENS = {"builtin": 128, "GSM8K": 256, "HumanEval": 512}  # per set, unless --max_tokens says otherwise

# -----------------------------------------------------------------------------
# settings
parser = ArgumentParser(prog="python -m scripts.chat_eval",
                        description="Evaluate a chat model: built-in exercises, ARC-Easy, ARC-Challenge, MMLU, GSM8K, HumanEval.")
add_model_source_args(parser, source="sft")
parser.add_argument("-a", "--task_name", "--tasks", dest="task_name", type=str, default="auto",
                    help=f"sets, comma- or |-separated: builtin, {', '.join(SETS)}; all: every one (a missing set is an error); "
                         "auto (default): builtin plus the downloaded sets")
parser.add_argument("--kinds", type=str, default="", help=f"built-in exercise kinds, comma-separated (default all: {', '.join(KINDS)})")
parser.add_argument("--difficulties", type=str, default="", help="built-in difficulties, comma-separated (default 1,2,3,4,5)")
parser.add_argument("-n", "--num_per_cell", type=int, default=10, help="built-in problems per kind and difficulty (default 10)")
parser.add_argument("-x", "--max_problems", type=int, default=-1, help="at most this many problems of each set (-1: all)")
parser.add_argument("--max_tokens", type=int, default=0,
                    help="longest answer in tokens (default per set: " + ", ".join(f"{k} {v}" for k, v in MAX_TOKENS.items()) + ")")
parser.add_argument("--batch_size", type=int, default=16, help="questions per forward pass for multiple choice")
parser.add_argument("--no_tools", action="store_true", help="evaluate without the calculator tool")
parser.add_argument("--seed", type=int, default=0, help="which problems when -x takes some (and which built-in exercises)")
parser.add_argument("--code_timeout", type=float, default=5.0, help="HumanEval: seconds a program may run (default 5)")
parser.add_argument("--code_memory_mb", type=int, default=256, help="HumanEval: a program's memory limit in MB (default 256)")
parser.add_argument("--download", action="store_true", help="download the sets named by --task_name (default all) and exit")
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


def parse_sets(text):
    """'arc-easy|MMLU' -> ['ARC-Easy', 'MMLU'] (names in any case); 'all' and 'auto' -> builtin and every set."""
    if text.lower() in ("all", "auto"):
        return ["builtin"] + SETS
    canonical = {name.lower(): name for name in ["builtin"] + SETS}
    names = [x.strip() for x in re.split(r"[,|]", text) if x.strip()]
    for x in names:
        if x.lower() not in canonical:
            die(f"unknown set {x!r}; choose from builtin, {', '.join(SETS)}, all")
    return list(dict.fromkeys(canonical[x.lower()] for x in names))


def download_set(name):
    """Fetch every file of a set that is not there yet (train splits included: the SFT mixtures read them)."""
    from nanochat.tasks import arc, gsm8k, humaneval, mmlu
    if name.startswith("ARC-"):
        return arc.download_all(name.removeprefix("ARC-"))
    return {"MMLU": mmlu, "GSM8K": gsm8k, "HumanEval": humaneval}[name].download_all()


def load_set(name):
    """The test split of a set; a UserError naming the command that fetches it when it is not downloaded."""
    from nanochat.tasks import arc, gsm8k, humaneval, mmlu
    if name.startswith("ARC-"):
        return arc.ARC(name.removeprefix("ARC-"), "test")
    if name == "MMLU":
        return mmlu.MMLU("test")
    if name == "GSM8K":
        return gsm8k.GSM8K("test")
    return humaneval.HumanEval("test", timeout=args.code_timeout, memory_mb=args.code_memory_mb)


requested = parse_sets(args.task_name)
if args.download:
    from nanochat.download import DownloadError
    for name in requested:
        if name == "builtin":
            continue  # made on the spot, nothing to fetch
        print0(f"{name}: downloading what is missing ...")
        try:
            paths = download_set(name)
        except DownloadError as e:
            die(f"{name}: {e}")
        print0(f"{name}: {len(paths)} file{'s' * (len(paths) > 1)} in place ({', '.join(paths)})")
    sys.exit(0)

kinds = parse_list(args.kinds, KINDS, "kind")
difficulties = parse_list(args.difficulties, DIFFICULTIES, "difficulty", int)
if args.num_per_cell < 1 or args.batch_size < 1:
    die("--num_per_cell and --batch_size must be at least 1")
if args.max_problems == 0 or args.max_problems < -1:
    die("--max_problems must be positive (or -1 for all)")

# -----------------------------------------------------------------------------
# setup: the sets first (a missing one fails before the model loads), then the model
sets = {}
for name in requested:
    if name == "builtin":
        continue
    try:
        sets[name] = load_set(name)
    except UserError as e:
        if args.task_name.lower() != "auto":
            die(str(e))
        print0(f"skipping {name}: not downloaded (python -m scripts.chat_eval --download --task_name {name})")
tasks = [n for n in requested if n == "builtin" or n in sets]

try:
    from nanochat.checkpoint_manager import find_model_tag, get_checkpoints_dir, load_model
    _, _, _, _, device = compute_init(args.device_type)
    model_tag = args.model_tag or find_model_tag(get_checkpoints_dir(args.source))
    model, tokenizer, meta = load_model(args.source, device, phase="eval", model_tag=model_tag, step=args.step)
except UserError as e:
    die(str(e))
from nanochat.engine import Engine, reply_parts, reply_text
from nanochat.tokenizer import render_for_completion
engine = Engine(model, tokenizer)
autocast = autocast_ctx(device.type, engine.dtype)


def max_tokens_for(name):
    return args.max_tokens if args.max_tokens > 0 else MAX_TOKENS.get(name, 128)


class Progress:
    """A line every ~10 s: problems done, right so far, rate."""
    def __init__(self, name, total, every=10.0):
        self.name, self.total, self.every = name, total, every
        self.t0 = self.last = time.time()

    def update(self, done, correct):
        now = time.time()
        if now - self.last >= self.every and done < self.total:
            self.last = now
            print0(f"{self.name}: {done}/{self.total} done, {correct} right, {done / (now - self.t0):.1f} problems/s")


LETTER_IDS = {}


def letter_ids(letters):
    for l in letters:
        if l not in LETTER_IDS:
            ids = tokenizer.encode(l)
            if len(ids) != 1:
                die(f"the tokenizer splits the answer letter {l!r} into {len(ids)} tokens: multiple choice needs one")
            LETTER_IDS[l] = ids[0]
    return [LETTER_IDS[l] for l in letters]


@torch.inference_mode()
def run_categorical(name, task, indices):
    """Multiple choice by logits: the letter with the highest logit after <|assistant_start|>."""
    limit = model.config.sequence_len
    prompts = {}
    for i in indices:
        p = render_for_completion(tokenizer, task[i])
        prompts[i] = p if len(p) <= limit else p[:1] + p[len(p) - limit + 1:]  # keep <|bos|>, drop the oldest
    order = sorted(indices, key=lambda i: len(prompts[i]))  # similar lengths together: little padding
    correct, progress = 0, Progress(name, len(order))
    for start in range(0, len(order), args.batch_size):
        batch = order[start:start + args.batch_size]
        T = max(len(prompts[i]) for i in batch)
        # right padding: causal attention never looks ahead, so each prompt's last position is unaffected
        ids = torch.full((len(batch), T), tokenizer.get_bos_token_id(), dtype=torch.long, device=device)
        for r, i in enumerate(batch):
            ids[r, :len(prompts[i])] = torch.tensor(prompts[i], device=device)
        with autocast:
            logits = model(ids)
        for r, i in enumerate(batch):
            conv = task[i]
            scores = logits[r, len(prompts[i]) - 1, letter_ids(conv["letters"])]
            pick = conv["letters"][int(scores.argmax())]
            ok = task.evaluate(conv, pick)
            correct += ok
            if args.verbose:
                print0(f"[{'ok' if ok else 'XX'}] {conv['messages'][0]['content'][:80]!r} -> {pick} (answer {conv['answer']})")
        progress.update(start + len(batch), correct)
    return correct


def run_generative(name, task, indices, max_tokens):
    """Greedy answers, each checked by task.evaluate on what the assistant said (calculator calls left out)."""
    correct, progress = 0, Progress(name, len(indices))
    for done, i in enumerate(indices, 1):
        conv = task[i]
        out = engine.generate_batch(render_for_completion(tokenizer, conv), max_tokens=max_tokens, temperature=0,
                                    tools=not args.no_tools)[0]
        text = reply_text(reply_parts(tokenizer, out))
        ok = task.evaluate(conv, text)
        correct += ok
        if args.verbose:
            print0(f"[{'ok' if ok else 'XX'}] {conv['messages'][0]['content'][:80]!r} -> {tokenizer.decode(out)[:120]!r}")
        progress.update(done, correct)
    return correct


def run_builtin():
    from nanochat.tasks.builtin import ExerciseChat
    cells = {}
    for kind in kinds:
        for d in difficulties:
            task = ExerciseChat(args.num_per_cell, "test", kinds=[kind], difficulties=[d], seed=args.seed, multi_turn=0.0)
            cells[f"{kind}/{d}"] = run_generative(f"builtin {kind}/{d}", task, range(len(task)), max_tokens_for("builtin")) / len(task)
    return {
        "accuracy": sum(cells.values()) / len(cells),
        "by_kind": {k: sum(cells[f"{k}/{d}"] for d in difficulties) / len(difficulties) for k in kinds},
        "by_difficulty": {str(d): sum(cells[f"{k}/{d}"] for k in kinds) / len(kinds) for d in difficulties},
        "by_cell": cells,
        "num_per_cell": args.num_per_cell,
        "correct": round(sum(cells.values()) * args.num_per_cell),
        "total": len(cells) * args.num_per_cell,
    }

# -----------------------------------------------------------------------------
# evaluation
results, t0 = {}, time.time()
for name in tasks:
    if name == "builtin":
        results["builtin"] = run_builtin()
        continue
    task = sets[name]
    n = len(task) if args.max_problems < 0 else min(args.max_problems, len(task))
    # a fixed spread of problems, not the first n (MMLU is sorted by subject)
    indices = sorted(torch.randperm(len(task), generator=torch.Generator().manual_seed(args.seed))[:n].tolist())
    t1 = time.time()
    try:
        if task.eval_type == "categorical":
            correct = run_categorical(name, task, indices)
        else:
            correct = run_generative(name, task, indices, max_tokens_for(name))
    except UserError as e:  # e.g. HumanEval's sandbox on a system without POSIX
        die(f"{name}: {e}")
    results[name] = {"accuracy": correct / n, "correct": correct, "total": n, "seconds": round(time.time() - t1, 1)}
    print0(f"{name}: {correct}/{n} in {time.time() - t1:.1f}s")
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
print0(f"\n{'set':<16}{'accuracy':>9}{'correct':>9}{'total':>7}")
for name, r in results.items():
    print0(f"{name:<16}{r['accuracy']:>9.1%}{r['correct']:>9d}{r['total']:>7d}")
print0(json.dumps({"source": args.source, "model_tag": model_tag, "step": meta["step"], "tools": not args.no_tools,
                   "seconds": round(elapsed, 1), "results": results}))

# the report card: a summary row per set (the built-in row says which exercises when not all of them)
every_exercise = kinds == list(KINDS) and difficulties == list(DIFFICULTIES)
builtin_row = "built-in exercises" + ("" if every_exercise else f" ({','.join(kinds)} d{','.join(map(str, difficulties))})")
tables = [("sets", ["set", "accuracy", "correct", "total"], [[n, r["accuracy"], r["correct"], r["total"]] for n, r in results.items()])]
if "builtin" in results:
    r = results["builtin"]
    tables.append((f"built-in exercises, held out, {args.num_per_cell} per cell", ["kind", *(f"d{d}" for d in difficulties), "all"],
                   [[k, *(r["by_cell"][f"{k}/{d}"] for d in difficulties), r["by_kind"][k]] for k in kinds]
                   + [["all", *(r["by_difficulty"][str(d)] for d in difficulties), r["accuracy"]]]))
report.append_section("chat_eval", phase=args.source, settings=vars(args), device=device, tables=tables,
                      metrics={"model": f"{args.source}/{model_tag} step {meta['step']}", "calculator": not args.no_tools,
                               "evaluation time (s)": elapsed},
                      summary={builtin_row if n == "builtin" else n: r["accuracy"] for n, r in results.items()})
