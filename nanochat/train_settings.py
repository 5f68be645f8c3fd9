"""
The settings of the shared training loop (nanochat.trainer): the flags every training script
shares (add_training_args, with per-script defaults), the learning-rate schedule, --save_every's
steps-or-time, and the batch plan (device batch, tokens per step, gradient accumulation).
"""
import argparse
import math
import re

from nanochat.common import print0, str2bool
from nanochat.flags import OPTIMIZERS, PRECISIONS

# The settings every training script shares; a script changes defaults with add_training_args(**defaults).
TRAIN_DEFAULTS = dict(
    run="dummy", precision="auto", device_batch_size="32", total_batch_size=-1, num_iterations=-1,
    optimizer="muon", embedding_lr=0.2, unembedding_lr=0.004, matrix_lr=0.02, scalar_lr=0.004, adamw_lr=0.001,
    init_lr_frac=1.0, layer_lr="", weight_decay=0.0, grad_clip=1.0,
    warmup_ratio=0.0, warmdown_ratio=0.2, final_lr_frac=0.0, lr_decay="linear",
    grad_checkpoint=False, compile=False, eval_every=250, sample_every=0, save_every="-1", keep_last=0, log_every=0,
    resume="no", seed=42, moe_aux_weight=0.01, skip_nonfinite=True, max_nonfinite=3,
)
# flags whose values a resumed run takes from the command line, not from the checkpoint (said when they differ)
LR_FLAGS = ("embedding_lr", "unembedding_lr", "matrix_lr", "scalar_lr", "adamw_lr", "init_lr_frac", "layer_lr",
            "weight_decay", "warmup_ratio", "warmdown_ratio", "final_lr_frac", "lr_decay", "grad_clip", "moe_aux_weight")


def _resume_mode(value):
    value = {"": "yes", "1": "yes", "true": "yes", "0": "no", "false": "no"}.get(value.lower(), value.lower())
    if value not in ("no", "yes", "auto"):
        raise argparse.ArgumentTypeError(f"expected nothing, 'auto' or 'no', got {value!r}")
    return value


def save_every_value(value):
    """--save_every: N steps (-1: only at the end), or a time: '30m', '2h', '90s' -> (steps, seconds), one of them 0."""
    text = str(value).strip().lower()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smh])", text)
    if m:
        seconds = float(m.group(1)) * {"s": 1, "m": 60, "h": 3600}[m.group(2)]
        if seconds <= 0:
            raise argparse.ArgumentTypeError(f"expected a positive time, got {value!r}")
        return 0, seconds
    try:
        steps = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of steps or a time such as 30m, 2h, 90s; got {value!r}") from None
    return max(steps, 0), 0.0


def _save_every_arg(value):
    save_every_value(value)  # checked here, read with save_every_value where it is used
    return str(value)


