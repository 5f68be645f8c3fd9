"""
Fast decoding with a static KV cache: every tensor of the decode step has a fixed shape, so on
CUDA the whole step (all layers, the lm_head and the softcap) is captured once in a CUDA graph and
replayed per token. Batch-1 decode of a small model is bound by kernel launch overhead in eager
PyTorch (hundreds of tiny kernels per token, each a few microseconds of Python and driver time);
a replay launches them all at once.

How the shapes stay fixed:
- the cache is (n_layer, B, n_kv_head, max_len, head_dim), allocated once;
- the position is a device tensor: the new key/value is written with index_copy_ at it, the
  rotary cos/sin are gathered by it, and attention runs over a fixed window of the cache with a
  mask `arange(window) <= pos` (masked slots contribute exactly zero);
- the window grows in blocks (default 256 positions), one graph per window size, so short
  conversations do not read the whole cache.

The math is gpt.py's, on the model's own parameters (rotary on the two halves, then QK-norm,
softcap 15, GQA), rearranged to launch fewer kernels (each costs a few microseconds even inside a
graph, which is what batch-1 speed is made of) without changing it:
- q, k and v come from one matmul of the concatenated weights (and SwiGLU's gate and up);
- rotary runs on q and k together, as x * [cos, cos] + [x2, x1] * [sin, -sin]: the same products
  and sums as gpt.apply_rotary_emb, in 4 kernels instead of 8;
- the attention mask is built once per step as an additive float mask, not per layer from bools;
- GQA groups the query heads of one kv head as the rows of one attention call instead of
  repeating k and v.
The 2026 options (nanochat.arch2026) are the same math too: the value embedding of the token and
its gate, the q/k gain, the residual/x0 scalars, the backout, a padded vocabulary's logits cut
back; a sliding window is one more condition in the layer's mask (pos - window <= slot); the
smear reads the previous token from a static history of the ids (re-embedded: a step must not
change state that its own replay reads, and capture runs the step before the graph replays it).
Under bf16/fp16 the step runs in the same autocast as the eager path, but the weights it
multiplies are cast once up front (autocast would cast them to the same values on every call), so
a token reads each weight once, in bf16. Prefill runs the model's own forward (eager), writing
straight into the static cache.

    dec = make_decoder(model, batch_size=1, max_len=1024)
    logits = dec.prefill(prompt_ids)          # (B, vocab) for the last prompt position
    while ...:
        next_ids = sample(logits)             # (B, 1) on the device
        logits = dec.step(next_ids)           # valid until the next step

The "static" mode (no graph) runs everywhere and is what the CPU tests compare, token for token,
against the eager KV-cache path and the naive no-cache loop.
"""
import math
import os

import torch
import torch.nn.functional as F

from nanochat.common import get_compute_dtype
from nanochat.gpt import KVCache, norm

MODES = ("static", "graph", "compile")


def supports(config):
    """Whether the fast decoder implements this architecture (the standard attention and a dense MLP);
    the engine decodes the others on the plain KV-cache path."""
    return getattr(config, "attn", "standard") == "standard" and not getattr(config, "moe_experts", 0)


def fast_decode_mode(device):
    """
    The fast-decode mode the engine should use on `device`, or None for the plain eager path.
    Default: "graph" on CUDA, None elsewhere. NANOCHAT_FAST_DECODE overrides it: 0/off/eager turns
    it off, static/graph/compile picks a mode, 1/on turns it on ("graph" on CUDA, "static" elsewhere).
    """
    device = torch.device(device)
    env = os.environ.get("NANOCHAT_FAST_DECODE", "").strip().lower()
    if env in ("0", "off", "false", "no", "eager"):
        return None
    if env in MODES:
        return "static" if env == "graph" and device.type != "cuda" else env  # graphs are CUDA-only
    if env in ("1", "on", "true", "yes"):
        return "graph" if device.type == "cuda" else "static"
    if env:
        raise ValueError(f"NANOCHAT_FAST_DECODE must be one of 0, 1, {', '.join(MODES)}; got {env!r}")
    return "graph" if device.type == "cuda" else None


