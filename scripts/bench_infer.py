"""
Inference benchmark on a random-weight model (no checkpoint or tokenizer needed): time to first
token for several prompt lengths, decode tokens/s at several batch sizes, the fraction of the
device's memory bandwidth achieved, and peak memory; the eager KV-cache path against the fast
path (nanochat.fast_decode: a CUDA graph on CUDA, the static-shape step elsewhere).

    # Hamner-164M on a GPU
    python -m scripts.bench_infer --n_layer 20 --model_dim 768 --head_dim 64 --n_kv_head 4 --mlp swiglu \
        --mlp_hidden 2048 --tie_embeddings --norm_weight --vocab_size 49152 --max_seq_len 1024 --prompt_lengths 128,512
    # tiny, on a CPU
    python -m scripts.bench_infer --depth 2 --model_dim 128 --vocab_size 512 --max_seq_len 128 \
        --prompt_lengths 16,64 --batch_sizes 1,8 --decode_tokens 32 --json
    # a contestant of nanochat.variants, shrunk for a CPU
    python -m scripts.bench_infer --variant v07_hybrid_small --scale tiny --vocab_size 512 --max_seq_len 128

The fast decoder covers standard attention with a dense MLP (fast_decode.supports): for
differential attention or MoE its modes (fast, static, graph, compile) are skipped with a note (and
listed under "skipped" in the --json output); the eager KV-cache path, and naive, are measured.

Bandwidth: a decode step must read every matmul weight once (in the compute dtype) plus each
row's filled KV cache (of an MoE layer, the experts the batch can reach: min(experts, batch x
top_k) of them); bytes per step over the step time, divided by the device's peak bandwidth
(nanochat.hardware), is the fraction reported. Both paths are charged the same minimal bytes, so
the fractions compare like the speeds do. Decode is timed as a greedy loop that stays on the
device (argmax fed back, no host synchronisation until the end), after an untimed pass of the same
length that captures the graphs and warms the allocator.
"""
import json
import math
import sys
import time

import torch

from nanochat.common import ArgumentParser, autocast_ctx, die, synchronize
from nanochat.attention import kv_shapes
from nanochat.flags import add_arch_args, add_device_args, add_precision_args, device_dtype_config, require_positive
from nanochat.gpt import build_model
from nanochat.fast_decode import make_decoder, fast_decode_mode, supports as fast_decode_supports, MODES
from nanochat.hardware import device_name, get_peak_bandwidth, peak_memory, reset_peak_memory

# -----------------------------------------------------------------------------
# settings
parser = ArgumentParser(description="Time TTFT and decode speed of a random-weight model: eager KV cache against the fast decode path.")
add_device_args(parser)
add_precision_args(parser, optimizer=False, help_suffix="; auto: bf16 on CUDA where supported, else fp16 with a GradScaler; fp32 on CPU")
add_arch_args(parser, vocab_size=True)
parser.add_argument("--max_seq_len", type=int, default=2048, help="the model's training length (rotary table: 10x)")
parser.add_argument("--prompt_lengths", type=str, default="32,128,512", help="comma-separated prompt lengths for TTFT")
parser.add_argument("--batch_sizes", type=str, default="1,8,32", help="comma-separated decode batch sizes")
parser.add_argument("--decode_prompt_len", type=int, default=64, help="prompt length before the timed decode")
parser.add_argument("--decode_tokens", type=int, default=128, help="timed decode steps per batch size")
parser.add_argument("--modes", type=str, default="eager,fast",
                    help=f"comma-separated: naive (no KV cache), eager (KV cache), fast (graph on CUDA, static elsewhere), or {', '.join(MODES)}")
parser.add_argument("--repeats", type=int, default=3, help="TTFT and decode: best of this many runs")
parser.add_argument("--check_tokens", type=int, default=32, help="greedy tokens compared between the modes at batch 1 (0 = skip)")
parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0 = torch's default)")
parser.add_argument("--seed", type=int, default=42)
parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
args = parser.parse_args()


def int_list(flag, text):
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        die(f"--{flag} must be comma-separated integers, got {text!r}")
    if not values or min(values) <= 0:
        die(f"--{flag} must list positive integers, got {text!r}")
    return values

