"""
Training memory estimator: how much GPU memory one training step of a GPT takes, per component,
worked out from what the forward pass in gpt.py actually keeps for backward.

What the estimate is compared against: torch.cuda.max_memory_reserved() after a few training
steps (what `--measure` and the issue measure). The CUDA context (driver, kernels, cuBLAS handles)
is NOT inside that number, so it is a separate component that only `total` and `fits()` add.

    reserved = weights + gradients + optimizer + activations + logits + workspace + allocator
    total    = reserved + cuda_context

The training step modelled is nanochat's: fp32 master weights, autocast to bf16/fp16 for the
matmuls (GradScaler with fp16), grad accumulation (so .grad tensors are alive while the next
micro-batch runs forward and backward), zero_grad(set_to_none=True) after the optimizer step.

The loss is nanochat.fused_loss: lm_head + softcap + cross-entropy a chunk of rows at a time,
its gradients computed in the forward pass, so no B*T*V tensor exists (before it, the logits and
their gradients took ~14 bytes per token per vocab entry: 10.5 GiB of Hamner-164M's 17.7 at batch 16).

The peak is found by walking the phases of a step and taking the largest:
  forward (loss)  all saved activations + autocast's cache of bf16 weight copies + the loss's
                  gradient buffers and one chunk's logits
  backward start  all saved activations + the loss's saved gradients and the scaled ones it returns
  block backward  (recomputed) activations of one block + its backward temporaries (an MoE's
                  walked expert by expert; checkpointed, the end of its recomputation if more)
  embedding       the wte gradient at the end of backward
  optimizer step  no activations; the optimizer's temporaries (an MoE's aux loss goes into the
                  backward, as the trainer does, so its graph holds nothing past it)

What the forward keeps, op by op, for every attention (standard, differential) and MLP (dense,
mixture of experts), is in nanochat/vram_activations.py. The saved-tensor accounting and the
phase peaks are checked exactly against autograd on a CPU (tests/test_calculators.py, fp32 and an
emulation of CUDA's autocast policy), dense, differential attention, MoE and both. Every constant below
says why it is what it is; those that could not be checked without a GPU (Inductor's choices
under torch.compile, the CUDA context, fragmentation) are judgements, named here so that
`python -m scripts.vram_calc --measure` on a GPU can correct them.
"""
import contextlib
import gc

import torch

from nanochat.gpt import build_model
# the activation accounting (what the forward keeps, op by op) and the parameter counts; re-exported
from nanochat.vram_activations import (  # noqa: F401
    OPTIMIZERS, PRECISIONS, _check, attention_saved_bytes, block_backward_bytes, checkpoint_kept_bytes,
    layer_saved_bytes, loss_bytes, mlp_saved_bytes, nonblock_saved_bytes, param_info, saved_activation_bytes)

MiB = 1024 ** 2
GiB = 1024 ** 3

# the components of the estimate, in the order they are printed; they add up to "total"
COMPONENTS = ("weights", "gradients", "optimizer", "activations", "logits", "workspace", "allocator", "cuda_context")
RESERVED_COMPONENTS = COMPONENTS[:-1]  # what torch.cuda.max_memory_reserved() sees

# CUDA context: driver state, the loaded kernels of torch/cuBLAS/cuDNN (lazily loaded since CUDA
# 11.7) and the handles. Typically 300-500 MiB on a 3090/4090/H100 with recent drivers; taken at
# the high end because it is memory the card does not have for us.
CUDA_CONTEXT_BYTES = 512 * MiB
# cuBLAS/cuBLASLt workspaces are allocated through torch's caching allocator (so they are inside
# max_memory_reserved): 4-32 MiB per handle and stream depending on the GPU generation.
LIBRARY_WORKSPACE_BYTES = 64 * MiB
# The caching allocator rounds large blocks up to 2 MiB and cannot always reuse a freed block for a
# differently sized request, so reserved > allocated. The loss chunks' tensors are modelled
# (see vram_activations.loss_bytes); this fraction covers everything else that comes and goes
# during the step.
FRAGMENTATION = 0.05
# torch.compile (Inductor, default mode): buffers for its generated kernels and the graph's
# planned intermediates that are not freed exactly when eager would free them.
COMPILE_WORKSPACE_BYTES = 128 * MiB
COMPILE_WORKSPACE_FRACTION = 0.05
# fits() keeps this share of the card free: other processes (a desktop on the same GPU), driver
# versions and allocator luck vary; OOM costs more than a slightly smaller batch.
SAFETY_MARGIN = 0.05

POW2_BATCH_SIZES = tuple(2 ** i for i in range(10))  # 1 .. 512

# -----------------------------------------------------------------------------
# the estimate

