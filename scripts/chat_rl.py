"""
Reinforcement learning from an SFT checkpoint on questions with exact answers: GSM8K, or the
built-in exercises. Writes chatrl_checkpoints/<tag>/ (python -m scripts.chat_cli -i rl talks to it).

    python -m scripts.chat_rl                                     # GSM8K (python -m scripts.chat_eval --download first)
    python -m scripts.chat_rl --task exercises.addition.3 --num_iterations 100 --device_type cpu
    python -m scripts.chat_rl --resume auto                       # after a reboot: the same command again
    torchrun --nproc_per_node 8 -m scripts.chat_rl

Each step asks --examples_per_step questions (all ranks together) --num_samples times each,
sampled with the current weights; a reply earns 1 when its answer is exactly right. Advantages are
normalised per question, and the policy-gradient loss trains the tokens the model sampled (never
the prompt or the calculator's output): nanochat.rl. The loop is nanochat.trainer's, so the
training flags are base_train's; the step time it logs includes the sampling, and its tok/s counts
--max_new_tokens per reply. pass@1 (greedy, exact match) on held-out questions is evaluated at
the start, every --eval_every steps and at the end.
"""
import os

import torch

from nanochat.flags import add_device_args, add_model_source_args
from nanochat.common import ArgumentParser, compute_init, compute_cleanup, print0, die, UserError, get_compute_dtype
from nanochat.checkpoint_manager import get_checkpoints_dir
from nanochat.chat_data import start_model
from nanochat.engine import Engine
from nanochat.rl import ADVANTAGES, RolloutBatches, load_task, pass_at_1, pg_loss
from nanochat.tokenizer import render_for_completion
from nanochat.train_settings import add_training_args
from nanochat.trainer import Trainer
from nanochat import report

# -----------------------------------------------------------------------------
# settings
parser = ArgumentParser(prog="python -m scripts.chat_rl",
                        description="RL on questions with exact answers (GSM8K or built-in exercises) from an SFT checkpoint; "
                                    "writes $NANOCHAT_BASE_DIR/chatrl_checkpoints/<tag>/.")
add_device_args(parser)
add_model_source_args(parser, source="sft", what="starting checkpoint")
g = parser.add_argument_group("RL")
g.add_argument("--output_tag", type=str, default="", help="model tag to write (default: the source's)")
g.add_argument("--task", type=str, default="gsm8k",
               help="gsm8k, or built-in exercises: exercises, exercises.KIND, exercises.KIND.DIFFICULTY (e.g. exercises.addition.3)")
g.add_argument("--num_samples", type=int, default=16, help="replies sampled per question (default 16)")
g.add_argument("--examples_per_step", type=int, default=16, help="questions per optimizer step, all ranks together (default 16)")
g.add_argument("--max_new_tokens", type=int, default=256, help="longest reply in tokens (default 256)")
g.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of the replies (default 1.0)")
g.add_argument("--top_k", type=int, default=50, help="sample from the k most likely tokens (0 = all; default 50)")
g.add_argument("--advantage", type=str, default="zscore", choices=ADVANTAGES,
               help="per question: reward minus the mean, over the standard deviation (zscore) or not (centered)")
g.add_argument("--num_questions", type=int, default=0, help="training questions of a built-in task (default: 100,000 generated)")
g.add_argument("--num_epochs", type=int, default=1, help="passes over the training questions when --num_iterations is -1")
g.add_argument("--eval_examples", type=int, default=400, help="held-out questions for pass@1 (default 400)")
add_training_args(parser, device_batch_size="8", init_lr_frac=0.05, warmdown_ratio=1.0, eval_every=60, save_every=60)
args = parser.parse_args()
if not args.device_batch_size.isdigit() or int(args.device_batch_size) < 1:
    die(f"--device_batch_size must be a number of rows (replies per micro-step), got {args.device_batch_size!r}")
if args.total_batch_size != -1:
    die("--total_batch_size does not apply to RL: a step is --examples_per_step x --num_samples replies")
if args.compile:
    die("--compile is not supported by chat_rl: every micro-batch has its own length")
if args.num_samples < 2 or args.examples_per_step < 1 or args.max_new_tokens < 1 or args.eval_examples < 1:
    die("need --num_samples >= 2 (advantages compare the samples of a question), --examples_per_step, "
        "--max_new_tokens and --eval_examples >= 1")
