"""
Optimizers. The default, as in nanochat and modded-nanogpt: Muon for the 2D weight matrices of
the transformer blocks, AdamW for the embedding, the lm_head and the norm weights. Plain AdamW for
everything is the option (--optimizer adamw). The 2026 options' parameters (value embeddings,
scalars) get nanochat's own AdamW groups (nanochat.arch2026.optimizer_groups), whatever the kind.

Under DDP the model is wrapped in DistributedDataParallel, which averages gradients, so every
rank takes the same step with these single-process optimizers: simple, and identical to one
process with gradient accumulation.
"""
import os

import torch


def cpu_has_fast_bf16():
    """Whether this CPU multiplies bf16 matrices natively (AVX512-BF16 or AMX): there a bf16
    matmul is ~4x an fp32 one (measured in dev/LOG.md); elsewhere bf16 is emulated and slower."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:
        return False


def newton_schulz_dtype(device):
    """
    The dtype of the Newton-Schulz iteration on `device`: bf16 on CUDA (as nanochat and
    modded-nanogpt), fp32 elsewhere. NANOCHAT_MUON_NS=bf16|fp32 overrides it (bf16 on a CPU is
    fast only with native bf16, see cpu_has_fast_bf16).
    """
    choice = os.environ.get("NANOCHAT_MUON_NS", "auto").lower()
    if choice in ("bf16", "bfloat16"):
        return torch.bfloat16
    if choice in ("fp32", "float32"):
        return torch.float32
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def zeropower_via_newtonschulz5(G, steps=5, dtype=None):
    """
    Approximately orthogonalise G (replace its singular values by ~1) with a quintic Newton-Schulz
    iteration; the coefficients maximise the slope at zero so few steps suffice
    (Keller Jordan's Muon write-up). G: one matrix (m, n) or a stack (k, m, n) of same-shape ones,
    each orthogonalised on its own. dtype: of the iteration (default: newton_schulz_dtype, bf16
    on CUDA, where it is cheap and accurate enough). The scale-and-add of each iteration is
    folded into the matmuls (addmm: beta * A + alpha * A @ A), the same sums in fewer passes.
    """
    a, b, c = (3.4445, -4.7750, 2.0315)
    X = G.to(newton_schulz_dtype(G.device) if dtype is None else dtype)
    transposed = G.size(-2) > G.size(-1)
    if transposed:  # iterate on the smaller Gram matrix
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    mm = torch.baddbmm if X.ndim == 3 else torch.addmm
    for _ in range(steps):
        A = X @ X.mT
        B = mm(A, A, A, beta=b, alpha=c)  # b * A + c * A @ A
        X = mm(X, B, X, beta=a)           # a * X + B @ X
    if transposed:
        X = X.mT
    return X


class Muon(torch.optim.Optimizer):
    """
    MomentUm Orthogonalized by Newton-schulz: SGD with Nesterov momentum whose update for each
    matrix is orthogonalised. Only for 2D hidden weights; embeddings, lm_head and vectors go to AdamW.
    The matrices of a group that share a shape are orthogonalised together, as one stack (batched
    matmuls: fewer, larger calls); each keeps its own momentum buffer (the optimizer state is per
    parameter, as it always was, so old checkpoints load).
    """
    def __init__(self, params, lr=0.02, momentum=0.95, nesterov=True, ns_steps=5, weight_decay=0.0):
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps, weight_decay=weight_decay)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            by_shape = {}
            for p in group["params"]:
                if p.grad is not None:
                    by_shape.setdefault((p.shape, p.dtype, p.device), []).append(p)
            for (shape, _, _), params in by_shape.items():
                grads = [p.grad for p in params]
                bufs = []
                for p, g in zip(params, grads):
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = torch.zeros_like(g)
                    bufs.append(state["momentum_buffer"])
                torch._foreach_lerp_(bufs, grads, 1 - group["momentum"])
                if group["nesterov"]:
                    updates = torch.stack([g.lerp(buf, group["momentum"]) for g, buf in zip(grads, bufs)])
                else:
                    updates = torch.stack(bufs)
                updates = zeropower_via_newtonschulz5(updates, steps=group["ns_steps"])
                if group["weight_decay"] > 0:
                    torch._foreach_mul_(params, 1 - group["lr"] * group["weight_decay"])
                # scale so that tall and wide matrices get updates of similar RMS
                scale = max(1.0, shape[-2] / shape[-1]) ** 0.5
                updates = updates.to(params[0].dtype)
                torch._foreach_add_(params, list(updates.unbind(0)), alpha=-group["lr"] * scale)


def parse_layer_lr(spec, n_layer):
    """
    --layer_lr "7-12:0.2,0:0.5" -> {7: 0.2, ..., 12: 0.2, 0: 0.5}: learning-rate multipliers for
    blocks by index (0-based, as in transformer.h.{i}; ranges inclusive). Unnamed layers keep 1.0.
    Raises UserError with one line for a spec that cannot be meant.
    """
    from nanochat.common import UserError
    mults = {}
    for part in (spec or "").split(","):
        part = part.strip()
        if not part:
            continue
        layers, sep, mult = part.partition(":")
        lo, dash, hi = layers.partition("-")
        try:
            lo, hi, mult = int(lo), int(hi) if dash else int(lo), float(mult)
        except ValueError:
            raise UserError(f"--layer_lr {spec!r}: expected FIRST-LAST:MULT or LAYER:MULT items, e.g. '7-12:0.2'") from None
        if not sep or mult < 0 or lo > hi:
            raise UserError(f"--layer_lr {spec!r}: {part!r} needs FIRST <= LAST and a multiplier >= 0")
        if lo < 0 or hi >= n_layer:
            raise UserError(f"--layer_lr {spec!r}: layers are 0..{n_layer - 1} in this model, got {part!r}")
        for i in range(lo, hi + 1):
            if i in mults:
                raise UserError(f"--layer_lr {spec!r}: layer {i} is named twice")
            mults[i] = mult
    return mults


def _layer_ranges(layers):
    """[7, 8, 9, 12] -> '7-9,12'"""
    out, layers = [], sorted(layers)
    for i in layers:
        if out and out[-1][1] == i - 1:
            out[-1][1] = i
        else:
            out.append([i, i])
    return ",".join(f"{a}-{b}" if a != b else f"{a}" for a, b in out)


def _split_by_layer(model, params, layer_lr, name, lr):
    """
    Parameter groups for params: one per learning-rate multiplier of the layers they belong to
    (parameters outside the blocks count as x1). Without --layer_lr this is a single group, as
    it always was, so old optimizer checkpoints keep loading.
    """
    layer_of = {id(p): i for i, block in enumerate(model.transformer.h) for p in block.parameters()}
    by_mult = {}
    for p in params:
        by_mult.setdefault(layer_lr.get(layer_of.get(id(p)), 1.0), []).append(p)
    groups = []
    for mult in sorted(by_mult, key=lambda m: (m != 1.0, m)):
        layers = sorted({layer_of[id(p)] for p in by_mult[mult] if id(p) in layer_of})
        label = name if mult == 1.0 else f"{name} x{mult:g}"
        groups.append(dict(params=by_mult[mult], lr=lr * mult, name=label, layers=_layer_ranges(layers)))
    return groups


def build_optimizers(model, kind="muon", matrix_lr=0.02, embedding_lr=0.2, unembedding_lr=0.004,
                     scalar_lr=0.004, adamw_lr=0.001, weight_decay=0.0, betas=(0.8, 0.95), layer_lr=None, lora_lr=1e-3):
    """
    Returns a list of optimizers covering every trainable parameter once (frozen ones, such as a
    LoRA model's base, get no group and no state; groups and optimizers left empty are dropped).
    AdamW learning rates are scaled by 1/sqrt(model_dim/768), tuned at width 768 as in nanochat.
    layer_lr ({block index: multiplier}, see parse_layer_lr) scales the rates of those blocks'
    matrices and vectors, for Muon and AdamW alike. Each group remembers its `initial_lr` so the
    training loop can apply a schedule multiplier, and has a `name` for the start-up table
    (describe_optimizers).
    LoRA adapters (nanochat.lora) are an AdamW group of their own at lora_lr (times layer_lr),
    whatever the kind: Muon's orthogonalised update has a fixed size per matrix, which for a
    rank-r B that starts at zero, times a random A, is not the update that LoRA's known rates and
    alpha/rank assume; and the adapters are too small for Muon's smaller state to matter. Their
    groups are marked `fixed_lr`: --init_lr_frac, a fraction of the pretraining rates, is not for them.
    """
    layer_lr = layer_lr or {}
    n_embd = model.config.n_embd
    dmodel_lr_scale = (n_embd / 768) ** -0.5
    wte = model.transformer.wte.weight
    lm_head = model.lm_head.weight
    tied = wte is lm_head
    from nanochat.lora import adapter_parameters
    adapters = adapter_parameters(model)
    is_adapter = {id(p) for p in adapters}
    matrices = [p for p in model.transformer.h.parameters() if p.ndim == 2 and id(p) not in is_adapter]
    from nanochat.arch2026 import optimizer_groups
    extra_groups = optimizer_groups(model, embedding_lr, dmodel_lr_scale)  # (empty without the 2026 options)
    in_extra = {id(p) for g in extra_groups for p in g["params"]}
    vectors = [p for p in model.parameters() if p.ndim == 1 and id(p) not in in_extra]
    assert len(matrices) + len(vectors) + len(adapters) + len(in_extra) + (1 if tied else 2) == len(list(model.parameters()))
    fused = wte.is_cuda  # fused AdamW kernel where available
    # a tied matrix is also the classifier, which wants the gentle unembedding rate
    adam_groups = [dict(params=[wte], lr=(unembedding_lr if tied else embedding_lr) * dmodel_lr_scale,
                        name="embedding (tied lm_head)" if tied else "embedding")]
    if not tied:
        adam_groups.append(dict(params=[lm_head], lr=unembedding_lr * dmodel_lr_scale, name="lm_head"))
    if vectors:
        adam_groups += _split_by_layer(model, vectors, layer_lr, "vectors", scalar_lr * dmodel_lr_scale)
    adam_groups += extra_groups
    if adapters:
        adam_groups += [dict(g, fixed_lr=True) for g in _split_by_layer(model, adapters, layer_lr, "lora adapters", lora_lr)]
    trainable = lambda groups: [g for g in (dict(g, params=[p for p in g["params"] if p.requires_grad]) for g in groups)
                                if g["params"]]
    if kind == "muon":
        muon_groups = trainable(_split_by_layer(model, matrices, layer_lr, "matrices", matrix_lr))
    elif kind == "adamw":
        adam_groups += _split_by_layer(model, matrices, layer_lr, "matrices", adamw_lr)
        muon_groups = []
    else:
        raise ValueError(f"optimizer must be 'muon' or 'adamw', got {kind!r}")
    adam_groups = trainable(adam_groups)
    if not adam_groups and not muon_groups:
        raise ValueError("nothing to train: every parameter of the model is frozen")
    optimizers = []
    if adam_groups:
        optimizers.append(torch.optim.AdamW(adam_groups, betas=betas, eps=1e-10, weight_decay=weight_decay, fused=fused))
    if muon_groups:
        optimizers.append(Muon(muon_groups, lr=matrix_lr, momentum=0.95, weight_decay=weight_decay))
    for opt in optimizers:
        for group in opt.param_groups:
            group["initial_lr"] = group["lr"]
    return optimizers


def describe_optimizers(optimizers):
    """One line per parameter group: optimizer, name, learning rate, layers and size (printed at start-up)."""
    lines = []
    for opt in optimizers:
        for g in opt.param_groups:
            n = sum(p.numel() for p in g["params"])
            layers = f" | layers {g['layers']}" if g.get("layers") else ""
            lines.append(f"  {type(opt).__name__.lower():5s} {g.get('name', '?'):22s} lr {g['initial_lr']:.6g}{layers} | "
                         f"{len(g['params'])} tensors, {n:,d} params")
    return "\n".join(lines)


def muon_momentum(step, warmup_steps=300):
    """Muon momentum warms up from 0.85 to 0.95 over the first steps (nanochat's schedule)."""
    frac = min(step / warmup_steps, 1.0)
    return (1 - frac) * 0.85 + frac * 0.95


def step_optimizers(optimizers, params, scaler=None, grad_clip=0.0, grad_norm=None):
    """
    One update after backward: unscale (fp16 GradScaler), clip the global gradient norm (grad_norm:
    that norm, when the caller has computed it already), step every optimizer, then drop the
    gradients. Nothing here waits for the GPU without a scaler.
    """
    if scaler is not None:
        for opt in optimizers:
            scaler.unscale_(opt)
    if grad_clip > 0 and grad_norm is not None:
        torch.nn.utils.clip_grads_with_norm_(params, grad_clip, grad_norm)
    elif grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    for opt in optimizers:
        scaler.step(opt) if scaler is not None else opt.step()
    if scaler is not None:
        scaler.update()
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
