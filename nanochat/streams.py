"""
Batches mixed from several sources of plain text, with each source's share of the tokens exact in
every batch (not just on average): the user's 5% is in each batch, and a curriculum phase's
mixture is what that phase trains on.

A source is a stream of tokens, documents with <|bos|> in front, one after another; take(n)
hands out the next n tokens and state_dict() is its position:
- a folder of parquet shards (FineWeb-Edu, the built-in corpus, TinyStories, your --text data):
  nanochat.dataloader.DataLoader, which shards row groups across DDP ranks;
- ExerciseTokens: generated exercises (nanochat.exercises), endless and seeded, at a difficulty
  the batcher sets per step (a value between two levels mixes them, so a ramp is smooth);
- DocumentTokens: a list of documents (the user's personal data), gone through again in a new
  seeded order each time it runs out.

MixedBatches builds each batch of B x T targets: plan(step) gives the weights (and the exercises'
difficulty and kinds, and the phase name) for the step the batch belongs to; the targets are split among the
sources by largest remainder, and each source's share is one contiguous run of its stream. It
counts the tokens each source gave per phase, and its state (batch count, every source's
position, those counts) resumes exactly. Same interface as DataLoader (next_host, to_device,
state_dict), so BackgroundLoader prepares its batches in a thread.
"""
import math
import random

import torch

from nanochat.common import UserError
from nanochat.dataloader import DataLoader, rank_state
from nanochat.exercises import DIFFICULTIES, KINDS, generate, render_text


def split_tokens(n, weights):
    """n tokens split by weights {name: w} (largest remainder, ties in order): {name: count}, summing to n."""
    total = sum(weights.values())
    if total <= 0:
        raise ValueError(f"weights must not all be zero: {weights}")
    exact = {k: n * w / total for k, w in weights.items()}
    counts = {k: math.floor(v) for k, v in exact.items()}
    order = sorted(exact, key=lambda k: -(exact[k] - counts[k]))  # stable: ties keep the weights' order
    for k in order[:n - sum(counts.values())]:
        counts[k] += 1
    return counts


class _Documents:
    """Tokens of documents doc(k), k = 0, 1, ...: the base of the two endless sources below."""

    def __init__(self, tokenizer, state=None):
        self.tokenizer, self.bos = tokenizer, tokenizer.get_bos_token_id()
        self._k, self._pos, self._cur = 0, 0, []  # the next document to read; position in the current one
        if state:
            self._k, self._pos = state["doc"], state["token"]
            self._restore(state)
            self._cur = self._encode(self._k)
            self._k += 1

    def _restore(self, state):
        pass

    def _encode(self, k):
        return self.tokenizer.encode(self.doc(k), prepend=self.bos)

    def take(self, n):
        out = []
        while len(out) < n:
            if self._pos >= len(self._cur):
                self._cur, self._pos = self._encode(self._k), 0
                self._k += 1
            m = min(n - len(out), len(self._cur) - self._pos)
            out += self._cur[self._pos:self._pos + m]
            self._pos += m
        return out

    def state_dict(self):
        # the document being read (k - 1) is made again on resume, and the tokens before pos skipped
        return {"doc": self._k - 1, "token": self._pos} if self._cur else {"doc": self._k, "token": 0}


class DocumentTokens(_Documents):
    """A list of documents, each pass in a new order (seeded by seed, rank and pass)."""

    def __init__(self, tokenizer, docs, seed=0, rank=0, state=None):
        if not docs:
            raise UserError("no documents to train on")
        self.docs, self.seed, self.rank, self._orders = docs, seed, rank, {}
        super().__init__(tokenizer, state)

    def doc(self, k):
        epoch, i = divmod(k, len(self.docs))
        if epoch not in self._orders:
            self._orders = {epoch: random.Random(f"{self.seed}-{self.rank}-{epoch}").sample(range(len(self.docs)), len(self.docs))}
        return self.docs[self._orders[epoch][i]]


class ExerciseTokens(_Documents):
    """
    Endless generated exercises, "Question: ...\nAnswer: ..." as in the built-in corpus, 8 to 32 to a
    document. Each exercise's difficulty is floor(d) or ceil(d) for the current self.difficulty d
    (in proportion, so the mean is d), its kind one of self.kinds. Document k is a function of
    (seed, rank, k, d, kinds) alone; the state keeps d and kinds of the document being read.
    """

    def __init__(self, tokenizer, seed=0, rank=0, difficulty=3.0, kinds=KINDS, state=None):
        self.seed, self.rank, self.difficulty, self.kinds = seed, rank, float(difficulty), tuple(kinds)
        self._made = (None, self.difficulty, self.kinds)
        super().__init__(tokenizer, state)

    def _restore(self, state):
        self.difficulty = state.get("difficulty", self.difficulty)
        self.kinds = tuple(state.get("kinds", self.kinds))

    def doc(self, k):
        rng = random.Random(f"exercises-{self.seed}-{self.rank}-{k}")
        d = min(max(self.difficulty, DIFFICULTIES[0]), DIFFICULTIES[-1])
        self._made = (k, d, self.kinds)
        lo = math.floor(d)
        parts = []
        for _ in range(rng.randint(8, 32)):
            level = min(lo + (1 if rng.random() < d - lo else 0), DIFFICULTIES[-1])
            parts.append(render_text(*generate(rng.choice(self.kinds), level, rng)))
        return "\n\n".join(parts)

    def state_dict(self):
        state = super().state_dict()
        k, d, kinds = self._made
        if k == state["doc"]:
            state.update(difficulty=d, kinds=list(kinds))
        return state


