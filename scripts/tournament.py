"""
An architecture tournament: train the contestants of nanochat/variants.py for a few hundred steps
each, keep the best by held-out loss, train the survivors further, until one is left.

    python -m scripts.tournament --device_batch_size 16 --precision bf16 --grad_checkpoint   # the ten, on a 24 GB card
    python -m scripts.tournament --scale tiny --rounds 40:5,60:3,100:1 --max_seq_len 256 \\
        --device_batch_size 8 --data builtin                                                  # the same ten, small, on a CPU
    python -m scripts.tournament --lineup v01,v03,v05 --seeds 3 --budget flops

Every contestant trains through the shared loop (nanochat.trainer) on the same data in the same
order from the same seed, with the same batch; the learning-rate schedule spans all rounds, so a
survivor simply continues from its own checkpoint. After each round the contestants are ranked by
held-out bpb at equal tokens (or, --budget flops, at equal training FLOPs), with train loss,
tokens/s, peak memory and parameters beside it. A contestant whose memory estimate exceeds the
card (--gpu_memory, default the device's), or that runs out of memory, is eliminated with that
reason and the tournament goes on. With --seeds N each contestant trains N times (seeds differ in
the initial weights) and a difference within the seeds' spread is reported as a tie.

Resumable: run the same command again after a kill and it continues where it stopped (see
nanochat/tournament.py for the files). The winner's checkpoint is copied to
base_checkpoints/<--winner_tag> for chat_sft. NANOCHAT_TOURNAMENT_OOM=<variant> makes that
contestant raise out-of-memory in its first step (to try the elimination path).
"""
import argparse
import gc
import os
import shutil
import time

import torch

from nanochat.batch_plan import fits
from nanochat.checkpoint_manager import find_last_step, get_checkpoints_dir
from nanochat.common import (ArgumentParser, UserError, autocast_ctx, compute_cleanup, compute_init, die,
                             get_base_dir, get_compute_dtype, get_max_memory, print0)
from nanochat.dataloader import BackgroundLoader, DataLoader
from nanochat.dataset import get_data_dir
from nanochat.flags import add_device_args
from nanochat.gpt import GPT, build_model
from nanochat.loss_eval import evaluate_bpb
from nanochat.metrics import METRICS_FILE, read_rows
from nanochat.tokenizer import get_token_bytes, get_tokenizer
from nanochat.train_settings import add_training_args, lr_multiplier
from nanochat.trainer import Trainer, default_loss
from nanochat import tournament as tour
from nanochat.variants import VARIANTS, resolve, variant_config
from nanochat.vram import estimate_memory, precision_name

# -----------------------------------------------------------------------------
# settings
parser = ArgumentParser(description="Architecture tournament: rounds of training, the worst eliminated by held-out loss.")
add_device_args(parser)
parser.add_argument("--name", type=str, default="default", help="tournament folder under $NANOCHAT_BASE_DIR/tournament/")
parser.add_argument("--lineup", type=str, default="all", help="comma-separated variants or unique prefixes (default all ten)")
parser.add_argument("--scale", type=str, default="full", choices=["full", "tiny"], help="full (published sizes) or tiny (for a CPU)")
parser.add_argument("--rounds", type=str, default="500:5,1000:3,2000:1", help="STEPS:SURVIVORS per round (default 500:5,1000:3,2000:1)")
parser.add_argument("--budget", type=str, default="tokens", choices=["tokens", "flops"],
                    help="equal tokens per round, or equal FLOPs (the cheapest contestant trains the round's steps)")
parser.add_argument("--seeds", type=int, default=1, help="trainings per contestant (different initial weights); ties within their spread")
parser.add_argument("--max_seq_len", type=int, default=1024, help="context length (default 1024)")
parser.add_argument("--data", type=str, default="auto", help="auto | fineweb | builtin | tinystories | a folder of parquet shards")
parser.add_argument("--eval_tokens", type=int, default=1 << 20, help="held-out tokens per evaluation (the same for all)")
parser.add_argument("--gpu_memory", type=float, default=0, help="GiB of the card to fit (default: the device's; e.g. 24 on a larger GPU)")
parser.add_argument("--winner_tag", type=str, default="", help="base_checkpoints tag the winner is copied to (default: its variant)")
add_training_args(parser, device_batch_size="16", total_batch_size=-1, eval_every=0, log_every=25)
args = parser.parse_args()

