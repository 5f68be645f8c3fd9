"""
What one training forward of a GPT keeps for backward, in bytes, op by op as gpt.py,
nanochat/attention.py and nanochat/mlp.py run them: the activation accounting of the memory
estimator (nanochat.vram, which re-exports the names its callers use), and the parameter counts it needs.

Conventions: N = B*T tokens; p = bytes of the compute dtype (2 under bf16/fp16 autocast, 4 in
fp32); "low" = autocast on. Eager, under CUDA autocast (policy from ATen's autocast_mode.h):
  - the residual stream is fp32 (embedding output is fp32, attn/mlp outputs are added to it)
  - rms_norm runs in fp32 and saves its fp32 input and rstd (fused kernel on CUDA)
  - every linear saves a fresh bf16 cast of its input: autocast caches casts of weights only,
    so ln_1's output is cast three times (c_q, c_k, c_v) and ln_2's once (twice for swiglu)
  - rotary saves only its (1, T, 1, D/2) tables, not q/k; its output is cast to fp32 for QK-norm
  - SDPA is autocast to bf16: the fused kernel (flash/cuDNN/mem-efficient) saves q, k, v, out
    and the logsumexp (fp32, per query head and position); the standard attention's out is
    already laid out (B, T, H, D), so c_proj shares it
  - differential attention: two SDPA calls over one value of 2*head_dim, so flash (one head dim)
    is out and the mem-efficient kernel runs (GQA and a wider value are fine for it; a judgement
    from PyTorch's sdp_utils, not measured here); y1 - lambda*y2 goes through an fp32 RMSNorm
    with a weight (subln) and the (1 - lambda_init) scale before c_proj
  - MoE: the router's softmax and top-k in fp32; each expert gathers its rows (x[rows]), runs an
    MLP on them and index_add_s its gated output: what it saves is per routed row, k*N rows in all
device_type="cpu" describes CPU kernels under the same CUDA autocast policy, which is what
tests/test_calculators.py checks against autograd: rms_norm is decomposed (it saves x*rstd when it
has a weight), attention whose value is wider than its keys (differential attention) runs
the math kernel there (CPU flash attention wants one head dim), which keeps the score matrix, and
the generator state that gradient checkpointing stashes is host memory, so it counts there only.
"""
import math
from dataclasses import asdict

import torch

from nanochat import arch2026
from nanochat.fused_loss import chunk_rows
from nanochat.gpt import GPT

PRECISIONS = ("fp32", "bf16", "fp16")
OPTIMIZERS = ("muon", "adamw")
# torch.utils.checkpoint (preserve_rng_state) stashes the CPU generator's state, a ByteTensor
# (5056 bytes: the Mersenne twister), with every checkpointed block until its backward, and
# recomputing a block stashes the current one for the while (fork_rng). Host memory: on CUDA the
# device generator's state is a small CPU tensor too, so only a CPU device counts it.
CPU_RNG_STATE_BYTES = torch.get_rng_state().numel()


def _check(precision, optimizer=None, device_type="cuda"):
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if optimizer is not None and optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    if device_type not in ("cuda", "cpu"):
        raise ValueError(f"device_type must be 'cuda' or 'cpu', got {device_type!r}")

# -----------------------------------------------------------------------------
# parameters, counted by the model itself on the meta device (exact and free)

_param_cache = {}

