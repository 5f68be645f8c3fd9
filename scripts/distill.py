"""
Distill a teacher into a student: the student learns the teacher's next-token distribution
(KL at a temperature) mixed with the usual cross-entropy (nanochat.distill).

    python -m scripts.distill --teacher base/d12 --depth 6                   # a new d6 student, pretraining text
    python -m scripts.distill --teacher base/teacher --n_layer 2 --model_dim 64 --head_dim 32 --data builtin
    python -m scripts.distill --teacher sft/d12 --student sft/d6 --mixture exercises:6,chat:1 --init_lr_frac 0.1
    python -m scripts.distill --teacher base/d12 --depth 6 --kl_weight 0      # the same student without the teacher

Data: pretraining text (--data, as base_train) by default; conversations with --mixture (as
chat_sft: only the assistant's tokens train). The student is a new model from the architecture
flags (as base_train's) or --student SOURCE/TAG, a checkpoint to continue. Both models must come
from the tokenizer in $NANOCHAT_BASE_DIR/tokenizer. The student's checkpoints go to
base_checkpoints/<output_tag> (text) or chatsft_checkpoints/<output_tag> (conversations), where
load_model and every script find them (-i base -g <output_tag>).

The retention curve: every evaluation logs the student's and the teacher's val bpb (text) or val
loss (conversations) and their accuracy on held-out built-in exercises to metrics.jsonl (the
teacher's are measured once: it does not change), and the end of the run draws them against
training tokens to retention.png next to the checkpoints (with matplotlib installed).
"""
import importlib.util
import os

import torch
import torch.distributed as dist

from nanochat.flags import ARCH_DEFAULTS, add_arch_args, add_device_args, config_from_args
from nanochat.common import ArgumentParser, compute_init, compute_cleanup, print0, die, UserError, get_compute_dtype
from nanochat.checkpoint_manager import PHASE_DIRS, find_model_tag, get_checkpoints_dir, load_model
from nanochat.distill import DistillLoss, check_same_vocab, exercise_accuracy
from nanochat.gpt import build_model, model_tag_for
from nanochat.train_settings import add_training_args, plan_batches
from nanochat.trainer import Trainer
from nanochat import report

# -----------------------------------------------------------------------------
# settings
parser = ArgumentParser(prog="python -m scripts.distill",
                        description="Distill a teacher checkpoint into a smaller student (same tokenizer); writes "
                                    "$NANOCHAT_BASE_DIR/base_checkpoints/<output_tag>/ (text) or chatsft_checkpoints/<output_tag>/ "
                                    "(--mixture), with the retention curve (student and teacher) in metrics.jsonl and retention.png.")
add_device_args(parser)
g = parser.add_argument_group("distillation")
g.add_argument("--teacher", type=str, required=True, help=f"SOURCE/TAG of the teacher (SOURCE: {', '.join(PHASE_DIRS)}), e.g. base/d12")
g.add_argument("--teacher_step", type=int, default=-1, help="teacher checkpoint step (default: the latest)")
g.add_argument("--student", type=str, default="", help="SOURCE/TAG of a checkpoint to start the student from "
               "(default: a new model from the architecture flags)")
g.add_argument("--student_step", type=int, default=-1, help="with --student: its step (default: the latest)")
g.add_argument("--kl_weight", type=float, default=0.5, help="weight of the KL term; 1 - this is the cross-entropy's (0: no teacher)")
g.add_argument("--temperature", type=float, default=1.0, help="softmax temperature of both models in the KL (scaled by T^2)")
g.add_argument("--output_tag", type=str, default="", help="the student's checkpoint folder name (default <student>_from_<teacher tag>)")
g.add_argument("--max_seq_len", type=int, default=0, help="tokens per row (default: the teacher's sequence_len)")
g.add_argument("--data", type=str, default="auto", help="pretraining text: auto | fineweb | builtin | tinystories | a folder of parquet shards")
g.add_argument("--mixture", type=str, default="", help="train on conversations instead: task:weight,... as chat_sft's "
               "(e.g. exercises:6,chat:1); the student goes to chatsft_checkpoints")
g.add_argument("--num_conversations", type=int, default=20_000, help="with --mixture: conversations per epoch")
g.add_argument("--num_epochs", type=int, default=1, help="with --mixture: epochs when --num_iterations is -1")
g.add_argument("--eval_conversations", type=int, default=256, help="with --mixture: held-out conversations per evaluation")
g.add_argument("--eval_tokens", type=int, default=20 * 524288, help="text: tokens of val data per evaluation")
g.add_argument("--eval_exercises", type=int, default=100,
               help="held-out built-in exercises (difficulty 1-2, all kinds) answered per evaluation (0: none)")