class MixedBatches:
    """
    Batches of B x T whose targets come from `sources` ({name: stream}) in the shares plan(step)
    gives: plan(step) -> (weights {name: w}, exercise settings {"difficulty", "kinds"} or None,
    phase name or None).
    The batch for micro-step i of a run is for step first_step + i // grad_accum_steps.
    """
    finite = False

    def __init__(self, sources, plan, B, T, device="cpu", first_step=0, grad_accum_steps=1, state=None, rank=0, world_size=1):
        state = rank_state(state, rank, world_size) or {}
        self.sources, self.plan, self.B, self.T = sources, plan, B, T
        self.device = torch.device(device)
        self.first_step = state.get("first_step", first_step)
        self.grad_accum_steps = grad_accum_steps
        self.batch = state.get("batch", 0)
        self.tokens = {phase: dict(c) for phase, c in state.get("tokens", {}).items()}  # {phase or "": {source: n}}

    def next_host(self):
        step = self.first_step + self.batch // self.grad_accum_steps
        weights, exercises, phase = self.plan(step)
        quotas = split_tokens(self.B * self.T, weights)
        counts = self.tokens.setdefault(phase or "", {})
        ids = []
        for name, n in quotas.items():
            if n == 0:
                continue
            source = self.sources[name]
            if isinstance(source, ExerciseTokens) and exercises:
                source.difficulty = exercises.get("difficulty", source.difficulty)
                source.kinds = tuple(exercises.get("kinds", source.kinds))
            ids += source.take(n + (0 if ids else 1))  # the first token of a batch is an input only
            counts[name] = counts.get(name, 0) + n
        self.batch += 1
        return torch.tensor(ids, dtype=torch.long, pin_memory=self.device.type == "cuda")

    to_device = DataLoader.to_device  # the same cut of B*T+1 tokens into (inputs, targets), the same copy

    def __iter__(self):
        return self

    def __next__(self):
        return self.to_device(self.next_host())

    def state_dict(self):
        return {"first_step": self.first_step, "batch": self.batch, "tokens": {p: dict(c) for p, c in self.tokens.items()},
                "sources": {name: s.state_dict() for name, s in self.sources.items()}}


def shares(state, phase=None):
    """{source: fraction of the tokens trained} for one phase (None: outside phases), from a MixedBatches state."""
    if isinstance(state, list):  # one state per rank: add them up
        counts = {}
        for s in state:
            for k, v in s["tokens"].get(phase or "", {}).items():
                counts[k] = counts.get(k, 0) + v
    else:
        counts = state["tokens"].get(phase or "", {})
    total = sum(counts.values())
    return {k: v / total for k, v in counts.items()} if total else {}


def source_states(state, rank=0, world_size=1):
    """The per-source positions inside a saved MixedBatches state (one entry per rank under DDP)."""
    return (rank_state(state, rank, world_size) or {}).get("sources", {})


def shard_source(tokenizer, data_dir, device, state=None):
    return DataLoader(tokenizer, 1, 1, "train", device=device, data_dir=data_dir, state=state)


def personal_source(tokenizer, path, seed, rank=0, state=None):
    from nanochat.personal import personal_documents
    return DocumentTokens(tokenizer, personal_documents(path), seed=seed, rank=rank, state=state)


def pretraining_with_personal(tokenizer, B, T, device, data_dir, personal, frac, seed, state=None):
    """base_train --personal: the pretraining shards and the user's text, `frac` of every batch's tokens from the latter."""
    from nanochat.common import get_dist_info, print0
    from nanochat.personal import describe, personal_documents
    if not 0 < frac < 1:
        raise UserError(f"--personal_frac must be between 0 and 1, got {frac}")
    _, rank, _, world_size = get_dist_info()
    states = source_states(state, rank, world_size)
    docs = personal_documents(personal)
    print0(f"personal data: {personal}: {describe(docs)}, {frac:.1%} of every batch "
           f"({split_tokens(B * T, {'pretrain': 1 - frac, 'personal': frac})['personal']:,d} of {B * T:,d} tokens)")
    sources = {"pretrain": shard_source(tokenizer, data_dir, device, states.get("pretrain")),
               "personal": DocumentTokens(tokenizer, docs, seed=seed, rank=rank, state=states.get("personal"))}
    weights = {"pretrain": 1 - frac, "personal": frac}
    return MixedBatches(sources, lambda step: (weights, None, None), B, T, device, state=state, rank=rank, world_size=world_size)
