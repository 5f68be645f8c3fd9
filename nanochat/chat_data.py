"""
Conversations as training batches, shared by mid-training and SFT (scripts/mid_train.py,
scripts/chat_sft.py), which train through nanochat.trainer:

- the data is a mixture of conversation tasks (nanochat.tasks.mixture spec), each rendered to
  tokens and a loss mask (only what the assistant writes is trained) and packed whole, in order,
  into rows of max_seq_len + 1 tokens; the rest of a row is padding that is not trained;
- ConversationBatches is that stream as the trainer's batch iterator, with the position of the
  next batch as its state (exact resume); by epochs it is finite, and count_steps says how many
  optimizer steps an epoch makes, so the learning-rate schedule knows where the run ends;
- a run starts from a checkpoint of the stage before (start_model: mid from base; sft from mid,
  else base) and is evaluated by the mean loss per trained token of held-out conversations.
"""
import math
import os

import torch

from nanochat.common import UserError, print0
from nanochat.dataloader import rank_state
from nanochat.checkpoint_manager import find_last_step, find_model_tag, get_checkpoints_dir, load_model
from nanochat.tokenizer import render_conversation, render_for_completion

SAMPLE_PROMPTS = ["Hello!", "Who are you?", "What is 23 + 45?", "Reverse the list: red, green, blue."]


def default_mixture(phase):
    """Built-in conversations, plus SmolTalk when it has been downloaded (online users)."""
    from nanochat.tasks.smoltalk import is_downloaded
    spec = "exercises:6,chat:1"
    if is_downloaded("train") and is_downloaded("test"):
        spec += ",smoltalk:8" if phase == "mid" else ",smoltalk:3"
    return spec


def chat_mixtures(spec, phase, num_conversations, eval_conversations, seed):
    """(spec, train mixture, held-out mixture); spec 'auto' is default_mixture(phase). Raises UserError."""
    from nanochat.tasks.mixture import parse_mixture
    spec = default_mixture(phase) if spec == "auto" else spec
    try:
        return spec, parse_mixture(spec, num_conversations, "train", seed=seed), \
            parse_mixture(spec, eval_conversations, "test", seed=seed + 1)
    except (UserError, ValueError) as e:
        raise UserError(f"--mixture: {e}") from None

# -----------------------------------------------------------------------------
# batches


def conversation_rows(tokenizer, mixture, B, T, start=0, epoch=0, rank=0, world_size=1, stop_epoch=None):
    """
    Yields (inputs, targets, state): B rows of T tokens packed with whole conversations in mixture
    order (rank r takes conversations r, r + world_size, ...). targets are -1 where nothing is
    trained (user turns, tool outputs, padding). state {"index", "epoch"} is where the next batch
    starts (rank 0's count), for resume. Stops before epoch stop_epoch (None: never), the last
    batch padded with untrained rows.
    """
    n = len(mixture)
    pad = tokenizer.get_bos_token_id()
    index = start + rank
    pending = None  # a rendered conversation that did not fit the previous row
    finished = False
    while not finished:
        inputs, targets = [], []
        while len(inputs) < B and not finished:
            row_ids, row_mask = [], []
            while True:
                if pending is None:
                    if index >= n:
                        if stop_epoch is not None and epoch + 1 >= stop_epoch:
                            finished = True
                            break
                        index, epoch = index - n, epoch + 1
                    try:
                        pending = render_conversation(tokenizer, mixture[index], max_tokens=T + 1)
                    except ValueError as e:
                        print0(f"skipping malformed conversation {index}: {e}")
                        pending = ([], [])
                    index += world_size
                ids, mask = pending
                if row_ids and len(row_ids) + len(ids) > T + 1:
                    break  # the row is full: this conversation opens the next one
                row_ids += ids
                row_mask += mask
                pending = None
            if not row_ids:
                break
            fill = T + 1 - len(row_ids)
            ids = torch.tensor(row_ids + [pad] * fill, dtype=torch.long)
            mask = torch.tensor(row_mask + [0] * fill, dtype=torch.bool)
            inputs.append(ids[:-1])
            targets.append(torch.where(mask[1:], ids[1:], -1))
        if not inputs:
            return
        while len(inputs) < B:  # the last batch: pad with untrained rows
            inputs.append(torch.full((T,), pad, dtype=torch.long))
            targets.append(torch.full((T,), -1, dtype=torch.long))
        # the conversation left pending opens the next batch, so a resume starts from it
        next_index = index - (world_size if pending is not None else 0) - rank
        yield torch.stack(inputs), torch.stack(targets), {"index": next_index, "epoch": epoch}


class ConversationBatches:
    """
    conversation_rows as the trainer's batch iterator: (inputs, targets) on the device, and
    state_dict() = where the next batch starts. A state saved under DDP is a list with one entry
    per rank; each rank takes its own. Finite when it stops after stop_epoch epochs.
    """
    def __init__(self, tokenizer, mixture, B, T, device, state=None, rank=0, world_size=1, stop_epoch=None):
        self._state = dict(rank_state(state, rank, world_size) or {"index": 0, "epoch": 0})
        self.device = torch.device(device)
        self.finite = stop_epoch is not None
        self._rows = conversation_rows(tokenizer, mixture, B, T, self._state["index"], self._state["epoch"], rank,
                                       world_size, stop_epoch)

    def __iter__(self):
        return self

    def __next__(self):
        x, y, self._state = next(self._rows)
        non_blocking = self.device.type == "cuda"
        return x.to(self.device, non_blocking=non_blocking), y.to(self.device, non_blocking=non_blocking)

    def state_dict(self):
        return dict(self._state)


