"""
Curriculum training: warm-start from a checkpoint (weights only, a fresh optimizer), then train
through phases that change the data mixture, the exercise difficulty and the learning rate
(nanochat.curriculum: the JSON format), with the user's own text in every batch if asked.

    python -m scripts.curriculum_train --config dev/curriculum_cpu.json --model_tag ittybitty --personal dev/demo_personal
    python -m scripts.curriculum_train --config dev/curriculum_seed.json --model_tag hamner --personal transcripts.jsonl \
        --layer_lr 7-12:0.2 --resume auto          # after a reboot: the same command again
    python -m scripts.curriculum_train --config my.json --phase 3   # start at phase 3
    python -m scripts.curriculum_train --config my.json --lora_rank 16 --output_tag hamner_lora   # adapters only
    python -m scripts.plot_training curriculum/ittybitty            # the run, phases shaded

Writes curriculum_checkpoints/<tag>/ (checkpoints record the phase; metrics.jsonl, samples.jsonl).
Settings -> setup -> loop (nanochat.trainer).
"""
import os

import torch

from nanochat.flags import add_device_args
from nanochat.common import ArgumentParser, compute_init, compute_cleanup, print0, die, UserError, get_compute_dtype
from nanochat.checkpoint_manager import PHASE_DIRS, find_model_tag, get_checkpoints_dir, load_model
from nanochat.curriculum import load_curriculum, with_personal_frac, phase_at, difficulty_at, lr_at, sources_of
from nanochat.dataloader import BackgroundLoader, DataLoader
from nanochat.dataset import get_data_dir
from nanochat.exercises import generate, render_text
from nanochat.lora import add_lora_args, apply_lora_from_args, lora_from_args
from nanochat.loss_eval import evaluate_bpb
from nanochat.streams import MixedBatches, ExerciseTokens, shard_source, personal_source, source_states, shares
from nanochat.tokenizer import get_token_bytes
from nanochat.train_settings import add_training_args, plan_batches
from nanochat.trainer import Trainer
from nanochat import report

# -----------------------------------------------------------------------------
# settings
parser = ArgumentParser(description="Train a model through the phases of a curriculum (mixtures, difficulty, LR per phase).")
add_device_args(parser)
parser.add_argument("--config", type=str, required=True, help="the curriculum JSON (see nanochat/curriculum.py; dev/curriculum_*.json)")
parser.add_argument("--source", type=str, default="base", choices=list(PHASE_DIRS), help="stage of the checkpoint to warm-start from")
parser.add_argument("--model_tag", type=str, default="", help="model tag of the source (default: the deepest model)")
parser.add_argument("--step", type=int, default=-1, help="source checkpoint step (default: the latest)")
parser.add_argument("--output_tag", type=str, default="", help="model tag to write under curriculum_checkpoints/ (default: the source's)")
parser.add_argument("--phase", type=int, default=1, help="start at this phase (1-based), on a fresh run")
parser.add_argument("--data", type=str, default="auto", help="the 'pretrain' source: auto | fineweb | builtin | a folder of shards")
parser.add_argument("--personal", type=str, default="", help="your own text for the 'personal' source (txt, md, ChatML, JSONL, .vtt)")
parser.add_argument("--personal_frac", type=float, default=-1, help="personal share of every batch in every phase (-1: the phases' weights)")
parser.add_argument("--max_seq_len", type=int, default=0, help="context length (default: the model's)")
parser.add_argument("--warmup_steps", type=int, default=-1, help="LR warmup steps at the start of the run (-1: the curriculum's)")
parser.add_argument("--eval_tokens", type=int, default=4 * 524288, help="tokens of each source's held-out data per evaluation")
add_training_args(parser, total_batch_size=-1, init_lr_frac=0.1, eval_every=250)
add_lora_args(parser)
args = parser.parse_args()

# -----------------------------------------------------------------------------
# setup
try:
    ddp, rank, local_rank, world_size, device = compute_init(args.device_type)
    dtype = get_compute_dtype(device.type, args.precision)
    phases, settings = load_curriculum(args.config)
    if 0 <= args.personal_frac < 1:
        phases = with_personal_frac(phases, args.personal_frac)
    elif args.personal_frac != -1:
        raise UserError(f"--personal_frac must be in [0, 1) (or -1: the phases' weights), got {args.personal_frac}")
    names = sources_of(phases)
    if "personal" in names and not args.personal:
        raise UserError(f"{args.config} mixes in 'personal' data: give it with --personal PATH")
    if not 1 <= args.phase <= len(phases):
        raise UserError(f"--phase {args.phase}: the curriculum has phases 1..{len(phases)}")
    if args.num_iterations > 0:
        raise UserError("the phases set the length of a curriculum run: drop --num_iterations")
    lora_from_args(args)  # bad LoRA flags fail before the model loads
    source_tag = args.model_tag or find_model_tag(get_checkpoints_dir(args.source))
    model, tokenizer, source_meta = load_model(args.source, device, "train", source_tag, None if args.step < 0 else args.step)
    data_dirs = {n: get_data_dir(args.data if n == "pretrain" else n) for n in names if n not in ("exercises", "personal")}
    token_bytes = get_token_bytes(device)
except (UserError, ValueError, FileNotFoundError) as e:
    die(str(e))
config = model.config
checkpoint_dir = os.path.join(get_checkpoints_dir("curriculum"), args.output_tag or source_tag)
warmup_steps = settings["warmup_steps"] if args.warmup_steps < 0 else args.warmup_steps
T = args.max_seq_len or config.sequence_len
if T > model.cos.size(1):
    die(f"--max_seq_len {T} is longer than the model's rotary table ({model.cos.size(1)})")
