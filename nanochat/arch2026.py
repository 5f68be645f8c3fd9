"""
The 2026 architecture of karpathy/nanochat (its GPT at commit 92d63d4, March 2026) as options of
our GPT, each off by default (GPTConfig fields; `--arch_2026` in nanochat.flags turns on the set).
Each computes what nanochat's gpt.py computes, with its parameter names and shapes, so a 2026
nanochat state dict loads as it is (the mapping is in dev/LOG.md, "nanochat 2026 architecture"):

  value_embeds   value embeddings (ResFormer) on alternating layers, the last always: layer i has
                 `value_embeds.{i}` (vocab x n_kv_head*head_dim) and its attention a gate
                 `ve_gate` (12 -> n_kv_head); v += 3*sigmoid(ve_gate(x[..., :12])) * ve(idx)
  smear          the previous token's normed embedding mixed into each position:
                 x[t] += smear_lambda * sigmoid(smear_gate(x[t, :24])) * x[t-1] (position 0 as is)
  layer_lambdas  before block i: x = resid_lambdas[i] * x + x0_lambdas[i] * x0, x0 the (smeared)
                 normed embedding
  backout        x -= backout_lambda * (the residual after block n_layer // 2), before the last norm
  qk_gain        q and k times this after QK-norm (nanochat: 1.2 each, scores x 1.44)
  rope_base, rope_dtype   rotary base (nanochat: 100,000); tables kept in the compute dtype
                 ("compute") rather than rounded to bf16 as in October 2025 ("bf16")
  window_pattern sliding windows, the pattern tiled over the layers, the last layer always L:
                 L = sequence_len, S = window_short (0: nanochat's ceil(sequence_len/4/128)*128);
                 a query at t sees keys t-w..t (w+1 of them), also past the training length
  pad_vocab_to   wte and lm_head padded to a multiple (nanochat: 64); logits cut back to the vocab
  init_scheme    "2026": wte N(0, 0.8), lm_head N(0, 0.001), c_q/c_k/c_v U(+-sqrt(3/n_embd)),
                 c_fc (and c_gate) 0.4x that, projections zero

The options' own parameters start as nanochat's whatever the scheme: resid_lambdas 1.15 -> 1.05
and x0_lambdas 0.20 -> 0.05 over the layers, smear_lambda 0, backout_lambda 0.2, the gates
U(0, 0.02), value embeddings like c_v. The optimizer groups are nanochat's too (optimizer_groups).
"""
import math

import torch
import torch.nn as nn

VE_GATE_CHANNELS = 12   # the value-embedding gate reads the first 12 channels of the attention's input
SMEAR_CHANNELS = 24     # the smear gate reads the first 24 channels of the normed embedding
BACKOUT_INIT = 0.2

PRESET = dict(value_embeds=True, smear=True, layer_lambdas=True, backout=True, qk_gain=1.2, rope_base=100000,
              rope_dtype="compute", window_pattern="SSSL", pad_vocab_to=64, init_scheme="2026")
# the GPTConfig fields of the options and their "off" values (today's function)
OFF = dict(value_embeds=False, smear=False, layer_lambdas=False, backout=False, qk_gain=1.0, rope_base=10000,
           rope_dtype="bf16", window_pattern="", window_short=0, pad_vocab_to=0, init_scheme="2025")
# nanochat's AdamW settings of the options' parameters (its setup_optimizer, scalar_lr 0.5): lr, betas, weight decay
RESID_LR, X0_LR, SMEAR_LR = 0.5 * 0.01, 0.5, 0.2


def has_ve(layer_idx, n_layer):
    """Whether layer layer_idx has a value embedding: every other layer, the last one always."""
    return layer_idx % 2 == (n_layer - 1) % 2


def ve_layers(config):
    """The layers with a value embedding (none unless value_embeds)."""
    return [i for i in range(config.n_layer) if config.value_embeds and has_ve(i, config.n_layer)]