def param_info(config):
    """
    Parameter counts the estimate needs, by role: wte, lm_head (0 when tied), norms (1-d
    weights, differential attention's lambdas and subln included; also the 2026 scalars and the
    smear gate: AdamW's small parameters), value_embeds (the 2026 value embeddings: AdamW, looked
    up, not cast), block matrices (every expert of an MoE: all are stored, trained and given
    optimizer state; the value-embedding gates), one block's matrices, the largest matrix, and
    buffer bytes.
    """
    key = tuple(sorted(asdict(config).items()))
    if key in _param_cache:
        return _param_cache[key]
    with torch.device("meta"):
        model = GPT(config)
    info = {"wte": 0, "lm_head": 0, "norms": 0, "value_embeds": 0, "block_matrices": 0, "max_matrix": 0}
    for name, p in model.named_parameters():  # a tied weight is yielded once, as wte
        if name == "transformer.wte.weight":
            info["wte"] += p.numel()
        elif name == "lm_head.weight":
            info["lm_head"] += p.numel()
        elif name.startswith("value_embeds."):
            info["value_embeds"] += p.numel()
        elif p.ndim == 1 or not name.startswith("transformer.h."):
            info["norms"] += p.numel()
        else:
            info["block_matrices"] += p.numel()
            info["max_matrix"] = max(info["max_matrix"], p.numel())
    info["total"] = info["wte"] + info["lm_head"] + info["norms"] + info["value_embeds"] + info["block_matrices"]
    info["active"] = model.active_params()  # what a token runs (MoE: top_k of the experts); memory holds the total
    info["layer_matrices"] = info["block_matrices"] // config.n_layer
    # the lm_head matmul uses the wte matrix when tied
    info["lm_head_matmul"] = config.vocab_size * config.n_embd
    info["buffer_bytes"] = sum(b.numel() * b.element_size() for b in model.buffers())
    info["rotary_bytes"] = model.cos.element_size()  # dtype of the cos/sin tables
    _param_cache[key] = info
    return info

# -----------------------------------------------------------------------------
# one block, per token

def attention_shapes(config):
    """(query width, key width, value width, query heads, key heads) of one layer's q, k, v as
    SDPA sees them: a differential head has two query/key maps of head_dim and a value of 2*head_dim."""
    c = config
    maps = 2 if c.attn == "diff" else 1
    return maps * c.n_head * c.head_dim, maps * c.n_kv_head * c.head_dim, maps * c.n_kv_head * c.head_dim, \
        maps * c.n_head, maps * c.n_kv_head


