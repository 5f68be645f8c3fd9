"""
Bits per byte: the loss measure that does not depend on the tokenizer. The summed loss in nats over
all target tokens, divided by ln(2) times the number of bytes those tokens spell. Special tokens
(0 bytes in token_bytes) and ignored targets (-1) count for neither.

The loss goes through the model's chunked lm_head + cross-entropy (nanochat.fused_loss) as a sum
over the targets that spell bytes, so evaluation never builds the (B*T, vocab) logits that
training avoids (per-token losses would: tens of GB at batch 32 x 2048 with a 65k vocabulary).
"""
import math

import torch
import torch.distributed as dist


@torch.no_grad()
def evaluate_bpb(model, batches, steps, token_bytes):
    """model: the bare GPT; batches: an iterator of (x, y); token_bytes: int tensor of bytes per id."""
    total_nats = torch.tensor(0.0, dtype=torch.float64, device=token_bytes.device)
    total_bytes = torch.tensor(0, dtype=torch.int64, device=token_bytes.device)
    for _, (x, y) in zip(range(steps), batches):
        valid = y >= 0
        nbytes = torch.where(valid, token_bytes[y.clamp(min=0)], torch.zeros_like(y)).to(torch.int64)
        counted = torch.where(nbytes > 0, y, -1)  # special tokens and ignored targets: not in the sum
        total_nats += model(x, counted, loss_reduction="sum").double()
        total_bytes += nbytes.sum()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(total_nats)
        dist.all_reduce(total_bytes)
    if total_bytes.item() == 0:
        return float("inf")
    return total_nats.item() / (math.log(2) * total_bytes.item())