prompt_lengths = int_list("prompt_lengths", args.prompt_lengths)
batch_sizes = int_list("batch_sizes", args.batch_sizes)
require_positive(args, ("decode_prompt_len", "decode_tokens", "repeats"))

# -----------------------------------------------------------------------------
# setup
device, dtype, config = device_dtype_config(args)
device_type = device.type
fast_mode = fast_decode_mode(device) or "static"
modes = []
for m in (m.strip() for m in args.modes.split(",") if m.strip()):
    m = fast_mode if m == "fast" else m
    if m not in ("naive", "eager") + MODES:
        die(f"--modes: unknown mode {m!r} (naive, eager, fast, {', '.join(MODES)})")
    if m == "graph" and device_type != "cuda":
        die("--modes graph needs a CUDA device")
    if m not in modes:
        modes.append(m)
# the fast decoder implements the standard attention with a dense MLP only: skip its modes for the others
skipped = {}
if not fast_decode_supports(config):
    layers = " and ".join(x for x, on in (("differential attention", config.attn == "diff"),
                                          (f"MoE ({config.moe_experts} experts)", config.moe_experts)) if on)
    reason = f"the fast decoder does not support {layers}"
    skipped = {m: reason for m in modes if m in MODES}
    modes = [m for m in modes if m not in skipped]
    if not modes:
        die(f"--modes: nothing left to measure ({reason}): add eager or naive")
    if skipped:  # on stderr with --json, whose stdout is the one JSON object
        print(f"note: skipping mode{'s' if len(skipped) > 1 else ''} {', '.join(skipped)}: {reason} "
              f"(the engine decodes it on the eager KV-cache path)", file=sys.stderr if args.json else sys.stdout)
max_len_needed = max(max(prompt_lengths) + 1, args.decode_prompt_len + args.decode_tokens + 1, args.check_tokens + 8)
if max_len_needed > 10 * config.sequence_len:  # the model's rotary table covers 10x its training length
    die(f"prompts and decode need {max_len_needed} positions but the model's rotary table has {10 * config.sequence_len}: raise --max_seq_len")
torch.manual_seed(args.seed)
model = build_model(config, device)
with torch.no_grad():
    # random weights everywhere (the real init zeroes the output projections and the lm_head,
    # which would make every logit equal and greedy decoding meaningless)
    for p in model.parameters():
        if p.ndim == 2:
            p.normal_(0, 1 / math.sqrt(p.size(1)))
model.eval()
autocast = autocast_ctx(device_type, dtype)
cache_dtype = dtype if device_type == "cuda" else model.transformer.wte.weight.dtype
gen = torch.Generator().manual_seed(args.seed)
def random_prompt(rows, length):
    return torch.randint(0, config.vocab_size, (rows, length), generator=gen).to(device)

# bytes a decode step must read: every matmul weight once, in the compute dtype (a tied lm_head is
# read as the classifier; the embedding lookup reads only B rows; of an MoE layer's experts the
# min(experts, B x top_k) the batch can be routed to), plus the filled KV cache (keys and values,
# whose shapes differ for differential attention)
elt = torch.tensor([], dtype=dtype).element_size()
matmul_weights = sum(p.numel() for p in model.parameters() if p.ndim == 2) - model.transformer.wte.weight.numel()
if config.tie_embeddings:
    matmul_weights += model.lm_head.weight.numel()
# the experts' share of that (each layer's experts are the same size): read only as far as routed to
expert_weights = sum(p.numel() for block in model.transformer.h if config.moe_experts
                     for p in block.mlp.experts.parameters() if p.ndim == 2)

