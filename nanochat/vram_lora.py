"""
What LoRA (nanochat.lora) changes in the training memory estimate (nanochat.vram calls this when
given `lora`): the base model is frozen, so
  - gradients and optimizer state exist for the adapters only (AdamW: 4 + 8 bytes per adapter
    weight), instead of 4 + 4..8 bytes for every weight: the bulk of the saving;
  - nothing trains below the first adapter: the embedding needs no gradient (no backward through
    it, no (V, C) wte gradient), ln_e saves nothing, and in the first block only what leads to an
    adapter is saved (first_block below);
  - a frozen projection saves no input for a weight gradient; an adapted one's A saves it
    instead (under autocast its own bf16 cast; in fp32 the tensor, shared by those that read the
    same one, or the dropout's output), B saves A's rank-wide output, dropout its mask;
  - autocast caches no copies of frozen weights (only of leaves that need a gradient): each
    linear casts its weight as it runs and keeps the cast only where its input needs a gradient;
    the adapters' casts are cached like any trainable weight's;
  - a norm's frozen weight needs no x * rstd (a CPU's decomposed rms_norm saves it otherwise),
    differential attention's frozen lambdas save nothing but their bf16 cast;
  - the fused loss keeps no lm_head gradient (V x C fp32) and makes no (V, C) term per chunk.
Peaks (what vram.estimate_phases walks), checked on a CPU against autograd as the full model's
are (tests/test_lora.py): the forward's end in the loss; the last block's backward in the MLP's
product, where an adapted c_proj has freed its A's saved input; with adapters on the MLP, its
forward where a linear adds its update (forward_block, again in a checkpointed block's
recomputation); no embedding phase. The evaluation between steps likewise.
Judgements, not checked: a mixture of experts' backward peak is taken as the full model's and
its in-block forward is not modelled; torch.compile's saved set is taken as the full model's
compiled one plus the adapters' rank-wide tensors; CUDA itself (no GPU was at hand: the CPU
checks emulate CUDA's autocast policy, and CUDA's fused dropout keeps a bool mask where a CPU
keeps a noise tensor). A CUDA run prints the estimate beside the measured peak at its third step.
"""
from nanochat.vram_activations import (_rotary_saved, attention_shapes, attention_saved_bytes, checkpoint_kept_bytes,
                                       layer_saved_bytes, param_info)


def spec(lora):
    """{"rank", "targets" (a set), "dropout"} from nanochat.lora's settings (or a dict like them)."""
    from nanochat.lora import parse_targets
    targets = lora["targets"]
    targets = parse_targets(targets if isinstance(targets, str) else ",".join(targets))
    return {"rank": int(lora["rank"]), "targets": set(targets), "dropout": float(lora.get("dropout", 0.0))}


def _linears(config):
    """One block's linears as (target, in, out, copies): copies = experts for the MLP's."""
    c = config
    C, M = c.n_embd, c.mlp_hidden
    Cq, Ck, Cv, _, _ = attention_shapes(c)
    E = c.moe_experts or 1
    mlp = [("mlp", C, M, E)] + ([("mlp", C, M, E)] if c.mlp == "swiglu" else []) + [("mlp", M, C, E)]
    return [("q", C, Cq, 1), ("k", C, Ck, 1), ("v", C, Cv, 1), ("o", Cq, C, 1)] + mlp


def adapter_info(config, lora):
    """Adapter weights in all ("adapters") and per block ("layer"); the first block's frozen
    weights and adapter A matrices whose linears' inputs need no gradient, so that their casts are
    not saved ("first_uncast", "first_uncast_adapters"; see first_block)."""
    s = spec(lora)
    r = s["rank"]
    layer = sum(copies * r * (i + o) for t, i, o, copies in _linears(config) if t in s["targets"])
    frozen, adapters = _first_uncast(config, s)
    return {"adapters": layer * config.n_layer, "layer": layer, "first_uncast": frozen, "first_uncast_adapters": adapters}


