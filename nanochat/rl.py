"""
Reinforcement learning on questions with exact answers (scripts/chat_rl.py trains through
nanochat.trainer with these pieces). Close to nanochat's "GRPO", which is REINFORCE with a group
baseline: on-policy, so no PPO ratio or clipping, and no KL penalty to a reference model.

- rollouts: each question is asked num_samples times (sampled through the KV-cache engine, the
  calculator on, with the current weights: the unwrapped model in eval mode, without gradients);
- reward: 1 when the reply's text (tool calls left out) is the exact answer (task.evaluate), else 0;
- advantages: per question, the rewards minus their mean, divided by their standard deviation
  ("zscore") or not ("centered"); a question whose samples all got the same reward teaches nothing
  and gets advantage 0 on every sample;
- loss: -advantage x log p(token), summed over the tokens the model sampled and divided by their
  count in the micro-batch; the prompt and the calculator's output (the tokens the engine forces
  in between <|output_start|> and <|output_end|>) get no loss, <|assistant_end|> does (stopping
  is the model's choice too);
- RolloutBatches is the trainer's batch iterator: lookahead False, so every micro-batch is sampled
  when its step starts, with the weights that step updates; state_dict() is where the next step's
  questions start (--resume continues from there);
- pass_at_1: the share of held-out questions answered exactly with a greedy reply.
"""
from collections import deque

import torch
import torch.distributed as dist

from nanochat.common import UserError, print0
from nanochat.dataloader import rank_state
from nanochat.engine import Engine, reply_parts, reply_text
from nanochat.tokenizer import render_for_completion

ADVANTAGES = ("zscore", "centered")


def load_task(spec, split, size=None, seed=0):
    """A task with exact answers by its mixture name (gsm8k, exercises[.KIND[.DIFFICULTY]][@direct]), one question each."""
    from nanochat.tasks.mixture import make_task
    try:
        task = make_task(spec, split, seed=seed, size=size)
    except ValueError as e:
        raise UserError(f"--task: {e}") from None
    if getattr(task, "eval_type", None) != "generative":
        raise UserError(f"--task {spec}: RL needs questions with exact answers: gsm8k or exercises[.KIND[.DIFFICULTY]]")
    if hasattr(task, "multi_turn"):
        task.multi_turn = 0.0  # one question per conversation: the reward is for that one answer
    return task


def group_advantages(rewards, group_size, kind="zscore", eps=1e-6):
    """rewards (N,) in groups of group_size samples of one question -> advantages (N,), normalised per group."""
    r = rewards.float().view(-1, group_size)
    centered = r - r.mean(dim=1, keepdim=True)  # exactly 0 where every sample got the same reward
    if kind == "zscore":
        centered = centered / (r.std(dim=1, unbiased=False, keepdim=True) + eps)
    elif kind != "centered":
        raise ValueError(f"advantage kind must be one of {', '.join(ADVANTAGES)}, got {kind!r}")
    return centered.view(-1)


def sample_replies(engine, prompt, num_samples, max_tokens, temperature=1.0, top_k=None, seed=0, chunk=None):
    """
    num_samples replies to prompt: [(tokens, sampled)], tokens the reply's ids up to and including
    its stop token (if it stopped), sampled[i] False where the calculator forced tokens[i] in.
    Sampled in chunks of at most `chunk` replies (memory), each chunk with its own seed.
    """
    chunk = chunk or num_samples
    replies = []
    for start in range(0, num_samples, chunk):
        n = min(chunk, num_samples - start)
        tokens, sampled, done = [[] for _ in range(n)], [[] for _ in range(n)], [False] * n
        for column, forced in engine.generate(prompt, n, max_tokens, temperature, top_k, seed=seed + start, return_forced=True):
            for i, (tok, is_forced) in enumerate(zip(column, forced)):
                if done[i]:
                    continue
                tokens[i].append(tok)
                sampled[i].append(not is_forced)
                done[i] = not is_forced and tok in engine.default_stops
        replies += list(zip(tokens, sampled))
    return replies


def reward(task, conversation, tokenizer, tokens):
    """1.0 when the reply's text (without its calculator calls) is the exact answer, else 0.0."""
    return float(bool(task.evaluate(conversation, reply_text(reply_parts(tokenizer, tokens)))))


def rollout_batch(rows, pad_id, device):
    """
    rows [(ids, trained)] (prompt + reply, trained[i] whether ids[i] is a sampled reply token) ->
    (inputs, targets) of shape (len(rows), longest - 1): targets are -1 where nothing is trained
    (the prompt, forced tool output, padding).
    """
    T = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    trained = torch.zeros((len(rows), T), dtype=torch.bool)
    for r, (row_ids, row_trained) in enumerate(rows):
        ids[r, :len(row_ids)] = torch.tensor(row_ids, dtype=torch.long)
        trained[r, :len(row_ids)] = torch.tensor(row_trained, dtype=torch.bool)
    targets = torch.where(trained[:, 1:], ids[:, 1:], -1)
    return ids[:, :-1].to(device), targets.to(device)