# -----------------------------------------------------------------------------
# setup
try:
    ddp, rank, local_rank, world_size, device = compute_init(args.device_type)
    if ddp:
        raise UserError("the tournament runs on one device (its contestants train one after another)")
    if args.device_batch_size == "auto" or not args.device_batch_size.isdigit():
        raise UserError("--device_batch_size: give a number (every contestant trains on the same batch)")
    if args.seeds < 1:
        raise UserError("--seeds must be at least 1")
    dtype = get_compute_dtype(device.type, args.precision)
    rounds = tour.parse_rounds(args.rounds)
    names = list(VARIANTS) if args.lineup == "all" else [resolve(n.strip()) for n in args.lineup.split(",") if n.strip()]
    if len(set(names)) != len(names) or not names:
        raise UserError(f"--lineup {args.lineup!r}: name each variant once")
    tokenizer = get_tokenizer()
    token_bytes = get_token_bytes(device)
    data_dir = get_data_dir(args.data)
except (UserError, ValueError, FileNotFoundError) as e:
    die(str(e))
B, T = int(args.device_batch_size), args.max_seq_len
accum = max(1, args.total_batch_size // (B * T)) if args.total_batch_size > 0 else 1
tokens_per_step = B * T * accum
configs = {n: variant_config(n, tokenizer.get_vocab_size(), T, args.scale) for n in names}
keys = {n: [n if args.seeds == 1 else f"{n}_s{s}" for s in range(args.seeds)] for n in names}  # a training's folder
with torch.device("meta"):
    sizes = {n: (m.num_params(), m.active_params(), m.estimate_flops()) for n, m in ((n, GPT(c)) for n, c in configs.items())}
steps = tour.round_steps({n: sizes[n][2] for n in names}, rounds, args.budget)
folder = os.path.join(get_base_dir(), "tournament", args.name)
settings = {"name": args.name, "lineup": names, "scale": args.scale, "rounds": args.rounds, "budget": args.budget,
            "seeds": args.seeds, "seed": args.seed, "max_seq_len": T, "batch": [B, accum], "data": data_dir,
            "optimizer": args.optimizer, "precision": precision_name(dtype), "grad_checkpoint": args.grad_checkpoint}
state = tour.load_state(folder)
if state is None:
    state = {"settings": settings, "contestants": {n: {"variant": n, "status": "alive", "reason": None, "eliminated_in": None,
                                                       "params": sizes[n][0], "active": sizes[n][1], "flops_per_token": sizes[n][2],
                                                       "steps": steps[n], "results": []} for n in names}}
    tour.save_state(folder, state)
else:
    try:
        tour.check_settings(state, settings)
    except ValueError as e:
        die(f"{folder}: {e}")
    print0(f"continuing the tournament in {folder}")
gpu_bytes = args.gpu_memory * 2**30 if args.gpu_memory > 0 else (torch.cuda.get_device_properties(device).total_memory
                                                                  if device.type == "cuda" else None)
state["header"] = (f"{len(names)} contestants ({args.scale} scale), rounds {args.rounds} (steps:survivors), equal {args.budget}, "
                   f"{args.seeds} seed(s) from {args.seed}; batch {B} x {T} x {accum} = {tokens_per_step:,} tokens per step, "
                   f"{precision_name(dtype)}, {args.optimizer}, grad checkpointing {'on' if args.grad_checkpoint else 'off'}, "
                   f"data {data_dir}, held-out {args.eval_tokens:,} tokens; device {device}"
                   + (f", card of {gpu_bytes / 2**30:.1f} GiB" if gpu_bytes else ""))
print0(state["header"])
eval_steps = max(1, args.eval_tokens // (B * T))
inject_oom = os.environ.get("NANOCHAT_TOURNAMENT_OOM", "")


def evaluator(model):
    """Held-out bpb on the same val tokens for every contestant."""
    def evaluate():
        val = DataLoader(tokenizer, B, T, "val", device=device, data_dir=data_dir)
        return {"val_bpb": evaluate_bpb(model, val, eval_steps, token_bytes)}
    return evaluate


def oom_loss(model, x, y):
    raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (injected by NANOCHAT_TOURNAMENT_OOM={inject_oom})")


def is_oom(e):
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e) or "can't allocate memory" in str(e)


def memory_reason(name):
    """Why a contestant cannot fit the card by the memory estimate (None when it fits or there is no card to fit)."""
    if gpu_bytes is None:
        return None
    # the calculator's own test (nanochat.batch_plan.fits): the total with the CUDA context, and a margin to spare
    precision = precision_name(dtype)
    if fits(configs[name], B, T, precision, args.optimizer, args.grad_checkpoint, args.compile, gpu_bytes):
        return None
    est = estimate_memory(configs[name], B, T, precision, args.optimizer, args.grad_checkpoint, args.compile)["total"]
    return (f"memory estimate {est / 2**30:.1f} GiB (with the CUDA context) does not fit the card's "
            f"{gpu_bytes / 2**30:.1f} GiB at batch {B} x {T}")


def eliminate(name, round_index, reason):
    c = state["contestants"][name]
    c.update(status="eliminated", reason=reason, eliminated_in=round_index)
    print0(f"eliminated {name} in round {round_index}: {reason}")


def train(name, seed_index, round_index):
    """Train one contestant's seed to the end of round_index; returns its result row, or raises (out of memory)."""
    c = state["contestants"][name]
    key, seed = keys[name][seed_index], args.seed + seed_index
    target, horizon = sum(c["steps"][:round_index]), sum(c["steps"])
    torch.manual_seed(seed)
    model = build_model(configs[name], device)
    run_args = argparse.Namespace(**{**vars(args), "seed": seed, "resume": "auto"})
    trainer = Trainer(model, run_args, device, dtype, B, T, accum, os.path.join(folder, key),
                      run_meta={"tournament": args.name, "variant": name, "round": round_index},
                      loss_fn=oom_loss if name == inject_oom else default_loss)
    meta = trainer.resume()
    loader = BackgroundLoader(DataLoader(tokenizer, B, T, "train", device=device, data_dir=data_dir,
                                         state=meta.get("dataloader_state") if meta else None))
    schedule = lambda s: lr_multiplier(s, horizon, args.warmup_ratio, args.warmdown_ratio, args.final_lr_frac, args.lr_decay)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step0, time0, wall0 = trainer.step, trainer.total_time, time.time()
    try:
        summary = trainer.run(loader, target, evaluate=evaluator(model), schedule=schedule)
    finally:
        loader.close()
    val = summary["val"].get("val_bpb")
    if val is None:  # the checkpoint was already at the round's end (killed before the state file said so)
        model.eval()
        with torch.no_grad(), autocast_ctx(device.type, dtype):
            val = evaluator(model)()["val_bpb"]
    trained, seconds = trainer.step - step0, trainer.total_time - time0
    smooth = trainer.smooth_loss.item() / (1 - 0.9 ** max(1, trainer.step - trainer.first_step))
    return {"round": round_index, "seed": seed, "steps": trainer.step, "tokens": trainer.step * tokens_per_step,
            "flops": trainer.step * tokens_per_step * c["flops_per_token"], "val_bpb": val, "train_loss": smooth,
            "tok_per_sec": trained * tokens_per_step / seconds if trained and seconds > 0 else None,
            "peak_memory": get_max_memory(device.type) or None, "wall_time": time.time() - wall0}


def free_memory():
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def copy_winner(name, round_index):
    """The winner's best seed's last checkpoint, copied into base_checkpoints/<tag> (where chat_sft looks)."""
    c = state["contestants"][name]
    best = min((r for r in c["results"] if r["round"] == round_index), key=lambda r: r["val_bpb"])
    src = os.path.join(folder, keys[name][best["seed"] - args.seed])
    step = find_last_step(src)
    tag = args.winner_tag or name
    dst = os.path.join(get_checkpoints_dir("base"), tag)
    os.makedirs(dst, exist_ok=True)
    for stem in ("model", "meta", "optim"):
        path = os.path.join(src, f"{stem}_{step:06d}.{'json' if stem == 'meta' else 'pt'}")
        if os.path.exists(path):
            shutil.copy2(path, os.path.join(dst, os.path.basename(path)) + ".tmp")
            os.replace(os.path.join(dst, os.path.basename(path)) + ".tmp", os.path.join(dst, os.path.basename(path)))
    return tag, step


# -----------------------------------------------------------------------------
# the rounds
t_start = time.time()
for r, (round_steps_nominal, keep) in enumerate(rounds, 1):
    alive = [n for n in names if state["contestants"][n]["status"] == "alive"]
    if r <= state.get("rounds_done", 0) or not alive:
        continue  # ranked before a restart (or nobody left)
    print0(f"\n=== round {r}/{len(rounds)}: {len(alive)} contestants, {round_steps_nominal} steps, {keep} go on ===")
    for name in alive:
        c = state["contestants"][name]
        reason = memory_reason(name)
        if reason:
            eliminate(name, r, reason)
            tour.save_state(folder, state)
            continue
        for s in range(args.seeds):
            if any(x["round"] == r and x["seed"] == args.seed + s for x in c["results"]):
                continue  # done before a restart
            print0(f"--- round {r}: {keys[name][s]} ({c['params'] / 1e6:.1f}M params) to step {sum(c['steps'][:r])}")
            try:
                c["results"].append(train(name, s, r))
            except RuntimeError as e:  # torch.cuda.OutOfMemoryError is one
                if not is_oom(e):
                    raise
                eliminate(name, r, f"out of memory at batch {B} x {T}: {str(e).splitlines()[0][:120]}")
                break
            finally:
                free_memory()  # after the except clause: its traceback (holding the model) is gone by then
            print0(f"round {r}: {keys[name][s]} val bpb {c['results'][-1]['val_bpb']:.4f}")
            tour.save_state(folder, state)
        tour.save_state(folder, state)
    ranked = tour.rank(state, r, [n for n in alive if state["contestants"][n]["status"] == "alive"])
    for i, (name, _) in enumerate(ranked):
        if i >= keep:
            eliminate(name, r, f"ranked {i + 1} of {len(ranked)} in round {r}")
    took = sum(x["wall_time"] for n in names for x in state["contestants"][n]["results"] if x["round"] == r)
    text = tour.write_round(folder, state, r, ranked, keep, f"Contestants' time this round: {took / 60:.1f} min.")
    state["rounds_done"] = r
    tour.save_state(folder, state)
    print0("\n" + text)

# -----------------------------------------------------------------------------
# the winner
last = max((x["round"] for n in names for x in state["contestants"][n]["results"]), default=0)
final = tour.rank(state, last, [n for n in names if state["contestants"][n]["status"] == "alive"]) if last else []
if final:
    winner, s = final[0]
    tag, step = copy_winner(winner, last)
    tie = f" (a tie with {final[1][0]}: within seed noise)" if len(final) > 1 and final[1][1].get("tie_with") == winner else ""
    line = (f"{winner}: held-out bpb {s['val_bpb']:.4f} after {s['tokens']:,} tokens{tie}; checkpoint step {step} copied to "
            f"base_checkpoints/{tag}: python -m scripts.chat_sft --source base --model_tag {tag}")
else:
    line = "no contestant finished a round (all were eliminated)"
tour.write_results(folder, state, len(rounds), line)
try:
    out = tour.plot(folder, state, os.path.join(folder, "tournament.png"),
                    lambda n: [row for k in keys[n] for row in read_rows(os.path.join(folder, k, METRICS_FILE))])
    print0(f"plot: {out}")
except ImportError:
    print0("no plot: pip install matplotlib")
print0(f"\nwinner: {line}\nresults: {os.path.join(folder, 'results.md')} | this run took {(time.time() - t_start) / 60:.1f} min")
compute_cleanup()