g.add_argument("--target_param_data_ratio", type=float, default=20, help="text: tokens per student parameter when --num_iterations is -1")
add_arch_args(parser)
add_training_args(parser, device_batch_size="32", total_batch_size=524288, eval_every=250, sample_every=0)
args = parser.parse_args()
chat = bool(args.mixture)


def source_tag(spec, flag):
    """SOURCE/TAG (or SOURCE alone: its deepest model) -> (source, tag); a one-line error otherwise."""
    source, _, tag = spec.partition("/")
    if source not in PHASE_DIRS:
        die(f"{flag} {spec!r}: expected SOURCE/TAG with SOURCE one of {', '.join(PHASE_DIRS)} (e.g. base/d12)")
    try:
        return source, tag or find_model_tag(get_checkpoints_dir(source))
    except UserError as e:
        die(f"{flag}: {e}")


# -----------------------------------------------------------------------------
# setup: the teacher, then the student (seeded as base_train seeds it, so --kl_weight 0 is its run)
try:
    ddp, rank, local_rank, world_size, device = compute_init(args.device_type)
    dtype = get_compute_dtype(device.type, args.precision)
except UserError as e:
    die(str(e))
teacher_source, teacher_tag = source_tag(args.teacher, "--teacher")
try:
    teacher, tokenizer, teacher_meta = load_model(teacher_source, device, "eval", teacher_tag,
                                                  None if args.teacher_step < 0 else args.teacher_step)
except UserError as e:
    die(f"--teacher {args.teacher}: {e}")
T = args.max_seq_len or teacher.config.sequence_len
torch.manual_seed(args.seed)
if args.student:
    given = [k for k, v in ARCH_DEFAULTS.items() if getattr(args, k) != v] + (["variant"] if args.variant else [])
    if given:
        die(f"--student {args.student} brings its own architecture: drop --{given[0]}")
    student_source, student_tag = source_tag(args.student, "--student")
    try:
        student, _, student_meta = load_model(student_source, device, "train", student_tag,
                                              None if args.student_step < 0 else args.student_step)
    except UserError as e:
        die(f"--student {args.student}: {e}")
    config = student.config
    student_from = {"phase": student_source, "model_tag": student_tag, "step": student_meta["step"]}
else:
    try:
        config = config_from_args(args, tokenizer.get_vocab_size(), T)
    except ValueError as e:
        die(str(e))
    student = build_model(config, device)
    student_tag, student_from = model_tag_for(config), None
try:
    check_same_vocab(teacher, student, f"the teacher {args.teacher}", f"the student {args.student or student_tag}")
except UserError as e:
    die(str(e))
for name, model in (("teacher", teacher), ("student", student)):
    if T > model.cos.size(1):
        die(f"--max_seq_len {T} is longer than the {name}'s rotary table ({model.cos.size(1)})")
print0(f"device: {device} x {world_size} | compute dtype: {dtype}")
print0(f"teacher {teacher_source}/{teacher_tag} step {teacher_meta['step']}: {teacher.num_params():,} parameters "
       f"({teacher.config.n_layer} x {teacher.config.n_embd})")
print0(f"student {args.student or 'new'}: {student.num_params():,} parameters ({config.n_layer} x {config.n_embd}), "
       f"{student.num_params() / teacher.num_params():.2f}x the teacher")
print0(f"loss: {args.kl_weight} x T^2 KL (T = {args.temperature}) + {1 - args.kl_weight:g} x cross-entropy"
       + (" (no teacher: plain training)" if args.kl_weight == 0 else ""))
try:
    B, total_batch_size, grad_accum_steps = plan_batches(args, config, T, dtype, device, world_size)
    loss_fn = DistillLoss(student, teacher, args.kl_weight, args.temperature)
except UserError as e:
    die(str(e))

if chat:
    from nanochat.chat_data import ConversationBatches, chat_mixtures, count_steps, evaluate_loss, sample_replies
    try:
        spec, train_mix, val_mix = chat_mixtures(args.mixture, "sft", args.num_conversations, args.eval_conversations, args.seed)
    except UserError as e:
        die(str(e))
    print0(f"mixture: {spec} | {len(train_mix):,d} conversations per epoch")
    if args.num_iterations > 0:
        num_iterations = args.num_iterations
    else:
        num_iterations = count_steps(tokenizer, train_mix, B, T, grad_accum_steps, args.num_epochs, rank, world_size)
        if ddp:
            n = torch.tensor(num_iterations, device=device)
            dist.all_reduce(n, op=dist.ReduceOp.MIN)
            num_iterations = int(n.item())
