"""
The batch plan: whether a batch size fits a device by the memory estimate (nanochat.vram: every
phase of a training step and the evaluation between steps, the CUDA context included), the
largest that does (`--device_batch_size auto`), and the training scripts' micro-batch and
gradient accumulation from --device_batch_size and --total_batch_size.

Library API: fits(...), auto_batch_size(...), device_memory_bytes(device), resolve_batch_plan(...).
"""
import os

import torch

from nanochat.common import UserError
from nanochat.vram import estimate_memory, precision_name

# fits() keeps this share of the card free: other processes (a desktop on the same GPU), driver
# versions and allocator luck vary; OOM costs more than a slightly smaller batch.
SAFETY_MARGIN = 0.05

POW2_BATCH_SIZES = tuple(2 ** i for i in range(10))  # 1 .. 512


def fits(config, batch_size, seq_len, precision, optimizer, grad_checkpoint, compile, gpu_mem_bytes,
         margin=SAFETY_MARGIN, lora=None):
    """True when the estimated total (context included) fits the card with `margin` of it to spare
    (lora: nanochat.lora's settings, for a frozen base with adapters)."""
    est = estimate_memory(config, batch_size, seq_len, precision, optimizer, grad_checkpoint, compile, lora=lora)
    return est["total"] <= gpu_mem_bytes * (1.0 - margin)


def auto_batch_size(config, seq_len, precision, optimizer, grad_checkpoint, compile, gpu_mem_bytes,
                    candidates=POW2_BATCH_SIZES, margin=SAFETY_MARGIN, lora=None):
    """The largest candidate batch size whose estimate fits the card (with margin); 0 if none does."""
    best = 0
    for b in sorted(candidates):
        if fits(config, b, seq_len, precision, optimizer, grad_checkpoint, compile, gpu_mem_bytes, margin, lora=lora):
            best = b
        else:
            break  # memory only grows with the batch size
    return best


def device_memory_bytes(device):
    """Memory of the device the estimate is checked against: the GPU's total memory on CUDA,
    the recommended working set on MPS, physical RAM on a CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    if device.type == "mps" and hasattr(torch.mps, "recommended_max_memory"):
        return torch.mps.recommended_max_memory()
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")

# -----------------------------------------------------------------------------
# the training scripts' batch plan

def resolve_batch_plan(device_batch_size, total_batch_size, config, seq_len, dtype, optimizer, grad_checkpoint,
                       compile, device, world_size, lora=None):
    """
    The training scripts' --device_batch_size (a positive integer, or 'auto': the largest the
    estimate says fits this device) and gradient accumulation derived from --total_batch_size
    tokens (0 or less: no accumulation); lora: the adapters' settings when the base is frozen
    (nanochat.lora). Returns (B, total_batch_size, grad_accum_steps); raises UserError with one
    line when the numbers cannot work.
    """
    if device_batch_size == "auto":
        B = auto_batch_size(config, seq_len, precision_name(dtype), optimizer, grad_checkpoint, compile,
                            device_memory_bytes(device), lora=lora)
        if B == 0:
            raise UserError(f"even batch size 1 at sequence length {seq_len} does not fit this device: "
                            f"try --grad_checkpoint, a shorter --max_seq_len or a smaller model")
    else:
        try:
            B = int(device_batch_size)
        except ValueError:
            B = 0
        if B <= 0:
            raise UserError(f"--device_batch_size must be a positive integer or 'auto', got {device_batch_size!r}")
    tokens_per_fwdbwd = B * seq_len * world_size
    total = total_batch_size if total_batch_size > 0 else tokens_per_fwdbwd
    if total % tokens_per_fwdbwd != 0:
        raise UserError(f"--total_batch_size {total} must be a multiple of device_batch_size x max_seq_len x "
                        f"world_size = {B} x {seq_len} x {world_size} = {tokens_per_fwdbwd}")
    return B, total, total // tokens_per_fwdbwd
