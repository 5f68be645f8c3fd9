"""
Chunked, fused lm_head + softcap + cross-entropy: the loss of GPT.forward without the (B*T, V)
logits tensor. For a 49k-65k vocabulary those logits and their gradients (~14 bytes per token per
vocab entry under bf16) are most of a training step's memory; here they exist one chunk of rows
at a time (CHUNK_LOGITS entries, ~8 bytes each while alive).

The forward pass also computes the gradients (the approach of Liger-Kernel's fused linear cross
entropy): per chunk, logits = x @ W^T, s = cap * tanh(logits / cap), loss = logsumexp(s) - s[target],
and dloss/dlogits = (softmax(s) - onehot(target)) * (1 - tanh^2), which gives the chunk's grad_x
(@ W) and adds to grad_W (^T @ x). Only grad_x (N, C) and grad_W (V, C) are kept for backward,
which scales them by its incoming gradient. That costs the same three matmuls per chunk as an
unfused forward + backward, where recomputing the logits in backward would take four (measured in
dev/LOG.md, "Fused chunked loss"). Without autograd (eval, no_grad) only the loss is computed.

Computes exactly the function of F.cross_entropy(cap * tanh(x @ W^T / cap), targets, ignore_index=-1)
with reduction "mean" (nan when every target is ignored, as F.cross_entropy) or "sum". Under
autocast the matmuls run in the autocast dtype and the softcap, softmax and loss in fp32.
"""
import torch

# logits entries per chunk: 2^24 is 64 MiB of fp32 logits; a chunk peaks at 8 bytes per entry
# (nanochat.vram models it), so ~128 MiB, against 14 * B*T*V bytes unchunked (10 GiB for a
# 49k vocabulary at batch 16 x 1024)
CHUNK_LOGITS = 2 ** 24


