"""
VRAM calculator: GPU memory of training, per component, for a list of batch sizes; which fit the
card and the largest that does. --measure runs real training steps on a CUDA GPU and compares.

    python -m scripts.vram_calc --depth 20 --batch_sizes 8,16,32 --gpu_mem_gb 80
    python -m scripts.vram_calc --n_layer 20 --model_dim 768 --head_dim 64 --n_kv_head 4 --mlp swiglu \\
        --mlp_hidden 2048 --vocab_size 49152 --tie_embeddings --norm_weight --max_seq_len 1024 \\
        --batch_sizes 16,32 --precision bf16 --grad_checkpoint            # Hamner-164M on a 24 GB card
    python -m scripts.vram_calc --variant v05_moe_small --max_seq_len 1024 --batch_sizes 8,16   # a named contestant
    python -m scripts.vram_calc --depth 32 --max_seq_len 2048 --batch_sizes 1,2,4 --lora_rank 16 --grad_checkpoint
                                                # LoRA: frozen base, adapters only; full fine-tuning beside it

The estimate is of torch.cuda.max_memory_reserved() ("reserved"); the CUDA context comes on top
of it ("total"), and a batch fits when the total leaves a 5% margin of the card free.
"""
import json
import sys

import torch

from nanochat.common import ArgumentParser, die
from nanochat.flags import add_arch_args, add_precision_args, config_from_args
from nanochat import batch_plan, vram, vram_measure
from nanochat.common import UserError
from nanochat.lora import add_lora_args, lora_from_args

LABELS = {
    "weights": "weights (fp32)",
    "gradients": "gradients (fp32)",
    "optimizer": "optimizer state",
    "activations": "activations",
    "logits": "logits + loss",
    "workspace": "workspace",
    "allocator": "allocator overhead",
    "reserved": "= reserved (max_memory_reserved)",
    "cuda_context": "CUDA context",
    "total": "= total on the card",
}

# -----------------------------------------------------------------------------
# settings

parser = ArgumentParser(description="GPU memory of training per component, per batch size; which batch sizes fit the card.")
add_arch_args(parser, vocab_size=True)
parser.add_argument("--max_seq_len", type=int, default=2048, help="sequence length (default 2048)")
add_precision_args(parser, precision="bf16", choices=vram.PRECISIONS)
parser.add_argument("--grad_checkpoint", action="store_true", help="recompute each block's activations in backward")
parser.add_argument("--compile", action="store_true", help="torch.compile the model")
parser.add_argument("--batch_sizes", type=str, default="1,2,4,8,16,32", help="comma-separated batch sizes (default 1,2,4,8,16,32)")
parser.add_argument("--gpu_mem_gb", type=float, default=24, help="memory of the card in GiB (default 24)")
parser.add_argument("--measure", action="store_true", help="also train a few steps per batch size on the CUDA GPU and compare")
parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
add_lora_args(parser)  # (only --lora_rank, --lora_targets and --lora_dropout change memory)
args = parser.parse_args()

try:
    config = config_from_args(args, args.vocab_size, args.max_seq_len)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    if not batch_sizes or min(batch_sizes) <= 0:
        raise ValueError(f"--batch_sizes must be positive integers, got {args.batch_sizes!r}")
    if args.gpu_mem_gb <= 0:
        raise ValueError(f"--gpu_mem_gb must be positive, got {args.gpu_mem_gb}")
    lora = lora_from_args(args)
except (ValueError, UserError) as e:
    die(str(e).replace("invalid literal for int() with base 10", "--batch_sizes takes integers like 8,16,32, got"))
if args.measure and not torch.cuda.is_available():
    die("--measure needs a CUDA GPU (it reads torch.cuda.max_memory_reserved); none is available here")
if args.measure and lora:
    die("--measure runs full training steps: drop --lora_rank (a LoRA run checks its estimate itself, at step 3 on CUDA)")
gpu_mem = int(args.gpu_mem_gb * vram.GiB)
settings = dict(precision=args.precision, optimizer=args.optimizer, grad_checkpoint=args.grad_checkpoint, compile=args.compile)
full_settings = dict(settings)  # full fine-tuning, for the comparison a LoRA estimate prints
if lora:
    settings["lora"] = lora

# -----------------------------------------------------------------------------
# estimate (and measure)

T = args.max_seq_len
rows = []
for B in batch_sizes:
    est = vram.estimate_memory(config, B, T, **settings)
    phases = vram.estimate_phases(config, B, T, **settings)
    row = {"batch_size": B, **est, "fits": batch_plan.fits(config, B, T, gpu_mem_bytes=gpu_mem, **settings),
           "peak_phase": vram.peak_phase(phases)}
    if lora:
        row["full_total"] = vram.estimate_memory(config, B, T, **full_settings)["total"]
        row["full_fits"] = batch_plan.fits(config, B, T, gpu_mem_bytes=gpu_mem, **full_settings)
    if args.measure:
        try:
            row["measured_reserved"] = vram_measure.measure_memory(config, B, T, device="cuda", **settings)
            row["error_pct"] = 100.0 * (est["reserved"] - row["measured_reserved"]) / row["measured_reserved"]
        except torch.OutOfMemoryError:
            row["measured_reserved"] = None  # out of memory on this GPU
    rows.append(row)
