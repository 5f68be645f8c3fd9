"""
Measuring training memory on a CUDA GPU: what the estimate of nanochat.vram is checked against
(`python -m scripts.vram_calc --measure`, tests/test_calculators.py on a GPU). train_steps runs
the trainer's kind of step (and, after it, the evaluation between steps); measure_memory reads
torch.cuda.max_memory_reserved() around it; measure_cuda_context the driver's share of the card.

Library API: train_steps(...), measure_memory(...), measure_cuda_context(device).
"""
import contextlib
import gc

import torch

from nanochat.gpt import build_model
from nanochat.vram_activations import _check


def train_steps(config, batch_size, seq_len, precision="bf16", optimizer="muon", grad_checkpoint=False,
                compile=False, device="cuda", steps=3, micro_steps=2, eval_steps=1):
    """
    The training that measure_memory() measures: `steps` optimizer steps (nanochat.optim) of
    `micro_steps` accumulated forward+backward passes on random tokens, autocast to `precision`
    (GradScaler for fp16), zero_grad(set_to_none=True) after each step; an MoE's load-balancing
    loss is added as the trainer adds it. Then `eval_steps` batches of the evaluation between
    steps, as the trainer runs it: the uncompiled model in eval mode, no_grad, autocast, the
    summed loss (nanochat.loss_eval). Returns the last training loss.
    """
    from nanochat.mlp import moe_stats
    from nanochat.optim import build_optimizers
    device = torch.device(device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    autocast = contextlib.nullcontext() if dtype == torch.float32 else torch.amp.autocast(device.type, dtype=dtype)
    torch.manual_seed(0)
    model = build_model(config, device)
    model.train()
    model.grad_checkpoint = grad_checkpoint
    run = torch.compile(model, dynamic=False) if compile else model
    optimizers = build_optimizers(model, kind=optimizer)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    x = torch.randint(0, config.vocab_size, (batch_size, seq_len), device=device)
    y = torch.randint(0, config.vocab_size, (batch_size, seq_len), device=device)
    for _ in range(steps):
        for _ in range(micro_steps):
            with autocast:
                loss = run(x, y) / micro_steps
                stats = moe_stats(model)
                if stats is not None:
                    loss = loss + 0.01 * stats[0] / micro_steps
            (scaler.scale(loss) if scaler else loss).backward()
            last = loss.item() * micro_steps
            del loss
        for opt in optimizers:
            scaler.step(opt) if scaler else opt.step()
        if scaler:
            scaler.update()
        model.zero_grad(set_to_none=True)
    model.eval()
    with torch.no_grad(), autocast:
        for _ in range(eval_steps):
            model(x, y, loss_reduction="sum").item()
    model.train()
    return last


def measure_memory(config, batch_size, seq_len, precision="bf16", optimizer="muon", grad_checkpoint=False,
                   compile=False, device="cuda", steps=3, micro_steps=2, eval_steps=1):
    """
    Run train_steps() (and its evaluation) on a CUDA GPU and return torch.cuda.max_memory_reserved() in bytes: the
    number estimate_memory()["reserved"] predicts. Raises torch.OutOfMemoryError when it does not fit.
    """
    _check(precision, optimizer)
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        raise RuntimeError("measuring memory needs a CUDA GPU (it reads torch.cuda.max_memory_reserved); none is available")
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    try:
        train_steps(config, batch_size, seq_len, precision, optimizer, grad_checkpoint, compile, device, steps, micro_steps,
                    eval_steps)
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_reserved(device)
    finally:
        # train_steps' model and optimizer are gone with its frame (after an OOM, once the caller
        # has handled the exception; the next call's empty_cache returns them)
        gc.collect()
        torch.cuda.empty_cache()
        if compile:
            torch._dynamo.reset()


def measure_cuda_context(device="cuda"):
    """Bytes the CUDA context takes on the card: used memory (driver view) minus torch's reserved."""
    device = torch.device(device)
    torch.cuda.init()
    torch.empty(1, device=device)  # make sure the context exists
    free, total = torch.cuda.mem_get_info(device)
    return total - free - torch.cuda.memory_reserved(device)