def padded_vocab(config):
    """Rows of wte and lm_head: the vocabulary rounded up to a multiple of pad_vocab_to (0: as it is)."""
    m = max(1, config.pad_vocab_to)
    return -(-config.vocab_size // m) * m


def short_window(config):
    """The S window: window_short, or nanochat's quarter of the context rounded up to FA3's tile of 128."""
    return config.window_short or -(-config.sequence_len // 4 // 128) * 128


def layer_windows(config):
    """Per layer, how many earlier positions a query sees (None: all of them, the default)."""
    if not config.window_pattern:
        return [None] * config.n_layer
    pattern = config.window_pattern.upper()
    size = {"L": config.sequence_len, "S": short_window(config)}
    windows = [size[pattern[i % len(pattern)]] for i in range(config.n_layer)]
    windows[-1] = config.sequence_len  # the last layer always sees the whole context
    return windows


def attention_spans(config):
    """Per layer, the keys a training query attends to at most, for the FLOPs (nanochat's min(window, T))."""
    T = config.sequence_len
    return [T if w is None else min(w, T) for w in layer_windows(config)]


def validate(c):
    """Raise ValueError with one line for options that cannot work."""
    if c.window_pattern and not set(c.window_pattern.upper()) <= set("SL"):
        raise ValueError(f"window_pattern takes the letters S (short) and L (long), e.g. SSSL; got {c.window_pattern!r}")
    for name in ("window_short", "pad_vocab_to"):
        if getattr(c, name) < 0:
            raise ValueError(f"{name} must be 0 (off) or positive, got {getattr(c, name)}")
    if c.qk_gain <= 0 or c.rope_base <= 1:
        raise ValueError(f"qk_gain must be positive and rope_base above 1, got {c.qk_gain} and {c.rope_base}")
    if c.rope_dtype not in ("bf16", "compute"):
        raise ValueError(f"rope_dtype must be 'bf16' or 'compute', got {c.rope_dtype!r}")
    if c.init_scheme not in ("2025", "2026"):
        raise ValueError(f"init_scheme must be '2025' or '2026', got {c.init_scheme!r}")
    if c.value_embeds and c.attn != "standard":
        raise ValueError("value_embeds need the standard attention (one value of head_dim per kv head)")
    if c.value_embeds and c.n_embd < VE_GATE_CHANNELS or c.smear and c.n_embd < SMEAR_CHANNELS:
        raise ValueError(f"value_embeds need a width of at least {VE_GATE_CHANNELS} and smear {SMEAR_CHANNELS}, got {c.n_embd}")

# -----------------------------------------------------------------------------
# parameters

def add_parameters(model, c):
    """Register the options' parameters on the GPT under nanochat's names (the gates of the value
    embeddings belong to the attention layers: nanochat.attention)."""
    if c.layer_lambdas:
        model.resid_lambdas = nn.Parameter(torch.ones(c.n_layer))
        model.x0_lambdas = nn.Parameter(torch.zeros(c.n_layer))
    if c.smear:
        model.smear_gate = nn.Linear(SMEAR_CHANNELS, 1, bias=False)
        model.smear_lambda = nn.Parameter(torch.zeros(1))
    if c.backout:
        model.backout_lambda = nn.Parameter(BACKOUT_INIT * torch.ones(1))
    if c.value_embeds:
        V, kv_dim = padded_vocab(c), c.n_kv_head * c.head_dim
        model.value_embeds = nn.ModuleDict({str(i): nn.Embedding(V, kv_dim) for i in ve_layers(c)})


def ve_gate(config, layer_idx):
    """The gate of a layer's value embedding (None where it has none)."""
    if layer_idx in ve_layers(config):
        return nn.Linear(VE_GATE_CHANNELS, config.n_kv_head, bias=False)
    return None


def scalar_names(model):
    """The options' parameters outside the blocks that are not embeddings (the calculators' "scalars")."""
    return [n for n in ("resid_lambdas", "x0_lambdas", "smear_gate.weight", "smear_lambda", "backout_lambda")
            if n.split(".")[0] in model._parameters or n.split(".")[0] in model._modules]


@torch.no_grad()
def init_weights(model):
    """The 2026 scheme's weights (init_scheme "2026"), then the options' own parameters, as nanochat inits them."""
    c = model.config
    s = math.sqrt(3) / math.sqrt(c.n_embd)  # uniform with the std of N(0, 1/n_embd), without its outliers
    if c.init_scheme == "2026":
        if not c.tie_embeddings:  # (tied, the matrix is also the classifier: GPT keeps std 1/sqrt(n_embd))
            nn.init.normal_(model.transformer.wte.weight, mean=0.0, std=0.8)
            nn.init.normal_(model.lm_head.weight, mean=0.0, std=0.001)
        for name, m in model.transformer.h.named_modules():
            if isinstance(m, nn.Linear) and not name.endswith("ve_gate"):
                leaf = name.split(".")[-1]
                if leaf == "c_proj":
                    nn.init.zeros_(m.weight)
                else:
                    bound = 0.4 * s if leaf in ("c_fc", "c_gate") else s
                    nn.init.uniform_(m.weight, -bound, bound)
    if c.layer_lambdas:
        span = max(c.n_layer - 1, 1)
        for i in range(c.n_layer):  # stronger residual and more of the embedding early, less deep
            model.resid_lambdas[i] = 1.15 - 0.10 * i / span
            model.x0_lambdas[i] = 0.20 - 0.15 * i / span
    if c.smear:
        nn.init.zeros_(model.smear_lambda)
        nn.init.uniform_(model.smear_gate.weight, 0.0, 0.02)
    if c.backout:
        nn.init.constant_(model.backout_lambda, BACKOUT_INIT)
    if c.value_embeds:
        for ve in model.value_embeds.values():
            nn.init.uniform_(ve.weight, -s, s)
        for block in model.transformer.h:
            if block.attn.ve_gate is not None:  # slightly above neutral: 3 * sigmoid(~0) = 1.5
                nn.init.uniform_(block.attn.ve_gate.weight, 0.0, 0.02)

# -----------------------------------------------------------------------------
# the forward's pieces

def smear(model, x, kv_cache=None):
    """
    x: the normed embeddings (B, T, C). Each position but the first gets the one before it, gated:
    x[t] + smear_lambda * sigmoid(smear_gate(x[t, :24])) * x[t-1]. With a KV cache the last
    position's embedding is kept (kv_cache.prev_embedding) for the next call, so a decoded token
    is smeared with the one before it as in the full forward (also a chunk after a prefix; nanochat
    only ever prefills from position 0).
    """
    prev = None
    if kv_cache is not None:
        prev, kv_cache.prev_embedding = kv_cache.prev_embedding, x[:, -1:]
    lam = model.smear_lambda.to(x.dtype)
    if prev is None:
        if x.size(1) == 1:
            return x
        gate = lam * torch.sigmoid(model.smear_gate(x[:, 1:, :SMEAR_CHANNELS]))
        return torch.cat([x[:, :1], x[:, 1:] + gate * x[:, :-1]], dim=1)
    gate = lam * torch.sigmoid(model.smear_gate(x[..., :SMEAR_CHANNELS]))
    return x + gate * torch.cat([prev.to(x.dtype), x[:, :-1]], dim=1)


def add_value_embedding(gate, x, v, ve):
    """v (B, T, Hkv, D) + 3 * sigmoid(gate(x[..., :12])) (one factor in (0, 3) per kv head) * ve."""
    factor = 3 * torch.sigmoid(gate(x[..., :VE_GATE_CHANNELS]))  # (B, T, Hkv)
    return v + factor.unsqueeze(-1) * ve.view_as(v).to(v.dtype)


# -----------------------------------------------------------------------------
# optimizer groups

def optimizer_groups(model, embedding_lr, dmodel_lr_scale):
    """
    nanochat's AdamW groups for the options' parameters: the value embeddings at half the
    embedding rate (betas 0.8, 0.995, weight decay 0.01), resid_lambdas at 0.005 (0.8, 0.95, 0.05),
    x0_lambdas at 0.5 (beta1 0.96), the smear gate and lambda and backout_lambda at 0.2. The
    value-embedding gates are block matrices: Muon's, as in nanochat. Empty when all are off.
    """
    groups = []
    if hasattr(model, "value_embeds"):
        groups.append(dict(params=list(model.value_embeds.parameters()), lr=embedding_lr * dmodel_lr_scale * 0.5,
                           betas=(0.8, 0.995), weight_decay=0.01, name="value embeddings"))
    if hasattr(model, "resid_lambdas"):
        groups.append(dict(params=[model.resid_lambdas], lr=RESID_LR, betas=(0.8, 0.95), weight_decay=0.05, name="resid lambdas"))
        groups.append(dict(params=[model.x0_lambdas], lr=X0_LR, betas=(0.96, 0.95), weight_decay=0.0, name="x0 lambdas"))
    smear_params = [model.smear_gate.weight, model.smear_lambda] if hasattr(model, "smear_gate") else []
    smear_params += [model.backout_lambda] if hasattr(model, "backout_lambda") else []
    if smear_params:
        groups.append(dict(params=smear_params, lr=SMEAR_LR, betas=(0.8, 0.95), weight_decay=0.0, name="smear / backout"))
    return groups