def _state_bytes(info, optimizer):
    """Optimizer state: Muon keeps one fp32 momentum per block matrix and AdamW (exp_avg, exp_avg_sq)
    for the embedding, lm_head and norms; plain AdamW keeps two fp32 tensors for every parameter."""
    if optimizer == "adamw":
        return 8 * info["total"]
    return 4 * info["block_matrices"] + 8 * (info["wte"] + info["lm_head"] + info["norms"])


def _step_workspace(info, optimizer):
    """Temporaries of optimizer.step() (nanochat.optim), when no activations are alive. AdamW is
    the fused kernel on CUDA: no temporaries. Muon works on one matrix at a time: the Nesterov
    update (fp32), its bf16 copy, X@X^T, its square and the new X (bf16, at most matrix-sized),
    and the update cast back to fp32."""
    if optimizer == "adamw":
        return 0
    return (4 + 5 * 2 + 4) * info["max_matrix"]


def estimate_phases(config, batch_size, seq_len, precision="bf16", optimizer="muon",
                    grad_checkpoint=False, compile=False, device_type="cuda"):
    """
    Transient memory (beyond weights, grads and optimizer state) in each phase of a training
    step, split into activations / logits / workspace, with their sum ("total", allocated) and
    the allocator segments the phase reserves beyond it ("fragmentation"). estimate_memory()
    takes the phase with the largest total + fragmentation.
    """
    _check(precision, optimizer, device_type)
    if batch_size <= 0 or seq_len <= 0:
        raise ValueError(f"batch size and sequence length must be positive, got {batch_size} x {seq_len}")
    c = config
    N = batch_size * seq_len
    info = param_info(c)
    low = precision != "fp32"
    per_tok, per_seq = layer_saved_bytes(c, seq_len, precision, compile, device_type)
    layer = per_tok * N + per_seq
    nonblock = nonblock_saved_bytes(c, precision, compile, device_type) * N
    loss = loss_bytes(c, N, precision, device_type)
    # autocast keeps a bf16 copy of every block weight used under it, cached until the autocast
    # region is left (end of forward) and saved by each linear for backward (compiled: recomputed);
    # the loss's own cast of the lm_head weight is in loss["forward"]
    casts_blocks = 2 * info["block_matrices"] if low and not compile else 0
    casts_layer = 2 * info["layer_matrices"] if low and not compile else 0
    C = c.n_embd
    block_ws, freed = block_backward_bytes(c, N, precision, compile, device_type, grad_checkpoint)
    # checkpointing: the block is recomputed; its ln_1 saves the block input, which is the
    # checkpoint's own kept input (counted once). (Compiled too: an MoE's nonzero() breaks the
    # graph, so its checkpointed block runs eagerly.)
    recomputed = layer - 4 * C * N + casts_layer
    kept = c.n_layer * (checkpoint_kept_bytes(c, N, device_type) if grad_checkpoint else layer)
    phases = {
        # the loss, at the end of forward: with checkpointing the blocks' activations were dropped,
        # but autocast's weight cache lives until the forward leaves autocast
        "forward_loss": {"activations": kept + nonblock + casts_blocks, "logits": loss["forward"], "workspace": 0},
        # the loss's backward: its saved gradients and the scaled ones it returns
        "backward_loss": {"activations": kept + nonblock + (0 if grad_checkpoint else casts_blocks),
                          "logits": loss["backward"], "workspace": 0},
        # the last block's backward (checkpointing: its recomputed tensors, with its weight casts;
        # a checkpointed MoE can peak as its recomputation ends: see block_backward_bytes)
        "backward_block": {"activations": kept + nonblock - freed + (recomputed if grad_checkpoint else casts_blocks),
                           "logits": 0, "workspace": block_ws},
        # the embedding's backward, last: a (V, C) fp32 gradient for wte from the (N, C) one
        # arriving, and (tied) the loss's grad_W still waiting to be added to it
        "backward_embedding": {"activations": 8 * N, "logits": 0,
                               "workspace": 4 * C * N + 4 * c.vocab_size * C * (2 if c.tie_embeddings else 1)},
        "optimizer_step": {"activations": 0, "logits": 0, "workspace": _step_workspace(info, optimizer)},
    }
    for ph in phases.values():
        ph["total"] = ph["activations"] + ph["logits"] + ph["workspace"]
        ph["fragmentation"] = 0
    # the loss chunks' extra allocator segments are reserved during the loss; later phases can
    # reuse them (split), so they only raise the reserved peak when that phase is the peak
    phases["forward_loss"]["fragmentation"] = loss["fragmentation"]
    return phases


def peak_phase(phases):
    """Name of the phase that sets the reserved peak."""
    return max(phases, key=lambda k: phases[k]["total"] + phases[k]["fragmentation"])