def _first_uncast(config, s):
    """(frozen weights, adapter A weights) of the first block whose linears' inputs need no gradient."""
    T, r = s["targets"], s["rank"]
    no_grad_input = {"q", "k", "v"}
    if not T & {"q", "k", "v"}:
        no_grad_input.add("o")
    if not T & {"q", "k", "v", "o"}:  # the MLP's input needs no gradient either
        no_grad_input.add("mlp")
    frozen = adapters = 0
    linears = _linears(config)
    for n, (t, i, o, copies) in enumerate(linears):
        if t in no_grad_input and (t != "mlp" or n < len(linears) - 1):  # of the MLP: c_fc, c_gate, not c_proj
            frozen += copies * i * o
            adapters += copies * r * i if t in T else 0
    if "mlp" in no_grad_input:
        frozen += config.moe_experts * config.n_embd  # the router
    return frozen, adapters

# -----------------------------------------------------------------------------
# what a block saves


def _mask(in_bytes, device_type):
    """Bytes per element dropout saves: CUDA's fused kernel a bool mask; a CPU multiplies by a noise tensor of the input's dtype."""
    return 1 if device_type == "cuda" else in_bytes


def _inputs(width, n_adapted, low, dropout, device_type):
    """Bytes per token the adapters' A save of an fp32 input of `width` read by n_adapted of them:
    under autocast each its bf16 cast (after dropout: its mask too, the fp32 output is
    transient); in fp32 the input itself, once, or with dropout each its own output and mask."""
    if n_adapted == 0:
        return 0
    mask = _mask(4, device_type) * width if dropout else 0
    if low:
        return n_adapted * (2 * width + mask)
    return n_adapted * (4 * width + mask) if dropout else 4 * width


def _full_inputs(config, low):
    """What the full model's linears save of their inputs, per token, in the terms _inputs replaces:
    (attention's q/k/v, its c_proj (differential: the cast of the fp32 scaled norm), the MLP's
    first linears, the MLP's c_proj (the product h), an MoE router's)."""
    c = config
    C, M = c.n_embd, c.mlp_hidden
    p = 2 if low else 4
    first = (2 if c.mlp == "swiglu" else 1) * 2 * C if low else 4 * C
    return (6 * C if low else 4 * C), (p * C if c.attn == "diff" else 0), first, p * M, (2 * C if low else 4 * C)


def lora_block_bytes(config, seq_len, precision, lora, compile=False, device_type="cuda", first=False):
    """
    (per token, fixed) bytes one block keeps for backward with these adapters, the full
    accounting (vram_activations.layer_saved_bytes) with its linears' inputs replaced; first: the
    first block, whose input needs no gradient (first_block). Compiled: the full model's compiled
    accounting plus the adapters' rank-wide tensors (a judgement: Inductor chooses).
    """
    s = spec(lora)
    c = config
    C, M, T = c.n_embd, c.mlp_hidden, s["targets"]
    low = precision != "fp32"
    p = 2 if low else 4
    r, drop = s["rank"], s["dropout"] > 0
    per_tok, fixed = layer_saved_bytes(c, seq_len, precision, compile, device_type)
    rows = c.moe_top_k if c.moe_experts else 1  # an MLP linear runs k rows per token in an MoE
    n_mlp = 3 if c.mlp == "swiglu" else 2
    adapted = sum(t in T for t in "qkvo") + (n_mlp * rows if "mlp" in T else 0)
    per_tok += p * r * adapted  # B saves A's output, scaled
    if compile:
        return per_tok, fixed
    qkv, o_in, mlp_in, h, router = _full_inputs(c, low)
    n_qkv = sum(t in T for t in "qkv")
    per_tok += _inputs(C, n_qkv, low, drop, device_type) - qkv
    if c.attn == "diff":  # c_proj reads the fp32 scaled norm, saved by nothing else
        per_tok += _inputs(C, "o" in T, low, drop, device_type) - o_in
        fixed -= 2 * 4  # the frozen lambdas' exp results
        if device_type == "cpu":
            per_tok -= 4 * C + p * C  # subln's frozen weight: no x * rstd; lambda * y2 keeps no y2 (math kernel)
    elif "o" in T and drop:  # SDPA's output is saved by SDPA; the dropout's is A's own
        per_tok += (p + _mask(p, device_type)) * C
    n_first = 2 if c.mlp == "swiglu" else 1
    if "mlp" in T:  # (c_proj's dropout: its output replaces the product, plus the mask)
        per_tok += rows * (_inputs(C, n_first, low, drop, device_type) - mlp_in + (_mask(p, device_type) * M if drop else 0))
    else:  # frozen, unadapted: nothing saves their inputs, nor the product c_proj reads
        per_tok -= rows * (mlp_in + h)
    if c.moe_experts:
        per_tok -= router  # the frozen router saves no input
    if device_type == "cpu" and c.norm_weight:
        per_tok -= 2 * 4 * C  # ln_1's and ln_2's frozen weights: no x * rstd
    if first:
        d_tok, d_fixed = first_block(c, seq_len, precision, s, device_type)
        per_tok, fixed = per_tok - d_tok, fixed - d_fixed
    return per_tok, fixed


