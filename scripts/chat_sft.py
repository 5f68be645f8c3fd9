"""
Supervised fine-tuning on conversations: from a mid (else base) checkpoint to chatsft_checkpoints/.
scripts/mid_train.py runs this same script as mid-training (base -> mid_checkpoints/, a larger
mixture at the full learning rate); only the defaults differ (nanochat.chat_data.PHASES).

    python -m scripts.chat_sft                                    # defaults: built-in tasks (+ SmolTalk when downloaded)
    python -m scripts.chat_sft --mixture exercises:6,chat:1,my_chats.txt:3
    python -m scripts.chat_sft --resume auto                      # after a reboot: the same command again
    python -m scripts.chat_sft --lora_rank 16 --output_tag d20_lora   # LoRA: the base frozen, adapters saved alone
    torchrun --nproc_per_node 8 -m scripts.chat_sft

Settings -> setup -> loop (nanochat.trainer). Conversations are packed whole into rows and only
the assistant's tokens are trained (nanochat.chat_data). By default one epoch of the mixture, the
learning rate decaying over it; --num_iterations fixes the number of steps instead.
"""
import os

import torch
import torch.distributed as dist

from nanochat.flags import add_device_args
from nanochat.common import ArgumentParser, compute_init, compute_cleanup, print0, die, UserError, get_compute_dtype
from nanochat.checkpoint_manager import get_checkpoints_dir
from nanochat.chat_data import (PHASES, add_chat_args, start_model, chat_mixtures, ConversationBatches, count_steps,
                                chat_loss, evaluate_loss, sample_replies)
from nanochat.lora import add_lora_args, apply_lora_from_args, lora_from_args
from nanochat.train_settings import add_training_args, plan_batches
from nanochat.trainer import Trainer
from nanochat import report

PHASE = globals().get("PHASE", "sft")  # scripts/mid_train.py sets "mid"
NAME = {"mid": "mid-training", "sft": "SFT"}[PHASE]
d = PHASES[PHASE]

# -----------------------------------------------------------------------------
# settings
parser = ArgumentParser(prog=f"python -m scripts.{'mid_train' if PHASE == 'mid' else 'chat_sft'}",
                        description=f"{NAME}: fine-tune a {' or '.join(d['sources'])} checkpoint on a mixture of conversations "
                                    f"(loss on the assistant's tokens only); writes $NANOCHAT_BASE_DIR/{get_checkpoints_dir(d['out']).split(os.sep)[-1]}/<tag>/.")
add_device_args(parser)
add_chat_args(parser, PHASE)
add_training_args(parser, total_batch_size=-1, init_lr_frac=d["init_lr_frac"], warmdown_ratio=d["warmdown_ratio"], eval_every=100)
add_lora_args(parser)
args = parser.parse_args()

# -----------------------------------------------------------------------------
# setup
try:
    ddp, rank, local_rank, world_size, device = compute_init(args.device_type)
    dtype = get_compute_dtype(device.type, args.precision)
    lora_from_args(args)  # bad LoRA flags fail before the model loads
    model, tokenizer, source_meta, source, source_tag = start_model(d["sources"], args.source, args.model_tag, args.step, device)
    spec, train_mix, val_mix = chat_mixtures(args.mixture, PHASE, args.num_conversations, args.eval_conversations, args.seed)
except (UserError, ValueError, FileNotFoundError) as e:
    die(str(e))
config = model.config
checkpoint_dir = os.path.join(get_checkpoints_dir(d["out"]), args.output_tag or source_tag)
torch.manual_seed(args.seed)
try:  # --lora_rank: adapters on the loaded model, which stays frozen (nanochat.lora)
    said = apply_lora_from_args(model, args, {"source": source, "model_tag": source_tag, "step": source_meta["step"]})
except UserError as e:
    die(str(e))
T = args.max_seq_len or config.sequence_len
if T > model.cos.size(1):
    die(f"--max_seq_len {T} is longer than the model's rotary table ({model.cos.size(1)})")
print0(f"device: {device} x {world_size} | compute dtype: {dtype}")
print0(f"{NAME} from {source}/{source_tag} step {source_meta['step']} -> {checkpoint_dir}")
if said:
    print0(said)
print0(f"mixture: {spec} | {len(train_mix):,d} conversations per epoch ({', '.join(map(str, train_mix.counts()))} by task)")
try:
    B, total_batch_size, grad_accum_steps = plan_batches(args, config, T, dtype, device, world_size)
except UserError as e:
    die(str(e))

by_epochs = args.num_iterations <= 0
if by_epochs:  # the schedule needs the end: pack the epochs once to count the steps (every rank its own part)
    print0(f"counting the steps of {args.num_epochs} epoch(s) of {len(train_mix):,d} conversations...")
    num_iterations = count_steps(tokenizer, train_mix, B, T, grad_accum_steps, args.num_epochs, rank, world_size)
    if ddp:
        n = torch.tensor(num_iterations, device=device)
        dist.all_reduce(n, op=dist.ReduceOp.MIN)
        num_iterations = int(n.item())
    print0(f"iterations: {num_iterations:,} ({args.num_epochs} epoch(s) of the mixture)")
else:
    num_iterations = args.num_iterations
    print0(f"iterations: {num_iterations:,}")

run_meta = {"phase": PHASE, "source": {"phase": source, "model_tag": source_tag, "step": source_meta["step"]}, "mixture": spec}
try:
    trainer = Trainer(model, args, device, dtype, B, T, grad_accum_steps, checkpoint_dir, run_meta, loss_fn=chat_loss,
                      wandb_project=f"nanochat-{PHASE}")
    meta = trainer.resume()
except UserError as e:
    die(f"--resume: {e}" if args.resume != "no" else str(e))
print0("optimizer groups:\n" + trainer.describe())
batches = ConversationBatches(tokenizer, train_mix, B, T, device, meta and meta.get("dataloader_state"), rank, world_size,
                              stop_epoch=args.num_epochs if by_epochs else None)

def evaluate():
    val = ConversationBatches(tokenizer, val_mix, B, T, device, rank=rank, world_size=world_size, stop_epoch=1)
    return {"val_loss": evaluate_loss(model, val)}

def sample():
    return sample_replies(model, tokenizer)

# -----------------------------------------------------------------------------
# training loop
result = trainer.run(batches, num_iterations, evaluate=evaluate, sample=sample, eval_at_start=True)
report.append_training("mid_train" if PHASE == "mid" else "chat_sft", trainer, result,
                       {"source": f"{source}/{source_tag} step {source_meta['step']}", "mixture": spec})
if result["first_val"] is not None:
    print0(f"done: {result['step']} steps, {result['total_time'] / 60:.2f} min of training | "
           f"val loss {result['first_val']:.4f} -> {result['val'].get('val_loss', float('nan')):.4f}")
trainer.close()  # the DDP wrapper goes before the process group
compute_cleanup()