else:
    from nanochat.dataloader import BackgroundLoader, DataLoader
    from nanochat.dataset import get_data_dir
    from nanochat.loss_eval import evaluate_bpb
    from nanochat.tokenizer import get_token_bytes
    try:
        data_dir = get_data_dir(args.data)
    except (UserError, FileNotFoundError) as e:
        die(str(e))
    token_bytes = get_token_bytes(device)
    eval_steps = max(1, args.eval_tokens // (B * T * world_size))
    num_iterations = args.num_iterations if args.num_iterations > 0 else \
        max(1, int(args.target_param_data_ratio * student.num_params()) // total_batch_size)
print0(f"iterations: {num_iterations:,} | tokens: {num_iterations * total_batch_size:,}")

out_source = "sft" if chat else "base"
output_tag = args.output_tag or f"{student_tag}_from_{teacher_tag}"
checkpoint_dir = os.path.join(get_checkpoints_dir(out_source), output_tag)
if os.path.abspath(checkpoint_dir) == os.path.abspath(os.path.join(get_checkpoints_dir(teacher_source), teacher_tag)):
    die(f"the student would be written over the teacher in {checkpoint_dir}: choose another --output_tag")
run_meta = {"distill": {"teacher": {"phase": teacher_source, "model_tag": teacher_tag, "step": teacher_meta["step"]},
                        "kl_weight": args.kl_weight, "temperature": args.temperature, "data": args.mixture or args.data},
            "source": student_from}
try:
    trainer = Trainer(student, args, device, dtype, B, T, grad_accum_steps, checkpoint_dir, run_meta, loss_fn=loss_fn,
                      wandb_project="nanochat-distill")
    meta = trainer.resume()
except UserError as e:
    die(f"--resume: {e}" if args.resume != "no" else str(e))
print0(f"student -> {checkpoint_dir}")
print0("optimizer groups:\n" + trainer.describe())
data_state = meta.get("dataloader_state") if meta else None
if chat:
    batches = ConversationBatches(tokenizer, train_mix, B, T, device, data_state, rank, world_size,
                                  stop_epoch=args.num_epochs if args.num_iterations <= 0 else None)
else:
    try:
        batches = BackgroundLoader(DataLoader(tokenizer, B, T, "train", device=device, data_dir=data_dir, state=data_state))
    except UserError as e:
        die(str(e))


def val_metric(model):
    if chat:
        return evaluate_loss(model, ConversationBatches(tokenizer, val_mix, B, T, device, rank=rank, world_size=world_size,
                                                        stop_epoch=1))
    return evaluate_bpb(model, DataLoader(tokenizer, B, T, "val", device=device, data_dir=data_dir), eval_steps, token_bytes)


def measure(model):
    """{val_bpb or val_loss, exercise_acc} of one model (no gradients, under the trainer's autocast)."""
    out = {"val_loss" if chat else "val_bpb": val_metric(model)}
    acc = exercise_accuracy(model, tokenizer, args.eval_exercises, chat)
    if acc is not None:
        out["exercise_acc"] = acc
    return out


teacher_scores = {}  # measured at the first evaluation: the teacher does not change


def evaluate():
    if not teacher_scores:
        teacher_scores.update({f"teacher_{k}": v for k, v in measure(teacher).items()})
    return {**measure(student), **teacher_scores}


def sample():
    if chat:
        return sample_replies(student, tokenizer)
    prompts = ["Question: What is 12 + 34?\nAnswer:", "The capital of France is", "def fib(n):"]
    return [(p, tokenizer.decode(list(student.generate(tokenizer.encode(p, prepend=tokenizer.get_bos_token_id()),
                                                       max_tokens=16, temperature=0)))) for p in prompts]


# -----------------------------------------------------------------------------
# training loop
result = trainer.run(batches, num_iterations, evaluate=evaluate, sample=sample, eval_at_start=True)
report.append_training("distill", trainer, result, {"teacher": args.teacher, "kl_weight": args.kl_weight,
                                                    "temperature": args.temperature}, phase=out_source)
val = result["val"]
if val:
    key = "val_loss" if chat else "val_bpb"
    acc = (f" | exercises: student {val['exercise_acc']:.1%}, teacher {val['teacher_exercise_acc']:.1%}"
           if "exercise_acc" in val else "")
    print0(f"done: {result['step']} steps, {result['total_time'] / 60:.2f} min of training | {key.replace('_', ' ')}: "
           f"student {val[key]:.4f}, teacher {val['teacher_' + key]:.4f}{acc}")
if rank == 0 and val:
    if importlib.util.find_spec("matplotlib") is None:
        print0(f"no matplotlib: no retention.png (pip install matplotlib; then python -m scripts.plot_training {checkpoint_dir})")
    else:
        from scripts.plot_training import load_run, plot
        name, _, rows = load_run(checkpoint_dir)
        out = os.path.join(checkpoint_dir, "retention.png")
        plot([(name, rows)], out, "tokens", False)
        print0(f"retention curve: {out}")
trainer.close()  # the DDP wrapper goes before the process group
compute_cleanup()
