"""
Our GPT as a Hugging Face transformers model (remote code): scripts.export_hf copies this file into
an exported folder as modeling_nanochat_ext.py, and config.json's auto_map points
AutoConfig / AutoModelForCausalLM at it, so

    AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)

runs the architectures transformers' own `nanochat` type cannot: SwiGLU, RMSNorm with weight,
differential attention, mixture of experts, and nanochat's 2026 options (value embeddings, smear,
per-layer scalars, backout, q/k gain, sliding windows, padded vocabulary; rotary base and dtype).
It computes what nanochat/gpt.py computes, with its parameter names (model.safetensors holds our
state dict as it is), in plain torch: this file imports only torch and transformers, as a file
that travels with the weights must.

To add an option: a field with its "off" default in OPTIONS (the exporter refuses any GPTConfig
field that is not there and not at its default), then its computation below.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.cache_utils import DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

MODEL_TYPE = "nanochat_ext"
SOFTCAP = 15.0
VE_GATE_CHANNELS, SMEAR_CHANNELS = 12, 24

# every GPTConfig field this file computes, with the value that turns it off (nanochat's October 2025 function)
OPTIONS = dict(
    sequence_len=2048, vocab_size=65536, n_layer=12, n_head=6, n_kv_head=6, n_embd=768, head_dim=0,
    mlp="relu2", mlp_hidden=0, tie_embeddings=False, norm_weight=False, attn="standard", moe_experts=0, moe_top_k=2,
    # nanochat 2026
    value_embeds=False, smear=False, layer_lambdas=False, backout=False, qk_gain=1.0, rope_base=10000,
    rope_dtype="bf16", window_pattern="", window_short=0, pad_vocab_to=0,
    init_scheme="2025",  # (how training initialises the weights: nothing to compute here)
)


class NanoChatExtConfig(PretrainedConfig):
    model_type = MODEL_TYPE
    attribute_map = {"hidden_size": "n_embd", "num_hidden_layers": "n_layer", "num_attention_heads": "n_head",
                     "num_key_value_heads": "n_kv_head", "max_position_embeddings": "sequence_len",
                     "intermediate_size": "mlp_hidden", "tie_word_embeddings": "tie_embeddings"}

    def __init__(self, **kwargs):
        for name, default in OPTIONS.items():
            setattr(self, name, kwargs.pop(name, default))
        if not self.head_dim:
            self.head_dim = self.n_embd // (2 * self.n_head if self.attn == "diff" else self.n_head)
        if not self.mlp_hidden:
            self.mlp_hidden = 64 * math.ceil(8 * self.n_embd / 3 / 64) if self.mlp == "swiglu" else 4 * self.n_embd
        use_cache = kwargs.pop("use_cache", True)
        super().__init__(**kwargs)
        self.use_cache = use_cache  # (transformers 5 drops generation settings passed to the base config)


def norm(x, weight=None):
    return F.rms_norm(x, (x.size(-1),), weight)  # eps: finfo(dtype).eps, as ours


class RMSNorm(nn.Module):
    def __init__(self, dim, weight):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim)) if weight else None

    def forward(self, x):
        return norm(x, self.weight)


def padded_vocab(c):
    m = max(1, c.pad_vocab_to)
    return -(-c.vocab_size // m) * m


def has_ve(i, c):
    return c.value_embeds and i % 2 == (c.n_layer - 1) % 2


def layer_windows(c):
    """Per layer, how many earlier positions a query sees (None: all)."""
    if not c.window_pattern:
        return [None] * c.n_layer
    short = c.window_short or -(-c.sequence_len // 4 // 128) * 128
    size = {"L": c.sequence_len, "S": short}
    pattern = c.window_pattern.upper()
    windows = [size[pattern[i % len(pattern)]] for i in range(c.n_layer)]
    windows[-1] = c.sequence_len
    return windows


def rotary(c, positions, dtype):
    """cos, sin (B, T, 1, head_dim/2) of positions (B, T): ours, rounded to bf16 with rope_dtype 'bf16'."""
    channels = torch.arange(0, c.head_dim, 2, dtype=torch.float32, device=positions.device)
    inv_freq = 1.0 / (c.rope_base ** (channels / c.head_dim))
    freqs = positions.float()[..., None] * inv_freq
    cos, sin = freqs.cos(), freqs.sin()
    if c.rope_dtype == "bf16":
        cos, sin = cos.bfloat16().float(), sin.bfloat16().float()
    return cos[:, :, None, :].to(dtype), sin[:, :, None, :].to(dtype)


def apply_rotary_emb(x, cos, sin):
    d = x.shape[3] // 2
    x1, x2 = x[..., :d], x[..., d:]
    return torch.cat([x1 * cos + x2 * sin, x1 * (-sin) + x2 * cos], 3)


def attend(q, k, v, mask):
    """q (B, H, Tq, D) over k, v (B, Hkv, Tk, .); mask None (causal, the new positions last) or bool (B, 1, Tq, Tk)."""
    if q.size(1) != k.size(1):
        rep = q.size(1) // k.size(1)
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    if mask is not None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return F.scaled_dot_product_attention(q, k, v, is_causal=q.size(2) == k.size(2) and q.size(2) > 1)


class Attention(nn.Module):
    """Standard (with q/k gain, value embedding) or differential attention, as nanochat.attention."""
    def __init__(self, c, i):
        super().__init__()
        self.i, self.diff, self.qk_gain = i, c.attn == "diff", c.qk_gain
        self.H, self.Hkv, self.d = c.n_head, c.n_kv_head, c.head_dim
        m = 2 if self.diff else 1
        self.c_q = nn.Linear(c.n_embd, m * self.H * self.d, bias=False)
        self.c_k = nn.Linear(c.n_embd, m * self.Hkv * self.d, bias=False)
        self.c_v = nn.Linear(c.n_embd, m * self.Hkv * self.d, bias=False)
        self.c_proj = nn.Linear(m * self.H * self.d, c.n_embd, bias=False)
        if self.diff:
            self.lambda_init = 0.8 - 0.6 * math.exp(-0.3 * i)
            for name in ("lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2"):
                setattr(self, name, nn.Parameter(torch.zeros(self.d)))
            self.subln = nn.Parameter(torch.ones(2 * self.d))
        self.ve_gate = nn.Linear(VE_GATE_CHANNELS, self.Hkv, bias=False) if has_ve(i, c) else None

    def forward(self, x, cos_sin, mask, cache, ve):
        B, T, _ = x.size()
        m = 2 if self.diff else 1
        q = self.c_q(x).view(B, T, m * self.H, self.d)
        k = self.c_k(x).view(B, T, m * self.Hkv, self.d)
        v = self.c_v(x).view(B, T, self.Hkv, m * self.d)
        if ve is not None:
            gate = 3 * torch.sigmoid(self.ve_gate(x[..., :VE_GATE_CHANNELS]))
            v = v + gate.unsqueeze(-1) * ve.view_as(v).to(v.dtype)
        q, k = apply_rotary_emb(q, *cos_sin), apply_rotary_emb(k, *cos_sin)
        q, k = norm(q), norm(k)
        if self.qk_gain != 1.0:
            q, k = q * self.qk_gain, k * self.qk_gain
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if cache is not None:
            k, v = cache.update(k, v, self.i)
        if not self.diff:
            y = attend(q, k, v, mask)
        else:
            H, Hkv = self.H, self.Hkv
            l1 = torch.exp(torch.sum(self.lambda_q1.float() * self.lambda_k1.float()))
            l2 = torch.exp(torch.sum(self.lambda_q2.float() * self.lambda_k2.float()))
            y1, y2 = attend(q[:, :H], k[:, :Hkv], v, mask), attend(q[:, H:], k[:, Hkv:], v, mask)
            y = y1 - (l1 - l2 + self.lambda_init).to(y1.dtype) * y2
            y = norm(y, self.subln.to(y.dtype)) * (1 - self.lambda_init)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, -1))


class MLP(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.swiglu = c.mlp == "swiglu"
        self.c_fc = nn.Linear(c.n_embd, c.mlp_hidden, bias=False)
        if self.swiglu:
            self.c_gate = nn.Linear(c.n_embd, c.mlp_hidden, bias=False)
        self.c_proj = nn.Linear(c.mlp_hidden, c.n_embd, bias=False)

    def forward(self, x):
        if self.swiglu:
            return self.c_proj(F.silu(self.c_gate(x)) * self.c_fc(x))
        r = F.relu(self.c_fc(x))
        return self.c_proj(r * r)


class MoE(nn.Module):
    """Top-k of n experts per token, weighted by the router's renormalised softmax (nanochat.mlp)."""
    def __init__(self, c):
        super().__init__()
        self.top_k = c.moe_top_k
        self.router = nn.Linear(c.n_embd, c.moe_experts, bias=False)
        self.experts = nn.ModuleList([MLP(c) for _ in range(c.moe_experts)])

    def forward(self, x):
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        weights, chosen = F.softmax(self.router(x).float(), dim=-1).topk(self.top_k, dim=-1)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            rows, slot = torch.nonzero(chosen == e, as_tuple=True)
            out.index_add_(0, rows, (expert(x[rows]) * weights[rows, slot, None].to(x.dtype)).to(out.dtype))
        return out.view(shape)


