"""
Bits per byte: the loss measure that does not depend on the tokenizer. The summed loss in nats over
all target tokens, divided by ln(2) times the number of bytes those tokens spell. Special tokens
(0 bytes in token_bytes) and ignored targets (-1) count for neither.
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
        loss = model(x, y, loss_reduction="none").view(-1).double()
        y = y.view(-1)
        valid = y >= 0
        nbytes = torch.where(valid, token_bytes[y.clamp(min=0)], torch.zeros_like(y)).to(torch.int64)
        total_nats += (loss * (nbytes > 0)).sum()
        total_bytes += nbytes.sum()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(total_nats)
        dist.all_reduce(total_bytes)
    if total_bytes.item() == 0:
        return float("inf")
    return total_nats.item() / (math.log(2) * total_bytes.item())
