"""
Pretrain a base model.

    python -m scripts.base_train --depth 20                       # one GPU (or CPU, slowly)
    torchrun --nproc_per_node 8 -m scripts.base_train --depth 20  # several GPUs
    python -m scripts.base_train --n_layer 4 --model_dim 512 --head_dim 64 --max_seq_len 1024

Settings -> setup -> loop. Everything derivable is derived: gradient accumulation from the total
batch size, the number of iterations from a tokens:params ratio, learning rates scaled with width.
"""
import os
import time

import torch

from nanochat.common import (ArgumentParser, add_device_args, compute_init, compute_cleanup, print0, die, UserError,
                             get_compute_dtype, autocast_ctx, synchronize, get_max_memory, get_peak_flops, init_wandb,
                             wrap_ddp)
from nanochat.gpt import add_arch_args, config_from_args, model_tag_for, build_model
from nanochat.optim import build_optimizers, muon_momentum, step_optimizers
from nanochat.checkpoint_manager import save_checkpoint, restore_training, get_checkpoints_dir
from nanochat.dataloader import DataLoader, BackgroundLoader
from nanochat.dataset import get_data_dir
from nanochat.tokenizer import get_tokenizer, get_token_bytes
from nanochat.loss_eval import evaluate_bpb
from nanochat.vram import resolve_batch_plan, estimate_memory, precision_name

# -----------------------------------------------------------------------------
# settings
parser = ArgumentParser(description="Pretrain a base model (nanochat layout checkpoints in $NANOCHAT_BASE_DIR/base_checkpoints).")
parser.add_argument("--run", type=str, default="dummy", help="wandb run name ('dummy' = no wandb)")
add_device_args(parser)
parser.add_argument("--precision", type=str, default="auto", choices=["auto", "bf16", "fp16", "fp32"],
                    help="autocast dtype (auto: bf16 on CUDA where supported, else fp16 with GradScaler; fp32 on CPU)")
add_arch_args(parser)
parser.add_argument("--max_seq_len", type=int, default=2048, help="context length")
parser.add_argument("--data", type=str, default="auto", help="auto | fineweb | builtin | a folder of parquet shards")
# how long
parser.add_argument("--num_iterations", type=int, default=-1, help="optimizer steps (-1: derive from --target_param_data_ratio)")
parser.add_argument("--target_param_data_ratio", type=float, default=20, help="tokens per parameter (Chinchilla: 20)")
# batch
parser.add_argument("--device_batch_size", type=str, default="32", help="sequences per device per micro-step, or 'auto' (largest that fits)")
parser.add_argument("--total_batch_size", type=int, default=524288, help="tokens per optimizer step (gradient accumulation is derived)")
# optimization
parser.add_argument("--optimizer", type=str, default="muon", choices=["muon", "adamw"], help="muon (Muon+AdamW) or adamw")
parser.add_argument("--embedding_lr", type=float, default=0.2, help="AdamW lr of the token embedding")
parser.add_argument("--unembedding_lr", type=float, default=0.004, help="AdamW lr of the lm_head")
parser.add_argument("--matrix_lr", type=float, default=0.02, help="Muon lr of the block matrices")
parser.add_argument("--scalar_lr", type=float, default=0.004, help="AdamW lr of norm weights")
parser.add_argument("--adamw_lr", type=float, default=0.001, help="lr of the block matrices with --optimizer adamw")
parser.add_argument("--weight_decay", type=float, default=0.0)
parser.add_argument("--grad_clip", type=float, default=1.0, help="clip the gradient norm (0 = off)")
parser.add_argument("--warmup_ratio", type=float, default=0.0, help="fraction of steps of linear LR warmup")
parser.add_argument("--warmdown_ratio", type=float, default=0.2, help="fraction of steps of linear LR decay at the end")
parser.add_argument("--final_lr_frac", type=float, default=0.0, help="LR at the end as a fraction of the peak")
# memory and speed
parser.add_argument("--grad_checkpoint", action="store_true", help="recompute activations in backward (less memory, ~30%% slower)")
parser.add_argument("--compile", action="store_true", help="torch.compile the model")
# evaluation, samples, checkpoints
parser.add_argument("--eval_every", type=int, default=250, help="val bpb every N steps (0 = only at the end)")
parser.add_argument("--eval_tokens", type=int, default=20 * 524288, help="tokens of val data per evaluation")
parser.add_argument("--sample_every", type=int, default=2000, help="print samples every N steps (0 = only at the end)")
parser.add_argument("--save_every", type=int, default=-1, help="checkpoint every N steps (-1 = only at the end)")
parser.add_argument("--model_tag", type=str, default="", help="checkpoint folder name (default d<depth>)")
parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint of the model tag")
parser.add_argument("--log_every", type=int, default=0,
                    help="print loss and speed every N steps (0: 10 on CUDA, 1 elsewhere); reading the loss waits for the GPU")
