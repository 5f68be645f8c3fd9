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
  block backward  (recomputed) activations of one block + its backward temporaries
  optimizer step  no activations; the optimizer's temporaries

The saved-tensor accounting and the phase peaks are checked exactly against autograd on a CPU
(tests/test_calculators.py, fp32 and an emulation of CUDA's autocast policy). Every constant below
says why it is what it is; those that could not be checked without a GPU (Inductor's choices
under torch.compile, the CUDA context, fragmentation) are judgements, named here so that
`python -m scripts.vram_calc --measure` on a GPU can correct them.
"""
import contextlib
import gc
import math
from dataclasses import asdict

import torch

from nanochat.fused_loss import chunk_rows
from nanochat.gpt import GPT, build_model

MiB = 1024 ** 2
GiB = 1024 ** 3

PRECISIONS = ("fp32", "bf16", "fp16")
OPTIMIZERS = ("muon", "adamw")
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
# (see _loss_bytes); this fraction covers everything else that comes and goes during the step.
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
# parameters, counted by the model itself on the meta device (exact and free)

_param_cache = {}

def param_info(config):
    """
    Parameter counts the estimate needs, by role: wte, lm_head (0 when tied), norms (1-d
    weights), block matrices, one block's matrices, the largest matrix, and buffer bytes.
    """
    key = tuple(sorted(asdict(config).items()))
    if key in _param_cache:
        return _param_cache[key]
    with torch.device("meta"):
        model = GPT(config)
    info = {"wte": 0, "lm_head": 0, "norms": 0, "block_matrices": 0, "max_matrix": 0}
    for name, p in model.named_parameters():  # a tied weight is yielded once, as wte
        if name == "transformer.wte.weight":
            info["wte"] += p.numel()
        elif name == "lm_head.weight":
            info["lm_head"] += p.numel()
        elif p.ndim == 1:
            info["norms"] += p.numel()
        else:
            info["block_matrices"] += p.numel()
            info["max_matrix"] = max(info["max_matrix"], p.numel())
    info["total"] = info["wte"] + info["lm_head"] + info["norms"] + info["block_matrices"]
    info["layer_matrices"] = info["block_matrices"] // config.n_layer
    # the lm_head matmul uses the wte matrix when tied
    info["lm_head_matmul"] = config.vocab_size * config.n_embd
    info["buffer_bytes"] = sum(b.numel() * b.element_size() for b in model.buffers())
    info["rotary_bytes"] = model.cos.element_size()  # dtype of the cos/sin tables
    _param_cache[key] = info
    return info

# -----------------------------------------------------------------------------
# activations: what each op of gpt.py saves for backward, in bytes per token

def _check(precision, optimizer=None, device_type="cuda"):
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if optimizer is not None and optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    if device_type not in ("cuda", "cpu"):
        raise ValueError(f"device_type must be 'cuda' or 'cpu', got {device_type!r}")


def layer_saved_bytes(config, seq_len, precision, compile=False, device_type="cuda"):
    """
    Bytes one transformer block keeps for backward, per token, and (second value) per sequence
    position-only part: the rotary tables, which do not scale with the batch size.

    Eager, under CUDA autocast (bf16/fp16; policy from ATen's autocast_mode.h):
      - the residual stream is fp32 (embedding output is fp32, attn/mlp outputs are added to it)
      - rms_norm runs in fp32 and saves its fp32 input and rstd (fused kernel on CUDA)
      - every linear saves a fresh bf16 cast of its input: autocast caches casts of weights only,
        so ln_1's output is cast three times (c_q, c_k, c_v) and ln_2's once (twice for swiglu)
      - rotary saves only its (1, T, 1, D/2) tables, not q/k; its output is cast to fp32 for QK-norm
      - SDPA is autocast to bf16: the fused kernel (flash/cuDNN/mem-efficient) saves q, k, v, out
        and the logsumexp (fp32, B*H*T); out is already laid out (B,T,H,D) so c_proj shares it
      - relu(x)^2 is written r * r (mul keeps bf16; pow would run in fp32): relu's bf16 output
        (saved by relu and by the product) and the bf16 product (c_proj's input)
      - swiglu: silu saves its input, the product saves both factors, c_proj saves the product
    fp32 (no autocast): one saved ln output shared by the linears, no casts, the mem-efficient
    kernel (flash has no fp32) pads the logsumexp to 32 positions.
    device_type="cpu": CPU kernels (rms_norm decomposed, saving x*rstd when it has a weight) under
    the same CUDA autocast policy, which is what tests/test_calculators.py checks against autograd.
    """
    _check(precision, device_type=device_type)
    c = config
    C, H, Hkv, D, M = c.n_embd, c.n_head, c.n_kv_head, c.head_dim, c.mlp_hidden
    Ckv = Hkv * D
    swiglu = c.mlp == "swiglu"
    low = precision != "fp32"
    p = 2 if low else 4  # bytes of the compute dtype
    # rotary, two calls per block, each saving (1, T, 1, D/2) tables next to the views of the
    # buffers: -sin; plus cos and sin cast to the activations' dtype when the tables are kept wider
    table = seq_len * (D // 2)
    act_bytes = 2 if low else 4
    rotary_bytes = param_info(c)["rotary_bytes"]
    if rotary_bytes == act_bytes:
        per_seq = 2 * table * act_bytes                # -sin
    elif rotary_bytes > act_bytes:
        per_seq = 2 * 3 * table * act_bytes            # cos, sin cast down, and -sin
    else:
        per_seq = 2 * table * rotary_bytes             # narrower tables are used as they are

    if compile:
        # Inductor's partitioner saves the matmul inputs/outputs it cannot cheaply recompute and
        # recomputes the elementwise chains (casts, rotary, norms, relu^2) in backward. Best
        # model of its choice: residuals + rstd, the bf16 normed inputs of the linears (once),
        # the pre-rotary q/k, the attention tensors, the MLP's matmul outputs.
        b = 4 * C + 4 + p * C                          # x_in, rstd, ln_1 output (cast once)
        b += p * C + p * Ckv + 4 * H + 4 * Hkv         # q, k before rotary (recompute rotary + norm) and rstd
        b += p * C + 2 * p * Ckv + p * C + 4 * H       # sdpa q, k, v, out, lse
        b += 4 * C + 4 + p * C                         # x_mid, rstd, ln_2 output
        b += (2 if swiglu else 1) * p * M              # c_fc (and c_gate) outputs
        return b, per_seq

    lse = 4 * H if (low or device_type == "cpu") else 4 * H * math.ceil(seq_len / 32) * 32 / seq_len
    # attention half
    b = 4 * C + 4                                      # ln_1: fp32 input (the block input) + rstd
    b += (3 * 2 * C) if low else (4 * C)               # inputs of c_q, c_k, c_v
    b += 4 * C + 4 * H                                 # QK-norm of q: fp32 input + rstd
    b += 4 * Ckv + 4 * Hkv                             # QK-norm of k
    b += p * C + p * Ckv + p * Ckv                     # sdpa q, k (casts of the normed fp32), v (c_v output)
    b += p * C + lse                                   # sdpa out (= c_proj input) + logsumexp
    # MLP half
    b += 4 * C + 4                                     # ln_2: fp32 input + rstd
    if low:
        b += (2 * 2 * C) if swiglu else (2 * C)        # bf16 casts of ln_2 output
        b += (8 if swiglu else 4) * M                  # swiglu: 4 bf16 hidden tensors; relu2: relu out + product (c_proj input)
    else:
        b += 4 * C                                     # ln_2 output, shared by the linears
        b += (16 if swiglu else 8) * M                 # swiglu: gate, silu, fc, product; relu2: relu out, product
    if device_type == "cpu" and c.norm_weight:
        b += 2 * 4 * C                                 # CPU rms_norm is decomposed: x*rstd is saved for the weight
    return b, per_seq


def _nonblock_saved_bytes(config, precision, compile=False, device_type="cuda"):
    """Per-token bytes saved outside the blocks and the loss: token ids, ln_e, ln_f."""
    C = config.n_embd
    b = 8                                              # idx (embedding backward)
    b += 2 * (4 * C + 4)                               # ln_e input (embedding output) and ln_f input (last block output), + rstd
    if device_type == "cpu" and config.norm_weight and not compile:
        b += 2 * 4 * C
    return b


def _loss_bytes(config, n_tokens, precision, device_type="cuda"):
    """
    Bytes of the fused chunked loss (nanochat/fused_loss.py) over n_tokens = B*T rows. Its forward
    runs chunks of n = min(N, chunk_rows(V)) rows and computes the gradients as it goes; with p the
    bytes of the matmul dtype (2 under bf16/fp16, 4 in fp32):
      saved     grad_x (N*C*p) and grad_W (fp32 V*C*4) kept for backward, and the 1/count scale
      forward   saved + its input x, ln_f's fp32 output (N*C*4, not saved: freed when the loss
                returns) + the cast of W (V*C*p, low precision) and of a chunk of x (n*C*p) + the
                chunk's peak: the fp32 tanh t and softcapped s alive together (8nV); under low
                precision later the cast gradient g (p*nV) with the chunk's (V, C) grad_W term
                in the matmul dtype (p*V*C), when that is larger (fp32 adds it in place; on a
                CPU, adding it to the fp32 grad_W makes an fp32 copy of it first, 4*V*C)
      backward  saved + what it returns: dx in the residual stream's fp32 (N*C*4) and dW (V*C*4)
      fragmentation  (reserved beyond allocated, low precision) the caching allocator cannot give
                the freed p*nV matmul output to the 4nV fp32 requests, nor, when p*V*C > 4nV, a
                freed 4nV block to the (V, C) term: each is one more segment, reused chunk to chunk
    Compiled: taken as eager (Inductor can only fuse the chunk's elementwise steps away).
    """
    V, C, N = config.vocab_size, config.n_embd, n_tokens
    n = min(N, chunk_rows(V))
    low = precision != "fp32"
    p = 2 if low else 4
    saved = N * C * p + V * C * 4 + 4
    chunk = 8 * n * V
    if low:
        term = p * V * C + (4 * V * C if device_type == "cpu" else 0)
        chunk = max(chunk, p * n * V + term) + V * C * p + n * C * p
    fragmentation = 0
    if low and device_type == "cuda":
        reserved = p * n * V + 8 * n * V + (p * V * C if p * V * C > 4 * n * V else 0) + V * C * p + n * C * p
        fragmentation = reserved - chunk
    return {"saved": saved, "forward": saved + N * C * 4 + chunk, "backward": saved + N * C * 4 + V * C * 4,
            "fragmentation": fragmentation}


def saved_activation_bytes(config, batch_size, seq_len, precision="fp32", grad_checkpoint=False,
                           compile=False, device_type="cuda"):
    """
    Bytes held for backward right after the forward (what saved_tensors_hooks would see, minus
    parameters and buffers): blocks, the rest of the model, autocast's saved weight copies, and the
    gradients the fused loss keeps (grad_x, grad_W). With grad_checkpoint, only each block's
    input is kept (the hooks do not see those, but memory does).
    """
    _check(precision, device_type=device_type)
    N = batch_size * seq_len
    info = param_info(config)
    per_tok, per_seq = layer_saved_bytes(config, seq_len, precision, compile, device_type)
    low = precision != "fp32"
    if grad_checkpoint:
        blocks = config.n_layer * 4 * config.n_embd * N
    else:
        blocks = config.n_layer * (per_tok * N + per_seq)
    # the linears of the blocks save autocast's bf16 weight copies (the loss casts W for itself)
    weight_casts = 2 * info["block_matrices"] if (low and not compile and not grad_checkpoint) else 0
    loss = _loss_bytes(config, N, precision, device_type)["saved"]
    return int(blocks + _nonblock_saved_bytes(config, precision, compile, device_type) * N + weight_casts + loss)

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
    nonblock = _nonblock_saved_bytes(c, precision, compile, device_type) * N
    loss = _loss_bytes(c, N, precision, device_type)
    # autocast keeps a bf16 copy of every block weight used under it, cached until the autocast
    # region is left (end of forward) and saved by each linear for backward (compiled: recomputed);
    # the loss's own cast of the lm_head weight is in loss["forward"]
    casts_blocks = 2 * info["block_matrices"] if low and not compile else 0
    casts_layer = 2 * info["layer_matrices"] if low and not compile else 0
    # the last block's backward peaks in the MLP's product (r * r, or silu(gate) * fc): c_proj's
    # backward has used and freed its saved input h and made grad_h, and the product's backward
    # makes two more hidden-sized gradients before grad_h goes; alive beside them the incoming
    # gradient of the residual stream (fp32, plus its cast to the matmul dtype). ln_f's saved
    # input is gone by then; with tied embeddings the loss's fp32 grad_W waits in autograd's
    # input buffer for the embedding's gradient, to the end of backward. (Checked on a CPU
    # against autograd; the weight gradients of the block come and go before this point.)
    C, M = c.n_embd, c.mlp_hidden
    p = 2 if low else 4
    block_ws = 3 * p * M * N + (4 + (2 if low else 0)) * C * N + (4 * c.vocab_size * C if c.tie_embeddings else 0)
    freed = (0 if compile else p * M * N) + (4 * C + 4) * N + (4 * C * N if device_type == "cpu" and c.norm_weight and not compile else 0)
    # checkpointing: the block is recomputed; its ln_1 saves the block input, which is the
    # checkpoint's own kept input (counted once)
    recomputed = layer - 4 * C * N + casts_layer
    kept = c.n_layer * 4 * c.n_embd * N if grad_checkpoint else c.n_layer * layer
    phases = {
        # the loss, at the end of forward: with checkpointing the blocks' activations were dropped,
        # but autocast's weight cache lives until the forward leaves autocast
        "forward_loss": {"activations": kept + nonblock + casts_blocks, "logits": loss["forward"], "workspace": 0},
        # the loss's backward: its saved gradients and the scaled ones it returns
        "backward_loss": {"activations": kept + nonblock + (0 if grad_checkpoint else casts_blocks),
                          "logits": loss["backward"], "workspace": 0},
        # the last block's backward (checkpointing: after recomputing it, with its weight casts)
        "backward_block": {"activations": kept + nonblock - freed + (recomputed if grad_checkpoint else casts_blocks),
                           "logits": 0, "workspace": block_ws},
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
    (GradScaler for fp16), zero_grad(set_to_none=True) after each step. Returns the last loss.
    """
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
