"""
Parameter calculator: parameters per component, FLOPs per token and the tokens a tokens:params
ratio asks for, counted by the model itself (built on the meta device: exact, no memory used).
With --target_params it proposes shapes near a parameter budget instead.

    python -m scripts.arch_calc --depth 20                          # nanochat d20
    python -m scripts.arch_calc --n_layer 20 --model_dim 768 --head_dim 64 --n_kv_head 4 \\
        --mlp swiglu --mlp_hidden 2048 --vocab_size 49152 --tie_embeddings --norm_weight   # Hamner-164M
    python -m scripts.arch_calc --target_params 164M --mlp swiglu --vocab_size 49152 --tie_embeddings
    python -m scripts.arch_calc --variant v05_moe_small     # a named contestant: total and active parameters
    python -m scripts.arch_calc --depth 20 --arch_2026      # nanochat's 2026 architecture (value embeddings, ...)
"""
import json
import math
import re
import sys

import torch

from nanochat.common import ArgumentParser, die
from nanochat import arch2026
from nanochat.flags import add_arch_args, arch2026_options, config_from_args
from nanochat.gpt import GPT, GPTConfig

LABELS = {
    "wte": "token embedding (wte)",
    "value_embeds": "value embeddings (value_embeds)",
    "attn.c_q": "attention query (c_q)",
    "attn.c_k": "attention key (c_k)",
    "attn.c_v": "attention value (c_v)",
    "attn.c_proj": "attention output (c_proj)",
    "attn.lambdas": "differential attention lambdas",
    "attn.ve_gate": "value-embedding gates (ve_gate)",
    "mlp.router": "MoE router",
    "mlp.c_fc": "MLP up (c_fc)",
    "mlp.c_gate": "MLP gate (c_gate)",
    "mlp.c_proj": "MLP down (c_proj)",
    "norms": "norm weights",
    "scalars": "2026 scalars (lambdas, smear gate)",
    "lm_head": "lm_head",
}


def parse_count(text):
    """'164M', '1.2B', '38e6', '500k', '1,000,000' -> int"""
    m = re.fullmatch(r"\s*([0-9][0-9_,]*(?:\.[0-9]+)?(?:e[0-9]+)?)\s*([kmbt]?)\s*", text.lower())
    if not m:
        raise ValueError(f"cannot read a parameter count from {text!r} (examples: 164M, 1.2B, 38e6)")
    value = float(m.group(1).replace(",", "").replace("_", "")) * {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}[m.group(2)]
    if value < 1:
        raise ValueError(f"the parameter count must be at least 1, got {text!r}")
    return int(round(value))


def human(n):
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return str(int(n))


def meta_model(config):
    with torch.device("meta"):
        return GPT(config)


def describe(config):
    c = config
    kv = f", {c.n_kv_head} kv heads" if c.n_kv_head != c.n_head else ""
    if c.attn == "diff":  # each head: two query/key maps of head_dim, one value of 2*head_dim
        attn = f"differential attention: {c.n_head} heads of 2 maps x {c.head_dim}{kv}"
    else:
        attn = f"{c.n_head} heads of {c.head_dim}{kv}"
    mlp = f"{c.mlp} MLP hidden {c.mlp_hidden}"
    if c.moe_experts:
        mlp = f"MoE: {c.moe_experts} experts (top {c.moe_top_k} per token), each a {mlp}"
    on = [k for k in ("value_embeds", "smear", "layer_lambdas", "backout") if getattr(c, k)]
    on += [f"{k} {getattr(c, k)}" for k in ("qk_gain", "rope_base", "rope_dtype", "pad_vocab_to", "init_scheme")
           if getattr(c, k) != arch2026.OFF[k]]
    if c.window_pattern:
        on.append(f"window_pattern {c.window_pattern} (S {arch2026.short_window(c)}, L {c.sequence_len})")
    return (f"{c.n_layer} layers, width {c.n_embd}, {attn}, {mlp}, vocab {c.vocab_size:,}, "
            f"{'tied' if c.tie_embeddings else 'untied'} embeddings, norms {'with' if c.norm_weight else 'without'} weight, "
            f"sequence length {c.sequence_len}" + (f"; 2026: {', '.join(on)}" if on else ""))


def report(config, ratio):
    """Everything the calculator knows about one configuration, as a dict (the --json output)."""
    model = meta_model(config)
    counts = model.param_counts()
    total = counts["total"]
    flops = model.estimate_flops()
    tokens = int(round(ratio * total))
    return {
        "config": config.to_dict(),
        "params": counts,
        "total": total,
        "total_without_embeddings": total - counts["wte"] - counts["lm_head"] - counts.get("value_embeds", 0),
        # what a token runs: with MoE, top_k of the experts (all of them are stored and trained)
        "active": model.active_params(),
        "flops_per_token": flops,
        "ratio": ratio,
        "tokens": tokens,
        "training_flops": flops * tokens,
    }


