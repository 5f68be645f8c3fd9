"""
The CORE metric of the DCLM paper (https://arxiv.org/abs/2406.11794), as nanochat computes it:
in-context-learning tasks of three kinds, each task's accuracy centered against its random
baseline, and CORE, the mean of the centered accuracies.

The eval bundle (the zip nanochat uses) unpacks to $NANOCHAT_BASE_DIR/eval_bundle/: core.yaml
lists the tasks (label, icl_task_type, dataset_uri, num_fewshot, continuation_delimiter),
eval_data/<dataset_uri> holds each task's JSONL examples, eval_meta_data.csv each task's
"Random baseline" in percent. Centered accuracy: (acc - 0.01 b) / (1 - 0.01 b).

How an example is scored (the same prompts, spans and decisions as nanochat's core_eval):
- multiple_choice {query, choices, gold}: one prompt per choice, `query + delimiter + choice`;
  the choices share a prefix in tokens, the rest is each one's continuation;
- schema {context_options, continuation, gold}: one prompt per context, `context + delimiter +
  continuation`; the prompts share a suffix in tokens, which is the continuation;
- language_modeling {context, continuation}: `context.strip() + delimiter + continuation`; correct
  when the greedy (argmax) prediction of every continuation token is that token.
Multiple choice and schema pick the prompt with the lowest mean loss over its continuation
tokens. Few-shot examples (rendered `...\n\n` before the question, with their gold answers) are
drawn from the task's other examples with random.Random(1234 + index); the examples are first
shuffled with random.Random(1337), then cut to --max_per_task (so a cut changes the few-shot
draws, as in nanochat). Every prompt starts with <|bos|>; one longer than the model's rotary
table (10x its sequence length) keeps its last tokens.

Unlike nanochat, which runs one example per forward pass, the prompts of many examples go
through the model together (right-padded, sorted by length, up to batch_tokens per pass), and
only the logits of continuation tokens are read. Under torchrun the examples are strided over
the ranks and the per-example results summed (all-reduce).
"""
import csv
import fcntl
import json
import os
import random
import re
import shutil
import time
import zipfile
from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F

from nanochat.common import UserError, print0

EVAL_BUNDLE_URL = "https://karpathy-public.s3.us-west-2.amazonaws.com/eval_bundle.zip"
TASK_TYPES = ("multiple_choice", "schema", "language_modeling")
MAX_UNPACKED_BYTES = 4 << 30  # the real bundle is far smaller; a bigger zip is not a bundle
EXAMPLES_PER_CHUNK = 256  # examples tokenized and sorted together (bounds the memory of token lists)

# -----------------------------------------------------------------------------
# the bundle: download, safe unpacking, reading


def safe_extract(zip_path, dest):
    """Unpack a zip into dest, refusing members that would land outside it (absolute paths, '..')."""
    dest_real = os.path.realpath(dest)
    try:
        with zipfile.ZipFile(zip_path) as zf:
            members = zf.infolist()
            total = sum(m.file_size for m in members)
            if total > MAX_UNPACKED_BYTES:
                raise UserError(f"{zip_path}: unpacks to {total:,d} bytes, more than an eval bundle's {MAX_UNPACKED_BYTES:,d}")
            for m in members:
                target = os.path.realpath(os.path.join(dest_real, m.filename))
                if os.path.isabs(m.filename) or os.path.commonpath([dest_real, target]) != dest_real:
                    raise UserError(f"{zip_path}: member {m.filename!r} would be written outside the bundle folder")
            for m in members:
                zf.extract(m, dest_real)  # a member stored as a symlink is written as a plain file
    except zipfile.BadZipFile as e:
        raise UserError(f"{zip_path}: not a zip file ({e}); delete it and run again") from None


def _bundle_root(folder):
    """The folder holding core.yaml: the unpacked folder itself or its single subfolder (eval_bundle/)."""
    if os.path.isfile(os.path.join(folder, "core.yaml")):
        return folder
    subs = [d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)) and not d.startswith("__MACOSX")]
    if len(subs) == 1 and os.path.isfile(os.path.join(folder, subs[0], "core.yaml")):
        return os.path.join(folder, subs[0])
    raise UserError("the eval bundle zip has no core.yaml (at its top or in its one folder)")