def weight_bytes_at(batch_size):
    if not config.moe_experts:
        return matmul_weights * elt
    reached = min(config.moe_experts, batch_size * config.moe_top_k)
    return (matmul_weights - expert_weights + expert_weights * reached // config.moe_experts) * elt

weight_bytes = weight_bytes_at(1)
(k_heads, k_dim), (v_heads, v_dim) = kv_shapes(config)
kv_bytes_per_position = config.n_layer * (k_heads * k_dim + v_heads * v_dim) * torch.tensor([], dtype=cache_dtype).element_size()
peak_bw = get_peak_bandwidth(device)


class Eager:
    """The engine's eager path: gpt.KVCache, prefill at batch 1 copied to every row."""
    def __init__(self, batch_size, max_len):
        self.batch_size = batch_size
        self.cache = model.make_kv_cache(batch_size, max_len, dtype=cache_dtype)

    @torch.inference_mode()
    def prefill(self, ids):
        with autocast:
            one = model.make_kv_cache(1, ids.size(1), dtype=cache_dtype)
            logits = model(ids, kv_cache=one)[:, -1, :]
            self.cache.prefill_from(one)
        return logits.expand(self.batch_size, -1)

    @torch.inference_mode()
    def step(self, next_ids):
        with autocast:
            return model(next_ids.view(self.batch_size, 1), kv_cache=self.cache)[:, -1, :]


class Naive:
    """A plain loop without a KV cache (model.generate): every step reruns the whole sequence."""
    def __init__(self, batch_size, max_len):
        self.batch_size = batch_size

    @torch.inference_mode()
    def prefill(self, ids):
        self.ids = ids.expand(self.batch_size, -1)
        with autocast:
            return model(self.ids)[:, -1, :]

    @torch.inference_mode()
    def step(self, next_ids):
        self.ids = torch.cat([self.ids, next_ids.view(self.batch_size, 1)], dim=1)
        with autocast:
            return model(self.ids)[:, -1, :]


def make(mode, batch_size, max_len):
    if mode == "naive":
        return Naive(batch_size, max_len)
    if mode == "eager":
        return Eager(batch_size, max_len)
    # as the engine makes it: length rounded up to whole 256-position attention windows
    return make_decoder(model, batch_size, max_len, dtype=dtype, mode=mode)


@torch.inference_mode()
def greedy(dec, prompt, n):
    """Prefill, then n-1 steps feeding back the argmax; stays on the device."""
    logits = dec.prefill(prompt)
    out = [logits.argmax(-1, keepdim=True)]
    for _ in range(n - 1):
        logits = dec.step(out[-1])
        out.append(logits.argmax(-1, keepdim=True))
    return torch.cat(out, 1)


def ttft(mode, length):
    """Prompt on the host -> first token id on the host, best of --repeats (after one warm-up)."""
    dec = make(mode, 1, length + 1)
    prompt = random_prompt(1, length).cpu()
    best = float("inf")
    for _ in range(args.repeats + 1):
        synchronize(device_type)
        t0 = time.perf_counter()
        with torch.inference_mode():
            dec.prefill(prompt.to(device)).argmax(-1).item()
        best = min(best, time.perf_counter() - t0)
    return best


def decode(mode, batch_size):
    n, p = args.decode_tokens, args.decode_prompt_len
    dec = make(mode, batch_size, p + n + 1)
    prompt = random_prompt(1, p)
    reset_peak_memory(device)
    greedy(dec, prompt, n + 1)  # untimed: captures the graphs, warms caches and the allocator
    dt = float("inf")
    for _ in range(args.repeats):  # best of: other processes on a shared machine only add time
        with torch.inference_mode():
            logits = dec.prefill(prompt)
            synchronize(device_type)
            t0 = time.perf_counter()
            for _ in range(n):
                logits = dec.step(logits.argmax(-1, keepdim=True))
            synchronize(device_type)
        dt = min(dt, time.perf_counter() - t0)
    step_s = dt / n
    avg_context = p + (n + 1) / 2
    bytes_per_step = weight_bytes_at(batch_size) + batch_size * avg_context * kv_bytes_per_position
    row = {"mode": mode, "batch_size": batch_size, "context": f"{p}..{p + n}", "ms_per_step": 1000 * step_s,
           "tokens_per_s": batch_size / step_s, "bytes_per_step": bytes_per_step,
           "bandwidth_GBps": bytes_per_step / step_s / 1e9,
           "bandwidth_fraction": bytes_per_step / step_s / peak_bw if peak_bw else None}
    if device_type == "cuda":
        row["peak_memory"] = peak_memory(device)
    return row

# -----------------------------------------------------------------------------
# measure
try:
    ttft_rows = [{"mode": m, "prompt_len": L, "ms": 1000 * ttft(m, L)} for L in prompt_lengths for m in modes]
    decode_rows = [decode(m, B) for B in batch_sizes for m in modes]
    tokens = {}
    if args.check_tokens > 0:
        prompt = random_prompt(1, 8)
        for m in modes:
            tokens[m] = greedy(make(m, 1, 8 + args.check_tokens), prompt, args.check_tokens)[0].tolist()
except torch.OutOfMemoryError:
    die("out of memory: try smaller --batch_sizes, --prompt_lengths or --decode_tokens")

speedup = {}
for B in batch_sizes:
    by_mode = {r["mode"]: r["tokens_per_s"] for r in decode_rows if r["batch_size"] == B}
    if "eager" in by_mode and len(by_mode) > 1:
        speedup[B] = {m: v / by_mode["eager"] for m, v in by_mode.items() if m != "eager"}
result = {
    "benchmark": "infer",
    "device": device_name(device),
    "device_type": device_type,
    "torch": torch.__version__,
    "date": time.strftime("%Y-%m-%d"),
    "config": config.to_dict(),
    "num_params": model.num_params(),
    "active_params": model.active_params(),
    "precision": str(dtype).removeprefix("torch."),
    "threads": torch.get_num_threads(),
    "modes": modes,
    "skipped": skipped,
    "weight_bytes_per_step": weight_bytes,
    "kv_bytes_per_position": kv_bytes_per_position,
    "peak_bandwidth": peak_bw,
    "ttft": ttft_rows,
    "decode": decode_rows,
    "speedup_vs_eager": speedup,
    "tokens_match": (len(set(map(tuple, tokens.values()))) == 1) if len(tokens) > 1 else None,
    "peak_memory": peak_memory(device),
}

if args.json:
    print(json.dumps(result))
else:
    c = config
    layers = (f"{c.mlp}" + (f", MoE {c.moe_experts} experts top {c.moe_top_k}" if c.moe_experts else "")
              + (", differential attention" if c.attn == "diff" else ""))
    active = f" ({result['active_params']:,} active)" if c.moe_experts else ""
    print(f"device: {result['device']} | torch {torch.__version__} | {result['precision']} | "
          f"peak bandwidth: {f'{peak_bw / 1e12:.2f} TB/s' if peak_bw else 'n/a'}")
    print(f"model: {result['num_params']:,} parameters{active} | n_layer {c.n_layer}, n_embd {c.n_embd}, heads {c.n_head} "
          f"({c.n_kv_head} kv) of {c.head_dim}, {layers}, vocab {c.vocab_size} | weights read per step: {weight_bytes / 1e6:.1f} MB")
    for m, reason in skipped.items():
        print(f"skipped: {m} ({reason})")
    print("time to first token (prefill + argmax, best of %d):" % args.repeats)
    for r in ttft_rows:
        print(f"  {r['mode']:>8} | prompt {r['prompt_len']:>6} | {r['ms']:9.2f} ms")
    print(f"decode ({args.decode_tokens} greedy steps after a {args.decode_prompt_len}-token prompt, best of {args.repeats}):")
    for r in decode_rows:
        frac = f"{100 * r['bandwidth_fraction']:.1f}%" if r["bandwidth_fraction"] is not None else "n/a"
        print(f"  {r['mode']:>8} | batch {r['batch_size']:>3} | {r['ms_per_step']:8.2f} ms/step | "
              f"{r['tokens_per_s']:10.1f} tok/s | {r['bandwidth_GBps']:8.2f} GB/s | bandwidth: {frac}")
    for B, s in speedup.items():
        print(f"  speedup at batch {B}: " + ", ".join(f"{m} {v:.2f}x" for m, v in s.items()))
    if result["tokens_match"] is not None:
        print(f"greedy tokens (batch 1, {args.check_tokens} tokens) identical across modes: {result['tokens_match']}")
    print("peak memory: " + ", ".join(f"{k} {v / 2**30:.2f} GiB" for k, v in result["peak_memory"].items()))