fitting = [r["batch_size"] for r in rows if r["fits"]]
info = vram.param_info(config)
result = {
    "config": config.to_dict(), "params": {"total": info["total"], "active": info["active"]}, "seq_len": T, **settings,
    "gpu_mem_bytes": gpu_mem,
    "usable_bytes": int(gpu_mem * (1 - batch_plan.SAFETY_MARGIN)), "batches": rows,
    "largest_fitting": max(fitting) if fitting else 0,
    "auto_batch_size": batch_plan.auto_batch_size(config, T, gpu_mem_bytes=gpu_mem, **settings),
}
if lora:
    from nanochat.vram_lora import adapter_info
    result["lora"] = {**lora, "adapter_params": adapter_info(config, lora)["adapters"],
                      "full_auto_batch_size": batch_plan.auto_batch_size(config, T, gpu_mem_bytes=gpu_mem, **full_settings)}
if args.measure:
    result["measured_cuda_context"] = vram_measure.measure_cuda_context("cuda")
    result["device"] = torch.cuda.get_device_name()

if args.json:
    print(json.dumps(result))
    sys.exit(0)

# -----------------------------------------------------------------------------
# table

def gib(n):
    return "-" if n is None else f"{n / vram.GiB:.2f}"

def describe(c):
    """One line: the shape, the attention kind and the experts; parameters (all experts are
    stored: weights, gradients and optimizer state count each of them) and, for MoE, those a token uses."""
    if c.attn == "diff":
        attn = f"differential attention, {c.n_head} heads of 2 maps x {c.head_dim} ({c.n_kv_head} kv)"
    else:
        attn = f"{c.n_head} heads of {c.head_dim} ({c.n_kv_head} kv)"
    mlp = f"{c.mlp} MLP {c.mlp_hidden}"
    if c.moe_experts:
        mlp = f"MoE: {c.moe_experts} experts of {mlp}, top {c.moe_top_k}"
    info = vram.param_info(c)
    params = f"{info['total'] / 1e6:.1f}M parameters" + (f" ({info['active'] / 1e6:.1f}M active)" if c.moe_experts else "")
    return (f"model: {c.n_layer} layers, width {c.n_embd}, {attn}, {mlp}, vocab {c.vocab_size:,}, "
            f"{'tied' if c.tie_embeddings else 'untied'} embeddings; {params}")


print(describe(config))
print(f"training: sequence {T}, {args.precision}, {'LoRA (AdamW)' if lora else args.optimizer}, grad checkpointing "
      f"{'on' if args.grad_checkpoint else 'off'}, {'compiled' if args.compile else 'eager'}; card {args.gpu_mem_gb:g} GiB, "
      f"fits when total <= {gib(result['usable_bytes'])} GiB")
if lora:
    print(f"LoRA: rank {lora['rank']} on {','.join(lora['targets'])}, {result['lora']['adapter_params']:,d} adapter parameters "
          f"trained, the {info['total']:,d} of the base frozen (no gradients, no optimizer state)")
width = max(8, max(len(str(b)) for b in batch_sizes) + 4)
print(f"{'GiB':<34}" + "".join(f"{'B=' + str(r['batch_size']):>{width}}" for r in rows))
for key in (*vram.RESERVED_COMPONENTS, "reserved", "cuda_context", "total"):
    print(f"{LABELS[key]:<34}" + "".join(f"{gib(r[key]):>{width}}" for r in rows))
print(f"{'fits ' + format(args.gpu_mem_gb, 'g') + ' GiB':<34}" + "".join(f"{'yes' if r['fits'] else 'no':>{width}}" for r in rows))
if lora:
    print(f"{'total with full fine-tuning':<34}" + "".join(f"{gib(r['full_total']):>{width}}" for r in rows))
    print(f"{'full fine-tuning fits':<34}" + "".join(f"{'yes' if r['full_fits'] else 'no':>{width}}" for r in rows))
if args.measure:
    print(f"{'measured reserved':<34}" + "".join(f"{gib(r['measured_reserved']) if r['measured_reserved'] else 'OOM':>{width}}" for r in rows))
    print(f"{'estimate error':<34}" + "".join(f"{format(r['error_pct'], '+.1f') + '%' if r.get('error_pct') is not None else '-':>{width}}" for r in rows))
    print(f"measured CUDA context on {result['device']}: {gib(result['measured_cuda_context'])} GiB "
          f"(estimate {gib(vram.CUDA_CONTEXT_BYTES)} GiB)")
print(f"peak phase: " + ", ".join(f"B={r['batch_size']}: {r['peak_phase']}" for r in rows))
largest = f"{result['largest_fitting']}" if result["largest_fitting"] else "none"
auto = result["auto_batch_size"] or "none"
print(f"largest batch size that fits: {largest} of those listed; {auto} of the powers of two up to 512 (--device_batch_size auto)")
if lora:
    print(f"with full fine-tuning: {result['lora']['full_auto_batch_size'] or 'none'} of the powers of two (--device_batch_size auto)")
