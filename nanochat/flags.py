"""
The command-line flag groups several scripts share, in one place:
- device: --device_type;
- model source: -i/--source, -g/--model_tag, -s/--step (which checkpoint to load);
- precision: --precision (autocast dtype) and --optimizer;
- architecture: --depth alone (nanochat's shortcut) or explicit shapes, attention and MLP kinds,
  or --variant NAME from the registry (nanochat/variants.py); nanochat's 2026 options one by one
  or all of them (--arch_2026, nanochat/arch2026.py); config_from_args builds the model config
  from them.
Script-specific flags stay in the scripts; the training loop's flags are nanochat.train_settings'.
"""
from nanochat import arch2026
from nanochat.checkpoint_manager import PHASE_DIRS
from nanochat.gpt import GPTConfig
from nanochat.variants import VOCAB_SIZE, variant_config

PRECISIONS = ["auto", "bf16", "fp16", "fp32"]
OPTIMIZERS = ["muon", "adamw"]


def add_device_args(parser):
    parser.add_argument("--device_type", type=str, default="", choices=["", "cuda", "mps", "cpu"],
                        help="device to run on (default: autodetect cuda, then mps, then cpu)")


def add_model_source_args(parser, source="sft", what="checkpoint"):
    """-i/-g/-s: the stage, tag and step of the checkpoint to load (defaults: `source`, the deepest model, the latest)."""
    parser.add_argument("-i", "--source", type=str, default=source, choices=list(PHASE_DIRS),
                        help=f"which stage's {what} (default {source})")
    parser.add_argument("-g", "--model_tag", type=str, default=None, help=f"{what}'s model tag (default: the deepest model)")
    parser.add_argument("-s", "--step", type=int, default=None, help=f"{what}'s step (default: the latest)")


def add_precision_args(parser, precision="auto", optimizer=True, choices=PRECISIONS, help_suffix=""):
    """--precision (autocast dtype) and, with optimizer, --optimizer."""
    parser.add_argument("--precision", type=str, default=precision, choices=list(choices),
                        help=f"autocast dtype (default {precision}{help_suffix})")
    if optimizer:
        parser.add_argument("--optimizer", type=str, default="muon", choices=OPTIMIZERS, help="muon (Muon+AdamW) or adamw")


ARCH_DEFAULTS = dict(depth=20, n_layer=0, model_dim=0, head_dim=0, n_kv_head=0, mlp="relu2", mlp_hidden=0,
                     tie_embeddings=False, norm_weight=False, attn="standard", moe_experts=0, moe_top_k=2,
                     arch_2026=False, **arch2026.OFF)


def add_arch_args(parser, vocab_size=False):
    d = ARCH_DEFAULTS
    g = parser.add_argument_group("architecture (--depth alone derives the rest, as nanochat does; --variant takes a named one)")
    g.add_argument("--depth", type=int, default=d["depth"], help="layers; also sets model_dim = 64*depth unless given (default 20)")
    g.add_argument("--n_layer", type=int, default=d["n_layer"], help="layers (overrides --depth)")
    g.add_argument("--model_dim", type=int, default=d["model_dim"], help="width n_embd (default 64*depth)")
    g.add_argument("--head_dim", type=int, default=d["head_dim"], help="per-head width (default 128, or 64 if 128 does not divide the width)")
    g.add_argument("--n_kv_head", type=int, default=d["n_kv_head"], help="key/value heads for GQA (default: as many as query heads)")
    g.add_argument("--mlp", type=str, default=d["mlp"], choices=["relu2", "swiglu"], help="MLP kind (default relu2)")
    g.add_argument("--mlp_hidden", type=int, default=d["mlp_hidden"],
                   help="MLP hidden size, of each expert with MoE (default 4x width for relu2, 8/3x for swiglu)")
    g.add_argument("--tie_embeddings", action="store_true", help="share the token embedding with the lm_head")
    g.add_argument("--norm_weight", action="store_true", help="RMSNorm with a learned weight")
    g.add_argument("--attn", type=str, default=d["attn"], choices=["standard", "diff"],
                   help="attention: standard, or diff (differential attention: width/(2*head_dim) heads of two maps)")
    g.add_argument("--moe_experts", type=int, default=d["moe_experts"], help="0: a dense MLP (default); N: a mixture of N experts")
    g.add_argument("--moe_top_k", type=int, default=d["moe_top_k"], help="with --moe_experts: experts per token (default 2)")
    add_arch2026_args(g)
    g.add_argument("--variant", type=str, default="", help="a named architecture of nanochat.variants (v01_dense_small ... "
                   "v10_wide_shallow, or a unique prefix such as v03): sets every flag above")
    g.add_argument("--scale", type=str, default="full", choices=["full", "tiny"],
                   help="with --variant: full (the published sizes) or tiny (the same shape shrunk for a CPU)")
    if vocab_size:
        g.add_argument("--vocab_size", type=int, default=0, help="vocabulary size (default 65536; 49,152 with --variant)")
    return g


