"""
Knowledge distillation: a student learns a teacher's next-token distribution (scripts/distill.py).

    loss = kl_weight * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - kl_weight) * CE(student, targets)

over the trained positions (targets != -1: every position of pretraining text, the assistant's
tokens of a conversation), each term a mean per trained token; the logits are the models' own,
soft-capped. The T^2 keeps the KL's gradients the size of the CE's at any temperature (Hinton et
al. 2015). kl_weight 0 is plain training on the same tokens: the baseline a distilled student is
compared with.

The KL is chunked like nanochat.fused_loss: a chunk of rows at a time, its forward pass computes
the loss and its gradients with respect to the student's final hidden state and lm_head weight,
dKL/ds = T * (softmax(s / T) - softmax(t / T)) times the softcap's (1 - tanh^2), so the (rows,
vocab) logits of neither model exist beyond one chunk; the teacher's cross-entropy (logged beside
the student's) comes out of the same chunks. The teacher runs in eval mode without gradients.
Both models' final hidden states come from a forward hook on their final norm (transformer.ln_f):
the student's during the forward that computes its cross-entropy (through its DDP wrapper, if
any), the teacher's by stopping its forward there (the hook raises), so its lm_head never runs twice.

DistillLoss is the trainer's loss_fn (nanochat.trainer); exercise_accuracy is the built-in
accuracy the retention curve records for student and teacher.
"""
import torch
import torch.distributed as dist

from nanochat.common import UserError
from nanochat.fused_loss import compute_dtype

# logits entries per chunk: a chunk holds three fp32 (rows, V) buffers at its peak (~96 MiB here)
CHUNK_LOGITS = 2 ** 23


# below this bound on |logits / T| exp cannot overflow fp32 (e^80 x 2^23 columns < 3.4e38): the
# softmax needs no row maximum (one pass less), as in nanochat.fused_loss
_NO_MAX_BOUND = 80.0


def _rowdot(a, b):
    """Row-wise dot products of two (rows, V) tensors, without their (rows, V) product."""
    return (a.unsqueeze(1) @ b.unsqueeze(2)).view(-1)


def _softmax_parts(z, cap, temperature):
    """
    z: fp32 logits before the softcap, turned in place into t = tanh(z / cap). Returns (t, e, m, sum):
    e = exp(s / T - m) with s = cap * t the soft-capped logits and m the row maximum (0 when no
    overflow is possible), and sum = the row sums of e; so log softmax(s / T) = s / T - m - log sum.
    """
    t = z.div_(cap).tanh_()
    e = torch.mul(t, cap / temperature)
    if cap / temperature <= _NO_MAX_BOUND:
        m = torch.zeros(e.size(0), device=e.device)
    else:
        m = e.amax(dim=1)
        e.sub_(m[:, None])
    e.exp_()
    return t, e, m, e.sum(dim=1)


def _chunk(hc, w, htc, wt, tc, temperature, cap, cap_t, grad_h, grad_w):
    """
    One chunk of rows: (summed T^2 * KL, summed teacher cross-entropy) over its rows with a target
    (tc != -1); writes its rows of grad_h and adds to grad_w when they are given. With p, q the
    teacher's and student's softmax at T, KL = sum p (log p - log q) = (p . s_t - p . s) / T
    - m_t - log sum_t + m + log sum: two row-wise dot products, no log p or log q tensors.
    """
    valid = (tc != -1).float()
    tt, et, mt, zt = _softmax_parts((htc @ wt.t()).float(), cap_t, temperature)
    if temperature == 1.0:
        lse = mt + zt.log()
    else:
        lse = torch.logsumexp(tt * cap_t, dim=1)
    teacher_ce = ((lse - cap_t * tt.gather(1, tc.clamp(min=0)[:, None]).squeeze(1)) * valid).sum()
    pt = _rowdot(et, tt) * (cap_t / temperature)  # (p . s_t / T) * sum_t
    del tt
    t, e, m, z = _softmax_parts((hc @ w.t()).float(), cap, temperature)
    ps = _rowdot(et, t) * (cap / temperature)  # (p . s / T) * sum_t
    kl_rows = (pt - ps) / zt - mt - zt.log() + m + z.log()
    loss = (kl_rows * valid).sum() * temperature ** 2
    if grad_h is None and grad_w is None:
        return loss, teacher_ce
    # d(T^2 KL)/ds = T * (q - p); ds/dz = 1 - t^2; rows without a target: 0
    g = e.mul_((valid * temperature / z)[:, None]).sub_(et.mul_((valid * temperature / zt)[:, None]))
    del et
    g.addcmul_(g, t.mul_(t), value=-1.0)
    del t
    g = g.to(w.dtype)
    if grad_h is not None:
        torch.matmul(g, w, out=grad_h)
    if grad_w is not None and grad_w.dtype == g.dtype:
        grad_w.addmm_(g.t(), hc)  # fp32: no (V, C) temporary
    elif grad_w is not None:
        grad_w += g.t() @ hc  # the chunk's term in the matmul dtype, summed in fp32
    return loss, teacher_ce