def quick_count(V, n_layer, C, head_dim, n_kv_head, mlp, mlp_hidden, tie, norm_weight, opts=None):
    """The model's parameter count by formula, to screen thousands of shapes quickly; the
    proposals shown are then counted by the model itself. opts: the 2026 options (arch2026_options)."""
    opts = opts or arch2026.OFF
    M = mlp_hidden or (64 * math.ceil(8 * C / 3 / 64) if mlp == "swiglu" else 4 * C)
    Ckv = n_kv_head * head_dim
    per_layer = 2 * C * C + 2 * C * Ckv + (3 if mlp == "swiglu" else 2) * C * M
    norms = (2 * n_layer + 2) * C if norm_weight else 0
    pad = max(1, opts["pad_vocab_to"])
    V = -(-V // pad) * pad
    extra = 2 * n_layer * opts["layer_lambdas"] + (arch2026.SMEAR_CHANNELS + 1) * opts["smear"] + opts["backout"]
    if opts["value_embeds"]:  # every other layer, the last always: ceil(n_layer / 2) tables and gates
        extra += (n_layer + 1) // 2 * (V * Ckv + arch2026.VE_GATE_CHANNELS * n_kv_head)
    return V * C * (1 if tie else 2) + n_layer * per_layer + norms + extra


def propose(args, explicit, target, top, tolerance):
    """Shapes within `tolerance` of `target` parameters, closest first: for each (layers, width,
    head_dim), the number of kv heads that comes closest (give --n_kv_head to fix it)."""
    layers = [args.n_layer or args.depth] if explicit & {"n_layer", "depth"} else range(1, 129)
    head_dims = [args.head_dim] if "head_dim" in explicit else [64, 128]
    best = {}
    for n_layer in layers:
        for hd in head_dims:
            if "model_dim" in explicit:
                widths = [args.model_dim] if args.model_dim % hd == 0 else []
            else:
                widths = range(hd, 16384 + 1, hd)
            for C in widths:
                # keep shapes sensible when both depth and width are free: width/depth 24..160
                # covers the reference configs (Hamner 38, nanochat 64, ittybitty 128)
                if not explicit & {"n_layer", "depth", "model_dim"} and not 24 <= C / n_layer <= 160:
                    continue
                n_head = C // hd
                kvs = [args.n_kv_head] if "n_kv_head" in explicit else [k for k in range(1, n_head + 1) if n_head % k == 0]
                for kv in kvs:
                    if kv <= 0 or n_head % kv:
                        continue
                    n = quick_count(args.vocab_size, n_layer, C, hd, kv, args.mlp, args.mlp_hidden, args.tie_embeddings,
                                    args.norm_weight, arch2026_options(args))
                    err = abs(n - target) / target
                    if err > tolerance:
                        continue
                    key = (n_layer, C, hd)
                    rank = (err, -kv)  # on a tie, more kv heads
                    if key not in best or rank < best[key][0]:
                        best[key] = (rank, n_layer, C, hd, kv)
    proposals = []
    for _, n_layer, C, hd, kv in sorted(best.values())[:top]:
        config = GPTConfig(sequence_len=args.max_seq_len, vocab_size=args.vocab_size, n_layer=n_layer, n_head=C // hd,
                           n_kv_head=kv, n_embd=C, head_dim=hd, mlp=args.mlp, mlp_hidden=args.mlp_hidden,
                           tie_embeddings=args.tie_embeddings, norm_weight=args.norm_weight, **arch2026_options(args)).validate()
        params = meta_model(config).param_counts()["total"]  # the model's own count
        flags = f"--n_layer {n_layer} --model_dim {C} --head_dim {hd} --n_kv_head {kv} --mlp {args.mlp}"
        if args.mlp_hidden:
            flags += f" --mlp_hidden {args.mlp_hidden}"
        flags += f" --vocab_size {args.vocab_size}"
        flags += " --tie_embeddings" * args.tie_embeddings + " --norm_weight" * args.norm_weight
        flags += " --arch_2026" * args.arch_2026  # (other 2026 flags given: pass them as well)
        proposals.append({"n_layer": n_layer, "model_dim": C, "head_dim": hd, "n_head": C // hd, "n_kv_head": kv,
                          "mlp": args.mlp, "mlp_hidden": config.mlp_hidden, "params": params,
                          "error_pct": 100.0 * (params - target) / target, "flags": flags})
    proposals.sort(key=lambda p: (abs(p["error_pct"]), p["n_layer"]))
    return proposals

# -----------------------------------------------------------------------------
# settings

parser = ArgumentParser(description="Parameter counts per component, FLOPs per token and data for a tokens:params ratio "
                                    "(or, with --target_params, shapes near a parameter budget).")
add_arch_args(parser, vocab_size=True)
parser.add_argument("--max_seq_len", type=int, default=2048, help="sequence length (for the attention FLOPs; default 2048)")
parser.add_argument("--ratio", type=float, default=20, help="tokens:params ratio for the data budget (default 20, Chinchilla)")
parser.add_argument("--target_params", type=str, default="", help="propose shapes near this many parameters (164M, 1.2B, 38e6)")
parser.add_argument("--top", type=int, default=10, help="how many proposals to show (default 10)")
parser.add_argument("--tolerance", type=float, default=10, help="proposals within this %% of the target (default 10)")
parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
args = parser.parse_args()
# the architecture flags the user gave (a proposal keeps those fixed and varies the others)
given = {a.split("=")[0].removeprefix("--").replace("-", "_") for a in sys.argv[1:] if a.startswith("--")}

# -----------------------------------------------------------------------------
# proposals near a parameter budget

if args.target_params:
    args.vocab_size = args.vocab_size or 65536
    # the search is over dense shapes (quick_count's formula); the other kinds are only counted
    dense_only = args.attn != "standard" or args.moe_experts != 0
    note = ("proposals are dense (standard attention, one MLP): --attn and --moe_experts are not searched; "
            "count a shape of those without --target_params") if dense_only else ""
    try:
        if args.variant:
            raise ValueError("--variant names a whole architecture: count it without --target_params")
        target = parse_count(args.target_params)
        if args.top <= 0 or args.tolerance <= 0:
            raise ValueError("--top and --tolerance must be positive")
        if args.vocab_size <= 0 or args.max_seq_len <= 0:
            raise ValueError("--vocab_size and --max_seq_len must be positive")
        proposals = propose(args, given, target, args.top, args.tolerance / 100)
    except ValueError as e:
        die(str(e))
    if args.json:
        print(json.dumps({"target_params": target, "proposals": proposals, **({"note": note} if note else {})}))
        sys.exit(0)
    if not proposals:
        die(f"no shape within {args.tolerance:g}% of {human(target)} parameters with the given flags; try a larger --tolerance")
    if note:
        print(f"note: {note}")
    print(f"shapes near {human(target)} parameters ({args.mlp} MLP, vocab {args.vocab_size:,}, "
          f"{'tied' if args.tie_embeddings else 'untied'} embeddings), closest first:")
    print(f"{'layers':>6} {'width':>6} {'heads':>9} {'kv':>3} {'w/l':>5} {'params':>15} {'error':>7}   flags")
    for p in proposals:
        heads = f"{p['n_head']}x{p['head_dim']}"
        print(f"{p['n_layer']:>6} {p['model_dim']:>6} {heads:>9} {p['n_kv_head']:>3} {p['model_dim'] / p['n_layer']:>5.0f} "
              f"{p['params']:>15,} {p['error_pct']:>+6.1f}%   {p['flags']}")
    sys.exit(0)

# -----------------------------------------------------------------------------
# one configuration

try:
    config = config_from_args(args, args.vocab_size, args.max_seq_len)
    if args.ratio <= 0:
        raise ValueError(f"--ratio must be positive, got {args.ratio}")
except ValueError as e:
    die(str(e))
r = report(config, args.ratio)
if args.json:
    print(json.dumps(r))
    sys.exit(0)

total = r["total"]
E = config.moe_experts
print(describe(config))
print(f"{'component':<36} {'parameters':>15} {'share':>7}")
for key, n in r["params"].items():
    if key == "total":
        continue
    label = LABELS[key]
    if key == "lm_head" and config.tie_embeddings:
        label += " (tied to wte)"
    elif key == "attn.ve_gate":
        label += f" x{len(arch2026.ve_layers(config))}"
    elif key.startswith(("attn", "mlp")):
        label += f" x{config.n_layer}" + (f" x{E} experts" if E and key.startswith("mlp.c") else "")
    print(f"{label:<36} {n:>15,} {100 * n / total:>6.1f}%")
print(f"{'total':<36} {total:>15,} {100.0:>6.1f}%  ({human(total)})")
print(f"{'total without embeddings':<36} {r['total_without_embeddings']:>15,} "
      f"{100 * r['total_without_embeddings'] / total:>6.1f}%  (without wte, lm_head{' and value_embeds' if config.value_embeds else ''})")
if E:
    print(f"{'active per token':<36} {r['active']:>15,} {100 * r['active'] / total:>6.1f}%  "
          f"({human(r['active'])}: {config.moe_top_k} of the {E} experts)")
print(f"FLOPs per token (forward + backward{', active experts only' if E else ''}): {r['flops_per_token']:.3e}")
print(f"tokens for a {args.ratio:g}:1 tokens:params ratio: {human(r['tokens'])} "
      f"({r['tokens']:,.0f}), training FLOPs {r['training_flops']:.2e}")