torch.manual_seed(args.seed)
try:  # --lora_rank: adapters on the loaded model, which stays frozen (nanochat.lora)
    said = apply_lora_from_args(model, args, {"source": args.source, "model_tag": source_tag, "step": source_meta["step"]})
    B, total_batch_size, grad_accum_steps = plan_batches(args, config, T, dtype, device, world_size)
except UserError as e:
    die(str(e))
num_iterations = phases[-1].end
print0(f"device: {device} x {world_size} | compute dtype: {dtype}")
print0(f"warm start from {args.source}/{source_tag} step {source_meta['step']} (weights only, a fresh optimizer) -> {checkpoint_dir}")
if said:
    print0(said)
print0(f"curriculum {args.config}: {len(phases)} phases, {num_iterations:,} steps of {total_batch_size:,} tokens "
       f"({B} x {T} x {world_size} ranks x {grad_accum_steps} accumulation) | warmup {warmup_steps} steps")
for i, p in enumerate(phases):
    mix = ", ".join(f"{k} {w:.0%}" for k, w in p.mixture.items())
    print0(f"  phase {i + 1} {p.name}: steps {p.start}-{p.end - 1} | {mix} | difficulty {p.difficulty[0]:g} -> "
           f"{p.difficulty[1]:g} | lr x{p.lr_mult:g}")

def run_meta(step):
    p = phase_at(phases, max(step - 1, 0))  # the phase of the last step trained
    return {"phase": "curriculum", "source": {"phase": args.source, "model_tag": source_tag, "step": source_meta["step"]},
            "curriculum": {"config": os.path.abspath(args.config), "phase": phases.index(p) + 1, "phase_name": p.name,
                           "phase_step": step - p.start, "phase_steps": p.steps}}

try:
    trainer = Trainer(model, args, device, dtype, B, T, grad_accum_steps, checkpoint_dir, run_meta, wandb_project="nanochat-curriculum")
    meta = trainer.resume()
except UserError as e:
    die(f"--resume: {e}" if args.resume != "no" else str(e))
if meta is None:
    trainer.start_at(phases[args.phase - 1].start)
elif args.phase != 1:
    print0(f"--phase {args.phase} is ignored: the run resumes at step {trainer.step} ({phase_at(phases, trainer.step).name})")
print0("optimizer groups:\n" + trainer.describe())

# the sources, each at its saved position when resuming
states = source_states(meta and meta.get("dataloader_state"), rank, world_size)
try:
    sources = {}
    for n in names:
        if n == "exercises":
            sources[n] = ExerciseTokens(tokenizer, seed=args.seed, rank=rank, state=states.get(n))
        elif n == "personal":
            sources[n] = personal_source(tokenizer, args.personal, args.seed, rank, states.get(n))
        else:
            sources[n] = shard_source(tokenizer, data_dirs[n], device, states.get(n))
except UserError as e:
    die(str(e))

def plan(step):
    p = phase_at(phases, step)
    return p.mixture, {"difficulty": difficulty_at(p, step), "kinds": p.exercise_kinds}, p.name

batches = BackgroundLoader(MixedBatches(sources, plan, B, T, device, trainer.first_step, grad_accum_steps,
                                        meta and meta.get("dataloader_state"), rank, world_size))
eval_steps = max(1, args.eval_tokens // (B * T * world_size))

def evaluate():
    """bpb on each shard source's val split, and on held-out exercises of every difficulty (a fixed set)."""
    out = {}
    for n, d in data_dirs.items():
        key = "val_bpb" if n == "pretrain" or len(data_dirs) == 1 else f"val_bpb_{n}"
        out[key] = evaluate_bpb(model, DataLoader(tokenizer, B, T, "val", device=device, data_dir=d), eval_steps, token_bytes)
    if "exercises" in names:
        held_out = MixedBatches({"exercises": ExerciseTokens(tokenizer, seed=10_000 + args.seed, rank=rank)},
                                lambda s: ({"exercises": 1.0}, {"difficulty": 3.0}, None), B, T, device)
        out["val_bpb_exercises"] = evaluate_bpb(model, held_out, eval_steps, token_bytes)
    return out

def sample():
    import random
    p = phase_at(phases, max(trainer.step - 1, 0))
    rng = random.Random(trainer.step)
    prompts = [render_text(generate(rng.choice(p.exercise_kinds), round(difficulty_at(p, trainer.step - 1)), rng)[0])
               for _ in range(3)] + ["Once upon a time"]
    for prompt in prompts:
        ids = tokenizer.encode(prompt, prepend=tokenizer.get_bos_token_id())
        yield prompt, tokenizer.decode(list(model.generate(ids, max_tokens=24, temperature=0)))

def phase_end(name, data_state):
    """The share of each source in the tokens the phase trained, against its weights."""
    got, want = shares(data_state, name), next(p for p in phases if p.name == name).mixture
    print0(f"phase {name} done: tokens by source " + ", ".join(f"{k} {got.get(k, 0):.2%} (weight {w:.2%})" for k, w in want.items()))
    return got

# -----------------------------------------------------------------------------
# training loop
result = trainer.run(batches, num_iterations, evaluate=evaluate, sample=sample, eval_at_start=True, phase_end=phase_end,
                     schedule=lambda step: lr_at(phases, step, trainer.first_step, warmup_steps, settings["final_lr_frac"]),
                     phase_fn=lambda step: phase_at(phases, step).name, sample_steps={p.end for p in phases})
report.append_training("curriculum_train", trainer, result, {"phases": ", ".join(p.name for p in phases)})
if result["first_val"] is not None and result["val"]:
    print0(f"done: {result['total_time'] / 60:.2f} min of training | " +
           " | ".join(f"{k} {v:.4f}" for k, v in result["val"].items()) + f" (started at {result['first_val']:.4f})")
trainer.close()  # the DDP wrapper goes before the process group
compute_cleanup()
