"""
Pretrain a base model.

    python -m scripts.base_train --depth 20                       # one GPU (or CPU, slowly)
    torchrun --nproc_per_node 8 -m scripts.base_train --depth 20  # several GPUs
    python -m scripts.base_train --n_layer 4 --model_dim 512 --head_dim 64 --max_seq_len 1024
    python -m scripts.base_train --depth 4 --personal my_texts/ --personal_frac 0.05 --resume auto
    python -m scripts.base_train --variant v03_diffattn_small --max_seq_len 1024 --device_batch_size 16

Settings -> setup -> loop (nanochat.trainer). Everything derivable is derived: gradient
accumulation from the total batch size, the number of iterations from a tokens:params ratio,
learning rates scaled with width.
"""
import os

import torch

from nanochat.flags import add_arch_args, add_device_args, config_from_args
from nanochat.common import ArgumentParser, compute_init, compute_cleanup, print0, die, UserError, get_compute_dtype, get_max_memory
from nanochat.gpt import model_tag_for, build_model
from nanochat.checkpoint_manager import get_checkpoints_dir
from nanochat.dataloader import DataLoader, BackgroundLoader
from nanochat.dataset import get_data_dir
from nanochat.tokenizer import get_tokenizer, get_token_bytes
from nanochat.loss_eval import evaluate_bpb
from nanochat.train_settings import add_training_args, plan_batches
from nanochat.trainer import Trainer
from nanochat import report

# -----------------------------------------------------------------------------
# settings
parser = ArgumentParser(description="Pretrain a base model (nanochat layout checkpoints in $NANOCHAT_BASE_DIR/base_checkpoints).")
add_device_args(parser)
add_arch_args(parser)
parser.add_argument("--max_seq_len", type=int, default=2048, help="context length")
parser.add_argument("--data", type=str, default="auto", help="auto | fineweb | climbmix | builtin | tinystories | a folder of parquet shards")
parser.add_argument("--target_param_data_ratio", type=float, default=20, help="tokens per parameter when --num_iterations is -1 (Chinchilla: 20)")
parser.add_argument("--eval_tokens", type=int, default=20 * 524288, help="tokens of val data per evaluation")
parser.add_argument("--model_tag", type=str, default="", help="checkpoint folder name (default d<depth>, or the --variant's name)")
parser.add_argument("--personal", type=str, default="", help="your own text (file or folder: txt, md, ChatML, JSONL, .vtt) for every batch")
parser.add_argument("--personal_frac", type=float, default=0.05, help="with --personal: the share of every batch's tokens from it")
add_training_args(parser, device_batch_size="32", total_batch_size=524288, eval_every=250, sample_every=2000)
args = parser.parse_args()

# -----------------------------------------------------------------------------
# setup
try:
    ddp, rank, local_rank, world_size, device = compute_init(args.device_type)
    dtype = get_compute_dtype(device.type, args.precision)
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
num_params = model.num_params()
print0(f"parameters: {num_params:,} | FLOPs per token: {model.estimate_flops():e}")

# batch size: explicit, or the largest the memory estimate says fits; accumulation derived
T = args.max_seq_len
try:
    B, total_batch_size, grad_accum_steps = plan_batches(args, config, T, dtype, device, world_size)
except UserError as e:
    die(str(e))
num_iterations = args.num_iterations if args.num_iterations > 0 else max(1, int(args.target_param_data_ratio * num_params) // total_batch_size)
print0(f"iterations: {num_iterations:,} | tokens: {num_iterations * total_batch_size:,} "
       f"({num_iterations * total_batch_size / num_params:.2f} per parameter) | "
       f"total FLOPs: {model.estimate_flops() * num_iterations * total_batch_size:e}")

if args.variant:
    from nanochat.variants import resolve
    default_tag = resolve(args.variant) + ("_tiny" if args.scale == "tiny" else "")
else:
    default_tag = model_tag_for(config)
checkpoint_dir = os.path.join(get_checkpoints_dir("base"), args.model_tag or default_tag)
try:
    trainer = Trainer(model, args, device, dtype, B, T, grad_accum_steps, checkpoint_dir)
    meta = trainer.resume()  # --resume: weights, optimizers, loop state and data position come back
except UserError as e:
    die(f"--resume: {e}" if args.resume != "no" else str(e))
print0("optimizer groups:\n" + trainer.describe())

# batches are tokenized and pinned in a background thread while the device works on the previous ones
data_state = meta.get("dataloader_state") if meta else None
try:
    if args.personal:
        from nanochat.streams import pretraining_with_personal
        loader = pretraining_with_personal(tokenizer, B, T, device, data_dir, args.personal, args.personal_frac,
                                           args.seed, data_state)
    else:
        loader = DataLoader(tokenizer, B, T, "train", device=device, data_dir=data_dir, state=data_state)
except UserError as e:
    die(str(e))
train_loader = BackgroundLoader(loader)
eval_steps = max(1, args.eval_tokens // (B * T * world_size))
sample_prompts = ["The capital of France is", "The chemical symbol of gold is", "If yesterday was Friday, then tomorrow will be",
                  "The opposite of hot is", "The planets of the solar system are:", "5 + 7 ="]

def evaluate():
    val = DataLoader(tokenizer, B, T, "val", device=device, data_dir=data_dir)
    return {"val_bpb": evaluate_bpb(model, val, eval_steps, token_bytes)}

def sample():
    for prompt in sample_prompts:
        tokens = tokenizer.encode(prompt, prepend=tokenizer.get_bos_token_id())
        yield prompt, tokenizer.decode(list(model.generate(tokens, max_tokens=16, temperature=0)))

# -----------------------------------------------------------------------------
# training loop
result = trainer.run(train_loader, num_iterations, evaluate=evaluate, sample=sample)
by_source = {}
if args.personal:
    from nanochat.streams import shares
    by_source = shares(trainer.data_state())
    print0("tokens trained by source: " + ", ".join(f"{k} {v:.2%}" for k, v in by_source.items()))
report.append_training("base_train", trainer, result, {f"share of tokens: {k}": v for k, v in by_source.items()})
print0(f"done: {result['total_time'] / 60:.2f} min of training | min val bpb: {result['min_val'] or float('nan'):.4f} | "
       f"peak memory: {get_max_memory(device.type) / 2**30:.2f} GiB")
trainer.close()  # the DDP wrapper goes before the process group
compute_cleanup()