def first_block(config, seq_len, precision, s, device_type="cuda"):
    """
    (per token, fixed) that the first block saves less than the others: its input (ln_e's output
    of the frozen embedding) needs no gradient, so ln_1 saves nothing; q or k without an adapter
    needs none, so its QK-norm and rotary save nothing; without adapters on q, k and v the
    attention core saves nothing at all (SDPA, differential attention's subln and lambda), and an
    adapted c_proj's A then keeps SDPA's output itself; with no adapter in the attention the
    MLP's input needs no gradient either (ln_2 and an MoE's routing save nothing, the gate
    product keeps no expert output). Dropout on an input that needs no gradient saves no mask.
    """
    c = config
    C, T = c.n_embd, s["targets"]
    Cq, Ck, Cv, Hq, Hk = attention_shapes(c)
    low = precision != "fp32"
    p = 2 if low else 4
    mask = (lambda in_bytes: _mask(in_bytes, device_type)) if s["dropout"] else (lambda in_bytes: 0)
    tok = 4 * C + 4 + mask(4) * C * len(T & {"q", "k", "v"})  # ln_1; the adapters' masks on its output
    table = _rotary_saved(c, seq_len, precision) / 2  # per rotary call (q, then k)
    fixed = 0
    if "q" not in T:
        tok, fixed = tok + 4 * Cq + 4 * Hq, fixed + table
    if "k" not in T:
        tok, fixed = tok + 4 * Ck + 4 * Hk, fixed + table
    if not T & {"q", "k", "v"}:
        full_tok, _ = attention_saved_bytes(c, seq_len, precision, False, device_type)
        # what is left of the attention once ln_1, the QK-norms and the inputs are gone: SDPA (and subln)
        core = full_tok - (4 * C + 4) - (4 * Cq + 4 * Hq + 4 * Ck + 4 * Hk) - _full_inputs(c, low)[0] - _full_inputs(c, low)[1]
        if device_type == "cpu" and c.norm_weight:
            core -= 4 * C
        if c.attn == "diff":
            core -= 4 * C + p * C if device_type == "cpu" else 0  # (already gone with the frozen subln and lambdas)
            fixed += p + (4 * 2 * c.head_dim if low else 0)  # lambda's cast, subln's fp32 weight
        tok += core
        if "o" in T and c.attn != "diff":
            tok += mask(p) * C if s["dropout"] else -p * C  # A keeps SDPA's output now that SDPA does not
        elif "o" in T:
            tok += mask(4) * C
    elif c.attn == "diff" and device_type == "cpu":  # the math kernel keeps scaled k for q's gradient and q for k's
        tok += 2 * 4 * c.n_head * c.head_dim * (("q" not in T) + ("k" not in T))
    if not T & {"q", "k", "v", "o"}:
        rows = c.moe_top_k if c.moe_experts else 1
        tok += 4 * C + 4 + rows * (2 if c.mlp == "swiglu" else 1) * mask(4) * C  # ln_2; the masks on its output
        if c.moe_experts:
            E, k = c.moe_experts, c.moe_top_k
            # routing and the expert outputs the gate products keep (the (row, slot) pairs of nonzero() are one
            # tensor, kept by index_add_)
            tok += 4 * E + 8 * k + 4 * k + 4 + k * p * C
            fixed += 4 * E
    return tok, fixed