class StaticKVDecoder:
    """
    Decoder for one model, batch size and maximum length; reusable across prompts (prefill
    resets it). mode: "static" (fixed shapes, eager kernels: CPU, MPS, and the reference),
    "graph" (CUDA graph per window size), "compile" (torch.compile'd step, CUDA-graph captured on
    CUDA; one window, since each new shape would recompile).
    """

    def __init__(self, model, batch_size, max_len, dtype=None, mode="static", block=256):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        device = model.get_device()
        if mode == "graph" and device.type != "cuda":
            raise ValueError("mode 'graph' needs a CUDA device (use 'static' elsewhere)")
        if batch_size <= 0 or max_len <= 0:
            raise ValueError(f"batch_size and max_len must be positive, got {batch_size} and {max_len}")
        if max_len > model.cos.size(1):
            raise ValueError(f"max_len {max_len} is longer than the model's rotary table ({model.cos.size(1)})")
        c = model.config
        if not supports(c):
            raise ValueError("the fast decoder covers standard attention with a dense MLP; decode this model with "
                             "NANOCHAT_FAST_DECODE=0 (the engine's KV-cache path)")
        self.model, self.config, self.device, self.mode = model, c, device, mode
        self.batch_size, self.max_len = batch_size, max_len
        self.dtype = dtype if dtype is not None else get_compute_dtype(device.type)
        weight_dtype = model.transformer.wte.weight.dtype
        # same autocast and cache dtype as Engine's eager path, so both compute the same numbers
        self.use_autocast = self.dtype != torch.float32
        cache_dtype = self.dtype if device.type == "cuda" else weight_dtype
        self.block = max_len if mode == "compile" else max(1, min(block, max_len))
        shape = (c.n_layer, batch_size, c.n_kv_head, max_len, c.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=cache_dtype)
        self.v = torch.zeros(shape, device=device, dtype=cache_dtype)
        # static inputs of the step: the graph reads these addresses, we copy new values in
        self.token = torch.zeros(batch_size, 1, dtype=torch.long, device=device)
        self.history = torch.zeros(batch_size, max_len, dtype=torch.long, device=device)  # the ids so far (smear)
        self.pos = torch.zeros(1, dtype=torch.long, device=device)
        self.arange = torch.arange(max_len, device=device)
        self.spans = [block.attn.window for block in model.transformer.h]  # sliding windows (None: all)
        self.pos_host = 0  # the host knows the position too: it picks the window and checks overflow
        self.graphs = {}   # window -> (CUDAGraph, static logits)
        self._step_fn = self._forward_step
        if mode == "compile":
            self._step_fn = torch.compile(self._forward_step, fullgraph=True, dynamic=False)
        self.refresh_weights()

    # -------------------------------------------------------------------------
    # weights

    @torch.no_grad()
    def refresh_weights(self):
        """(Re)derive the step's weights from the model; call after the model's weights change."""
        m, c = self.model, self.config
        lowp = self.use_autocast and self.dtype in (torch.bfloat16, torch.float16)
        cast = (lambda t: t.detach().to(self.dtype)) if lowp else (lambda t: t.detach())
        self.wte = m.transformer.wte.weight.detach()  # an embedding lookup is not autocast
        # rotary tables for the one-pass form: x * [cos, cos] + [x2, x1] * [sin, -sin]
        self.cos2 = torch.cat([m.cos, m.cos], dim=-1)   # (1, L, 1, D), bf16 like the model's
        self.sin2 = torch.cat([m.sin, -m.sin], dim=-1)
        self.ln_e = _norm_weight(m.transformer.ln_e)
        self.ln_f = _norm_weight(m.transformer.ln_f)
        self.lm_head = cast(m.classifier_weight())
        self.smear = (m.smear_lambda.detach(), cast(m.smear_gate.weight)) if c.smear else None
        self.backout = m.backout_lambda.detach() if c.backout else None
        self.layers = []
        for i, block in enumerate(m.transformer.h):
            a, mlp = block.attn, block.mlp
            layer = dict(
                ln_1=_norm_weight(block.ln_1), ln_2=_norm_weight(block.ln_2),
                qkv=cast(torch.cat([a.c_q.weight, a.c_k.weight, a.c_v.weight])),
                attn_proj=cast(a.c_proj.weight),
                mlp_proj=cast(mlp.c_proj.weight),
            )
            if c.layer_lambdas:
                layer["lambdas"] = (m.resid_lambdas[i].detach(), m.x0_lambdas[i].detach())
            if a.ve_gate is not None:  # the value embedding: a lookup (not cast) and its gate
                layer["ve"] = (m.value_embeds[str(i)].weight.detach(), cast(a.ve_gate.weight))
            if c.mlp == "swiglu":
                layer["gate_fc"] = cast(torch.cat([mlp.c_gate.weight, mlp.c_fc.weight]))
            else:
                layer["fc"] = cast(mlp.c_fc.weight)
            self.layers.append(layer)
        self.graphs.clear()  # captured graphs point at the old tensors

    def weight_bytes(self):
        """Bytes of weights a decode step reads (matmul weights; the embedding lookup reads B rows)."""
        n = self.lm_head.numel() * self.lm_head.element_size()
        for layer in self.layers:
            # (not the tuples: the 2026 scalars, and a value embedding, a lookup of B rows, with its tiny gate)
            n += sum(t.numel() * t.element_size() for t in layer.values() if torch.is_tensor(t))
        return n

    # -------------------------------------------------------------------------
    # running

    def _autocast(self):
        # cache_enabled=False: autocast's weight-cast cache must not be filled during graph capture
        if not self.use_autocast:
            import contextlib
            return contextlib.nullcontext()
        return torch.amp.autocast(self.device.type, dtype=self.dtype, cache_enabled=False)

    def _forward_step(self, window):
        """One token per row at position self.pos -> logits (B, vocab). Fixed shapes for a window."""
        c = self.config
        B, H, Hkv, D = self.batch_size, c.n_head, c.n_kv_head, c.head_dim
        G = H // Hkv
        pos = self.pos
        x = norm(F.embedding(self.token, self.wte), self.ln_e)  # (B, 1, C)
        if self.smear is not None:  # the previous token's normed embedding, gated (arch2026.smear)
            self.history.index_copy_(1, pos, self.token)
            prev = norm(F.embedding(self.history.index_select(1, pos - 1), self.wte), self.ln_e)
            lam, gate_w = self.smear
            x = x + lam.to(x.dtype) * torch.sigmoid(F.linear(x[..., :gate_w.size(1)], gate_w)) * prev
        x0, x_mid = x, None
        cos = self.cos2.index_select(1, pos)  # (1, 1, 1, D)
        sin = self.sin2.index_select(1, pos)
        # additive masks in the dtype attention runs in (SDPA would convert a bool mask per layer),
        # one per sliding window (None: the whole context)
        mask_dtype = self.dtype if self.use_autocast else self.k.dtype
        slots = self.arange[:window]
        masks = {}
        for span in self.spans:
            if span not in masks:
                out = slots > pos if span is None else (slots > pos) | (slots < pos - span)
                masks[span] = torch.zeros(window, dtype=mask_dtype, device=self.device).masked_fill(
                    out, float("-inf")).view(1, 1, 1, window)
        for i, w in enumerate(self.layers):
            if "lambdas" in w:
                x = w["lambdas"][0] * x + w["lambdas"][1] * x0
            h = norm(x, w["ln_1"])
            qkv = F.linear(h, w["qkv"]).view(B, 1, H + 2 * Hkv, D)
            # rotary and QK-norm act per head on the last dim: do q and k in one go
            qk = qkv[:, :, :H + Hkv]
            swapped = torch.cat([qk[..., D // 2:], qk[..., :D // 2]], dim=-1)
            qk = norm((qk * cos + swapped * sin).to(qk.dtype))
            if c.qk_gain != 1.0:
                qk = qk * c.qk_gain
            q = qk[:, :, :H].transpose(1, 2)                 # (B, H, 1, D)
            k = qk[:, :, H:].transpose(1, 2)                 # (B, Hkv, 1, D)
            v = qkv[:, :, H + Hkv:]                          # (B, 1, Hkv, D)
            if "ve" in w:
                table, gate_w = w["ve"]
                factor = 3 * torch.sigmoid(F.linear(h[..., :gate_w.size(1)], gate_w))  # (B, 1, Hkv)
                v = v + factor.unsqueeze(-1) * F.embedding(self.token, table).view_as(v).to(v.dtype)
            v = v.transpose(1, 2)                            # (B, Hkv, 1, D)
            k_cache, v_cache = self.k[i], self.v[i]          # (B, Hkv, max_len, D)
            k_cache.index_copy_(2, pos, k.to(k_cache.dtype))
            v_cache.index_copy_(2, pos, v.to(v_cache.dtype))
            # GQA: query head h uses kv head h // G, so the G query heads of one kv head are the
            # G rows of one attention call over that kv head (no repeated k/v)
            q = q.reshape(B, Hkv, G, D)
            y = F.scaled_dot_product_attention(q, k_cache[:, :, :window], v_cache[:, :, :window],
                                               attn_mask=masks[self.spans[i]])
            y = y.reshape(B, 1, H * D)
            x = x + F.linear(y, w["attn_proj"])
            h = norm(x, w["ln_2"])
            if "gate_fc" in w:
                gate, up = F.linear(h, w["gate_fc"]).chunk(2, dim=-1)
                h = F.silu(gate) * up
            else:
                r = F.relu(F.linear(h, w["fc"]))
                h = r * r  # as gpt.MLP: a product keeps the autocast dtype where .square() would not
            x = x + F.linear(h, w["mlp_proj"])
            if self.backout is not None and i == c.n_layer // 2:
                x_mid = x
        if x_mid is not None:
            x = x - self.backout.to(x.dtype) * x_mid
        x = norm(x, self.ln_f)
        logits = F.linear(x, self.lm_head)
        softcap = self.model.softcap
        logits = softcap * torch.tanh(logits / softcap)
        return logits[:, -1, :]

    def _capture(self, window):
        """Warm up on a side stream (cuBLAS handles, allocator), then capture one step."""
        with torch.cuda.device(self.device):  # capture on the model's GPU, whatever the current one is
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream), self._autocast():
                # the warm-up computes the real next step (same token and position), which the
                # replay below then recomputes identically: the cache is not disturbed
                for _ in range(2):
                    self._step_fn(window)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            # thread_local: other threads (the web server's workers) may use the GPU meanwhile
            with torch.cuda.graph(graph, capture_error_mode="thread_local"), self._autocast():
                logits = self._step_fn(window)
        return graph, logits

    @torch.inference_mode()
    def prefill(self, ids):
        """
        Reset and run the prompt through the model's own forward, writing the static cache.
        ids: a list of ints or a (1, T) tensor (one prompt for every row, run once at batch 1 and
        copied) or a (B, T) tensor (one prompt per row, all of length T). Returns the logits of
        the last prompt position, (B, vocab).
        """
        if not torch.is_tensor(ids):
            ids = torch.tensor([list(ids)], dtype=torch.long)
        if ids.dim() == 1:
            ids = ids.unsqueeze(0)
        ids = ids.to(self.device)
        rows, T = ids.shape
        if rows not in (1, self.batch_size):
            raise ValueError(f"prefill got {rows} prompts for a decoder of batch size {self.batch_size}")
        if T == 0:
            raise ValueError("prefill needs at least one token")
        if T > self.max_len:
            raise ValueError(f"prompt of {T} tokens does not fit the decoder's max_len {self.max_len}")
        # a KVCache whose storage is rows [0, rows) of the static cache: the model writes into it
        cache = KVCache.__new__(KVCache)
        cache.k, cache.v, cache.pos, cache.prev_embedding = self.k[:, :rows], self.v[:, :rows], 0, None
        self.history[:, :T] = ids
        with self._autocast():
            logits = self.model(ids, kv_cache=cache)[:, -1, :]
        if rows == 1 and self.batch_size > 1:
            self.k[:, 1:, :, :T] = self.k[:, :1, :, :T]
            self.v[:, 1:, :, :T] = self.v[:, :1, :, :T]
            logits = logits.expand(self.batch_size, -1)
        self.pos_host = T
        return logits

    @torch.inference_mode()
    def step(self, next_ids):
        """
        Feed one token per row (a (B, 1) or (B,) tensor, or a list of B ints) at the current
        position; returns the next logits (B, vocab). In graph mode the returned tensor is the
        graph's static output, overwritten by the next step: sample from it before stepping again.
        """
        p = self.pos_host
        if p == 0:
            raise ValueError("step before prefill")
        if p >= self.max_len:
            raise ValueError(f"decoder is full: position {p} reached max_len {self.max_len}")
        if not torch.is_tensor(next_ids):
            next_ids = torch.tensor(next_ids, dtype=torch.long)
        if next_ids.numel() != self.batch_size:
            raise ValueError(f"step got {next_ids.numel()} ids for a decoder of batch size {self.batch_size}")
        # device-side copies into the static inputs: no host synchronisation
        self.token.copy_(next_ids.view(self.batch_size, 1), non_blocking=True)
        self.pos.fill_(p)
        window = min(self.max_len, math.ceil((p + 1) / self.block) * self.block)
        self.pos_host = p + 1
        if self.device.type != "cuda" or self.mode == "static":
            with self._autocast():
                return self._step_fn(window)
        if window not in self.graphs:
            self.graphs[window] = self._capture(window)
        graph, logits = self.graphs[window]
        graph.replay()
        return logits

    def fits(self, batch_size, max_len):
        """Whether this decoder can serve a request (same batch, long enough)."""
        return batch_size == self.batch_size and max_len <= self.max_len


def make_decoder(model, batch_size, max_len, dtype=None, mode=None, block=256):
    """
    A StaticKVDecoder; max_len is rounded up to a multiple of `block` (capped at the model's
    rotary table) so the decoder, and its captured graphs, can be reused for similar requests.
    mode None: fast_decode_mode(device), falling back to "static".
    """
    device = model.get_device()
    if mode is None:
        mode = fast_decode_mode(device) or "static"
    limit = model.cos.size(1)
    if max_len > limit:
        raise ValueError(f"max_len {max_len} is longer than the model's rotary table ({limit})")
    rounded = min(limit, math.ceil(max_len / block) * block)
    return StaticKVDecoder(model, batch_size, rounded, dtype=dtype, mode=mode, block=block)


def _norm_weight(rmsnorm):
    return None if rmsnorm.weight is None else rmsnorm.weight.detach()
