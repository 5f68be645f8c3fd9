"""
Mixtures of tasks, and the mixture specs the training scripts take on the command line.

TaskMixture(tasks)                    every conversation of every task once, shuffled
TaskMixture(tasks, weights, size)     size conversations, task i drawn with weight w_i: each task's
                                      share is round(size * w_i / sum(w)), going through a shuffled
                                      order of its conversations and again when it runs out
Both are deterministic given the seed.

A spec is "name:weight,name:weight,...", weights relative (60 and 0.6 mean the same when all
are given that way). Names:
    exercises                 every exercise kind and difficulty (built-in)
    exercises.addition        one kind; exercises.addition.2: one kind at one difficulty
    ...@direct                arithmetic answered without the calculator (e.g. exercises.addition@direct)
    chat                      greetings, identity, thanks (built-in)
    smoltalk                  HuggingFaceTB/smol-smoltalk (download it first)
    persona-chat, dailydialog, lmsys-chat, magpie-ultra   more hub conversation sets (download them first:
                              nanochat/tasks/conversation_sets.py; their hub names work too)
    gsm8k, arc-easy, arc-challenge, mmlu   their train splits where they have one (auxiliary_train for MMLU)
    a path to a .jsonl or ChatML file      your own conversations
"""
import os

import numpy as np

from nanochat.tasks import Task


class TaskMixture(Task):
    def __init__(self, tasks, weights=None, size=None, seed=42):
        if not tasks:
            raise ValueError("a mixture needs at least one task")
        self.tasks = list(tasks)
        rng = np.random.default_rng(seed)
        lengths = [len(t) for t in self.tasks]
        for t, n in zip(self.tasks, lengths):
            if n == 0:
                raise ValueError(f"task {type(t).__name__} is empty")
        if weights is None:
            task_ids = np.concatenate([np.full(n, i) for i, n in enumerate(lengths)])
            item_ids = np.concatenate([np.arange(n) for n in lengths])
        else:
            if len(weights) != len(self.tasks) or any(w < 0 for w in weights) or sum(weights) <= 0:
                raise ValueError(f"need one non-negative weight per task (not all zero), got {weights}")
            size = size if size is not None else sum(lengths)
            total = float(sum(weights))
            counts = [int(round(size * w / total)) for w in weights]
            task_ids, item_ids = [], []
            for i, (n, count) in enumerate(zip(lengths, counts)):
                reps = -(-count // n)  # a small task is gone through again, each time in a new order
                order = np.concatenate([rng.permutation(n) for _ in range(reps)])[:count] if count else np.zeros(0, int)
                task_ids.append(np.full(count, i))
                item_ids.append(order)
            task_ids, item_ids = np.concatenate(task_ids), np.concatenate(item_ids)
        perm = rng.permutation(len(task_ids))
        self.task_ids, self.item_ids = task_ids[perm], item_ids[perm]

    def __len__(self):
        return len(self.task_ids)

    def __getitem__(self, index):
        return self.tasks[int(self.task_ids[index])][int(self.item_ids[index])]

    def counts(self):
        """Conversations per task in this mixture."""
        return np.bincount(self.task_ids, minlength=len(self.tasks)).tolist()


def parse_spec(spec):
    """'exercises:8,chat:1' -> [('exercises', 8.0), ('chat', 1.0)]; a missing weight is 1."""
    items = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, weight = part.rpartition(":")
        if not sep or not _is_number(weight):
            name, weight = part, "1"  # no weight (or a path with a colon in it)
        w = float(weight)
        if w < 0:
            raise ValueError(f"negative weight in mixture spec: {part!r}")
        items.append((name, w))
    if not items:
        raise ValueError(f"empty mixture spec {spec!r}")
    return items


def _is_number(s):
    try:
        float(s)
        return True
    except ValueError:
        return False


def make_task(name, split="train", seed=0, size=None):
    """One task by its spec name (see the module docstring). size: for the generated tasks."""
    from nanochat.tasks import builtin, conversation_sets
    size = size or 100_000
    if name.removesuffix("@direct") == "exercises" or name.startswith("exercises."):
        name, direct = name.removesuffix("@direct"), name.endswith("@direct")
        _, *rest = name.split(".")
        kinds = [rest[0]] if rest else None
        difficulties = None
        if len(rest) > 1:
            if not rest[1].isdigit():
                raise ValueError(f"bad task name {name!r}: expected exercises.KIND.DIFFICULTY")
            difficulties = [int(rest[1])]
        return builtin.ExerciseChat(size, split, kinds=kinds, difficulties=difficulties, seed=seed, tool=not direct)
    if name == "chat":
        return builtin.ChatBasics(max(1, size // 10), split, seed=seed)
    if name == "smoltalk":
        from nanochat.tasks.smoltalk import SmolTalk
        return SmolTalk(split)
    if name in conversation_sets.SETS or name in conversation_sets.BY_REPO:
        return conversation_sets.ConversationSet(name, split)
    if name == "gsm8k":
        from nanochat.tasks.gsm8k import GSM8K
        return GSM8K(split)
    if name in ("arc-easy", "arc-challenge"):
        from nanochat.tasks.arc import ARC
        return ARC(name.split("-")[1].capitalize(), "train" if split == "train" else "validation")
    if name == "mmlu":
        from nanochat.tasks.mmlu import MMLU
        return MMLU("auxiliary_train" if split == "train" else "validation")
    if os.path.exists(name) or os.sep in name or name.endswith((".jsonl", ".json", ".txt")):
        from nanochat.tasks.custom import CustomChat
        return CustomChat(name, split)  # a missing file says so
    raise ValueError(f"unknown task {name!r} in mixture: use exercises[.KIND[.DIFFICULTY]][@direct], chat, smoltalk, "
                     f"{', '.join(conversation_sets.SETS)}, gsm8k, arc-easy, arc-challenge, mmlu, "
                     f"or the path of a .jsonl/ChatML file")


def parse_mixture(spec, size, split="train", seed=42):
    """A TaskMixture of `size` conversations from a spec string."""
    items = parse_spec(spec)
    tasks = [make_task(name, split, seed=seed + i, size=size) for i, (name, _) in enumerate(items)]
    return TaskMixture(tasks, [w for _, w in items], size=size, seed=seed)