def nonblock_bytes(config):
    """Per token, outside the blocks and the loss: only ln_f saves (its input needs a gradient)."""
    return 4 * config.n_embd + 4


def loss_bytes(config, n_tokens, precision, device_type="cuda"):
    """vram_activations.loss_bytes with a frozen lm_head: grad_x only, no grad_W and no (V, C) term per chunk."""
    from nanochat.fused_loss import chunk_rows
    V, C, N = config.vocab_size, config.n_embd, n_tokens
    n = min(N, chunk_rows(V))
    low = precision != "fp32"
    p = 2 if low else 4
    saved = N * C * p + 4
    chunk = 8 * n * V + (V * C * p + n * C * p if low else 0)
    fragmentation = p * n * V if low and device_type == "cuda" else 0  # the freed matmul output, not reused for fp32
    return {"saved": saved, "forward": saved + N * C * 4 + chunk, "backward": saved + N * C * 4,
            "fragmentation": fragmentation}


def saved_activation_bytes(config, batch_size, seq_len, precision, lora, grad_checkpoint=False, compile=False,
                           device_type="cuda"):
    """vram_activations.saved_activation_bytes with adapters: what a LoRA forward keeps for backward."""
    s = spec(lora)
    N = batch_size * seq_len
    c = config
    low = precision != "fp32"
    if grad_checkpoint:
        blocks = c.n_layer * checkpoint_kept_bytes(c, N, device_type)
    else:
        blocks = sum(_block(c, seq_len, precision, s, compile, device_type, i == 0, N) for i in range(c.n_layer))
    casts = weight_casts(c, s, saved=True) if low and not compile and not grad_checkpoint else 0
    return int(blocks + nonblock_bytes(c) * N + casts + loss_bytes(c, N, precision, device_type)["saved"])


def weight_casts(config, s, saved=False):
    """bf16 weight copies alive at the forward's end: every frozen block weight whose linear's input
    needs a gradient, and every adapter (cached by autocast); saved: those the backward keeps once
    autocast's cache is gone (not the first block's A matrices whose input needs no gradient)."""
    info = param_info(config)
    ad = adapter_info(config, s)
    return 2 * (info["block_matrices"] - ad["first_uncast"]) + 2 * (ad["adapters"] - (ad["first_uncast_adapters"] if saved else 0))


def _block(c, seq_len, precision, s, compile, device_type, first, N):
    tok, fixed = lora_block_bytes(c, seq_len, precision, s, compile, device_type, first)
    return tok * N + fixed

# -----------------------------------------------------------------------------
# the phases of a step


def block_backward_bytes(config, n_tokens, precision, s, compile=False, device_type="cuda"):
    """(workspace, freed) of the last block's backward at its peak, as vram_activations'
    block_backward_bytes: the MLP product's three hidden-sized gradients beside the incoming one
    (no tied grad_W waiting: the embedding is frozen); freed by then ln_f's saved input and, with
    an adapted c_proj, what its A saved (the product, or the dropout's output and mask) and B's
    rank-wide input. An MoE: the full model's peak (a judgement)."""
    from nanochat.vram_activations import _moe_backward_peak
    c = config
    C, M, N = c.n_embd, c.mlp_hidden, n_tokens
    low = precision != "fp32"
    p = 2 if low else 4
    freed = (4 * C + 4) * N
    if c.moe_experts:
        return int(_moe_backward_peak(c, N, precision, compile)), freed
    workspace = 3 * p * M * N + (4 + (2 if low else 0)) * C * N
    if "mlp" in s["targets"] and not compile:
        freed += p * M * N + p * s["rank"] * N + (_mask(p, device_type) * M * N if s["dropout"] else 0)
    return workspace, freed