def ensure_bundle(base_dir, url=EVAL_BUNDLE_URL, log=print0):
    """
    $base_dir/eval_bundle, downloaded (as eval_bundle.zip, resumable) and unpacked the first time.
    A zip already in base_dir is unpacked without downloading. Ranks and concurrent runs take a
    file lock, so one downloads and the others then find the folder.
    """
    from nanochat.download import DownloadError, download_file
    bundle_dir = os.path.join(base_dir, "eval_bundle")
    if os.path.isfile(os.path.join(bundle_dir, "core.yaml")):
        return bundle_dir
    with open(os.path.join(base_dir, "eval_bundle.lock"), "w") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        if os.path.isfile(os.path.join(bundle_dir, "core.yaml")):
            return bundle_dir
        zip_path = os.path.join(base_dir, "eval_bundle.zip")
        if not os.path.exists(zip_path):
            log(f"downloading the CORE eval bundle from {url}")
            try:
                download_file(url, zip_path, log=log)
            except DownloadError as e:
                raise UserError(f"could not download the eval bundle: {e}") from None
        tmp = bundle_dir + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)  # what an interrupted unpacking left
        os.makedirs(tmp)
        try:
            safe_extract(zip_path, tmp)
            root = _bundle_root(tmp)
            if os.path.isdir(bundle_dir):
                shutil.rmtree(bundle_dir)  # a folder without core.yaml: a broken earlier unpacking
            os.replace(root, bundle_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log(f"eval bundle unpacked to {bundle_dir}")
    return bundle_dir


def load_bundle(bundle_dir):
    """[{label, type, shots, delimiter, path, baseline}] in core.yaml's order; UserError naming what is wrong."""
    config_path, meta_path = (os.path.join(bundle_dir, name) for name in ("core.yaml", "eval_meta_data.csv"))
    for path in (config_path, meta_path):
        if not os.path.isfile(path):
            raise UserError(f"{path} is missing: delete {bundle_dir} to download the bundle again")
    with open(config_path, encoding="utf-8") as f:
        config = parse_yaml(f.read(), config_path)
    if not isinstance(config, dict) or not isinstance(config.get("icl_tasks"), list):
        raise UserError(f"{config_path}: expected a list under icl_tasks")
    with open(meta_path, encoding="utf-8", newline="") as f:
        baselines = {row.get("Eval Task"): row.get("Random baseline") for row in csv.DictReader(f)}
    data_dir = os.path.realpath(os.path.join(bundle_dir, "eval_data"))
    tasks = []
    for i, t in enumerate(config["icl_tasks"]):
        where = f"{config_path}: task {i + 1}"
        if not isinstance(t, dict) or not all(k in t for k in ("label", "icl_task_type", "dataset_uri")):
            raise UserError(f"{where}: needs label, icl_task_type and dataset_uri")
        label, shots = str(t["label"]), t.get("num_fewshot", [0])
        shots = shots[0] if isinstance(shots, list) and shots else shots
        if t["icl_task_type"] not in TASK_TYPES:
            raise UserError(f"{where} ({label}): unsupported icl_task_type {t['icl_task_type']!r} (CORE uses {', '.join(TASK_TYPES)})")
        if not isinstance(shots, int) or isinstance(shots, bool) or shots < 0:
            raise UserError(f"{where} ({label}): num_fewshot must be a non-negative integer, got {t.get('num_fewshot')!r}")
        try:
            baseline = float(baselines.get(label))
        except (TypeError, ValueError):
            raise UserError(f"{meta_path}: no 'Random baseline' number for task {label!r}") from None
        path = os.path.realpath(os.path.join(data_dir, str(t["dataset_uri"])))
        if os.path.commonpath([data_dir, path]) != data_dir:
            raise UserError(f"{where} ({label}): dataset_uri {t['dataset_uri']!r} points outside eval_data/")
        tasks.append(dict(label=label, type=t["icl_task_type"], shots=shots, path=path, baseline=baseline,
                          delimiter=str(t.get("continuation_delimiter", " "))))
    return tasks


_FIELDS = {"multiple_choice": ("query", "choices", "gold"), "schema": ("context_options", "continuation", "gold"),
           "language_modeling": ("context", "continuation")}


def load_examples(path, task_type):
    """A task's JSONL examples, each checked to have its type's fields."""
    if not os.path.isfile(path):
        raise UserError(f"missing task data {path}")
    data = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{n}: not JSON ({e})") from None
            missing = [k for k in _FIELDS[task_type] if not isinstance(item, dict) or k not in item]
            if missing:
                raise UserError(f"{path}:{n}: a {task_type} example needs {', '.join(missing)}")
            options = item.get("choices", item.get("context_options"))
            if "gold" in item and not (isinstance(options, list) and isinstance(item["gold"], int) and 0 <= item["gold"] < len(options)):
                raise UserError(f"{path}:{n}: gold must index the list of options")
            data.append(item)
    if not data:
        raise UserError(f"{path}: no examples")
    return data


def prepare_examples(data, max_per_task=-1):
    """nanochat's order: shuffled with seed 1337 (the files are often sorted), then cut."""
    data = list(data)
    random.Random(1337).shuffle(data)
    return data[:max_per_task] if max_per_task > 0 else data


def centered(accuracy, baseline_percent):
    b = 0.01 * baseline_percent
    return (accuracy - b) / (1.0 - b)

# -----------------------------------------------------------------------------
# core.yaml: a reader for the part of YAML the bundle uses (PyYAML is not a dependency)
# Block mappings and sequences ("- key: v" items, or "-" alone above an indented block, also at
# the indent of their key), plain / 'single' / "double" quoted scalars, [flow, lists], comments.
# Anything else (anchors, multi-line strings, {flow maps}, tabs) is a one-line error.

_KEY = re.compile(r"([A-Za-z_][\w.-]*)\s*:(?:\s+(.*))?$")
_INT = re.compile(r"[-+]?\d+$")
_FLOAT = re.compile(r"[-+]?(\d+\.\d*|\.\d+|\d+)([eE][-+]?\d+)?$")
_QUOTED = re.compile(r"""(?<![^\s\[,])("(?:[^"\\]|\\.)*"|'(?:[^']|'')*')""")  # a quoted scalar where one may start


class _YamlError(Exception):
    def __init__(self, line, msg):
        super().__init__(msg)
        self.line, self.msg = line, msg


def _mask_quotes(text):
    """text with its quoted scalars blanked out, same length: to find '#' and ',' outside them."""
    return _QUOTED.sub(lambda m: "_" * len(m.group(0)), text)


def _strip_comment(line):
    m = re.search(r"(?:^|\s)#", _mask_quotes(line))
    return line[:m.start()] if m else line


def _split_flow(text, n):
    """The items of a [flow, list]'s inside, split at commas outside quotes."""
    masked = _mask_quotes(text)
    if any(c in masked for c in "[]{}"):
        raise _YamlError(n, "nested flow collections are not supported")
    cuts = [-1] + [i for i, c in enumerate(masked) if c == ","] + [len(text)]
    return [text[a + 1:b] for a, b in zip(cuts, cuts[1:])]


def _double_quoted(text, n):
    m = _QUOTED.match(text)
    if not m or m.end() != len(text):
        raise _YamlError(n, "a double-quoted string must close on its line, with nothing after it")
    try:
        return json.loads(text)  # JSON's escapes (\n \t \" \\ \uXXXX ...) are YAML's common ones
    except json.JSONDecodeError:
        raise _YamlError(n, f"unsupported escape in {text}") from None


def _scalar(text, n):
    text = text.strip()
    if text.startswith('"'):
        return _double_quoted(text, n)
    if text.startswith("'"):
        body = text[1:-1]
        if len(text) < 2 or not text.endswith("'") or "'" in body.replace("''", ""):
            raise _YamlError(n, "a single-quoted string must close on its line, with nothing after it")
        return body.replace("''", "'")
    if text.startswith("["):
        if not text.endswith("]"):
            raise _YamlError(n, "a [flow list] must close on its line")
        inner = text[1:-1].strip()
        return [_scalar(x, n) for x in _split_flow(inner, n)] if inner else []
    if text[:1] in set("{|>&*!%@`") or text.startswith("- "):
        raise _YamlError(n, f"unsupported YAML: {text!r}")
    if text in ("true", "True", "TRUE", "false", "False", "FALSE"):
        return text.lower() == "true"
    if text in ("null", "Null", "NULL", "~"):
        return None
    if _INT.match(text):
        return int(text)
    if _FLOAT.match(text):
        return float(text)
    return text


def _is_item(text):
    return text == "-" or text.startswith("- ")


def _node(lines, i, indent):
    """The block at line i whose lines have this indent: (value, index of the next line)."""
    return (_sequence if _is_item(lines[i][1]) else _mapping)(lines, i, indent)


def _sequence(lines, i, indent):
    out = []
    while i < len(lines) and lines[i][0] == indent and _is_item(lines[i][1]):
        _, text, n = lines[i]
        rest = text[1:].lstrip(" ")
        if not rest:  # "-" alone: the item is the block below it
            if i + 1 < len(lines) and lines[i + 1][0] > indent:
                value, i = _node(lines, i + 1, lines[i + 1][0])
            else:
                value, i = None, i + 1
        elif _KEY.match(rest):  # "- key: value": a mapping that starts on this line, at the key's column
            col = indent + len(text) - len(rest)
            lines[i] = (col, rest, n)
            value, i = _mapping(lines, i, col)
        else:
            value, i = _scalar(rest, n), i + 1
        out.append(value)
    return out, i


def _mapping(lines, i, indent):
    out = {}
    while i < len(lines) and lines[i][0] == indent:
        _, text, n = lines[i]
        m = _KEY.match(text)
        if not m:
            raise _YamlError(n, f"expected 'key: value', got {text!r}")
        key, rest = m.group(1), m.group(2)
        if key in out:
            raise _YamlError(n, f"duplicate key {key!r}")
        i += 1
        if rest:
            out[key] = _scalar(rest, n)
        elif i < len(lines) and (lines[i][0] > indent or (lines[i][0] == indent and _is_item(lines[i][1]))):
            out[key], i = _node(lines, i, lines[i][0])
        else:
            out[key] = None
    return out, i


def parse_yaml(text, name="core.yaml"):
    """The value of a YAML document in the subset above; UserError 'name:line: what' otherwise."""
    lines = []
    for n, raw in enumerate(text.splitlines(), 1):
        body = _strip_comment(raw).rstrip()
        stripped = body.lstrip(" ")
        if not stripped or (stripped == "---" and not lines):
            continue
        if stripped.startswith("\t"):
            raise UserError(f"{name}:{n}: tabs cannot indent YAML")
        lines.append((len(body) - len(stripped), stripped, n))
    if not lines:
        return None
    try:
        value, i = _node(lines, 0, lines[0][0])
        if i < len(lines):
            raise _YamlError(lines[i][2], "unexpected indentation")
    except _YamlError as e:
        raise UserError(f"{name}:{e.line}: {e.msg}") from None
    return value

# -----------------------------------------------------------------------------
# prompts and continuation spans


class _AllBut(Sequence):
    """range(n) without idx, without building the list: random.sample draws the same as from the list."""
    def __init__(self, n, idx):
        self.n, self.idx = n, idx

    def __len__(self):
        return self.n - 1

    def __getitem__(self, j):
        if not 0 <= j < self.n - 1:
            raise IndexError(j)
        return j + (j >= self.idx)


def fewshot_examples(data, idx, k):
    if k <= 0:
        return []
    if k > len(data) - 1:
        raise UserError(f"{k}-shot needs at least {k + 1} examples, the task has {len(data)}")
    return [data[i] for i in random.Random(1234 + idx).sample(_AllBut(len(data), idx), k)]


def render_prompts(task_type, item, delimiter, fewshot):
    """The prompt texts of one example: one per option (mc, schema), or [without, with] the continuation (lm)."""
    if task_type == "multiple_choice":
        shots = "".join(f"{e['query']}{delimiter}{e['choices'][e['gold']]}\n\n" for e in fewshot)
        return [f"{shots}{item['query']}{delimiter}{choice}" for choice in item["choices"]]
    if task_type == "schema":
        shots = "".join(f"{e['context_options'][e['gold']]}{delimiter}{e['continuation']}\n\n" for e in fewshot)
        return [f"{shots}{context}{delimiter}{item['continuation']}" for context in item["context_options"]]
    shots = "".join(f"{str(e['context']).strip()}{delimiter}{e['continuation']}\n\n" for e in fewshot)
    prompt = f"{shots}{str(item['context']).strip()}{delimiter}"
    # stripped: trailing whitespace of the delimiter would merge into the continuation's first token
    return [prompt.strip(), prompt + str(item["continuation"])]


def common_length(seqs, from_end=False):
    """Length of the prefix (or suffix) all sequences share."""
    n = min(len(s) for s in seqs)
    for i in range(n):
        j = -1 - i if from_end else i
        if any(s[j] != seqs[0][j] for s in seqs):
            return i
    return n


def continuation_spans(task_type, token_lists):
    """[(tokens, start, end)]: the rows to score, tokens[start:end] being the continuation."""
    if task_type == "multiple_choice":
        start = common_length(token_lists)
        return [(t, start, len(t)) for t in token_lists]
    if task_type == "schema":
        suffix = common_length(token_lists, from_end=True)
        return [(t, len(t) - suffix, len(t)) for t in token_lists]
    without, with_ = token_lists
    # the prompt without the continuation is a prefix of the one with it (nanochat asserts so;
    # where a tokenizer merges across the boundary, the shared prefix is the best start there is)
    start = common_length([without, with_])
    if start >= len(with_):
        raise ValueError("the continuation is empty in tokens")
    return [(with_, start, len(with_))]


def crop(rows, max_len):
    """Rows longer than max_len keep their last max_len tokens (the continuation stays whole)."""
    out = []
    for tokens, s, e in rows:
        cut = max(0, len(tokens) - max_len)
        out.append((tokens[cut:], max(1, s - cut), e - cut))
    return out

# -----------------------------------------------------------------------------
# scoring


@torch.no_grad()
def score_rows(model, rows, pad_id, device):
    """One forward pass over right-padded rows: per row (mean loss, every token the argmax) over tokens[start:end]."""
    T = max(len(t) for t, _, _ in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    b_idx, t_idx = [], []
    for r, (tokens, s, e) in enumerate(rows):
        ids[r, :len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        b_idx += [r] * (e - s)
        t_idx += range(s - 1, e - 1)  # position t predicts token t + 1
    ids = ids.to(device)
    logits = model(ids)
    b = torch.tensor(b_idx, dtype=torch.long, device=device)
    t = torch.tensor(t_idx, dtype=torch.long, device=device)
    picked = logits[b, t]  # (continuation tokens, vocab): the only logits read
    targets = ids[b, t + 1]
    losses = F.cross_entropy(picked.float(), targets, reduction="none").double()
    misses = (picked.argmax(dim=-1) != targets).double()
    R = len(rows)
    sums = torch.zeros(R, dtype=torch.float64, device=device).index_add_(0, b, losses)
    counts = torch.zeros(R, dtype=torch.float64, device=device).index_add_(0, b, torch.ones_like(losses))
    wrong = torch.zeros(R, dtype=torch.float64, device=device).index_add_(0, b, misses)
    return list(zip((sums / counts).tolist(), (wrong == 0).tolist()))  # an empty span: nan, True (as nanochat)


def pack(rows, batch_tokens):
    """Indices of rows in batches of at most batch_tokens padded tokens, longest first (little padding)."""
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
    batches, cur = [], []
    for i in order:
        if cur and (len(cur) + 1) * len(rows[cur[0]][0]) > batch_tokens:
            batches.append(cur)
            cur = []
        cur.append(i)
    return batches + ([cur] if cur else [])


def example_rows(tokenizer, task, data, indices, max_len):
    """Rows of the given examples, and each example's slice of them."""
    prompts, owners = [], []
    for idx in indices:
        texts = render_prompts(task["type"], data[idx], task["delimiter"], fewshot_examples(data, idx, task["shots"]))
        prompts += texts
        owners.append(len(texts))
    tokens = tokenizer.encode(prompts, prepend=tokenizer.get_bos_token_id())
    rows, slices, k = [], [], 0
    for idx, n in zip(indices, owners):
        try:
            spans = continuation_spans(task["type"], tokens[k:k + n])
        except ValueError as e:
            raise UserError(f"{task['label']}: example {idx}: {e}") from None
        slices.append(slice(len(rows), len(rows) + len(spans)))
        rows += crop(spans, max_len)
        k += n
    return rows, slices


def decide(task_type, item, results):
    """Is the example right, from its rows' (mean loss, all argmax) results."""
    if task_type == "language_modeling":
        return bool(results[0][1])
    losses = [loss for loss, _ in results]
    return losses.index(min(losses)) == item["gold"]


def evaluate_task(model, tokenizer, task, data, device, batch_tokens=8192, progress=None):
    """
    Per example of one task (already prepared), 1.0 if the model gets it right, else 0.0. Under
    torchrun each rank takes every world_size-th example and the results are summed over ranks.
    progress(done, total) is called after each chunk on every rank (done: this rank's examples x ranks).
    """
    ddp = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if ddp else (0, 1)
    max_len = getattr(model, "rotary_len", model.config.sequence_len * 10)
    pad_id = tokenizer.get_bos_token_id()
    correct = [0.0] * len(data)  # this rank's examples filled in, the others' left at 0 for the sum
    mine = list(range(rank, len(data), world))
    for c in range(0, len(mine), EXAMPLES_PER_CHUNK):
        indices = mine[c:c + EXAMPLES_PER_CHUNK]
        rows, slices = example_rows(tokenizer, task, data, indices, max_len)
        results = [None] * len(rows)
        for batch in pack(rows, batch_tokens):
            for i, res in zip(batch, score_rows(model, [rows[i] for i in batch], pad_id, device)):
                results[i] = res
        for idx, sl in zip(indices, slices):
            correct[idx] = float(decide(task["type"], data[idx], results[sl]))
        if progress is not None:
            progress(min(len(data), (c + len(indices)) * world), len(data))
    if ddp:
        summed = torch.tensor(correct, dtype=torch.float32, device=device)  # on the GPU for NCCL
        dist.all_reduce(summed, op=dist.ReduceOp.SUM)
        correct = summed.tolist()
    return correct


def evaluate_core(model, tokenizer, tasks, device, max_per_task=-1, batch_tokens=8192, log=print0, progress_every=30.0):
    """Every task in turn, with a line of progress per task: [{label, type, shots, examples, accuracy, centered, seconds}]."""
    out = []
    for n, task in enumerate(tasks, 1):
        data = prepare_examples(load_examples(task["path"], task["type"]), max_per_task)
        log(f"[{n}/{len(tasks)}] {task['label']} ({task['shots']}-shot {task['type']}, {len(data)} examples)")
        t0 = last = time.time()

        def progress(done, total):
            nonlocal last
            if time.time() - last >= progress_every and done < total:
                last = time.time()
                log(f"    {done}/{total} examples, {done / (last - t0):.1f}/s")
        correct = evaluate_task(model, tokenizer, task, data, device, batch_tokens, progress)
        accuracy = sum(correct) / len(correct)
        r = dict(label=task["label"], type=task["type"], shots=task["shots"], examples=len(data), accuracy=accuracy,
                 baseline=task["baseline"], centered=centered(accuracy, task["baseline"]), seconds=round(time.time() - t0, 2))
        log(f"    accuracy {accuracy:.4f} | centered {r['centered']:.4f} | {r['seconds']:.1f}s")
        out.append(r)
    return out


def core_metric(results):
    return sum(r["centered"] for r in results) / len(results)


def select_tasks(tasks, labels):
    """The tasks named in a comma-separated list (in the bundle's order); all when empty."""
    if not labels:
        return tasks
    wanted = [x.strip() for x in labels.split(",") if x.strip()]
    known = {t["label"] for t in tasks}
    unknown = [x for x in wanted if x not in known]
    if unknown:
        raise UserError(f"unknown task {unknown[0]!r}; the bundle has: {', '.join(t['label'] for t in tasks)}")
    return [t for t in tasks if t["label"] in wanted]
