"""
The GPT model. The default configuration computes the same function as karpathy/nanochat
(October 2025) with the same parameter names, so its checkpoints load without conversion:
- token embedding -> RMSNorm -> blocks -> RMSNorm -> lm_head -> logits soft-capped at 15
- rotary embeddings (base 10000, two halves of each head), then QK-norm
- causal attention through scaled_dot_product_attention, GQA (n_kv_head < n_head)
- relu^2 MLP, untied embeddings, norms without weight, no biases
Extra options with defaults that keep that function: explicit head_dim, SwiGLU MLP with its own
hidden size, tied embeddings, RMSNorm with weight, gradient checkpointing, differential attention
(nanochat.attention), a mixture-of-experts MLP (nanochat.mlp), and the pieces of nanochat's 2026
architecture (value embeddings, smear, x0/residual scalars, backout, q/k gain, rotary base, sliding
windows, a padded vocabulary, its init: nanochat.arch2026, with the parameter names of its checkpoints).
"""
import math
from dataclasses import dataclass, asdict

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from nanochat import arch2026
from nanochat.attention import ATTENTION, apply_rotary_emb, kv_shapes, norm  # noqa: F401 (norm, apply_rotary_emb: re-exported)
from nanochat.fused_loss import fused_linear_cross_entropy
from nanochat.mlp import MLP, MoE


@dataclass
class GPTConfig:
    sequence_len: int = 2048
    vocab_size: int = 65536
    n_layer: int = 12
    n_head: int = 6           # query heads
    n_kv_head: int = 6        # key/value heads (GQA when fewer than n_head)
    n_embd: int = 768
    head_dim: int = 0         # 0: n_embd // n_head
    mlp: str = "relu2"        # "relu2": c_fc -> relu(x)^2 -> c_proj; "swiglu": silu(c_gate) * c_fc -> c_proj
    mlp_hidden: int = 0       # 0: 4 * n_embd for relu2, 8/3 * n_embd rounded up to a multiple of 64 for swiglu
    tie_embeddings: bool = False
    norm_weight: bool = False  # RMSNorm with a learned weight (the QK-norm stays weightless)
    attn: str = "standard"    # "standard", or "diff": differential attention (n_head heads of two maps; 2*n_head*head_dim = n_embd)
    moe_experts: int = 0      # 0: a dense MLP; N: a mixture of N experts, each an MLP of mlp_hidden
    moe_top_k: int = 2        # experts per token
    # nanochat's 2026 architecture (nanochat.arch2026); these defaults are its October 2025 function
    value_embeds: bool = False   # value embeddings with their gates on alternating layers (the last always)
    smear: bool = False          # mix the previous token's embedding into each position, gated
    layer_lambdas: bool = False  # per-layer resid_lambdas / x0_lambdas scalars before each block
    backout: bool = False        # subtract backout_lambda x the middle layer's residual before the last norm
    qk_gain: float = 1.0         # q and k scaled after QK-norm (2026: 1.2)
    rope_base: int = 10000       # rotary base (2026: 100000)
    rope_dtype: str = "bf16"     # rotary tables rounded to bf16 ("bf16", October 2025) or in the compute dtype ("compute")
    window_pattern: str = ""     # sliding windows, e.g. "SSSL" tiled over the layers, last layer L; "": full context
    window_short: int = 0        # the S window (0: nanochat's ceil(sequence_len / 4 / 128) * 128); L is sequence_len
    pad_vocab_to: int = 0        # wte / lm_head rows padded to a multiple of this (2026: 64); logits cut to vocab_size
    init_scheme: str = "2025"    # "2025" or "2026" (nanochat's newer init of the shared weights)

    def __post_init__(self):
        if self.head_dim == 0 and self.n_head > 0:
            self.head_dim = self.n_embd // (2 * self.n_head if self.attn == "diff" else self.n_head)
        if self.mlp_hidden == 0:
            if self.mlp == "swiglu":
                self.mlp_hidden = 64 * math.ceil(8 * self.n_embd / 3 / 64)
            else:
                self.mlp_hidden = 4 * self.n_embd

    def validate(self):
        """Raise ValueError with a one-line message for a configuration that cannot work."""
        for name in ("sequence_len", "vocab_size", "n_layer", "n_head", "n_kv_head", "n_embd", "head_dim", "mlp_hidden"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.mlp not in ("relu2", "swiglu"):
            raise ValueError(f"mlp must be 'relu2' or 'swiglu', got {self.mlp!r}")
        if self.head_dim % 2 != 0:
            raise ValueError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")
        if self.attn not in ("standard", "diff"):
            raise ValueError(f"attn must be 'standard' or 'diff', got {self.attn!r}")
        if self.attn == "diff" and 2 * self.n_head * self.head_dim != self.n_embd:
            raise ValueError(f"differential attention: 2 x n_head ({self.n_head}) x head_dim ({self.head_dim}) must equal "
                             f"the width n_embd ({self.n_embd})")
        if self.attn == "standard" and self.n_head * self.head_dim != self.n_embd:
            raise ValueError(f"n_head ({self.n_head}) x head_dim ({self.head_dim}) must equal the width n_embd ({self.n_embd})")
        if self.moe_experts < 0 or (self.moe_experts and not 1 <= self.moe_top_k <= self.moe_experts):
            raise ValueError(f"MoE: need 0 experts (dense) or top_k in 1..experts, got {self.moe_experts} experts, "
                             f"top_k {self.moe_top_k}")
        if self.n_kv_head > self.n_head or self.n_head % self.n_kv_head != 0:
            raise ValueError(f"n_head ({self.n_head}) must be a multiple of n_kv_head ({self.n_kv_head})")
        arch2026.validate(self)
        return self

    def to_dict(self):
        return asdict(self)


class RMSNorm(nn.Module):
    """RMSNorm; without weight it has no parameters (and no state dict entries)."""
    def __init__(self, dim, weight):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim)) if weight else None

    def forward(self, x):
        return norm(x, self.weight)