def forward_block(config, n_tokens, precision, s, compile, device_type, kept, casts, recomputing=False):
    """
    The last block's MLP forward with adapters, beside everything saved so far: a full model
    never peaks there (its loss keeps more), a LoRA one with a small vocabulary can. Two points:
    c_fc's add (its output, the adapter's and their sum, hidden-wide; what the block saves from
    there on not yet made: the rest of the hidden chain, c_proj's adapter inputs) and c_proj's
    add (three C-wide tensors, with the product still alive when dropout means its A saved a
    copy instead). At both ln_2's fp32 output is alive as the MLP's input where no A saved it
    (under autocast the A keep casts; with dropout its outputs). Dense MLPs only (an MoE's
    experts run k*N/E rows at a time: not modelled). kept, casts: what is saved beside it.
    recomputing (checkpointed, in backward): the recomputation stops once B has saved its input
    again, before the adapter's output and the sum exist.
    """
    c = config
    if "mlp" not in s["targets"] or c.moe_experts or compile:
        return {"activations": 0, "logits": 0, "workspace": 0}
    C, M, N = c.n_embd, c.mlp_hidden, n_tokens
    low = precision != "fp32"
    p = 2 if low else 4
    drop = s["dropout"] > 0
    mlp_input = 4 * C if low or drop else 0
    # from c_fc's add on the block saves: relu's output (SwiGLU: c_fc's output), the product or the
    # dropout's output and mask for c_proj's A, and c_proj's rank-wide tensor
    after = p * M + p * M + (_mask(p, device_type) * M if drop else 0) + p * s["rank"]
    at_fc = -after + 3 * p * M + mlp_input
    at_proj = (p * M if drop else 0) + (1 if recomputing else 3) * p * C + mlp_input
    return {"activations": kept + casts, "logits": 0, "workspace": max(at_fc, at_proj) * N}


def lora_phases(config, batch_size, seq_len, precision, grad_checkpoint, compile, device_type, lora):
    """vram.estimate_phases with adapters (the same phases and keys; the embedding's is empty)."""
    s = spec(lora)
    c = config
    N = batch_size * seq_len
    C = c.n_embd
    low = precision != "fp32"
    ad = adapter_info(c, s)
    info = param_info(c)
    first = _block(c, seq_len, precision, s, compile, device_type, True, N)
    later = _block(c, seq_len, precision, s, compile, device_type, False, N)
    last = first if c.n_layer == 1 else later
    nonblock = nonblock_bytes(c) * N
    loss = loss_bytes(c, N, precision, device_type)
    casts_blocks = weight_casts(c, s) if low and not compile else 0  # the forward's end (autocast's cache)
    if grad_checkpoint and low and not compile:  # frozen casts are neither cached nor (checkpointed) saved
        casts_blocks = 2 * ad["adapters"]
    casts_saved = weight_casts(c, s, saved=True) if low and not compile else 0
    casts_layer = 2 * (info["layer_matrices"] + ad["layer"]) if low and not compile else 0
    block_ws, freed = block_backward_bytes(c, N, precision, s, compile, device_type)
    recomputed = last - 4 * C * N + casts_layer
    kept = c.n_layer * checkpoint_kept_bytes(c, N, device_type) if grad_checkpoint else first + (c.n_layer - 1) * later
    phases = {
        # checkpointed: the same points come in backward, as the last block is recomputed (its saved set
        # made again, beside the checkpoints and the incoming fp32 gradient of the residual stream)
        "forward_block": forward_block(c, N, precision, s, compile, device_type, kept + (last if grad_checkpoint else 0),
                                       casts_layer if grad_checkpoint else casts_blocks, grad_checkpoint),
        "forward_loss": {"activations": kept + nonblock + casts_blocks, "logits": loss["forward"], "workspace": 0},
        "backward_loss": {"activations": kept + nonblock + (0 if grad_checkpoint else casts_saved),
                          "logits": loss["backward"], "workspace": 0},
        "backward_block": {"activations": kept + nonblock - freed + (recomputed if grad_checkpoint else casts_saved),
                           "logits": 0, "workspace": block_ws},
        "backward_embedding": {"activations": 0, "logits": 0, "workspace": 0},  # frozen: no backward there
        "optimizer_step": {"activations": 0, "logits": 0, "workspace": 0},  # AdamW, fused on CUDA
    }
    for ph in phases.values():
        ph["total"] = ph["activations"] + ph["logits"] + ph["workspace"]
        ph["gradients"] = 4 * ad["adapters"]
        ph["fragmentation"] = 0
    phases["forward_loss"]["fragmentation"] = loss["fragmentation"]
    phases["evaluation"] = evaluation(c, batch_size, seq_len, precision, device_type, s)
    return phases


