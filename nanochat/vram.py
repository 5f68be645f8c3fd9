"""
Training memory estimator: how much GPU memory one training step of a GPT takes, per component,
worked out from what the forward pass in gpt.py actually keeps for backward.

What the estimate is compared against: torch.cuda.max_memory_reserved() after a few training
steps (what `--measure` and the issue measure). The CUDA context (driver, kernels, cuBLAS handles)
is NOT inside that number, so it is a separate component that only `total` and batch_plan.fits() add.

    reserved = weights + gradients + optimizer + activations + logits + workspace + allocator
    total    = reserved + cuda_context

The training step modelled is nanochat's: fp32 master weights, autocast to bf16/fp16 for the
matmuls (GradScaler with fp16), grad accumulation (so .grad tensors are alive while the next
micro-batch runs forward and backward), zero_grad(set_to_none=True) after the optimizer step.

The loss is nanochat.fused_loss: lm_head + softcap + cross-entropy a chunk of rows at a time,
its gradients computed in the forward pass, so no B*T*V tensor exists (before it, the logits and
their gradients took ~14 bytes per token per vocab entry: 10.5 GiB of Hamner-164M's 17.7 at batch 16).

The peak is found by walking the phases of a step, and the periodic evaluation between steps,
and taking the largest:
  forward (loss)  all saved activations + autocast's cache of bf16 weight copies + the loss's
                  gradient buffers and one chunk's logits
  backward start  all saved activations + the loss's saved gradients and the scaled ones it returns
  block backward  (recomputed) activations of one block + its backward temporaries (an MoE's
                  walked expert by expert; checkpointed, the end of its recomputation if more)
  embedding       the wte gradient at the end of backward
  optimizer step  no activations; the optimizer's temporaries (an MoE's aux loss goes into the
                  backward, as the trainer does, so its graph holds nothing past it)
  evaluation      the val bpb (nanochat.loss_eval) between steps, a forward under no_grad at the
                  training batch size: the gradients freed (zero_grad(set_to_none=True)), nothing
                  saved; autocast's bf16 weight copies, one block's forward temporaries or the
                  chunked loss's no-grad chunk (see evaluation_phase). Never the peak for the
                  reference configurations and the registry's (at most ~2/3 of a step's peak
                  beyond weights and optimizer state), but auto_batch_size sees it like every
                  other phase.

What the forward keeps, op by op, for every attention (standard, differential) and MLP (dense,
mixture of experts), is in nanochat/vram_activations.py. The saved-tensor accounting and the
phase peaks are checked exactly against autograd on a CPU (tests/test_calculators.py, fp32 and an
emulation of CUDA's autocast policy), dense, differential attention, MoE and both, and the
evaluation's peak likewise (dense, MoE and attention in fp32; the loss also under autocast).
Every constant below says why it is what it is; those that could not be checked without a GPU
(Inductor's choices under torch.compile, the CUDA context, fragmentation) are judgements, named
here so that `python -m scripts.vram_calc --measure` on a GPU can correct them.

Elsewhere: the measurement on a CUDA GPU (train_steps, measure_memory, measure_cuda_context) is
nanochat/vram_measure.py; what fits a card and --device_batch_size auto (fits, auto_batch_size,
resolve_batch_plan) is nanochat/batch_plan.py; what LoRA (a frozen base, adapters trained: `lora=`)
changes is nanochat/vram_lora.py.
"""
import torch

# the activation accounting (what the forward keeps, op by op) and the parameter counts; re-exported
from nanochat.vram_activations import (  # noqa: F401
    OPTIMIZERS, PRECISIONS, _check, attention_saved_bytes, attention_shapes, block_backward_bytes,
    checkpoint_kept_bytes, layer_saved_bytes, loss_bytes, mlp_saved_bytes, nonblock_saved_bytes, param_info,
    saved_activation_bytes)
from nanochat import arch2026
from nanochat.fused_loss import chunk_rows

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

# -----------------------------------------------------------------------------
# the estimate

def _state_bytes(info, optimizer):
    """Optimizer state: Muon keeps one fp32 momentum per block matrix and AdamW (exp_avg, exp_avg_sq)
    for the embedding, lm_head and norms; plain AdamW keeps two fp32 tensors for every parameter."""
    if optimizer == "adamw":
        return 8 * info["total"]
    return 4 * info["block_matrices"] + 8 * (info["wte"] + info["lm_head"] + info["norms"] + info["value_embeds"])


def _step_workspace(info, optimizer):
    """Temporaries of optimizer.step() (nanochat.optim), when no activations are alive. AdamW is
    the fused kernel on CUDA: no temporaries. Muon works on one matrix at a time: the Nesterov
    update (fp32), its bf16 copy, X@X^T, its square and the new X (bf16, at most matrix-sized),
    and the update cast back to fp32."""
    if optimizer == "adamw":
        return 0
    return (4 + 5 * 2 + 4) * info["max_matrix"]