class KVCache:
    """
    Preallocated key/value cache for all layers: keys (n_layer, B, k_heads, max_len, k_dim), values
    (n_layer, B, v_heads, max_len, v_dim); the same shapes unless given (differential attention
    keeps two keys of head_dim and one value of 2*head_dim per kv head).
    Layers insert at the current position; the model advances the position once per forward.
    With smear (nanochat.arch2026) it also keeps the last position's normed embedding.
    """
    def __init__(self, batch_size, num_kv_heads, max_len, head_dim, num_layers, device, dtype, v_heads=None, v_dim=None):
        self.k = torch.zeros((num_layers, batch_size, num_kv_heads, max_len, head_dim), device=device, dtype=dtype)
        v_shape = (num_layers, batch_size, v_heads or num_kv_heads, max_len, v_dim or head_dim)
        self.v = torch.zeros(v_shape, device=device, dtype=dtype)
        self.pos = 0
        self.prev_embedding = None  # (B, 1, C): the smear of the next token reads it

    @property
    def max_len(self):
        return self.k.size(3)

    @property
    def batch_size(self):
        return self.k.size(1)

    def reset(self):
        self.pos = 0
        self.prev_embedding = None

    def insert_kv(self, layer_idx, k, v):
        t0, t1 = self.pos, self.pos + k.size(2)
        if t1 > self.max_len:
            raise ValueError(f"KV cache overflow: position {t1} > cache length {self.max_len}")
        self.k[layer_idx, :, :, t0:t1] = k
        self.v[layer_idx, :, :, t0:t1] = v
        return self.k[layer_idx, :, :, :t1], self.v[layer_idx, :, :, :t1]

    def advance(self, n):
        self.pos += n

    def prefill_from(self, other):
        """Copy another cache's filled part into this one, broadcasting its batch (1 -> B samples)."""
        n = other.pos
        if n > self.max_len:
            raise ValueError(f"cannot prefill {n} positions into a cache of length {self.max_len}")
        self.k[:, :, :, :n] = other.k[:, :, :, :n]
        self.v[:, :, :, :n] = other.v[:, :, :, :n]
        self.pos = n
        prev = other.prev_embedding
        self.prev_embedding = None if prev is None else prev.expand(self.batch_size, -1, -1).clone()


