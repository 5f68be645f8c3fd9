"""
The registry of named architectures ("contestants") for base_train --variant, the calculators,
the benchmarks and scripts.tournament.

The lineup is the single-3090 tournament's (GUIDE.md): vocab 49,152, context 1024, SwiGLU, tied
embeddings, RMSNorm with weight; dense attention has 12 query heads of 64 over 4 kv heads, and
differential attention the same parameters as 6 heads of two maps (2 kv heads). MoE: 8 experts,
top 2, each a SwiGLU of its own hidden size. The shapes were chosen so that the model's own count
matches the published parameters within 1% (tests/test_variants.py checks it on the meta device).

scale "tiny" shrinks the same ten for a CPU: width and hidden sizes / 8 (heads keep their
number, of 8 channels), layers / 4 rounded up; the vocabulary is the tokenizer's.
"""
import math

from nanochat.gpt import GPTConfig

VOCAB_SIZE, SEQUENCE_LEN = 49152, 1024
COMMON = dict(mlp="swiglu", tie_embeddings=True, norm_weight=True)
DENSE = dict(n_embd=768, n_head=12, n_kv_head=4, head_dim=64)
DIFF = dict(n_embd=768, n_head=6, n_kv_head=2, head_dim=64, attn="diff")
MOE = dict(moe_experts=8, moe_top_k=2)

# name -> (shape, published parameters, published active parameters or None, one line)
VARIANTS = {
    "v01_dense_small": (dict(n_layer=6, mlp_hidden=2048, **DENSE), 75.5e6, None, "dense, 6 x 768"),
    "v02_dense_medium": (dict(n_layer=20, mlp_hidden=2048, **DENSE), 163.6e6, None, "dense, 20 x 768 (Hamner-164M)"),
    "v03_diffattn_small": (dict(n_layer=7, mlp_hidden=2048, **DIFF), 81.8e6, None, "differential attention, 7 x 768"),
    "v04_diffattn_medium": (dict(n_layer=20, mlp_hidden=2368, **DIFF), 179.4e6, None, "differential attention, 20 x 768"),
    "v05_moe_small": (dict(n_layer=20, mlp_hidden=320, **DENSE, **MOE), 185.7e6, 100e6, "MoE 8 experts top 2, 20 x 768"),
    "v06_moe_medium": (dict(n_layer=20, mlp_hidden=1216, **DENSE, **MOE), 516e6, 180e6, "MoE 8 experts top 2, 20 x 768"),
    "v07_hybrid_small": (dict(n_layer=20, mlp_hidden=328, **DIFF, **MOE), 190.4e6, None, "differential attention + MoE, 20 x 768"),
    "v08_hybrid_medium": (dict(n_layer=20, mlp_hidden=1248, **DIFF, **MOE), 528.6e6, None, "differential attention + MoE, 20 x 768"),
    "v09_deep_narrow": (dict(n_layer=32, n_embd=384, n_head=6, n_kv_head=2, head_dim=64, mlp_hidden=1056), 70.8e6, None,
                        "dense, 32 x 384"),
    "v10_wide_shallow": (dict(n_layer=8, n_embd=1024, n_head=16, n_kv_head=4, head_dim=64, mlp_hidden=2048), 121.7e6, None,
                         "dense, 8 x 1024"),
}
SCALES = ("full", "tiny")


def resolve(name):
    """A registry name, or a unique prefix of one ('v03' -> 'v03_diffattn_small'); ValueError with the choices otherwise."""
    if name in VARIANTS:
        return name
    matches = [n for n in VARIANTS if n.startswith(name)]
    if len(matches) == 1:
        return matches[0]
    raise ValueError(f"unknown variant {name!r}: choose from {', '.join(VARIANTS)}")


def variant_config(name, vocab_size=VOCAB_SIZE, sequence_len=SEQUENCE_LEN, scale="full"):
    """The validated GPTConfig of a contestant at a scale."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {', '.join(SCALES)}, got {scale!r}")
    shape = dict(VARIANTS[resolve(name)][0])
    if scale == "tiny":
        shape["n_layer"] = math.ceil(shape["n_layer"] / 4)
        for key in ("n_embd", "head_dim", "mlp_hidden"):
            shape[key] = max(1, shape[key] // 8)
    return GPTConfig(sequence_len=sequence_len, vocab_size=vocab_size, **COMMON, **shape).validate()


def describe_variants():
    return "\n".join(f"  {name:20s} {VARIANTS[name][3]}, {VARIANTS[name][1] / 1e6:.1f}M" for name in VARIANTS)