def estimate_phases(config, batch_size, seq_len, precision="bf16", optimizer="muon",
                    grad_checkpoint=False, compile=False, device_type="cuda", lora=None):
    """
    Transient memory (beyond weights, grads and optimizer state) in each phase of a training
    step and in the evaluation between steps, split into activations / logits / workspace, with
    their sum ("total", allocated), the fp32 gradients alive in the phase ("gradients": all of
    them during a step, none during evaluation) and the allocator segments the phase reserves
    beyond it ("fragmentation"). estimate_memory() takes the phase with the largest
    gradients + total + fragmentation (peak_phase). lora: nanochat.lora's settings (rank, targets,
    dropout) when the base is frozen and adapters train (nanochat.vram_lora).
    """
    _check(precision, optimizer, device_type)
    if batch_size <= 0 or seq_len <= 0:
        raise ValueError(f"batch size and sequence length must be positive, got {batch_size} x {seq_len}")
    if lora:
        from nanochat.vram_lora import lora_phases
        return lora_phases(config, batch_size, seq_len, precision, grad_checkpoint, compile, device_type, lora)
    c = config
    N = batch_size * seq_len
    info = param_info(c)
    low = precision != "fp32"
    per_tok, per_seq = layer_saved_bytes(c, seq_len, precision, compile, device_type)
    layer = per_tok * N + per_seq
    nonblock = nonblock_saved_bytes(c, precision, compile, device_type, seq_len) * N
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
        # (a padded vocabulary: the loss's weight is lm_head's first vocab_size rows, so its dW
        # becomes a zero-padded full-size copy as it reaches the parameter)
        "backward_loss": {"activations": kept + nonblock + (0 if grad_checkpoint else casts_blocks),
                          "logits": loss["backward"],
                          "workspace": 4 * info["wte"] if arch2026.padded_vocab(c) != c.vocab_size else 0},
        # the last block's backward (checkpointing: its recomputed tensors, with its weight casts;
        # a checkpointed MoE can peak as its recomputation ends: see block_backward_bytes)
        "backward_block": {"activations": kept + nonblock - freed + (recomputed if grad_checkpoint else casts_blocks),
                           "logits": 0, "workspace": block_ws},
        # the embedding's backward, last: a (V, C) fp32 gradient for wte from the (N, C) one
        # arriving, and (tied) the loss's grad_W still waiting to be added to it
        "backward_embedding": {"activations": 8 * N, "logits": 0,
                               "workspace": 4 * C * N + 4 * info["wte"] * (2 if c.tie_embeddings else 1)},
        "optimizer_step": {"activations": 0, "logits": 0, "workspace": _step_workspace(info, optimizer)},
    }
    if c.value_embeds:
        # the last block's value embedding, as its backward ends (a judgement, not checked against
        # autograd): the lookup's dense (vocab, kv) fp32 gradient from the (N, kv) one arriving,
        # beside what the blocks before it still keep
        kv = c.n_kv_head * c.head_dim
        phases["backward_value_embedding"] = {"activations": kept - kept / c.n_layer + nonblock, "logits": 0,
                                              "workspace": 4 * kv * N + 4 * info["value_embeds"] // len(arch2026.ve_layers(c))}
    for ph in phases.values():
        ph["total"] = ph["activations"] + ph["logits"] + ph["workspace"]
        ph["gradients"] = 4 * info["total"]  # alive through the step (grad accumulation)
        ph["fragmentation"] = 0
    # the loss chunks' extra allocator segments are reserved during the loss; later phases can
    # reuse them (split), so they only raise the reserved peak when that phase is the peak
    phases["forward_loss"]["fragmentation"] = loss["fragmentation"]
    phases["evaluation"] = evaluation_phase(config, batch_size, seq_len, precision, device_type)
    return phases


def phase_bytes(phase):
    """What a phase reserves beyond the weights and optimizer state: its gradients, its transient
    memory and its extra allocator segments."""
    return phase["gradients"] + phase["total"] + phase["fragmentation"]


def peak_phase(phases):
    """Name of the phase that sets the reserved peak."""
    return max(phases, key=lambda k: phase_bytes(phases[k]))


def estimate_memory(config, batch_size, seq_len, precision="bf16", optimizer="muon",
                    grad_checkpoint=False, compile=False, lora=None):
    """
    Estimated peak GPU memory of training steps and the evaluations between them, bytes per
    component (see COMPONENTS), at the peak phase (estimate_phases):
      weights       fp32 parameters (shared tensors once) + buffers (rotary tables)
      gradients     fp32 .grad for every parameter (alive during grad accumulation; none when
                    evaluation is the peak)
      optimizer     optimizer state
      activations   saved for backward at the peak phase (incl. autocast's bf16 weight copies)
      logits        the loss's tensors alive at the peak phase: a chunk's logits, its gradients
      workspace     temporaries at the peak phase, library (cuBLAS) workspaces, compile buffers
      allocator     caching-allocator rounding/fragmentation (reserved minus allocated)
      cuda_context  driver/kernels context, outside max_memory_reserved
    plus "reserved" (the sum of the first seven: the estimate of torch.cuda.max_memory_reserved)
    and "total" (reserved + cuda_context: what the card must hold). With lora (nanochat.lora's
    settings) the base is frozen: weights add the adapters, gradients and optimizer state
    (AdamW) are the adapters' alone, and the activations are vram_lora's.
    """
    phases = estimate_phases(config, batch_size, seq_len, precision, optimizer, grad_checkpoint, compile, lora=lora)
    peak = phases[peak_phase(phases)]
    info = param_info(config)
    est = {
        "weights": 4 * info["total"] + info["buffer_bytes"],
        "gradients": peak["gradients"],
        "optimizer": _state_bytes(info, optimizer),
        "activations": peak["activations"],
        "logits": peak["logits"],
        "workspace": peak["workspace"] + LIBRARY_WORKSPACE_BYTES,
    }
    if compile:
        est["workspace"] += COMPILE_WORKSPACE_BYTES + int(COMPILE_WORKSPACE_FRACTION * (peak["activations"] + peak["logits"]))
    if lora:
        from nanochat.vram_lora import adapter_info, state_bytes
        est["weights"] += 4 * adapter_info(config, lora)["adapters"]
        est["optimizer"] = state_bytes(config, lora)[1]
    est["allocator"] = int(FRAGMENTATION * (est["activations"] + est["logits"] + est["workspace"])) + peak["fragmentation"]
    est["cuda_context"] = CUDA_CONTEXT_BYTES
    est = {k: int(v) for k, v in est.items()}
    est["reserved"] = sum(est[k] for k in RESERVED_COMPONENTS)
    est["total"] = est["reserved"] + est["cuda_context"]
    return est


def precision_name(dtype):
    """The estimator's name of an autocast dtype (torch.float32 and anything else: "fp32")."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")

# -----------------------------------------------------------------------------
# evaluation: the val bpb between training steps (nanochat.loss_eval), a forward under no_grad

def _eval_attention_bytes(config, low):
    """
    Per token, the most an attention layer's forward holds under no_grad beyond the block's
    input and ln_1's output (both fp32, 8C), op by op as nanochat/attention.py runs them; p the
    compute dtype's bytes. q, k, v from the linears (with the cast of ln_1's output for each
    under autocast); rotary makes two half-width products and their sum per half and their
    concatenation (the old q alive until both are rotated); QK-norm in fp32 (a cast up under
    autocast, then its output); SDPA's bf16 casts of q and k and its output (and logsumexp),
    which c_proj reads in place ((B, T, H, D) layout); q, k, v stay alive to the layer's end.
    Differential attention: two SDPA calls, y1 - lambda * y2 (both alive), the subln RMSNorm in
    fp32 and its scale, c_proj's cast. (On a CPU its math kernel keeps (T, T) scores instead:
    not modelled, so the CPU checks leave it out.)
    """
    C = config.n_embd
    Cq, Ck, Cv, Hq, _ = attention_shapes(config)
    p = 2 if low else 4
    qkv = p * (Cq + Ck + Cv)
    points = [qkv + (2 * C if low else 0),                           # c_v, with its input cast
              qkv + 2 * p * Cq,                                      # rotary of q
              qkv + p * Cq + 2 * p * Ck,                             # rotary of k (old and new q)
              qkv + (4 * Cq if low else 0) + 4 * Cq,                 # QK-norm of q
              qkv + 4 * Cq + (4 * Ck if low else 0) + 4 * Ck]        # QK-norm of k
    normed = 4 * Cq + 4 * Ck + p * Cv                                # fp32 q and k, v: alive to the end
    if config.attn != "diff":
        points += [normed + (2 * Cq + 2 * Ck if low else 0) + p * Cq + 4 * Hq,  # SDPA
                   normed + p * Cq + p * C]                                    # c_proj
        return max(points)
    casts = Cq + Ck if low else 0                                    # the bf16 halves SDPA reads
    points += [normed + casts + p * C + 4 * Hq,                      # y1
               normed + p * C + casts + p * C + 4 * Hq,              # y2
               normed + 4 * p * C,                                   # y1, y2, lambda * y2, y
               normed + 3 * p * C + (4 * C if low else 0) + 4 * C,   # subln
               normed + 3 * p * C + 8 * C,                           # its scale
               normed + 2 * p * C + 4 * C + (2 * C if low else 0) + p * C]  # c_proj
    return max(points)


def _eval_mlp_rows(config, low):
    """Per row, the most a dense MLP's forward holds under no_grad beyond its input: relu^2 peaks
    in c_proj (relu's output r and r * r alive, and the output); SwiGLU in the product (silu's
    output, c_fc's and theirs) or in c_fc (silu's output, the input's cast, c_fc's)."""
    C, M = config.n_embd, config.mlp_hidden
    p = 2 if low else 4
    if config.mlp == "swiglu":
        return max(3 * p * M, 2 * p * M + (2 * C if low else 0), p * M + p * C)
    return max(2 * p * M + p * C, p * M + (2 * C if low else 0))


def _eval_mlp_bytes(config, low):
    """
    Per token, the most the MLP half of a block holds under no_grad beyond the block's input,
    its attention output added in (fp32) and ln_2's output (fp32, 12C). MoE (routing balanced,
    k*N/E rows an expert): the router's fp32 softmax, top-k indices and renormalised weights,
    the fp32 output accumulator; then per row of the running expert its (row, slot) pair
    (int64), the gathered fp32 row and the MLP's peak, and per row of the expert before it its
    gated fp32 output, alive until the next one replaces it.
    """
    C = config.n_embd
    if not config.moe_experts:
        return _eval_mlp_rows(config, low)
    E, k = config.moe_experts, config.moe_top_k
    route = 4 * E + 8 * k + 4 * k + 4 * C
    return route + k / E * (16 + 4 * C + _eval_mlp_rows(config, low) + 4 * C)


def _eval_loss_bytes(config, n_tokens, low):
    """The chunked loss under no_grad (nanochat.fused_loss): ln_f's fp32 output, the cast of W and
    of a chunk of rows (low precision), and the chunk's fp32 tanh and softcapped logits (8nV),
    the most it holds (the matmul's output and its fp32 copy, 6nV under bf16, come first)."""
    V, C, N = config.vocab_size, config.n_embd, n_tokens
    n = min(N, chunk_rows(V))
    p = 2 if low else 4
    return 4 * C * N + (p * V * C + p * n * C if low else 0) + 8 * n * V


def evaluation_phase(config, batch_size, seq_len, precision="bf16", device_type="cuda", lora=None):
    """
    The evaluation between steps (nanochat.loss_eval.evaluate_bpb at the training batch size):
    the uncompiled model in eval mode under no_grad and the trainer's autocast, after
    zero_grad(set_to_none=True): no gradients, nothing saved for backward. Alive beside the
    weights and optimizer state: autocast's bf16 copies of the block weights (cached for the
    whole evaluation: all of them by the last block, "activations"); the most of one block's
    forward temporaries (the last block's, every cast made: "workspace") or of the chunked
    loss's no-grad chunk ("logits"), whichever is more; evaluate_bpb's per-token counts
    ("workspace"). Its requests are the sizes the training forward made, so the allocator serves
    them from segments it already holds. Compile does not change it: the trainer evaluates the
    uncompiled model. (On a CPU, a bf16 matmul takes a scratch buffer of its own, which CUDA's
    cuBLAS keeps in its workspace: the CPU checks compare bf16 where the loss is the peak.)
    lora: a frozen base with adapters (nanochat.vram_lora: autocast caches the adapters' casts
    only; an adapted linear adds its update to its output).
    """
    _check(precision, device_type=device_type)
    c = config
    N = batch_size * seq_len
    low = precision != "fp32"
    casts = 2 * param_info(c)["block_matrices"] if low else 0
    C = c.n_embd
    block = N * max(8 * C + _eval_attention_bytes(c, low), 12 * C + _eval_mlp_bytes(c, low))
    if lora:
        from nanochat.vram_lora import eval_block_bytes, eval_casts
        casts, block = eval_casts(c, lora, low), max(block, N * eval_block_bytes(c, lora, low))
    loss = _eval_loss_bytes(c, N, low)
    in_loss = loss >= block
    n = min(N, chunk_rows(c.vocab_size))
    # evaluate_bpb's per-token bookkeeping, alive through the forward: the valid mask (bool), the
    # bytes each target spells and the targets that count (int64)
    counts = 17 * N
    phase = {"activations": casts, "logits": loss if in_loss else 0,
             "workspace": counts + (0 if in_loss else int(block)), "gradients": 0,
             # the loss chunk's bf16 matmul output, freed, cannot serve its fp32 requests (as in training)
             "fragmentation": 2 * n * c.vocab_size if in_loss and low and device_type == "cuda" else 0}
    phase["total"] = phase["activations"] + phase["logits"] + phase["workspace"]
    return phase