class Block(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.ln_1 = RMSNorm(config.n_embd, config.norm_weight)
        self.attn = ATTENTION[config.attn](config, layer_idx)
        self.ln_2 = RMSNorm(config.n_embd, config.norm_weight)
        self.mlp = MoE(config) if config.moe_experts else MLP(config)

    def forward(self, x, cos_sin, kv_cache=None, ve=None):
        x = x + self.attn(self.ln_1(x), cos_sin, kv_cache, ve)
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    softcap = 15.0

    def __init__(self, config):
        super().__init__()
        self.config = config.validate()
        self.grad_checkpoint = False  # recompute each block's activations in backward to save memory
        V = arch2026.padded_vocab(config)  # = vocab_size unless pad_vocab_to; the logits are cut back to it
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(V, config.n_embd),
            ln_e=RMSNorm(config.n_embd, config.norm_weight),
            h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
            ln_f=RMSNorm(config.n_embd, config.norm_weight),
        ))
        self.lm_head = nn.Linear(config.n_embd, V, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight
        arch2026.add_parameters(self, config)  # (none unless its options are on)
        # rotary tables cover 10x the training length so generation can run past it
        self.rotary_len = config.sequence_len * 10
        cos, sin = self._rotary_tables(self.rotary_len, config.head_dim)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def _rotary_tables(self, seq_len, head_dim, device=None):
        base = self.config.rope_base
        if device is None:
            device = self.transformer.wte.weight.device
        channels = torch.arange(0, head_dim, 2, dtype=torch.float32, device=device)
        inv_freq = 1.0 / (base ** (channels / head_dim))
        t = torch.arange(seq_len, dtype=torch.float32, device=device)
        freqs = torch.outer(t, inv_freq)
        # rounded to bf16 as nanochat did in 2025, so imported checkpoints see the same rotation; stored in
        # fp32 and cast to the activations' dtype at use, so fp32 math does not promote every step.
        # rope_dtype "compute" (nanochat 2026): not rounded, so exact in fp32 and the same bf16 under autocast
        cos, sin = freqs.cos(), freqs.sin()
        if self.config.rope_dtype == "bf16":
            cos, sin = cos.bfloat16().float(), sin.bfloat16().float()
        return cos[None, :, None, :], sin[None, :, None, :]

    @torch.no_grad()
    def init_weights(self):
        """Initialise all weights (call after building on the meta device and to_empty())."""
        if self.config.tie_embeddings:
            # to_empty() can replace the shared Parameter with two copies: tie again
            self.lm_head.weight = self.transformer.wte.weight
        for name, p in self.named_parameters():
            if p.ndim == 1:  # norm weights
                nn.init.ones_(p)
        for module in self.modules():
            if isinstance(module, nn.Linear) and module is not self.lm_head:
                fan_out, fan_in = module.weight.shape
                # https://arxiv.org/abs/2310.17813: std ~ 1/sqrt(fan_in), shrunk for narrow outputs
                std = 1.0 / math.sqrt(fan_in) * min(1.0, math.sqrt(fan_out / fan_in))
                nn.init.normal_(module.weight, mean=0.0, std=std)
        for block in self.transformer.h:
            # residual branches start as identity
            nn.init.zeros_(block.attn.c_proj.weight)
            for mlp in (block.mlp.experts if self.config.moe_experts else [block.mlp]):
                nn.init.zeros_(mlp.c_proj.weight)
            if self.config.attn == "diff":
                block.attn.init_lambdas()
        if self.config.tie_embeddings:
            # the shared matrix is also the classifier: keep initial logits O(1)
            nn.init.normal_(self.transformer.wte.weight, mean=0.0, std=1.0 / math.sqrt(self.config.n_embd))
        else:
            nn.init.normal_(self.transformer.wte.weight, mean=0.0, std=1.0)
            nn.init.zeros_(self.lm_head.weight)
        cos, sin = self._rotary_tables(self.rotary_len, self.config.head_dim)
        self.cos, self.sin = cos, sin
        arch2026.init_weights(self)  # the 2026 scheme, and the 2026 options' own parameters

    def get_device(self):
        return self.transformer.wte.weight.device

    # -------------------------------------------------------------------------
    # counting

    def param_counts(self):
        """
        Parameters per component, counted from the model's own tensors (shared tensors once):
        wte, attn (c_q, c_k, c_v, c_proj, differential attention's lambdas, the value-embedding
        gates), mlp (c_fc, c_gate, c_proj summed over the experts, and the MoE router), norms,
        value_embeds and scalars (the 2026 options'), lm_head (0 when tied), total.
        """
        c = self.config
        counts = {"wte": 0, "value_embeds": 0, "attn.c_q": 0, "attn.c_k": 0, "attn.c_v": 0, "attn.c_proj": 0,
                  "attn.lambdas": 0, "attn.ve_gate": 0, "mlp.router": 0, "mlp.c_fc": 0, "mlp.c_gate": 0, "mlp.c_proj": 0,
                  "norms": 0, "scalars": 0, "lm_head": 0}
        scalars = set(arch2026.scalar_names(self))
        for name, p in self.named_parameters():  # named_parameters() yields a shared tensor once
            parts = name.split(".")
            if name == "transformer.wte.weight":
                key = "wte"
            elif parts[0] == "value_embeds":
                key = "value_embeds"
            elif name in scalars:
                key = "scalars"
            elif name == "lm_head.weight":
                key = "lm_head"
            elif parts[-1].startswith("lambda_"):
                key = "attn.lambdas"
            elif p.ndim == 1:
                key = "norms"
            elif "experts" in parts:  # transformer.h.0.mlp.experts.3.c_fc.weight
                key = "mlp." + parts[-2]
            else:
                key = ".".join(parts[-3:-1])  # e.g. "attn.c_q"
            counts[key] += p.numel()
        for key, keep in (("mlp.c_gate", c.mlp == "swiglu"), ("attn.lambdas", c.attn == "diff"), ("mlp.router", c.moe_experts),
                          ("value_embeds", c.value_embeds), ("attn.ve_gate", c.value_embeds), ("scalars", scalars)):
            if not keep:
                del counts[key]
        counts["total"] = sum(counts.values())
        return counts

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    def inactive_params(self):
        """Expert parameters a token does not use: (experts - top_k) / experts of them (0 for a dense MLP)."""
        c = self.config
        if not c.moe_experts:
            return 0
        expert = sum(p.numel() for block in self.transformer.h for p in block.mlp.experts.parameters())
        return expert * (c.moe_experts - c.moe_top_k) // c.moe_experts

    def active_params(self):
        """Parameters a token uses (the total, less the experts it is not routed to)."""
        return self.num_params() - self.inactive_params()

    def estimate_flops(self):
        """
        Training FLOPs per token (forward + backward): 6 per weight used in a matmul (every
        parameter except the embedding lookups, plus the lm_head even when tied; of the experts only
        the top_k a token runs) plus attention scores and values, 12 * n_head * head_dim * the keys
        a query sees, summed over the layers (sequence_len, or the sliding window, as nanochat);
        differential attention has two maps of head_dim and a value of 2*head_dim per head, 3x
        that per head.
        """
        c = self.config
        matmul_params = self.active_params() - self.transformer.wte.weight.numel()
        if c.tie_embeddings:
            matmul_params += self.lm_head.weight.numel()
        matmul_params -= sum(p.numel() for p in self.parameters() if p.ndim == 1)  # norms are not matmuls
        if c.value_embeds:  # lookups too
            matmul_params -= sum(p.numel() for p in self.value_embeds.parameters())
        heads = 3 * c.n_head if c.attn == "diff" else c.n_head
        return 6 * matmul_params + 12 * heads * c.head_dim * sum(arch2026.attention_spans(c))

    # -------------------------------------------------------------------------
    # running

    def classifier_weight(self):
        """lm_head's weight without the padded rows (the Parameter itself when there are none)."""
        w = self.lm_head.weight
        return w if w.size(0) == self.config.vocab_size else w[:self.config.vocab_size]

    def make_kv_cache(self, batch_size, max_len, dtype=None):
        c = self.config
        if dtype is None:
            dtype = self.transformer.wte.weight.dtype
        (k_heads, k_dim), (v_heads, v_dim) = kv_shapes(c)
        return KVCache(batch_size, k_heads, max_len, k_dim, c.n_layer, self.get_device(), dtype, v_heads, v_dim)

    def forward(self, idx, targets=None, kv_cache=None, loss_reduction="mean"):
        B, T = idx.size()
        T0 = 0 if kv_cache is None else kv_cache.pos
        if T0 + T > self.cos.size(1):
            raise ValueError(f"sequence of {T0 + T} tokens is longer than the rotary table ({self.cos.size(1)})")
        cos_sin = self.cos[:, T0:T0 + T], self.sin[:, T0:T0 + T]
        if self.config.moe_experts:
            for block in self.transformer.h:
                block.mlp.aux_loss = None  # each forward's MoE layers store their own (nanochat.mlp)
        x = self.transformer.wte(idx)
        x = self.transformer.ln_e(x)
        c = self.config
        if c.smear:
            x = arch2026.smear(self, x, kv_cache)
        x0 = x if c.layer_lambdas else None  # (kept only when used: it would hold the embedding through an eval)
        x_mid = None
        for i, block in enumerate(self.transformer.h):
            if c.layer_lambdas:  # nanochat 2026: x0 and residual scalars before each block
                x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
            ve = self.value_embeds[str(i)](idx) if str(i) in getattr(self, "value_embeds", ()) else None
            if self.grad_checkpoint and self.training and kv_cache is None:
                x = checkpoint(block, x, cos_sin, None, ve, use_reentrant=False)
            else:
                x = block(x, cos_sin, kv_cache, ve)
            if c.backout and i == c.n_layer // 2:
                x_mid = x
        if x_mid is not None:  # backout: the middle layer's low-level features out again before the logits
            x = x - self.backout_lambda.to(x.dtype) * x_mid
        x = self.transformer.ln_f(x)
        if kv_cache is not None:
            kv_cache.advance(T)
        if targets is not None and loss_reduction in ("mean", "sum"):
            # the same loss as below, lm_head included, a chunk of rows at a time: the (B*T, V)
            # logits and their gradients never exist at once (they were most of training's memory)
            return fused_linear_cross_entropy(x.view(B * T, -1), self.classifier_weight(), targets.reshape(-1),
                                              self.softcap, loss_reduction)
        logits = self.lm_head(x)
        if logits.size(-1) != self.config.vocab_size:  # a padded vocabulary: cut back to the real one
            logits = logits[..., :self.config.vocab_size]
        logits = self.softcap * torch.tanh(logits / self.softcap)
        if targets is None:
            return logits
        logits = logits.float()
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1,
                               reduction=loss_reduction)

    @torch.inference_mode()
    def generate(self, tokens, max_tokens, temperature=1.0, top_k=None, seed=42):
        """Naive generation without a KV cache (the reference the engine is tested against)."""
        device = self.get_device()
        rng = torch.Generator(device=device).manual_seed(seed) if temperature > 0 else None
        ids = torch.tensor([tokens], dtype=torch.long, device=device)
        for _ in range(max_tokens):
            logits = self.forward(ids)[:, -1, :]
            if top_k is not None:
                v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                logits[logits < v[:, [-1]]] = -float("inf")
            if temperature > 0:
                probs = F.softmax(logits / temperature, dim=-1)
                next_id = torch.multinomial(probs, num_samples=1, generator=rng)
            else:
                next_id = torch.argmax(logits, dim=-1, keepdim=True)
            ids = torch.cat((ids, next_id), dim=1)
            yield next_id.item()


def model_tag_for(config):
    """Default checkpoint folder name: d<layers>, plus w<width> when the width is not 64*layers."""
    tag = f"d{config.n_layer}"
    if config.n_embd != 64 * config.n_layer:
        tag += f"w{config.n_embd}"
    return tag


def build_model(config, device):
    """A freshly initialised model on `device`, built on the meta device first (no double init)."""
    with torch.device("meta"):
        model = GPT(config)
    model.to_empty(device=device)
    model.init_weights()
    return model