def _kl_and_grads(h, w, h_t, w_t, targets, temperature, cap, cap_t, need_h, need_w):
    dtype = compute_dtype(h)
    rows = max(1, CHUNK_LOGITS // w.size(0))
    wc, wtc = w.to(dtype), w_t.to(dtype)  # one cast for all chunks (a no-op in fp32)
    grad_h = torch.empty(h.size(0), h.size(1), dtype=dtype, device=h.device) if need_h else None
    grad_w = torch.zeros_like(w) if need_w else None
    loss = torch.zeros((), dtype=torch.float32, device=h.device)
    teacher_ce = torch.zeros((), dtype=torch.float32, device=h.device)
    for i in range(0, h.size(0), rows):
        kl, ce = _chunk(h[i:i + rows].to(dtype), wc, h_t[i:i + rows].to(dtype), wtc, targets[i:i + rows], temperature,
                        cap, cap_t, grad_h[i:i + rows] if need_h else None, grad_w)
        loss += kl
        teacher_ce += ce
    return loss, teacher_ce, grad_h, grad_w


class DistillKL(torch.autograd.Function):
    """(T^2 KL, teacher CE) summed over rows; forward computes the KL's gradients, backward scales them."""

    @staticmethod
    def forward(ctx, h, w, h_t, w_t, targets, temperature, cap, cap_t):
        with torch.autocast(h.device.type, enabled=False):  # dtypes are chosen in here
            loss, teacher_ce, grad_h, grad_w = _kl_and_grads(h, w, h_t, w_t, targets, temperature, cap, cap_t,
                                                             ctx.needs_input_grad[0], ctx.needs_input_grad[1])
        ctx.save_for_backward(grad_h, grad_w)
        ctx.dtypes = h.dtype, w.dtype
        ctx.mark_non_differentiable(teacher_ce)
        return loss, teacher_ce

    @staticmethod
    def backward(ctx, grad_loss, _grad_teacher_ce):
        grad_h, grad_w = ctx.saved_tensors
        scale = grad_loss.float()
        dh = grad_h.to(ctx.dtypes[0], copy=True).mul_(scale) if grad_h is not None else None
        dw = (grad_w * scale).to(ctx.dtypes[1]) if grad_w is not None else None
        return dh, dw, None, None, None, None, None, None


def distill_kl(h, w, h_t, w_t, targets, temperature=1.0, cap=15.0, cap_t=15.0):
    """
    (T^2 * KL(softmax(t / T) || softmax(s / T)), the teacher's cross-entropy), each summed over the
    rows whose target is not -1; s = cap * tanh(h @ w^T / cap) are the student's logits, t = cap_t *
    tanh(h_t @ w_t^T / cap_t) the teacher's (no gradient). h: (N, C), w: (V, C), h_t: (N, C_t),
    w_t: (V, C_t), targets: (N,). Rows without a target are computed and weighted 0: selecting
    them would make the device wait.
    """
    if temperature <= 0:
        raise ValueError(f"the temperature must be positive, got {temperature}")
    h_t, w_t = h_t.detach(), w_t.detach()
    if torch.is_grad_enabled() and (h.requires_grad or w.requires_grad):
        return DistillKL.apply(h, w, h_t, w_t, targets, temperature, cap, cap_t)
    with torch.autocast(h.device.type, enabled=False):
        return _kl_and_grads(h, w, h_t, w_t, targets, temperature, cap, cap_t, False, False)[:2]


def check_same_vocab(teacher, student, teacher_name="the teacher", student_name="the student"):
    """Distillation compares distributions token by token: the two models must share one tokenizer."""
    vt, vs = teacher.config.vocab_size, student.config.vocab_size
    if vt != vs:
        raise UserError(f"{teacher_name} has a vocabulary of {vt:,} tokens and {student_name} {vs:,}: distillation needs "
                        f"both trained with the same tokenizer (the one in $NANOCHAT_BASE_DIR/tokenizer)")


class _FinalHidden(Exception):
    """Raised by the teacher's hook on its final norm: its forward stops there, before any logits."""
    def __init__(self, hidden):
        super().__init__("final hidden state")
        self.hidden = hidden


class DistillLoss:
    """
    loss_fn(model, x, y) for nanochat.trainer.Trainer: the mix above, and {"ce", "kl", "teacher_ce"}
    logged beside it. student: the bare GPT (hooks go on its modules; `model` may be its DDP wrapper).
    The teacher is put in eval mode with its parameters frozen, and runs under no_grad.
    """

    def __init__(self, student, teacher, kl_weight=0.5, temperature=1.0):
        if not 0.0 <= kl_weight <= 1.0:
            raise UserError(f"--kl_weight must be in [0, 1], got {kl_weight}")
        if temperature <= 0:
            raise UserError(f"--temperature must be positive, got {temperature}")
        check_same_vocab(teacher, student)
        self.student, self.teacher = student, teacher.eval().requires_grad_(False)
        self.kl_weight, self.temperature = kl_weight, temperature
        self.capturing, self.hidden = False, None
        student.transformer.ln_f.register_forward_hook(self._keep_student)
        teacher.transformer.ln_f.register_forward_hook(self._stop_teacher)

    def _keep_student(self, module, inputs, output):
        if self.capturing:  # only inside __call__: evaluation and sampling keep nothing
            self.hidden = output

    def _stop_teacher(self, module, inputs, output):
        if self.capturing:
            raise _FinalHidden(output)

    def teacher_hidden(self, x):
        """The teacher's final hidden state for x (its forward up to the final norm, without gradients)."""
        try:
            with torch.no_grad():
                self.teacher(x)
        except _FinalHidden as stop:
            return stop.hidden
        raise RuntimeError("the teacher's forward did not pass its final norm (transformer.ln_f)")

    def __call__(self, model, x, y):
        n = (y >= 0).sum().clamp(min=1)
        self.capturing = self.kl_weight > 0
        try:
            ce = model(x, y, loss_reduction="sum") / n  # the student's forward: its hook keeps the hidden state
            if self.kl_weight == 0:  # plain training: the teacher is not run
                return ce, {"ce": ce.detach()}
            h, self.hidden = self.hidden, None
            h_t = self.teacher_hidden(x)
        finally:
            self.capturing = False
        kl, teacher_ce = distill_kl(h.reshape(-1, h.size(-1)), self.student.lm_head.weight, h_t.reshape(-1, h_t.size(-1)),
                                    self.teacher.lm_head.weight, y.reshape(-1), self.temperature, self.student.softcap,
                                    self.teacher.softcap)
        kl = kl / n
        loss = self.kl_weight * kl + (1 - self.kl_weight) * ce
        return loss, {"ce": ce.detach(), "kl": kl.detach(), "teacher_ce": teacher_ce / n}


# -----------------------------------------------------------------------------
# built-in accuracy, for the retention curve

@torch.no_grad()
def exercise_accuracy(model, tokenizer, n, chat, difficulties=(1, 2), seed=0, max_tokens=24):
    """
    Exact-match accuracy on n held-out built-in exercises (nanochat.tasks.builtin's test split, all
    kinds, these difficulties), answered greedily. chat: as a conversation with the calculator on
    (as scripts/chat_eval.py asks); else as pretraining text, "Question: ...\\nAnswer:" completed
    up to the end of the line. Under DDP each rank answers its share and the counts are summed.
    """
    from nanochat.engine import Engine, reply_parts, reply_text
    from nanochat.exercises import is_correct, render_text
    from nanochat.tasks.builtin import ExerciseChat
    from nanochat.tokenizer import render_for_completion
    if n <= 0:
        return None
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)
    task = ExerciseChat(n, "test", difficulties=difficulties, seed=seed, multi_turn=0.0, tool=chat)
    engine = Engine(model, tokenizer)
    correct = 0
    for i in range(rank, n, world):
        item = task[i]
        if chat:
            ids = render_for_completion(tokenizer, item)
            out = engine.generate_batch(ids, max_tokens=max_tokens, temperature=0, tools=True)[0]
            answer = reply_text(reply_parts(tokenizer, out))
        else:
            prompt = render_text(item["messages"][0]["content"])
            ids = tokenizer.encode(prompt, prepend=tokenizer.get_bos_token_id())
            out = engine.generate_batch(ids, max_tokens=max_tokens, temperature=0, tools=False)[0]
            answer = tokenizer.decode(out).split("\n", 1)[0]
        correct += is_correct(answer, item["answer"])
    if world > 1:
        total = torch.tensor(correct, device=model.get_device())
        dist.all_reduce(total)
        correct = int(total.item())
    return correct / n