def _rotary_saved(config, seq_len, precision):
    """Rotary, two calls per block (q and k), each saving (1, T, 1, D/2) tables next to the views
    of the buffers: -sin; plus cos and sin cast to the activations' dtype when the tables are kept
    wider. Independent of the batch size."""
    table = seq_len * (config.head_dim // 2)
    act_bytes = 2 if precision != "fp32" else 4
    rotary_bytes = param_info(config)["rotary_bytes"]
    if rotary_bytes == act_bytes:
        return 2 * table * act_bytes                   # -sin
    if rotary_bytes > act_bytes:
        return 2 * 3 * table * act_bytes               # cos, sin cast down, and -sin
    return 2 * table * rotary_bytes                    # narrower tables are used as they are


def _math_sdpa_saved(config, seq_len, low):
    """Differential attention's two SDPA calls on the math kernel (a CPU): per map it upcasts to
    fp32, scales q and k (k repeated to the query heads under GQA) and saves them, the (T, T)
    softmax, and the value it multiplies in fp32 (repeated to the query heads under GQA, else a
    contiguous copy of the transposed view): each call its own. Of the outputs only y2 is kept
    (by lambda * y2)."""
    c = config
    H, d = c.n_head, c.head_dim
    b = 2 * (4 * H * d + 4 * H * d + 4 * H * seq_len)  # scaled q, scaled k, softmax
    b += 2 * 4 * H * 2 * d                             # the value, per call
    return b + (2 if low else 4) * c.n_embd           # y2


def attention_saved_bytes(config, seq_len, precision, compile=False, device_type="cuda"):
    """(per token, fixed) bytes the attention half of a block keeps: ln_1 and the attention layer."""
    c = config
    C = c.n_embd
    Cq, Ck, Cv, Hq, Hk = attention_shapes(c)
    diff = c.attn == "diff"
    low = precision != "fp32"
    p = 2 if low else 4
    H = c.n_head
    # SDPA's logsumexp: fp32 per query head; flash/cuDNN (standard attention under autocast) keep
    # T of it, mem-efficient (fp32, and differential attention, whose value is 2*head_dim wide:
    # flash wants one head dim) pads it to 32 positions
    padded = (diff or not low) and device_type == "cuda"
    lse = 4 * H * (math.ceil(seq_len / 32) * 32 / seq_len if padded else 1)
    fixed = _rotary_saved(c, seq_len, precision)
    if diff:  # the lambdas: two exp results, lambda (its bf16 cast), subln's fp32 weight
        fixed += 2 * 4 + p + (4 * 2 * c.head_dim if low else 0)
    if compile:
        # Inductor's partitioner saves the matmul inputs/outputs it cannot cheaply recompute and
        # recomputes the elementwise chains (casts, rotary, norms) in backward. Best model of its
        # choice: the residual + rstd, the bf16 normed input of the linears (once), the
        # pre-rotary q/k and their rstd, the attention tensors; differential attention also the
        # subln's rstd and c_proj's input (its own tensor: the output of the norm and the scale)
        b = 4 * C + 4 + p * C
        b += p * Cq + p * Ck + 4 * Hq + 4 * Hk
        b += p * (Cq + Ck + Cv) + (2 if diff else 1) * (p * C + lse)
        if diff:
            b += 4 * H + p * C
        return b, fixed
    b = 4 * C + 4                                      # ln_1: fp32 input (the block input) + rstd
    b += (3 * 2 * C) if low else (4 * C)               # inputs of c_q, c_k, c_v (fp32: ln_1's output, shared)
    b += 4 * Cq + 4 * Hq + 4 * Ck + 4 * Hk             # QK-norm of q and k: fp32 input + rstd per head
    if diff and device_type == "cpu":
        b += _math_sdpa_saved(c, seq_len, low)
    else:
        b += p * (Cq + Ck + Cv)                        # sdpa q, k (casts of the normed fp32), v (c_v output)
        b += (2 if diff else 1) * (p * C + lse)        # sdpa out (standard: = c_proj's input) + logsumexp, per map
    if diff:
        b += 4 * C + 4 * H                             # subln: fp32 input (y1 - lambda*y2) + rstd per head
        b += p * C                                     # c_proj's input: bf16 cast (fp32: the scaled norm output)
        if device_type == "cpu":
            b += 4 * C                                 # decomposed rms_norm with a weight: x*rstd
    if device_type == "cpu" and c.norm_weight:
        b += 4 * C                                     # ln_1 with a weight, decomposed: x*rstd
    return b, fixed


def _hidden_saved(config, low, compile):
    """Bytes per row the MLP keeps between its first linears and c_proj (its inputs are the caller's)."""
    swiglu = config.mlp == "swiglu"
    M = config.mlp_hidden
    p = 2 if low else 4
    if compile:
        return (2 if swiglu else 1) * p * M            # c_fc (and c_gate) outputs; silu/relu^2 recomputed
    # relu(x)^2 is written r * r (mul keeps bf16; pow would run in fp32): relu's output (saved by
    # relu and by the product) and the product (c_proj's input); swiglu: silu saves its input,
    # the product saves both factors, c_proj saves the product
    return (4 if swiglu else 2) * p * M


def mlp_saved_bytes(config, precision, compile=False, device_type="cuda"):
    """(per token, fixed) bytes the MLP half of a block keeps: ln_2 and the dense MLP or the MoE."""
    c = config
    C = c.n_embd
    low = precision != "fp32"
    p = 2 if low else 4
    casts = (2 if c.mlp == "swiglu" else 1) * 2 * C   # bf16 casts of an MLP input (one per linear)
    b = 4 * C + 4                                      # ln_2: fp32 input + rstd
    if device_type == "cpu" and c.norm_weight and not compile:
        b += 4 * C                                     # decomposed rms_norm with a weight: x*rstd
    fixed = 0
    if not c.moe_experts:
        if compile:
            return b + p * C + _hidden_saved(c, low, True), fixed
        return b + (casts if low else 4 * C) + _hidden_saved(c, low, False), fixed
    E, k = c.moe_experts, c.moe_top_k
    fixed += 4 * E                                     # the aux loss: the load share f_e
    b += 2 * C if low else 4 * C                       # router input: bf16 cast (fp32: ln_2's output)
    b += 4 * E + 8 * k + 4 * k + 4                     # fp32 softmax, top-k indices and values, their sum
    # every token is a row of k experts: the (row, slot) pairs nonzero() returns (int64), the
    # gathered row (fp32: saved by c_fc; under autocast only its casts are), the hidden
    # tensors, c_proj's output and the row's gate (saved by the product), and the gated fp32
    # output index_add_ keeps (its backward only needs its shape, but autograd saves it)
    return b + k * _moe_row_saved(c, low, compile), fixed


def _moe_row_saved(config, low, compile):
    """Bytes an expert keeps per row it runs."""
    C = config.n_embd
    p = 2 if low else 4
    if compile:
        # the nonzero() of each expert breaks the graph (a data-dependent shape), so each expert
        # is its own compiled region: its input cast, the matmul outputs, c_proj's output and
        # the gate; index_add's source is not saved in a traced backward (shape only)
        return 16 + p * C + _hidden_saved(config, low, True) + p * C + 4
    x_in = (2 if config.mlp == "swiglu" else 1) * 2 * C if low else 4 * C
    return 16 + x_in + _hidden_saved(config, low, False) + p * C + 4 + 4 * C


def arch2026_block_bytes(config, seq_len, precision, device_type="cuda"):
    """
    (per token, fixed) bytes the 2026 options add inside the blocks, summed over the layers (the
    blocks' accounting takes the mean per layer). A value embedding's gate: its input, the first
    12 channels of ln_1's output (a view in fp32; autocast casts it), the sigmoid and the factor
    (per kv head), and the value embedding the product saves (fp32, or its cast). A sliding
    window shorter than the sequence: SDPA gets a (T, T) boolean mask, which it converts to an
    additive mask in q's dtype and saves (fixed: the batch and heads broadcast); on CUDA the mask
    rules out flash, so the mem-efficient kernel pads the logsumexp to 32 positions.
    """
    c = config
    low = precision != "fp32"
    p = 2 if low else 4
    n_ve = len(arch2026.ve_layers(c))
    per_tok = n_ve * ((2 * arch2026.VE_GATE_CHANNELS if low else 0) + 2 * p * c.n_kv_head + p * c.n_kv_head * c.head_dim)
    short = [w for w in arch2026.layer_windows(c) if w is not None and w < seq_len - 1]
    fixed = len(short) * p * seq_len * seq_len
    if low and device_type == "cuda" and c.attn != "diff":  # (diff pads already)
        per_tok += len(short) * 4 * c.n_head * (math.ceil(seq_len / 32) * 32 / seq_len - 1)
    return per_tok, fixed


def layer_saved_bytes(config, seq_len, precision, compile=False, device_type="cuda"):
    """
    Bytes one transformer block keeps for backward, per token, and (second value) the part that
    does not scale with the batch size: the rotary tables and a few scalars per layer.
    fp32 (no autocast): one saved ln output shared by the linears, no casts, the mem-efficient
    kernel (flash has no fp32) pads the logsumexp to 32 positions. The 2026 options inside the
    blocks (value embeddings, sliding windows) are spread over the layers as their mean.
    """
    _check(precision, device_type=device_type)
    a_tok, a_fixed = attention_saved_bytes(config, seq_len, precision, compile, device_type)
    m_tok, m_fixed = mlp_saved_bytes(config, precision, compile, device_type)
    x_tok, x_fixed = arch2026_block_bytes(config, seq_len, precision, device_type)
    return a_tok + m_tok + x_tok / config.n_layer, a_fixed + m_fixed + x_fixed / config.n_layer


def nonblock_saved_bytes(config, precision, compile=False, device_type="cuda", seq_len=None):
    """
    Per-token bytes saved outside the blocks and the loss: token ids, ln_e, ln_f; and the 2026
    options there (seq_len: for the smear, which acts on T-1 of every T positions):
      smear          ln_e's output (the gates and the product save it; the blocks get the smeared
                     copy), the gate's input (a copy of [1:, :24]: fp32, or autocast's bf16 cast),
                     its sigmoid and the gate (fp32: smear_lambda has a dimension)
      layer_lambdas  resid_lambdas[i] * x saves x, the input of every block (and x0 is block 0's)
    Backout saves the middle layer's output, which the next block saves anyway.
    """
    C = config.n_embd
    b = 8                                              # idx (embedding backward)
    b += 2 * (4 * C + 4)                               # ln_e input (embedding output) and ln_f input (last block output), + rstd
    if device_type == "cpu" and config.norm_weight and not compile:
        b += 2 * 4 * C
    low = precision != "fp32"
    if config.smear:
        shifted = (seq_len - 1) / seq_len if seq_len else 1.0
        b += 4 * C + shifted * ((2 if low else 4) * (arch2026.SMEAR_CHANNELS + 1) + 4)
    if config.layer_lambdas:
        b += config.n_layer * 4 * C
    return b


def loss_bytes(config, n_tokens, precision, device_type="cuda"):
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


def checkpoint_kept_bytes(config, n_tokens, device_type="cuda"):
    """What a checkpointed block keeps from its forward for its backward: its fp32 input (which its
    recomputed ln_1 saves again: counted once), its value embedding (fp32, looked up outside the
    block: the mean over the layers) and, on a CPU, the stashed generator state."""
    c = config
    ve = len(arch2026.ve_layers(c)) * 4 * c.n_kv_head * c.head_dim / c.n_layer
    return (4 * c.n_embd + ve) * n_tokens + (CPU_RNG_STATE_BYTES if device_type == "cpu" else 0)


def saved_activation_bytes(config, batch_size, seq_len, precision="fp32", grad_checkpoint=False,
                           compile=False, device_type="cuda"):
    """
    Bytes held for backward right after the forward (what saved_tensors_hooks would see, minus
    parameters and buffers): blocks, the rest of the model, autocast's saved weight copies, and the
    gradients the fused loss keeps (grad_x, grad_W). With grad_checkpoint, only each block's
    input (and on a CPU its generator state) is kept: the hooks do not see those, but memory does.
    """
    _check(precision, device_type=device_type)
    N = batch_size * seq_len
    info = param_info(config)
    per_tok, per_seq = layer_saved_bytes(config, seq_len, precision, compile, device_type)
    low = precision != "fp32"
    if grad_checkpoint:
        blocks = config.n_layer * checkpoint_kept_bytes(config, N, device_type)
    else:
        blocks = config.n_layer * (per_tok * N + per_seq)
    # the linears of the blocks save autocast's bf16 weight copies (the loss casts W for itself;
    # the smear gate, the one linear outside the blocks, is tiny: 2 x 24 bytes)
    weight_casts = 2 * info["block_matrices"] if (low and not compile and not grad_checkpoint) else 0
    weight_casts += 2 * arch2026.SMEAR_CHANNELS if low and not compile and config.smear else 0
    loss = loss_bytes(config, N, precision, device_type)["saved"]
    nonblock = nonblock_saved_bytes(config, precision, compile, device_type, seq_len) * N
    return int(blocks + nonblock + weight_casts + loss)

# -----------------------------------------------------------------------------
# the last block's backward

def _moe_backward_peak(config, n_tokens, precision, compile=False):
    """
    The most the MoE layer's backward holds beyond the saved tensors it starts with (which it
    frees as it goes), walked expert by expert in autograd's order: the last expert first, each
    expert's chain down to its gathered rows before the next index_add_ is undone; routing
    balanced, n = k*N/E rows per expert. Points per expert, from its start:
      index_add_   the rows' fp32 gradient (which then replaces its saved source)
      gate product the fp32 gradient of c_proj's output and a temporary for the gate's own
      c_proj       grad_h and the weight gradient while h is saved; under autocast then the
                   gradient's fp32 copy, once c_proj's bf16 weight copy has gone
      hidden       the product's two hidden gradients (grad_h still alive)
      c_fc/c_gate  the input gradient (under autocast through the cast: fp32) or a weight gradient
      x[rows]      an (N, C) fp32 gradient, which the first expert leaves as the gradient of
                   ln_2's output and later ones add into it
    Each linear frees its bf16 weight copy (counted with the saved activations) as it goes.
    Routing only moves these temporaries (what the experts save adds up to k*N rows whatever
    the routing): an expert with twice its share of the rows adds ~20 MiB to v05_moe_small's
    peak at 16 x 1024 tokens, against GiBs of saved tensors.
    """
    c = config
    C, M, E, k = c.n_embd, c.mlp_hidden, c.moe_experts, c.moe_top_k
    N = n_tokens
    n = k * N / E
    low = precision != "fp32"
    p = 2 if low else 4
    cast = 2 * C * M if low and not compile else 0   # one linear's bf16 weight copy
    linears = 3 if c.mlp == "swiglu" else 2
    row_saved = _moe_row_saved(c, low, compile)
    live = peak = 4 * C * N                            # the incoming gradient of the residual stream (fp32)
    for i in range(E):
        gates = 4 * k * N if i == 0 else 0             # the first expert makes the gates' (N, k) gradient
        mid1 = live - 4 * C * n - 4 * n + gates        # rows' gradient and gate freed; grad_proj replaces c_proj's output
        mid2 = mid1 - p * C * n - cast                 # grad_h replaces h; grad_proj and the weight copy freed
        mid3 = mid2 - p * M * n                        # the hidden gradients replace grad_h and the product's factors
        end = live - row_saved * n + gates - linears * cast
        peak = max(peak, live + 8 * C * n, mid1 + p * M * n + p * C * M, mid1 - p * C * n + (4 * C * M if low else 0),
                   mid2 + 2 * p * M * n, mid3 + p * C * n + max(p * C * M, 4 * C * n if low else 0),
                   end + 4 * C * n + 4 * C * N)
        live = end + (4 * C * N if i == 0 else 0)
    return peak


def _moe_recomputation_end(config, n_tokens, device_type="cuda"):
    """
    What a checkpointed MoE block holds beyond its saved tensors at the end of its recomputation,
    which backward runs when it first unpacks one of them (index_add_'s, of the last expert).
    torch.utils.checkpoint stops recomputing once the last tensor the block saves is saved
    again: the last expert's gated output, saved by its index_add_ (which then fills `out` in
    place). All the block's saved tensors are alive again by then and beside them, freed when
    it stops: the incoming fp32 gradient of the residual stream; the layer's fp32 output
    accumulator `out` (nothing saves it: index_add_ keeps only its source and index) and the
    renormalised gates (fp32, N*k: their division saves its inputs, not them); on a CPU, the
    generator state stashed for the recomputation (and a few E-sized vectors of the aux loss,
    left out). Balanced or not, the routing does not change it.
    """
    C, k, N = config.n_embd, config.moe_top_k, n_tokens
    return 4 * C * N + 4 * C * N + 4 * k * N + (CPU_RNG_STATE_BYTES if device_type == "cpu" else 0)


def block_backward_bytes(config, n_tokens, precision, compile=False, device_type="cuda", grad_checkpoint=False):
    """
    (workspace, freed) of the last block's backward at its peak: the temporaries alive beyond
    the saved tensors (with grad_checkpoint: the recomputed ones), and the saved tensors already
    freed by then.
    Dense: the peak is in the MLP's product (r * r, or silu(gate) * fc): c_proj's backward has
    used and freed its saved input h and made grad_h, and the product's backward makes two more
    hidden-sized gradients before grad_h goes; alive beside them the incoming gradient of the
    residual stream (fp32, plus its cast to the matmul dtype). MoE: _moe_backward_peak, in the
    first expert autograd walks (the last one); checkpointed, the end of the block's
    recomputation when that is more (_moe_recomputation_end): the accumulator and gates alive
    there (4*C*N + 4*k*N) outweigh what one expert's backward makes for its k*N/E rows unless the
    experts are few and wide (the CPU check's "moe": 4 of hidden 2*C); for every MoE of the
    registry at 16 x 1024 tokens it is the more. Both: ln_f's saved input is gone by then; with
    tied embeddings the loss's fp32 grad_W waits in autograd's input buffer for the embedding's
    gradient, to the end of backward. (Checked on a CPU against autograd; the dense block's
    weight gradients come and go before this point.)
    """
    c = config
    C, M, N = c.n_embd, c.mlp_hidden, n_tokens
    low = precision != "fp32"
    p = 2 if low else 4
    tied = 4 * c.vocab_size * C if c.tie_embeddings else 0
    freed = (4 * C + 4) * N + (4 * C * N if device_type == "cpu" and c.norm_weight and not compile else 0)
    if c.moe_experts:
        workspace = _moe_backward_peak(c, N, precision, compile)
        if grad_checkpoint:
            workspace = max(workspace, _moe_recomputation_end(c, N, device_type))
        return int(workspace) + tied, freed
    workspace = 3 * p * M * N + (4 + (2 if low else 0)) * C * N + tied
    return workspace, freed + (0 if compile else p * M * N)