def estimate_memory(config, batch_size, seq_len, precision="bf16", optimizer="muon",
                    grad_checkpoint=False, compile=False):
    """
    Estimated peak GPU memory of training steps, bytes per component (see COMPONENTS):
      weights       fp32 parameters (shared tensors once) + buffers (rotary tables)
      gradients     fp32 .grad for every parameter (alive during grad accumulation)
      optimizer     optimizer state
      activations   saved for backward at the peak phase (incl. autocast's bf16 weight copies)
      logits        the loss's tensors alive at the peak phase: a chunk's logits, its gradients
      workspace     temporaries at the peak phase, library (cuBLAS) workspaces, compile buffers
      allocator     caching-allocator rounding/fragmentation (reserved minus allocated)
      cuda_context  driver/kernels context, outside max_memory_reserved
    plus "reserved" (the sum of the first seven: the estimate of torch.cuda.max_memory_reserved)
    and "total" (reserved + cuda_context: what the card must hold).
    """
    phases = estimate_phases(config, batch_size, seq_len, precision, optimizer, grad_checkpoint, compile)
    peak = phases[peak_phase(phases)]
    info = param_info(config)
    est = {
        "weights": 4 * info["total"] + info["buffer_bytes"],
        "gradients": 4 * info["total"],
        "optimizer": _state_bytes(info, optimizer),
        "activations": peak["activations"],
        "logits": peak["logits"],
        "workspace": peak["workspace"] + LIBRARY_WORKSPACE_BYTES,
    }
    if compile:
        est["workspace"] += COMPILE_WORKSPACE_BYTES + int(COMPILE_WORKSPACE_FRACTION * (peak["activations"] + peak["logits"]))
    est["allocator"] = int(FRAGMENTATION * (est["activations"] + est["logits"] + est["workspace"])) + peak["fragmentation"]
    est["cuda_context"] = CUDA_CONTEXT_BYTES
    est = {k: int(v) for k, v in est.items()}
    est["reserved"] = sum(est[k] for k in RESERVED_COMPONENTS)
    est["total"] = est["reserved"] + est["cuda_context"]
    return est


def fits(config, batch_size, seq_len, precision, optimizer, grad_checkpoint, compile, gpu_mem_bytes,
         margin=SAFETY_MARGIN):
    """True when the estimated total (context included) fits the card with `margin` of it to spare."""
    est = estimate_memory(config, batch_size, seq_len, precision, optimizer, grad_checkpoint, compile)
    return est["total"] <= gpu_mem_bytes * (1.0 - margin)


def auto_batch_size(config, seq_len, precision, optimizer, grad_checkpoint, compile, gpu_mem_bytes,
                    candidates=POW2_BATCH_SIZES, margin=SAFETY_MARGIN):
    """The largest candidate batch size whose estimate fits the card (with margin); 0 if none does."""
    best = 0
    for b in sorted(candidates):
        if fits(config, b, seq_len, precision, optimizer, grad_checkpoint, compile, gpu_mem_bytes, margin):
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
    import os
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")

# -----------------------------------------------------------------------------
# measuring, on a CUDA GPU

def train_steps(config, batch_size, seq_len, precision="bf16", optimizer="muon", grad_checkpoint=False,
                compile=False, device="cuda", steps=3, micro_steps=2):
    """
    The training that measure_memory() measures: `steps` optimizer steps (nanochat.optim) of
    `micro_steps` accumulated forward+backward passes on random tokens, autocast to `precision`
    (GradScaler for fp16), zero_grad(set_to_none=True) after each step; an MoE's load-balancing
    loss is added as the trainer adds it. Returns the last loss.
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
    return last


def measure_memory(config, batch_size, seq_len, precision="bf16", optimizer="muon", grad_checkpoint=False,
                   compile=False, device="cuda", steps=3, micro_steps=2):
    """
    Run train_steps() on a CUDA GPU and return torch.cuda.max_memory_reserved() in bytes: the
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
        train_steps(config, batch_size, seq_len, precision, optimizer, grad_checkpoint, compile, device, steps, micro_steps)
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

# -----------------------------------------------------------------------------
# the training scripts' batch plan

def precision_name(dtype):
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")


def resolve_batch_plan(device_batch_size, total_batch_size, config, seq_len, dtype, optimizer, grad_checkpoint,
                       compile, device, world_size):
    """
    The training scripts' --device_batch_size (a positive integer, or 'auto': the largest the
    estimate says fits this device) and gradient accumulation derived from --total_batch_size
    tokens (0 or less: no accumulation). Returns (B, total_batch_size, grad_accum_steps); raises
    UserError with one line when the numbers cannot work.
    """
    from nanochat.common import UserError
    if device_batch_size == "auto":
        B = auto_batch_size(config, seq_len, precision_name(dtype), optimizer, grad_checkpoint, compile,
                            device_memory_bytes(device))
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