def add_training_args(parser, **defaults):
    """The flags of the shared loop (batch, optimizer, schedule, cadence, resume), with per-script defaults."""
    d = {**TRAIN_DEFAULTS, **defaults}
    g = parser.add_argument_group("training (shared by every training script)")
    g.add_argument("--run", type=str, default=d["run"], help="wandb run name ('dummy' = no wandb)")
    g.add_argument("--precision", type=str, default=d["precision"], choices=PRECISIONS,
                   help="autocast dtype (auto: bf16 on CUDA where supported, else fp16 with GradScaler; fp32 on CPU)")
    g.add_argument("--num_iterations", type=int, default=d["num_iterations"], help="optimizer steps (-1: derived; see the script's help)")
    g.add_argument("--device_batch_size", type=str, default=d["device_batch_size"],
                   help="rows per device per micro-step, or 'auto' (the largest that fits)")
    g.add_argument("--total_batch_size", type=int, default=d["total_batch_size"],
                   help="tokens per optimizer step; gradient accumulation is derived (-1: one micro-step per device)")
    g.add_argument("--optimizer", type=str, default=d["optimizer"], choices=OPTIMIZERS, help="muon (Muon+AdamW) or adamw")
    g.add_argument("--embedding_lr", type=float, default=d["embedding_lr"], help="AdamW lr of the token embedding")
    g.add_argument("--unembedding_lr", type=float, default=d["unembedding_lr"], help="AdamW lr of the lm_head")
    g.add_argument("--matrix_lr", type=float, default=d["matrix_lr"], help="Muon lr of the block matrices")
    g.add_argument("--scalar_lr", type=float, default=d["scalar_lr"], help="AdamW lr of norm weights")
    g.add_argument("--adamw_lr", type=float, default=d["adamw_lr"], help="lr of the block matrices with --optimizer adamw")
    g.add_argument("--init_lr_frac", type=float, default=d["init_lr_frac"], help=f"all learning rates times this (default {d['init_lr_frac']})")
    g.add_argument("--layer_lr", type=str, default=d["layer_lr"],
                   help="per-layer lr multipliers, blocks counted from 0: '7-12:0.2' (layers 7 to 12 at 0.2x), '0:0.5,7-12:0.2'")
    g.add_argument("--weight_decay", type=float, default=d["weight_decay"])
    g.add_argument("--grad_clip", type=float, default=d["grad_clip"], help="clip the gradient norm (0 = off)")
    g.add_argument("--warmup_ratio", type=float, default=d["warmup_ratio"], help="fraction of the steps of linear LR warmup")
    g.add_argument("--warmdown_ratio", type=float, default=d["warmdown_ratio"], help="fraction of the steps of LR decay at the end")
    g.add_argument("--final_lr_frac", type=float, default=d["final_lr_frac"], help="LR at the end as a fraction of the peak")
    g.add_argument("--lr_decay", type=str, default=d["lr_decay"], choices=["linear", "cosine", "constant"],
                   help="shape of the warmdown: linear, cosine, or constant (no decay)")
    g.add_argument("--grad_checkpoint", type=str2bool, nargs="?", const=True, default=d["grad_checkpoint"],
                   help="recompute activations in backward (less memory, ~30%% slower)")
    g.add_argument("--compile", type=str2bool, nargs="?", const=True, default=d["compile"], help="torch.compile the model")
    g.add_argument("--eval_every", type=int, default=d["eval_every"], help="evaluate every N steps (0 = only at the end)")
    g.add_argument("--sample_every", type=int, default=d["sample_every"], help="print samples every N steps (0 = only at the end)")
    g.add_argument("--save_every", type=_save_every_arg, default=str(d["save_every"]),
                   help="checkpoint every N steps, or by the clock: 30m, 2h, 90s (-1 = only at the end)")
    g.add_argument("--keep_last", type=int, default=d["keep_last"],
                   help="keep only the newest N checkpoints (older ones go once a newer one is complete; 0 = keep all)")
    g.add_argument("--log_every", type=int, default=d["log_every"],
                   help="print loss and speed every N steps (0: 10 on CUDA, 1 elsewhere); reading the loss waits for the GPU")
    g.add_argument("--resume", type=_resume_mode, nargs="?", const="yes", default=d["resume"], metavar="auto",
                   help="continue from the latest checkpoint of the output folder; '--resume auto': if there is one, else start fresh")
    g.add_argument("--seed", type=int, default=d["seed"])
    g.add_argument("--skip_nonfinite", type=str2bool, nargs="?", const=True, default=d["skip_nonfinite"],
                   help="skip (and count) an update whose gradient is not finite (default on; reads one number a step)")
    g.add_argument("--max_nonfinite", type=int, default=d["max_nonfinite"],
                   help="stop after this many non-finite steps in a row, keeping the last good checkpoint (default 3)")
    g.add_argument("--moe_aux_weight", type=float, default=d["moe_aux_weight"],
                   help="with MoE layers: weight of the load-balancing loss added to the training loss (default 0.01)")
    return g


def lr_multiplier(step, num_steps, warmup_ratio=0.0, warmdown_ratio=0.2, final_lr_frac=0.0, decay="linear"):
    """
    The learning-rate multiplier of step (0-based) of num_steps: linear warmup over the first
    warmup_ratio of the steps, constant, then over the last warmdown_ratio a linear or half-cosine
    decay towards final_lr_frac ("constant": none). Warmup and warmdown are whole steps.
    """
    warmup, warmdown = round(warmup_ratio * num_steps), round(warmdown_ratio * num_steps)
    if step < warmup:
        return (step + 1) / warmup
    if decay == "constant" or step <= num_steps - warmdown:
        return 1.0
    progress = (num_steps - step) / warmdown  # 1 where the warmdown starts, 1/warmdown at the last step
    if decay == "cosine":
        progress = 0.5 * (1 - math.cos(math.pi * progress))
    return progress + (1 - progress) * final_lr_frac


def plan_batches(args, config, T, dtype, device, world_size):
    """
    --device_batch_size (a number, or 'auto': the largest the memory estimate says fits) and the
    gradient accumulation that --total_batch_size asks for: (B, tokens per step, accumulation
    steps), printed once. Raises UserError with one line when the numbers cannot work.
    """
    from nanochat.batch_plan import resolve_batch_plan
    from nanochat.lora import lora_from_args  # --lora_rank: frozen weights need no gradients or optimizer state
    B, total, accum = resolve_batch_plan(args.device_batch_size, args.total_batch_size, config, T, dtype, args.optimizer,
                                         args.grad_checkpoint, args.compile, device, world_size, lora=lora_from_args(args))
    if args.device_batch_size == "auto":
        print0(f"--device_batch_size auto: {B}")
    print0(f"tokens per step: {total:,} = {B} x {T} x {world_size} ranks x {accum} accumulation steps")
    return B, total, accum
