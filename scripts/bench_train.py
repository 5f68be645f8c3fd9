"""
Training throughput benchmark: times full optimizer steps (forward, backward, gradient clipping,
optimizer, zero_grad) of a freshly initialised model on random tokens, so no tokenizer or data
set is needed. Reports tokens/s, step time, MFU against the device's looked-up peak FLOPs, and
peak memory.

    python -m scripts.bench_train --depth 12 --device_batch_size 16 --max_seq_len 2048 --compile
    # Hamner-164M as a 3090 user trains it
    python -m scripts.bench_train --n_layer 20 --model_dim 768 --head_dim 64 --n_kv_head 4 --mlp swiglu \
        --mlp_hidden 2048 --tie_embeddings --norm_weight --vocab_size 49152 --max_seq_len 1024 \
        --device_batch_size 16 --grad_checkpoint --compile
    # tiny, on a CPU
    python -m scripts.bench_train --depth 2 --model_dim 128 --vocab_size 512 --max_seq_len 128 --device_batch_size 4 --json
    # a contestant of nanochat.variants (--scale tiny: shrunk for a CPU)
    python -m scripts.bench_train --variant v07_hybrid_small --scale tiny --vocab_size 512 --max_seq_len 128 --device_batch_size 4

The timed loop does what base_train's hot loop should: data already on the device, no host
synchronisation between steps (one at the start and one at the end of the timed window; on CUDA,
events time each step without syncing), the loss read only after the loop.
"""
import itertools
import json
import math
import statistics
import time

import torch

from nanochat.common import ArgumentParser, autocast_ctx, die, get_peak_flops, is_ddp, synchronize
from nanochat.flags import OPTIMIZERS, add_arch_args, add_device_args, add_precision_args, device_dtype_config, require_positive
from nanochat.gpt import build_model
from nanochat.trainer import Trainer
from nanochat.hardware import device_name, peak_memory

# -----------------------------------------------------------------------------
# settings
parser = ArgumentParser(description="Time training steps of a model on random tokens: tokens/s, step time, MFU, peak memory.")
add_device_args(parser)
add_precision_args(parser, optimizer=False, help_suffix="; auto: bf16 on CUDA where supported, else fp16 with a GradScaler; fp32 on CPU")
add_arch_args(parser, vocab_size=True)
parser.add_argument("--max_seq_len", type=int, default=2048, help="sequence length T")
parser.add_argument("--device_batch_size", type=int, default=32, help="sequences per micro-step B")
parser.add_argument("--grad_accum_steps", type=int, default=1, help="micro-steps per optimizer step")
parser.add_argument("--optimizer", type=str, default="muon", choices=OPTIMIZERS, help="muon (Muon+AdamW) or adamw")
parser.add_argument("--grad_clip", type=float, default=1.0, help="clip the gradient norm as base_train does (0 = off)")
parser.add_argument("--compile", action="store_true", help="torch.compile the model")
parser.add_argument("--grad_checkpoint", action="store_true", help="recompute activations in backward")
parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation, allocator, autotuning)")
parser.add_argument("--steps", type=int, default=10, help="timed optimizer steps")
parser.add_argument("--peak_tflops", type=float, default=0.0, help="peak TFLOP/s for MFU when the device is not in the table")
parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0 = torch's default)")
parser.add_argument("--seed", type=int, default=42)
parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
args = parser.parse_args()
require_positive(args, ("max_seq_len", "device_batch_size", "grad_accum_steps", "steps"))
if args.warmup < 0:
    die(f"--warmup must be >= 0, got {args.warmup}")
if is_ddp():
    die("bench_train measures one device: run it with python, not torchrun")

# -----------------------------------------------------------------------------
# setup
device, dtype, config = device_dtype_config(args)
device_type = device.type
torch.manual_seed(args.seed)
autocast = autocast_ctx(device_type, dtype)
B, T, accum = args.device_batch_size, args.max_seq_len, args.grad_accum_steps

model = build_model(config, device)
num_params = model.num_params()
active_params = model.active_params()  # less the experts a token is not routed to (MoE); FLOPs count these
flops_per_token = model.estimate_flops()
# the step of the shared training loop (nanochat.trainer), so this times what training runs:
# LR setting, micro-steps, backward, clip, optimizer, zero_grad (fp16: the GradScaler; --compile)
trainer = Trainer(model, args, device, dtype, B, T, accum)
scaler = trainer.scaler

# two different random batches already on the device, alternated: the benchmark times the model
# and the optimizer, not data loading
data = torch.randint(0, config.vocab_size, (2, accum, B, T + 1), device=device)
trainer.set_batches(itertools.cycle([(d[:, :-1].contiguous(), d[:, 1:].contiguous()) for i in range(2) for d in data[i]]))

