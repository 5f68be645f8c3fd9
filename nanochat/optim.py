"""
Optimizers. The default, as in nanochat and modded-nanogpt: Muon for the 2D weight matrices of
the transformer blocks, AdamW for the embedding, the lm_head and the norm weights. Plain AdamW for
everything is the option (--optimizer adamw).

Under DDP the model is wrapped in DistributedDataParallel, which averages gradients, so every
rank takes the same step with these single-process optimizers: simple, and identical to one
process with gradient accumulation.
"""
import torch


def zeropower_via_newtonschulz5(G, steps=5):
    """
    Approximately orthogonalise G (replace its singular values by ~1) with a quintic Newton-Schulz
    iteration; the coefficients maximise the slope at zero so few steps suffice
    (Keller Jordan's Muon write-up). Runs in bf16 on CUDA, where it is cheap and accurate enough.
    """
    a, b, c = (3.4445, -4.7750, 2.0315)
    X = G.bfloat16() if G.is_cuda else G.float()
    transposed = G.size(-2) > G.size(-1)
    if transposed:  # iterate on the smaller Gram matrix
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        A = X @ X.mT
        B = b * A + c * A @ A
        X = a * X + B @ X
    if transposed:
        X = X.mT
    return X


class Muon(torch.optim.Optimizer):
    """
    MomentUm Orthogonalized by Newton-schulz: SGD with Nesterov momentum whose update for each
    matrix is orthogonalised. Only for 2D hidden weights; embeddings, lm_head and vectors go to AdamW.
    """
    def __init__(self, params, lr=0.02, momentum=0.95, nesterov=True, ns_steps=5, weight_decay=0.0):
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps, weight_decay=weight_decay)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(g)
                buf = state["momentum_buffer"]
                buf.lerp_(g, 1 - group["momentum"])
                update = g.lerp(buf, group["momentum"]) if group["nesterov"] else buf
                update = zeropower_via_newtonschulz5(update, steps=group["ns_steps"])
                if group["weight_decay"] > 0:
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                # scale so that tall and wide matrices get updates of similar RMS
                scale = max(1.0, p.size(-2) / p.size(-1)) ** 0.5
                p.add_(update.to(p.dtype), alpha=-group["lr"] * scale)


def build_optimizers(model, kind="muon", matrix_lr=0.02, embedding_lr=0.2, unembedding_lr=0.004,
                     scalar_lr=0.004, adamw_lr=0.001, weight_decay=0.0, betas=(0.8, 0.95)):
    """
    Returns a list of optimizers covering every parameter once. AdamW learning rates are scaled by
    1/sqrt(model_dim/768), tuned at width 768 as in nanochat. Each group remembers its
    `initial_lr` so the training loop can apply a schedule multiplier.
    """
    n_embd = model.config.n_embd
    dmodel_lr_scale = (n_embd / 768) ** -0.5
    wte = model.transformer.wte.weight
    lm_head = model.lm_head.weight
    tied = wte is lm_head
    matrices = [p for p in model.transformer.h.parameters() if p.ndim == 2]
    vectors = [p for p in model.parameters() if p.ndim == 1]
    assert len(matrices) + len(vectors) + (1 if tied else 2) == len(list(model.parameters()))
    fused = wte.is_cuda  # fused AdamW kernel where available
    # a tied matrix is also the classifier, which wants the gentle unembedding rate
    adam_groups = [dict(params=[wte], lr=(unembedding_lr if tied else embedding_lr) * dmodel_lr_scale)]
    if not tied:
        adam_groups.append(dict(params=[lm_head], lr=unembedding_lr * dmodel_lr_scale))
    if vectors:
        adam_groups.append(dict(params=vectors, lr=scalar_lr * dmodel_lr_scale))
    optimizers = []
    if kind == "muon":
        optimizers.append(torch.optim.AdamW(adam_groups, betas=betas, eps=1e-10, weight_decay=weight_decay, fused=fused))
        optimizers.append(Muon(matrices, lr=matrix_lr, momentum=0.95, weight_decay=weight_decay))
    elif kind == "adamw":
        adam_groups.append(dict(params=matrices, lr=adamw_lr))
        optimizers.append(torch.optim.AdamW(adam_groups, betas=betas, eps=1e-10, weight_decay=weight_decay, fused=fused))
    else:
        raise ValueError(f"optimizer must be 'muon' or 'adamw', got {kind!r}")
    for opt in optimizers:
        for group in opt.param_groups:
            group["initial_lr"] = group["lr"]
    return optimizers


def muon_momentum(step, warmup_steps=300):
    """Muon momentum warms up from 0.85 to 0.95 over the first steps (nanochat's schedule)."""
    frac = min(step / warmup_steps, 1.0)
    return (1 - frac) * 0.85 + frac * 0.95


def step_optimizers(optimizers, params, scaler=None, grad_clip=0.0):
    """
    One update after backward: unscale (fp16 GradScaler), clip the global gradient norm, step
    every optimizer, then drop the gradients. Nothing here waits for the GPU without a scaler.
    """
    if scaler is not None:
        for opt in optimizers:
            scaler.unscale_(opt)
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    for opt in optimizers:
        scaler.step(opt) if scaler is not None else opt.step()
    if scaler is not None:
        scaler.update()
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