def add_arch2026_args(g):
    """nanochat's 2026 architecture (karpathy/nanochat 92d63d4): each option, and --arch_2026 for all of them."""
    p = arch2026.PRESET
    g.add_argument("--arch_2026", action="store_true",
                   help="nanochat's 2026 architecture: every option below as nanochat 92d63d4 sets it "
                        f"(qk_gain {p['qk_gain']}, rope_base {p['rope_base']}, window_pattern {p['window_pattern']}, "
                        f"pad_vocab_to {p['pad_vocab_to']}); options given as well override it")
    g.add_argument("--value_embeds", action="store_true",
                   help="value embeddings on alternating layers (the last always), gated per kv head, added to v")
    g.add_argument("--smear", action="store_true", help="mix the previous token's embedding into each position (gated)")
    g.add_argument("--layer_lambdas", action="store_true",
                   help="learned per-layer scalars: x = resid_lambdas[i] * x + x0_lambdas[i] * x0 before block i")
    g.add_argument("--backout", action="store_true", help="subtract backout_lambda x the middle layer's residual before the last norm")
    g.add_argument("--qk_gain", type=float, default=1.0, help="scale q and k after QK-norm (default 1.0; nanochat 2026: 1.2)")
    g.add_argument("--rope_base", type=int, default=10000, help="rotary base (default 10000; nanochat 2026: 100000)")
    g.add_argument("--rope_dtype", type=str, default="bf16", choices=["bf16", "compute"],
                   help="rotary tables rounded to bf16 (default, nanochat 2025) or kept in the compute dtype (2026)")
    g.add_argument("--window_pattern", type=str, default="",
                   help="sliding-window attention, S (short) and L (long = max_seq_len) tiled over the layers, the last "
                        "always L, e.g. SSSL (default: full context everywhere)")
    g.add_argument("--window_short", type=int, default=0,
                   help="the S window in tokens (default 0: nanochat's max_seq_len/4 rounded up to a multiple of 128)")
    g.add_argument("--pad_vocab_to", type=int, default=0,
                   help="pad the embedding and lm_head rows to a multiple of this (nanochat 2026: 64); logits are cut back")
    g.add_argument("--init_scheme", type=str, default="2025", choices=["2025", "2026"], help="weight init: nanochat's 2025 or 2026 scheme")


def arch2026_options(args):
    """The GPTConfig fields of the 2026 options from the flags: --arch_2026's values, and any option given."""
    opts = {k: getattr(args, k, off) for k, off in arch2026.OFF.items()}
    if getattr(args, "arch_2026", False):
        opts.update({k: v for k, v in arch2026.PRESET.items() if opts[k] == arch2026.OFF[k]})
    return opts


def config_from_args(args, vocab_size, sequence_len):
    """Build a validated GPTConfig from the architecture flags; raises ValueError with one line.
    vocab_size 0: 65536, or the registry's with --variant."""
    if getattr(args, "variant", ""):
        given = [k for k, v in ARCH_DEFAULTS.items() if getattr(args, k, v) != v]
        if given:
            raise ValueError(f"--variant sets the whole architecture: drop --{given[0]} (or leave out --variant)")
        return variant_config(args.variant, vocab_size or VOCAB_SIZE, sequence_len, args.scale)
    vocab_size = vocab_size or 65536
    n_layer = args.n_layer or args.depth
    if n_layer <= 0:
        raise ValueError(f"the number of layers must be positive, got {n_layer}")
    model_dim = args.model_dim or 64 * n_layer
    head_dim = args.head_dim or (128 if model_dim % 128 == 0 else 64)
    attn = getattr(args, "attn", "standard")
    per_head = 2 * head_dim if attn == "diff" else head_dim  # a differential head's value is 2*head_dim wide
    if model_dim % per_head != 0:
        raise ValueError(f"head_dim ({head_dim}{' x 2 maps' if attn == 'diff' else ''}) must divide the width model_dim ({model_dim})")
    n_head = model_dim // per_head
    n_kv_head = args.n_kv_head or n_head
    config = GPTConfig(sequence_len=sequence_len, vocab_size=vocab_size, n_layer=n_layer, n_head=n_head,
                       n_kv_head=n_kv_head, n_embd=model_dim, head_dim=head_dim, mlp=args.mlp,
                       mlp_hidden=args.mlp_hidden, tie_embeddings=args.tie_embeddings,
                       norm_weight=args.norm_weight, attn=attn, moe_experts=getattr(args, "moe_experts", 0),
                       moe_top_k=getattr(args, "moe_top_k", 2), **arch2026_options(args))
    return config.validate()


def require_positive(args, names):
    """A one-line error for the first of these flags that is not positive."""
    from nanochat.common import die
    for name in names:
        if getattr(args, name) <= 0:
            die(f"--{name} must be positive, got {getattr(args, name)}")


def device_dtype_config(args):
    """The benchmarks' setup from the flags: (device, autocast dtype, model config), --threads applied; one-line errors."""
    import torch
    from nanochat.common import UserError, compute_init, die, get_compute_dtype
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        device = compute_init(args.device_type)[4]
        return device, get_compute_dtype(device.type, args.precision), config_from_args(args, args.vocab_size, args.max_seq_len)
    except (UserError, ValueError) as e:
        die(str(e))