def train_step(_):
    return trainer.train_step()

# -----------------------------------------------------------------------------
# warm-up, then the timed loop
try:
    t0 = time.perf_counter()
    for i in range(args.warmup):
        train_step(i)
    synchronize(device_type)
    warmup_s = time.perf_counter() - t0

    use_events = device_type == "cuda"
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(args.steps)] if use_events else []
    step_s = []
    synchronize(device_type)
    t0 = time.perf_counter()
    for i in range(args.steps):
        if use_events:
            events[i][0].record()
        else:
            ts = time.perf_counter()
        loss = train_step(i)
        if use_events:
            events[i][1].record()
        else:
            step_s.append(time.perf_counter() - ts)  # CPU/MPS work is done when the call returns (MPS: near enough)
    synchronize(device_type)
    total_s = time.perf_counter() - t0
    if use_events:
        step_s = [a.elapsed_time(b) / 1000 for a, b in events]
    final_loss = loss.item()
except torch.OutOfMemoryError:
    die(f"out of memory at batch {B} x {T}: try a smaller --device_batch_size, --grad_checkpoint or a smaller model")

# -----------------------------------------------------------------------------
# report
tokens_per_step = B * T * accum
tok_per_s = tokens_per_step * args.steps / total_s
peak = args.peak_tflops * 1e12 if args.peak_tflops > 0 else get_peak_flops(device)
mfu = flops_per_token * tok_per_s / peak if peak else None
mem = peak_memory(device)
result = {
    "benchmark": "train",
    "device": device_name(device),
    "device_type": device_type,
    "torch": torch.__version__,
    "threads": torch.get_num_threads(),
    "date": time.strftime("%Y-%m-%d"),
    "config": config.to_dict(),
    "settings": {"device_batch_size": B, "max_seq_len": T, "grad_accum_steps": accum, "precision": str(dtype).removeprefix("torch."),
                 "grad_scaler": scaler is not None, "compile": args.compile, "grad_checkpoint": args.grad_checkpoint,
                 "optimizer": args.optimizer, "grad_clip": args.grad_clip, "warmup": args.warmup, "steps": args.steps},
    "num_params": num_params,
    "active_params": active_params,
    "flops_per_token": flops_per_token,
    "tokens_per_step": tokens_per_step,
    "warmup_s": warmup_s,
    "step_ms_mean": 1000 * total_s / args.steps,
    "step_ms_median": 1000 * statistics.median(step_s),
    "step_ms_min": 1000 * min(step_s),
    "tokens_per_s": tok_per_s,
    "tflops": flops_per_token * tok_per_s / 1e12,
    "peak_flops": peak,
    "mfu": mfu,
    "peak_memory": mem,
    "final_loss": final_loss,
}
if not math.isfinite(final_loss):
    die(f"the loss is {final_loss} after {args.warmup + args.steps} steps: the configuration diverges")

if args.json:
    print(json.dumps(result))
else:
    s = result["settings"]
    print(f"device: {result['device']} | torch {torch.__version__}")
    c = config
    layers = (f"{c.mlp}" + (f", MoE {c.moe_experts} experts top {c.moe_top_k}" if c.moe_experts else "")
              + (", differential attention" if c.attn == "diff" else ""))
    active = f" ({active_params:,} active)" if c.moe_experts else ""
    print(f"model: {num_params:,} parameters{active} | {flops_per_token:.3e} FLOPs/token | n_layer {c.n_layer}, "
          f"n_embd {c.n_embd}, heads {c.n_head} ({c.n_kv_head} kv) of {c.head_dim}, {layers}")
    print(f"batch: {B} x {T} x {accum} accumulation = {tokens_per_step:,} tokens/step | {s['precision']}"
          f"{' + GradScaler' if scaler else ''} | compile {'on' if args.compile else 'off'} | "
          f"checkpointing {'on' if args.grad_checkpoint else 'off'} | {args.optimizer}")
    print(f"warm-up: {args.warmup} steps in {warmup_s:.1f} s")
    print(f"step: {result['step_ms_mean']:.1f} ms mean, {result['step_ms_median']:.1f} median, {result['step_ms_min']:.1f} min "
          f"over {args.steps} steps")
    print(f"throughput: {tok_per_s:,.0f} tokens/s | {result['tflops']:.2f} TFLOP/s | "
          f"MFU: {f'{100 * mfu:.1f}%' if mfu is not None else 'n/a (peak FLOPs unknown for this device; see --peak_tflops)'}")
    print("peak memory: " + ", ".join(f"{k} {v / 2**30:.2f} GiB" for k, v in mem.items()))
    print(f"final loss: {final_loss:.4f}")