parser.add_argument("--seed", type=int, default=42)
args = parser.parse_args()
user_config = vars(args).copy()

# -----------------------------------------------------------------------------
# setup
try:
    ddp, rank, local_rank, world_size, device = compute_init(args.device_type)
    device_type = device.type
    master = rank == 0
    dtype = get_compute_dtype(device_type, args.precision)
    autocast = autocast_ctx(device_type, dtype)
    tokenizer = get_tokenizer()
    token_bytes = get_token_bytes(device)
    data_dir = get_data_dir(args.data)
    config = config_from_args(args, tokenizer.get_vocab_size(), args.max_seq_len)
except (UserError, ValueError, FileNotFoundError) as e:
    die(str(e))
torch.manual_seed(args.seed)
print0(f"device: {device} x {world_size} | compute dtype: {dtype} | data: {data_dir}")
print0(f"model: {config}")

model = build_model(config, device)
model.grad_checkpoint = args.grad_checkpoint
orig_model = model  # the uncompiled, unwrapped model: for eval, sampling and saving
num_params = model.num_params()
num_flops_per_token = model.estimate_flops()
print0(f"parameters: {num_params:,} | FLOPs per token: {num_flops_per_token:e}")

# batch size: explicit, or the largest the memory estimate says fits; accumulation derived
T = args.max_seq_len
try:
    B, total_batch_size, grad_accum_steps = resolve_batch_plan(
        args.device_batch_size, args.total_batch_size, config, T, dtype, args.optimizer, args.grad_checkpoint,
        args.compile, device, world_size)
except UserError as e:
    die(str(e))
if args.device_batch_size == "auto":
    print0(f"--device_batch_size auto: {B}")
print0(f"tokens per step: {total_batch_size:,} = {B} x {T} x {world_size} ranks x {grad_accum_steps} accumulation steps")

if args.num_iterations > 0:
    num_iterations = args.num_iterations