def evaluation(config, batch_size, seq_len, precision, device_type, s):
    """The evaluation between steps: vram.evaluation_phase with the adapters (eval_casts, eval_block_bytes)."""
    from nanochat.vram import evaluation_phase
    return evaluation_phase(config, batch_size, seq_len, precision, device_type, lora=s)


def eval_casts(config, lora, low):
    """Autocast's cache under no_grad: the adapters' casts (trainable leaves) only; a frozen weight's
    cast lives through its own matmul (not at the peaks counted here: the adds, the loss)."""
    return 2 * adapter_info(config, lora)["adapters"] if low else 0


def eval_block_bytes(config, lora, low):
    """
    Per token, the most a block's forward holds under no_grad where an adapted linear adds its
    update (output, the adapter's, their sum: three of its outputs), beside what is alive then
    (as vram._eval_attention_bytes / _eval_mlp_bytes count it): the block input and ln_1's output
    (8C) and the q, k already made; or the residual, attention output and ln_2's output (12C)
    and, in the MLP, SwiGLU's silu output at c_fc, relu^2's r and r * r at c_proj. An MoE's
    experts: not modelled (its full-model points stand).
    """
    s = spec(lora)
    c, T = config, s["targets"]
    C, M = c.n_embd, c.mlp_hidden
    Cq, Ck, Cv, _, _ = attention_shapes(c)
    p = 2 if low else 4
    points = [0]
    if "q" in T:
        points.append(8 * C + 3 * p * Cq)
    if "k" in T:
        points.append(8 * C + p * Cq + 3 * p * Ck)
    if "v" in T:
        points.append(8 * C + p * (Cq + Ck) + 3 * p * Cv)
    if "o" in T:  # fp32 q and k, v, SDPA's output (differential attention: its fp32 scaled norm, cast)
        y = (4 * C + (2 * C if low else 0)) if c.attn == "diff" else p * Cq
        points.append(8 * C + 4 * Cq + 4 * Ck + p * Cv + y + 3 * p * C)
    if "mlp" in T and not c.moe_experts:
        if c.mlp == "swiglu":
            points += [12 * C + 3 * p * M, 12 * C + p * M + 3 * p * M, 12 * C + p * M + 3 * p * C]
        else:
            points += [12 * C + 3 * p * M, 12 * C + 2 * p * M + 3 * p * C]
    return max(points)


def state_bytes(config, lora):
    """(gradients, optimizer state) bytes: fp32 gradients and AdamW's two moments of the adapters alone."""
    n = adapter_info(config, lora)["adapters"]
    return 4 * n, 8 * n