def count_steps(tokenizer, mixture, B, T, grad_accum_steps, num_epochs, rank=0, world_size=1):
    """
    Optimizer steps in num_epochs of the mixture on this rank (packing it once, without tensors on
    the device). Under DDP take the minimum over ranks: a rank whose data ends inside the last
    step finishes it on zero-weighted repeats (nanochat.trainer).
    """
    n = sum(1 for _ in conversation_rows(tokenizer, mixture, B, T, 0, 0, rank, world_size, stop_epoch=num_epochs))
    return max(1, math.ceil(n / grad_accum_steps))


def chat_loss(model, x, y):
    """Mean loss per trained token of the micro-batch (rows may train on few tokens, or none: no NaN, no wait)."""
    return model(x, y, loss_reduction="sum") / (y >= 0).sum().clamp(min=1)


@torch.no_grad()
def evaluate_loss(model, batches):
    """Mean loss per trained token over the batches (all ranks together under DDP; autocast is the caller's)."""
    import torch.distributed as dist
    sums = torch.zeros(2, dtype=torch.float64, device=model.get_device())  # summed loss, trained tokens
    for x, y in batches:
        sums[0] += model(x, y, loss_reduction="sum").double()
        sums[1] += (y >= 0).sum()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(sums)
    return (sums[0] / sums[1].clamp(min=1)).item()


def sample_replies(model, tokenizer, prompts=SAMPLE_PROMPTS, max_tokens=48):
    """(prompt, greedy reply) for each prompt, through the KV-cache engine."""
    from nanochat.engine import Engine, reply_parts, reply_text
    engine = Engine(model, tokenizer)
    for prompt in prompts:
        ids = render_for_completion(tokenizer, {"messages": [{"role": "user", "content": prompt}]})
        out = engine.generate_batch(ids, max_tokens=max_tokens, temperature=0)[0]
        yield prompt, reply_text(reply_parts(tokenizer, out))

# -----------------------------------------------------------------------------
# where a run starts


def has_checkpoints(source, model_tag=""):
    try:
        tag = model_tag or find_model_tag(get_checkpoints_dir(source))
        find_last_step(os.path.join(get_checkpoints_dir(source), tag))
        return True
    except UserError:
        return False


def start_model(phase_sources, source, model_tag, step, device):
    """
    The checkpoint a fine-tuning run starts from: the first stage of phase_sources (or `source`)
    that has one. Returns (model, tokenizer, meta, source, model_tag); raises UserError.
    """
    sources = [source] if source else phase_sources
    found = next((s for s in sources if has_checkpoints(s, model_tag)), None)
    if found is None:
        raise UserError(f"no {' or '.join(sources)} checkpoint{' with tag ' + model_tag if model_tag else ''} "
                        f"to start from: train one first (python -m scripts.base_train)")
    tag = model_tag or find_model_tag(get_checkpoints_dir(found))
    model, tokenizer, meta = load_model(found, device, phase="train", model_tag=tag, step=None if step < 0 else step)
    return model, tokenizer, meta, found, tag

# -----------------------------------------------------------------------------
# the flags of a fine-tuning run (the training flags are nanochat.trainer's)

PHASES = {
    # source stages tried in order, output stage, conversations per epoch, learning-rate schedule
    "mid": dict(sources=["base"], out="mid", size=200_000, init_lr_frac=1.0, warmdown_ratio=0.2),
    "sft": dict(sources=["mid", "base"], out="sft", size=20_000, init_lr_frac=0.02, warmdown_ratio=1.0),
}


def add_chat_args(parser, phase):
    """What to start from, where to write, and the conversations (mid-training and SFT)."""
    d = PHASES[phase]
    g = parser.add_argument_group("model and data")
    g.add_argument("--source", type=str, default="", choices=["", "base", "mid", "sft", "curriculum"],
                   help=f"stage to start from (default: the first of {', '.join(d['sources'])} that has checkpoints)")
    g.add_argument("--model_tag", type=str, default="", help="model tag of the source (default: the deepest model)")
    g.add_argument("--step", type=int, default=-1, help="source checkpoint step (default: the latest)")
    g.add_argument("--output_tag", type=str, default="", help="model tag to write (default: the source's)")
    g.add_argument("--mixture", type=str, default="auto",
                   help="task:weight,... e.g. 'exercises:6,chat:1,smoltalk:3,my_chats.txt:2' "
                        "(auto: built-in tasks, plus smoltalk when downloaded); see nanochat/tasks/mixture.py")
    g.add_argument("--num_conversations", type=int, default=d["size"], help=f"conversations per epoch (default {d['size']:,d})")
    g.add_argument("--num_epochs", type=int, default=1, help="epochs over the mixture when --num_iterations is -1")
    g.add_argument("--max_seq_len", type=int, default=0, help="tokens per row (default: the model's sequence_len)")
    g.add_argument("--eval_conversations", type=int, default=256, help="held-out conversations per evaluation")
    return g