if args.temperature <= 0:
    die("--temperature must be positive: greedy replies are all the same, so every advantage would be 0")

# -----------------------------------------------------------------------------
# setup
try:
    ddp, rank, local_rank, world_size, device = compute_init(args.device_type)
    dtype = get_compute_dtype(device.type, args.precision)
    model, tokenizer, source_meta, source, source_tag = start_model(["sft"], args.source, args.model_tag or "",
                                                                    -1 if args.step is None else args.step, device)
    train_task = load_task(args.task, "train", args.num_questions or None, args.seed)
    val_task = load_task(args.task, "test", args.eval_examples, 0)
except (UserError, ValueError, FileNotFoundError) as e:
    die(str(e))
B = int(args.device_batch_size)
if args.examples_per_step % world_size:
    die(f"--examples_per_step {args.examples_per_step} must be a multiple of the {world_size} ranks")
rows_per_rank = args.examples_per_step // world_size * args.num_samples
if rows_per_rank % B:
    die(f"a step's {rows_per_rank} replies per rank (--examples_per_step / ranks x --num_samples) must be a multiple of "
        f"--device_batch_size {B}")
grad_accum_steps = rows_per_rank // B
num_iterations = args.num_iterations if args.num_iterations > 0 else \
    max(1, args.num_epochs * len(train_task) // args.examples_per_step)
checkpoint_dir = os.path.join(get_checkpoints_dir("rl"), args.output_tag or source_tag)
torch.manual_seed(args.seed)
print0(f"device: {device} x {world_size} | compute dtype: {dtype}")
print0(f"RL from {source}/{source_tag} step {source_meta['step']} -> {checkpoint_dir}")
print0(f"task: {args.task} | {len(train_task):,d} training questions, {min(args.eval_examples, len(val_task))} held out for pass@1")
print0(f"per step: {args.examples_per_step} questions x {args.num_samples} samples = {rows_per_rank * world_size} replies "
       f"({B} per micro-step x {grad_accum_steps} accumulation steps x {world_size} ranks) | iterations: {num_iterations:,}")

run_meta = {"phase": "rl", "source": {"phase": source, "model_tag": source_tag, "step": source_meta["step"]}, "task": args.task}
try:
    trainer = Trainer(model, args, device, dtype, B, args.max_new_tokens, grad_accum_steps, checkpoint_dir, run_meta,
                      loss_fn=pg_loss, wandb_project="nanochat-rl")
    meta = trainer.resume()
except UserError as e:
    die(f"--resume: {e}" if args.resume != "no" else str(e))
print0("optimizer groups:\n" + trainer.describe())
batches = RolloutBatches(model, tokenizer, train_task, args.num_samples, B, args.max_new_tokens, args.temperature,
                         args.top_k or None, args.seed, meta and meta.get("dataloader_state"), rank, world_size,
                         weights_version=lambda: trainer.step, advantage=args.advantage, rows_per_step=rows_per_rank)


def evaluate():
    return {"pass@1": pass_at_1(model, tokenizer, val_task, args.eval_examples, args.max_new_tokens, rank, world_size)}


def sample():
    """Greedy replies to the first held-out questions, calculator calls shown."""
    engine = Engine(model, tokenizer, max_context=model.config.sequence_len)
    for i in range(min(3, len(val_task))):
        conversation = val_task[i]
        out = engine.generate_batch(render_for_completion(tokenizer, conversation), max_tokens=args.max_new_tokens, temperature=0)[0]
        yield conversation["messages"][-2]["content"], tokenizer.decode(out)

# -----------------------------------------------------------------------------
# training loop
result = trainer.run(batches, num_iterations, evaluate=evaluate, sample=sample, eval_at_start=True)
report.append_training("chat_rl", trainer, result, {"source": f"{source}/{source_tag} step {source_meta['step']}", "task": args.task})
if result["first_val"] is not None:
    print0(f"done: {result['step']} steps, {result['total_time'] / 60:.2f} min of training | "
           f"held-out pass@1 {result['first_val']:.4f} -> {result['val'].get('pass@1', float('nan')):.4f}")
trainer.close()  # the DDP wrapper goes before the process group
compute_cleanup()