def chunk_rows(vocab_size):
    """Rows of x per chunk for a vocabulary of this size."""
    return max(1, CHUNK_LOGITS // vocab_size)


def compute_dtype(x):
    """The dtype of the matmuls: autocast's where it is on for x's device, else x's own."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


# below this cap exp(cap * tanh) cannot overflow fp32 (e^80 ~ 5.5e34, x 2^24 columns < 3.4e38):
# the softmax can skip subtracting the row maximum (two passes over the chunk's logits)
_NO_MAX_CAP = 80.0


def _chunk(xc, w, tc, softcap, grad_x, grad_w):
    """
    One chunk of rows: returns the summed loss of its valid targets; when grad_x / grad_w are
    given, writes its rows of grad_x and adds its term to grad_w. Its temporaries die on return.
    Every full-size step is one pass over the (rows, V) logits, in place where it can be; the
    softcap bounds the logits to [-cap, cap], so exp needs no max subtraction (cap <= 80).
    """
    valid = tc != -1
    tc = tc.masked_fill(~valid, 0)[:, None]  # ignored rows gather a real column, then count 0
    # softcap in place on the fp32 logits: t = tanh(logits / cap), s = cap * t
    t = (xc @ w.t()).float()
    t.div_(softcap).tanh_()
    t_target = t.gather(1, tc)  # (rows, 1)
    s_target = (t_target * softcap).squeeze(1)
    p = torch.mul(t, softcap)  # s
    if softcap <= _NO_MAX_CAP:
        m = None
        p.exp_()
    else:
        m = p.amax(dim=1, keepdim=True)
        p.sub_(m).exp_()
    z = p.sum(dim=1, keepdim=True)
    lse = z.log() if m is None else m + z.log()
    loss = torch.where(valid, lse.squeeze(1) - s_target, 0.0).sum()
    if grad_x is None and grad_w is None:
        return loss
    # dloss/ds = softmax - onehot on valid rows, 0 on ignored ones; ds/dlogits = 1 - t^2:
    # p * (t^2 - 1) * (-valid / z) is the softmax term, then the onehot's -(1 - t_target^2) at the targets
    p.mul_(t.mul_(t).sub_(1.0))
    p.mul_(valid[:, None] / z.neg())
    p.scatter_add_(1, tc, (t_target * t_target - 1.0) * valid[:, None])
    del t  # freed before the cast: a chunk peaks at 8 bytes per logit (t and p), not 10
    g = p.to(w.dtype)
    del p  # bf16: the fp32 buffer goes before the (V, C) term below (fp32: g is that buffer)
    if grad_x is not None:
        torch.matmul(g, w, out=grad_x)
    if grad_w is not None and grad_w.dtype == g.dtype:
        grad_w.addmm_(g.t(), xc)  # fp32: no (V, C) temporary
    elif grad_w is not None:
        grad_w += g.t() @ xc  # the chunk's (V, C) term in the matmul dtype, summed in fp32
    return loss


def _loss_and_grads(x, weight, targets, softcap, dtype, need_grad_x, need_grad_w):
    """
    Summed cross-entropy over the valid targets and, when asked, its gradients w.r.t. x (in
    `dtype`, as the matmul gives them) and weight (an fp32 accumulator in weight's dtype).
    """
    N = x.size(0)
    rows = chunk_rows(weight.size(0))
    w = weight.to(dtype)  # one cast for all chunks (a no-op in fp32)
    grad_x = torch.empty(N, x.size(1), dtype=dtype, device=x.device) if need_grad_x else None
    grad_w = torch.zeros_like(weight) if need_grad_w else None
    loss = torch.zeros((), dtype=torch.float32, device=x.device)
    for i in range(0, N, rows):
        loss += _chunk(x[i:i + rows].to(dtype), w, targets[i:i + rows], softcap,
                       grad_x[i:i + rows] if need_grad_x else None, grad_w)
    return loss, grad_x, grad_w


class FusedLinearCrossEntropy(torch.autograd.Function):
    """loss(x, weight, targets); forward computes the gradients, backward scales them."""

    @staticmethod
    def forward(ctx, x, weight, targets, softcap, reduction):
        dtype = compute_dtype(x)
        # dtypes are chosen explicitly in here: autocast would only add casts
        with torch.autocast(x.device.type, enabled=False):
            loss, grad_x, grad_w = _loss_and_grads(x, weight, targets, softcap, dtype,
                                                   ctx.needs_input_grad[0], ctx.needs_input_grad[1])
        if reduction == "mean":
            n = (targets != -1).sum()
            scale = 1.0 / n.clamp(min=1).float()  # all ignored: grads stay 0 ...
            loss = loss / n  # ... and the loss is 0/0 = nan, as F.cross_entropy's mean
        else:
            scale = torch.ones((), dtype=torch.float32, device=x.device)
        ctx.save_for_backward(grad_x, grad_w, scale)
        ctx.x_dtype = x.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_x, grad_w, scale = ctx.saved_tensors
        # the saved gradients are of the summed loss (entries of (softmax - onehot) are at most 1
        # in size, safe to cast to fp16); the mean's 1/n and the loss scale come in here, in fp32
        scale = grad_loss.float() * scale
        dx = grad_x.to(ctx.x_dtype, copy=True).mul_(scale) if grad_x is not None else None
        dw = (grad_w * scale) if grad_w is not None else None
        return dx, dw, None, None, None


def fused_linear_cross_entropy(x, weight, targets, softcap, reduction="mean"):
    """
    F.cross_entropy(softcap * tanh(x @ weight^T / softcap), targets, ignore_index=-1, reduction)
    without the full logits. x: (N, C), weight: (V, C), targets: (N,) with -1 = ignore;
    reduction: "mean" or "sum".
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return FusedLinearCrossEntropy.apply(x, weight, targets, softcap, reduction)
    # no autograd (evaluation): the loss alone, no gradient work
    dtype = compute_dtype(x)
    with torch.autocast(x.device.type, enabled=False):
        loss, _, _ = _loss_and_grads(x, weight, targets, softcap, dtype, False, False)
    return loss / (targets != -1).sum() if reduction == "mean" else loss