def pg_loss(model, inputs, targets, advantages, stats=None):
    """
    The policy-gradient loss of a micro-batch: -sum(advantage x log p) over the trained tokens,
    divided by their count (the trainer divides by the micro-steps). Its gradient raises the
    log-probability of the tokens of replies that did better than their group. With stats, returns
    (loss, stats) so the trainer logs them.
    """
    nll = model(inputs, targets, loss_reduction="none").view_as(targets).float()  # -log p; 0 where target is -1
    loss = (nll * advantages.view(-1, 1).float()).sum() / (targets >= 0).sum().clamp(min=1)
    return (loss, dict(stats)) if stats else loss


class RolloutBatches:
    """
    The trainer's batches: micro-batches of batch_size rows (inputs, targets, advantages, stats),
    each question's num_samples replies sampled when a step needs them, with the current weights.
    Questions are taken in order (rank r of world_size: questions r, r + world_size, ...), round
    and round the task. stats: mean reward and reply length of the last rows_per_step rows handed
    out, so the last micro-batch of a step carries the step's. weights_version() changes when the
    weights do (the engine is rebuilt then: a fast decoder holds copies of the weights); None:
    a new engine for every question.
    """
    lookahead = False  # sampled when its step starts, never ahead of the update before it
    finite = False

    def __init__(self, model, tokenizer, task, num_samples, batch_size, max_new_tokens, temperature=1.0, top_k=None,
                 seed=0, state=None, rank=0, world_size=1, weights_version=None, advantage="zscore", rows_per_step=None):
        self.model, self.tokenizer, self.task = model, tokenizer, task
        self.num_samples, self.B, self.max_new_tokens = num_samples, batch_size, max_new_tokens
        self.temperature, self.top_k, self.seed, self.advantage = temperature, top_k, seed, advantage
        self.rank, self.world_size = rank, world_size
        self.weights_version = weights_version
        self.device = model.get_device()
        self.pad = tokenizer.get_bos_token_id()
        self.question = int((rank_state(state, rank, world_size) or {}).get("question", 0))  # rank 0's count
        self._rows = deque()  # sampled rows not handed out: (ids, trained, advantage, reward, question, prompt length)
        self._recent = deque(maxlen=rows_per_step or batch_size)  # (reward, reply length) of rows handed out
        self._engine, self._version = None, None
        self._said_skip = False

    def __iter__(self):
        return self

    def state_dict(self):
        """Where the next batch starts: the first question with rows not handed out yet (saved at step ends, where none are left)."""
        return {"question": self._rows[0][4] if self._rows else self.question}

    def __next__(self):
        while len(self._rows) < self.B:
            self._sample_question()
        rows = [self._rows.popleft() for _ in range(self.B)]
        self._recent.extend((r[3], len(r[0]) - r[5]) for r in rows)
        inputs, targets = rollout_batch([(r[0], r[1]) for r in rows], self.pad, self.device)
        advantages = torch.tensor([r[2] for r in rows], dtype=torch.float32, device=self.device)
        n = len(self._recent)
        stats = {"reward": sum(r for r, _ in self._recent) / n, "reply_len": sum(t for _, t in self._recent) / n}
        return inputs, targets, advantages, stats

    def _engine_now(self):
        version = self.weights_version() if self.weights_version else None
        if self._engine is None or version is None or version != self._version:
            self._engine = None  # free a fast decoder's cache before making the next
            self._engine = Engine(self.model, self.tokenizer, max_context=self.model.config.sequence_len)
            self._version = version
        return self._engine

    def _sample_question(self):
        """Sample one question's replies with the current weights (eval mode, no gradients) and queue its rows."""
        q = self.question
        self.question += self.world_size
        position = q + self.rank
        conversation = self.task[position % len(self.task)]
        prompt = render_for_completion(self.tokenizer, conversation)
        engine = self._engine_now()
        room = min(self.max_new_tokens, engine.context_limit() - len(prompt))
        if room < 1:
            if not self._said_skip:
                print0(f"skipping questions whose prompt leaves no room to answer in the model's context "
                       f"({len(prompt)} tokens of {engine.context_limit()})")
                self._said_skip = True
            return
        seed = ((self.seed * 1_000_003 + position) * 1009) % 2 ** 31
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                replies = sample_replies(engine, prompt, self.num_samples, room, self.temperature, self.top_k, seed,
                                         chunk=self.B)
        finally:
            self.model.train(was_training)
        rewards = torch.tensor([reward(self.task, conversation, self.tokenizer, tokens) for tokens, _ in replies])
        advantages = group_advantages(rewards, self.num_samples, self.advantage).tolist()
        for (tokens, sampled), adv, r in zip(replies, advantages, rewards.tolist()):
            self._rows.append((prompt + tokens, [False] * len(prompt) + sampled, adv, r, q, len(prompt)))


@torch.no_grad()
def pass_at_1(model, tokenizer, task, num_questions, max_tokens, rank=0, world_size=1):
    """The share of the first num_questions of task answered exactly by a greedy reply (all ranks together)."""
    engine = Engine(model, tokenizer, max_context=model.config.sequence_len)
    counts = torch.zeros(2, dtype=torch.float64, device=model.get_device())  # correct, asked
    for i in range(rank, min(num_questions, len(task)), world_size):
        conversation = task[i]
        out = engine.generate_batch(render_for_completion(tokenizer, conversation), max_tokens=max_tokens, temperature=0)[0]
        counts[0] += reward(task, conversation, tokenizer, out)
        counts[1] += 1
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(counts)
    return (counts[0] / counts[1].clamp(min=1)).item()