else:
    num_iterations = max(1, int(args.target_param_data_ratio * num_params) // total_batch_size)
print0(f"iterations: {num_iterations:,} | tokens: {num_iterations * total_batch_size:,} "
       f"({num_iterations * total_batch_size / num_params:.2f} per parameter) | "
       f"total FLOPs: {num_flops_per_token * num_iterations * total_batch_size:e}")

optimizers = build_optimizers(model, kind=args.optimizer, matrix_lr=args.matrix_lr, embedding_lr=args.embedding_lr,
                              unembedding_lr=args.unembedding_lr, scalar_lr=args.scalar_lr, adamw_lr=args.adamw_lr,
                              weight_decay=args.weight_decay)
scaler = torch.amp.GradScaler(device_type) if dtype == torch.float16 else None

# resume: model, optimizers, data position and loop state all come back, so the run goes on as if never stopped
model_tag = args.model_tag or model_tag_for(config)
checkpoint_dir = os.path.join(get_checkpoints_dir("base"), model_tag)
start_step, loader_state, loop_state = 0, None, {}
if args.resume:
    try:
        start_step, meta = restore_training(checkpoint_dir, device, model, optimizers)
    except UserError as e:
        die(f"--resume: {e}")
    loader_state, loop_state = meta.get("dataloader_state"), meta.get("loop_state", {})
    print0(f"resumed from {checkpoint_dir} at step {start_step}")

if args.compile:
    model = torch.compile(model, dynamic=False)
if ddp:
    model = wrap_ddp(model, device)

# batches are tokenized and pinned in a background thread while the GPU works on the previous ones
train_loader = BackgroundLoader(DataLoader(tokenizer, B, T, "train", device=device, data_dir=data_dir, state=loader_state))
def val_batches():
    return DataLoader(tokenizer, B, T, "val", device=device, data_dir=data_dir)
eval_steps = max(1, args.eval_tokens // (B * T * world_size))

def get_lr_multiplier(it):
    """Linear warmup, constant, then linear warmdown to final_lr_frac."""
    warmup, warmdown = round(args.warmup_ratio * num_iterations), round(args.warmdown_ratio * num_iterations)
    if it < warmup:
        return (it + 1) / warmup
    if it <= num_iterations - warmdown:
        return 1.0
    progress = (num_iterations - it) / warmdown
    return progress + (1 - progress) * args.final_lr_frac

wandb_run = init_wandb(args.run, "nanochat", user_config, master)
peak_flops = get_peak_flops(device)
sample_prompts = ["The capital of France is", "The chemical symbol of gold is", "If yesterday was Friday, then tomorrow will be",
                  "The opposite of hot is", "The planets of the solar system are:", "5 + 7 ="]

def save(step, val_bpb, gather=True):
    # every rank reads its own part of the data: keep each rank's position (all ranks call this)
    loader_states = step_loader_state
    if ddp and gather:
        loader_states = [None] * world_size
        torch.distributed.all_gather_object(loader_states, step_loader_state)
    if not master:
        return
    meta = {
        "step": step, "val_bpb": val_bpb, "model_config": config.to_dict(), "user_config": user_config,
        "device_batch_size": B, "max_seq_len": T, "total_batch_size": total_batch_size,
        "dataloader_state": loader_states, "loop_state": {k: float(v) for k, v in loop_state.items()},
    }
    save_checkpoint(checkpoint_dir, step, orig_model.state_dict(), [opt.state_dict() for opt in optimizers], meta)
    print0(f"saved checkpoint {checkpoint_dir} step {step}")

def sample():
    orig_model.eval()
    for prompt in sample_prompts:
        tokens = tokenizer.encode(prompt, prepend=tokenizer.get_bos_token_id())
        with autocast:
            out = list(orig_model.generate(tokens, max_tokens=16, temperature=0))
        print0(f"  {prompt!r} -> {tokenizer.decode(out)!r}")
    orig_model.train()

def evaluate():
    orig_model.eval()
    with autocast:
        bpb = evaluate_bpb(orig_model, val_batches(), eval_steps, token_bytes)
    orig_model.train()
    return bpb

# -----------------------------------------------------------------------------
# training loop
# Nothing in a step waits for the GPU: the loss is kept on the device (last value and its moving
# average) and read only at logging steps, where the time since the previous log is measured.
smooth_loss = torch.tensor(loop_state.get("smooth_loss", 0.0), device=device)
total_time = loop_state.get("total_time", 0.0)
min_val_bpb = loop_state.get("min_val_bpb", float("inf"))
log_every = args.log_every if args.log_every > 0 else (10 if device_type == "cuda" else 1)
val_bpb = None
step = start_step
step_loader_state = train_loader.state_dict()
in_update = False
window_steps = 0  # steps since the last log line

def log_window():
    """Print the steps since the last log line: the only place the loop waits for the GPU."""
    global t_window, window_steps, total_time
    train_loss = loss.item() * grad_accum_steps
    synchronize(device_type)
    now = time.perf_counter()
    dt = (now - t_window) / window_steps
    if step > start_step + 1 or step == num_iterations:
        total_time += dt * window_steps  # the first step (its own window) includes compilation and warm-up
    debiased = smooth_loss.item() / (1 - 0.9 ** step)
    tok_per_sec = total_batch_size / dt
    mfu = f"{100 * num_flops_per_token * tok_per_sec / (peak_flops * world_size):.1f}%" if peak_flops else "n/a"
    mem = f" | mem: {get_max_memory(device_type) / 2**30:.2f} GiB" if device_type == "cuda" else ""
    print0(f"step {step:05d}/{num_iterations:05d} | loss: {train_loss:.6f} | smooth: {debiased:.4f} | lrm: {lrm:.2f} | "
           f"dt: {dt * 1000:.0f} ms | tok/s: {tok_per_sec:,.0f} | mfu: {mfu}{mem}")
    wandb_run.log({"step": step, "train/loss": train_loss, "train/tok_per_sec": tok_per_sec, "lrm": lrm})
    t_window, window_steps = now, 0

synchronize(device_type)
t_window = time.perf_counter()
try:
    while True:
        last_step = step == num_iterations
        # the loop state at the start of this step: a checkpoint holds it with the data position
        loop_state = {"smooth_loss": smooth_loss.clone(), "total_time": total_time, "min_val_bpb": min_val_bpb}
        do_save = last_step or (args.save_every > 0 and step > start_step and step % args.save_every == 0)
        do_eval = last_step or (args.eval_every > 0 and step % args.eval_every == 0)
        do_sample = master and (last_step or (args.sample_every > 0 and step > 0 and step % args.sample_every == 0))
        if window_steps and (do_save or do_eval or do_sample):
            log_window()  # close the timing window before the pause
        # save first, so a crash in evaluation or sampling loses nothing
        if do_save:
            save(step, val_bpb)
        if do_eval:
            val_bpb = evaluate()
            min_val_bpb = min(min_val_bpb, val_bpb)
            print0(f"step {step:05d} | val bpb: {val_bpb:.4f}")
            wandb_run.log({"step": step, "val/bpb": val_bpb})
        if do_sample:
            sample()
        if last_step:
            break
        if do_save or do_eval or do_sample:
            synchronize(device_type)
            t_window = time.perf_counter()  # the pause is not training time

        # one optimizer step: grad_accum_steps micro-steps of B x T tokens
        lrm = get_lr_multiplier(step)
        for opt in optimizers:
            for group in opt.param_groups:
                group["lr"] = group["initial_lr"] * lrm
                if "momentum" in group:
                    group["momentum"] = muon_momentum(step)
        for micro_step in range(grad_accum_steps):
            x, y = next(train_loader)
            # under DDP, all-reduce gradients only on the last micro-step
            sync = (not ddp) or micro_step == grad_accum_steps - 1
            if ddp:
                model.require_backward_grad_sync = sync
            with autocast:
                loss = model(x, y)
            loss = loss / grad_accum_steps
            (scaler.scale(loss) if scaler else loss).backward()
        in_update = True
        step_optimizers(optimizers, orig_model.parameters(), scaler, args.grad_clip)
        step += 1
        step_loader_state = train_loader.state_dict()  # where the data for the next step starts
        in_update = False
        smooth_loss.mul_(0.9).add_(loss.detach() * grad_accum_steps, alpha=0.1)  # on the device: no wait
        window_steps += 1

        if step % log_every == 0 or step == start_step + 1 or step == num_iterations:
            log_window()
        if device_type == "cuda" and step == start_step + 3:
            # the calculator's promise, checked on this run (scripts.vram_calc explains the parts)
            est = estimate_memory(config, B, T, precision_name(dtype), args.optimizer, args.grad_checkpoint, args.compile)["reserved"]
            measured = get_max_memory(device_type)
            print0(f"memory: estimated {est / 2**30:.2f} GiB, measured peak reserved {measured / 2**30:.2f} GiB "
                   f"({100 * (est - measured) / measured:+.1f}%)")
except KeyboardInterrupt:
    # keep the work done so far: weights as of the start of this step, and where the data was then
    if in_update:
        print0("interrupted during the optimizer update: not saving (use the last checkpoint)")
    else:
        print0(f"interrupted: saving step {step} so --resume can continue from it")
        save(step, val_bpb, gather=False)  # other ranks may be gone: their data resumes at the next round
    compute_cleanup()
    raise SystemExit(130)

print0(f"done: {total_time / 60:.2f} min of training | min val bpb: {min_val_bpb:.4f} | "
       f"peak memory: {get_max_memory(device_type) / 2**30:.2f} GiB")
wandb_run.finish()
compute_cleanup()