class Block(nn.Module):
    def __init__(self, c, i):
        super().__init__()
        self.ln_1 = RMSNorm(c.n_embd, c.norm_weight)
        self.attn = Attention(c, i)
        self.ln_2 = RMSNorm(c.n_embd, c.norm_weight)
        self.mlp = MoE(c) if c.moe_experts else MLP(c)

    def forward(self, x, cos_sin, mask, cache, ve):
        x = x + self.attn(self.ln_1(x), cos_sin, mask, cache, ve)
        return x + self.mlp(self.ln_2(x))


def attention_masks(c, B, T, past, pad_mask, device):
    """Per layer: None (plain causal) or a bool mask (B, 1, T, past+T) adding padding and the layer's window."""
    windows = layer_windows(c)
    if pad_mask is None and all(w is None or w >= past + T - 1 for w in windows):
        return [None] * c.n_layer
    rows = torch.arange(past, past + T, device=device)[:, None]
    cols = torch.arange(past + T, device=device)[None, :]
    causal = (cols <= rows)[None, None]
    if pad_mask is not None:
        # a padded query sees itself only, so its (unused) row is not all -inf
        causal = causal & pad_mask[:, None, None, :].bool() | (cols == rows)[None, None]
    masks = []
    for w in windows:
        masks.append(causal if w is None else causal & (rows - cols <= w)[None, None])
    return masks


class NanoChatExtForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = NanoChatExtConfig
    base_model_prefix = "transformer"
    _no_split_modules = ["Block"]
    _tied_weights_keys = {"lm_head.weight": "transformer.wte.weight"}

    def __init__(self, config):
        super().__init__(config)
        c, V = config, padded_vocab(config)
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(V, c.n_embd),
            ln_e=RMSNorm(c.n_embd, c.norm_weight),
            h=nn.ModuleList([Block(c, i) for i in range(c.n_layer)]),
            ln_f=RMSNorm(c.n_embd, c.norm_weight),
        ))
        self.lm_head = nn.Linear(c.n_embd, V, bias=False)
        if c.layer_lambdas:
            self.resid_lambdas = nn.Parameter(torch.ones(c.n_layer))
            self.x0_lambdas = nn.Parameter(torch.zeros(c.n_layer))
        if c.smear:
            self.smear_gate = nn.Linear(SMEAR_CHANNELS, 1, bias=False)
            self.smear_lambda = nn.Parameter(torch.zeros(1))
        if c.backout:
            self.backout_lambda = nn.Parameter(0.2 * torch.ones(1))
        if c.value_embeds:
            self.value_embeds = nn.ModuleDict({str(i): nn.Embedding(V, c.n_kv_head * c.head_dim)
                                               for i in range(c.n_layer) if has_ve(i, c)})
        self.post_init()

    def _init_weights(self, module):
        # only for weights a checkpoint lacks (from_pretrained loads the rest)
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        elif isinstance(module, RMSNorm) and module.weight is not None:
            nn.init.ones_(module.weight)

    def get_input_embeddings(self):
        return self.transformer.wte

    def set_input_embeddings(self, value):
        self.transformer.wte = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def _smear(self, x, cache, past, pad_mask):
        """The previous position's (pre-smear) embedding mixed into each, gated; the first position as is."""
        prev = None
        if cache is not None:
            kept = getattr(cache, "nanochat_prev_embedding", None)
            if past and (kept is None or kept[0] != past):
                raise ValueError("smear needs the previous position's embedding: this cache was cropped or not filled here")
            prev = kept[1] if past else None
            cache.nanochat_prev_embedding = (past + x.size(1), x[:, -1:])
        # position past+t is mixed with past+t-1: the kept embedding, then this call's own
        cur, before = (x[:, 1:], x[:, :-1]) if prev is None else (x, torch.cat([prev.to(x.dtype), x[:, :-1]], dim=1))
        if pad_mask is not None:  # (left) padding is no previous token
            first = past + x.size(1) - cur.size(1) - 1
            before = before * pad_mask[:, first:first + cur.size(1), None].to(x.dtype)
        gate = self.smear_lambda.to(x.dtype) * torch.sigmoid(self.smear_gate(cur[..., :SMEAR_CHANNELS]))
        mixed = cur + gate * before
        return torch.cat([x[:, :1], mixed], dim=1) if prev is None else mixed

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, past_key_values=None,
                inputs_embeds=None, labels=None, use_cache=None, logits_to_keep=0, **kwargs):
        c = self.config
        if input_ids is None:
            raise ValueError("nanochat models take input_ids (their value embeddings and smear read the token ids)")
        cache = cache if cache is not None else past_key_values
        use_cache = c.use_cache if use_cache is None else use_cache
        if use_cache and cache is None:
            cache = DynamicCache()
        B, T = input_ids.shape
        past = cache.get_seq_length() if cache is not None else 0
        pad_mask = attention_mask if attention_mask is not None and not bool(attention_mask.all()) else None
        if position_ids is None and pad_mask is not None:  # a left-padded row starts at position 0, as alone
            position_ids = (pad_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past:past + T]
        elif position_ids is None:
            position_ids = torch.arange(past, past + T, device=input_ids.device)[None].expand(B, T)
        x = self.transformer.ln_e(self.transformer.wte(input_ids))
        cos_sin = rotary(c, position_ids, x.dtype)
        masks = attention_masks(c, B, T, past, pad_mask, x.device)
        if c.smear:
            x = self._smear(x, cache, past, pad_mask)
        x0, x_mid = x, None
        for i, block in enumerate(self.transformer.h):
            if c.layer_lambdas:
                x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
            ve = self.value_embeds[str(i)](input_ids) if has_ve(i, c) else None
            x = block(x, cos_sin, masks[i], cache, ve)
            if c.backout and i == c.n_layer // 2:
                x_mid = x
        if x_mid is not None:
            x = x - self.backout_lambda.to(x.dtype) * x_mid
        x = self.transformer.ln_f(x)
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        logits = self.lm_head(x)[..., :c.vocab_size]
        logits = SOFTCAP * torch.tanh(logits / SOFTCAP)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1),
                                   ignore_index=-100)
        key = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{key: cache if use_cache else None})
