"""
Fine-tuning on conversations, shared by mid-training and SFT (scripts/mid_train.py and
scripts/chat_sft.py are two lines each). Same loop as base_train, with conversations instead
of a text stream:

- the data is a mixture of conversation tasks (nanochat.tasks.mixture spec), each rendered to
  tokens and a loss mask (only what the assistant writes is trained) and packed whole, in order,
  into rows of max_seq_len + 1 tokens; the rest of a row is padding that is not trained;
- it starts from a checkpoint of the stage before (mid: base; sft: mid, else base) and writes
  mid_checkpoints/ or chatsft_checkpoints/ with meta, resumable with --resume;
- by default it runs one epoch of the mixture, the learning rate following the fraction of
  conversations seen; --num_iterations fixes the number of steps instead.

The phases differ only in defaults: the source, the mixture and the learning-rate schedule
(mid-training: full rate with a warmdown at the end, like the end of pretraining; SFT: a small
fraction of it decaying linearly to zero, so the model is nudged, not retrained).
"""
import os
import time

import torch

from nanochat.common import (ArgumentParser, add_device_args, compute_init, compute_cleanup, print0, die, UserError,
                             get_compute_dtype, autocast_ctx, synchronize, get_max_memory, init_wandb, wrap_ddp)
from nanochat.optim import build_optimizers, muon_momentum, step_optimizers
from nanochat.vram import resolve_batch_plan
from nanochat.checkpoint_manager import (save_checkpoint, load_model, find_last_step, find_model_tag,
                                         get_checkpoints_dir, restore_training)
from nanochat.tokenizer import render_conversation, render_for_completion

PHASES = {
    # source stages tried in order, mixture, conversations per epoch, learning-rate schedule
    "mid": dict(sources=["base"], mixture="auto", size=200_000, init_lr_frac=1.0, warmdown_ratio=0.2, final_lr_frac=0.0),
    "sft": dict(sources=["mid", "base"], mixture="auto", size=20_000, init_lr_frac=0.02, warmdown_ratio=1.0, final_lr_frac=0.0),
}
NAMES = {"mid": "mid-training", "sft": "SFT"}
SAMPLE_PROMPTS = ["Hello!", "Who are you?", "What is 23 + 45?", "Reverse the list: red, green, blue."]


def default_mixture(phase):
    """Built-in conversations, plus SmolTalk when it has been downloaded (online users)."""
    from nanochat.tasks.smoltalk import is_downloaded
    spec = "exercises:6,chat:1"
    if is_downloaded("train") and is_downloaded("test"):
        spec += ",smoltalk:8" if phase == "mid" else ",smoltalk:3"
    return spec


def build_parser(phase):
    d = PHASES[phase]
    parser = ArgumentParser(prog=f"python -m scripts.{'mid_train' if phase == 'mid' else 'chat_sft'}",
                            description=f"{NAMES[phase]}: fine-tune a {' or '.join(d['sources'])} checkpoint on a mixture of "
                                        f"conversations (loss on the assistant's tokens only); writes "
                                        f"$NANOCHAT_BASE_DIR/{'mid' if phase == 'mid' else 'chatsft'}_checkpoints/<model_tag>/.")
    parser.add_argument("--run", type=str, default="dummy", help="wandb run name ('dummy' = no wandb)")
    add_device_args(parser)
    parser.add_argument("--precision", type=str, default="auto", choices=["auto", "bf16", "fp16", "fp32"],
                        help="autocast dtype (auto: bf16 on CUDA where supported, else fp16 with GradScaler; fp32 on CPU)")
    # what to start from, where to write
    parser.add_argument("--source", type=str, default="", choices=["", "base", "mid", "sft"],
                        help=f"stage to start from (default: the first of {', '.join(d['sources'])} that has checkpoints)")
    parser.add_argument("--model_tag", type=str, default="", help="model tag of the source (default: the deepest model)")
    parser.add_argument("--step", type=int, default=-1, help="source checkpoint step (default: the latest)")
    parser.add_argument("--output_tag", type=str, default="", help="model tag to write (default: the source's)")
    # data
    parser.add_argument("--mixture", type=str, default=d["mixture"],
                        help="task:weight,... e.g. 'exercises:6,chat:1,smoltalk:3,my_chats.txt:2' "
                             "(auto: built-in tasks, plus smoltalk when downloaded); see nanochat/tasks/mixture.py")
    parser.add_argument("--num_conversations", type=int, default=d["size"], help=f"conversations per epoch (default {d['size']:,d})")
    parser.add_argument("--num_epochs", type=int, default=1, help="epochs over the mixture when --num_iterations is -1")
    parser.add_argument("--max_seq_len", type=int, default=0, help="tokens per row (default: the model's sequence_len)")
    # how long
    parser.add_argument("--num_iterations", type=int, default=-1, help="optimizer steps (-1: --num_epochs over the mixture)")
    # batch
    parser.add_argument("--device_batch_size", type=str, default="32", help="rows per device per micro-step, or 'auto' (largest that fits)")
    parser.add_argument("--total_batch_size", type=int, default=-1, help="tokens per optimizer step (-1: one micro-step per device)")
    # optimization
    parser.add_argument("--optimizer", type=str, default="muon", choices=["muon", "adamw"], help="muon (Muon+AdamW) or adamw")
    parser.add_argument("--embedding_lr", type=float, default=0.2, help="AdamW lr of the token embedding")
    parser.add_argument("--unembedding_lr", type=float, default=0.004, help="AdamW lr of the lm_head")
    parser.add_argument("--matrix_lr", type=float, default=0.02, help="Muon lr of the block matrices")
    parser.add_argument("--scalar_lr", type=float, default=0.004, help="AdamW lr of norm weights")
    parser.add_argument("--adamw_lr", type=float, default=0.001, help="lr of the block matrices with --optimizer adamw")
    parser.add_argument("--init_lr_frac", type=float, default=d["init_lr_frac"], help=f"all learning rates times this (default {d['init_lr_frac']})")
    parser.add_argument("--weight_decay", type=float, default=0.0)
    parser.add_argument("--grad_clip", type=float, default=1.0, help="clip the gradient norm (0 = off)")
    parser.add_argument("--warmup_ratio", type=float, default=0.0, help="fraction of the run of linear LR warmup")
    parser.add_argument("--warmdown_ratio", type=float, default=d["warmdown_ratio"], help="fraction of the run of linear LR decay at the end")
    parser.add_argument("--final_lr_frac", type=float, default=d["final_lr_frac"], help="LR at the end as a fraction of the peak")
    # memory and speed
    parser.add_argument("--grad_checkpoint", action="store_true", help="recompute activations in backward (less memory, ~30%% slower)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    # evaluation, samples, checkpoints
    parser.add_argument("--eval_every", type=int, default=100, help="val loss every N steps (0 = only at the start and end)")
    parser.add_argument("--eval_conversations", type=int, default=256, help="held-out conversations per evaluation")
    parser.add_argument("--save_every", type=int, default=-1, help="checkpoint every N steps (-1 = only at the end)")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint of the output tag")
    parser.add_argument("--seed", type=int, default=42)
    return parser

# -----------------------------------------------------------------------------
# data


def conversation_rows(tokenizer, mixture, B, T, start=0, epoch=0, rank=0, world_size=1, stop_epoch=None):
    """
    Yields (inputs, targets, state): B rows of T tokens packed with whole conversations in mixture
    order (rank r takes conversations r, r + world_size, ...). targets are -1 where nothing is
    trained (user turns, tool outputs, padding). state {"index", "epoch"} is where the next batch
    starts (rank 0's count), for resume. Stops before epoch stop_epoch (None: never), the last
    batch padded with untrained rows.
    """
    n = len(mixture)
    pad = tokenizer.get_bos_token_id()
    index = start + rank
    pending = None  # a rendered conversation that did not fit the previous row
    finished = False
    while not finished:
        inputs, targets = [], []
        while len(inputs) < B and not finished:
            row_ids, row_mask = [], []
            while True:
                if pending is None:
                    if index >= n:
                        if stop_epoch is not None and epoch + 1 >= stop_epoch:
                            finished = True
                            break
                        index, epoch = index - n, epoch + 1
                    try:
                        pending = render_conversation(tokenizer, mixture[index], max_tokens=T + 1)
                    except ValueError as e:
                        print0(f"skipping malformed conversation {index}: {e}")
                        pending = ([], [])
                    index += world_size
                ids, mask = pending
                if row_ids and len(row_ids) + len(ids) > T + 1:
                    break  # the row is full: this conversation opens the next one
                row_ids += ids
                row_mask += mask
                pending = None
            if not row_ids:
                break
            fill = T + 1 - len(row_ids)
            ids = torch.tensor(row_ids + [pad] * fill, dtype=torch.long)
            mask = torch.tensor(row_mask + [0] * fill, dtype=torch.bool)
            inputs.append(ids[:-1])
            targets.append(torch.where(mask[1:], ids[1:], -1))
        if not inputs:
            return
        while len(inputs) < B:  # the last batch: pad with untrained rows
            inputs.append(torch.full((T,), pad, dtype=torch.long))
            targets.append(torch.full((T,), -1, dtype=torch.long))
        # the conversation left pending opens the next batch, so a resume starts from it
        next_index = index - (world_size if pending is not None else 0) - rank
        yield torch.stack(inputs), torch.stack(targets), {"index": next_index, "epoch": epoch}


@torch.no_grad()
def evaluate_loss(model, batches, autocast):
    """Mean loss per trained token over the batches."""
    total, count = 0.0, 0
    for x, y in batches:
        with autocast:
            loss = model(x, y, loss_reduction="sum")
        total += loss.item()
        count += int((y >= 0).sum())
    return total / max(count, 1)

# -----------------------------------------------------------------------------
# the run


def has_checkpoints(source, model_tag=""):
    try:
        tag = model_tag or find_model_tag(get_checkpoints_dir(source))
        find_last_step(os.path.join(get_checkpoints_dir(source), tag))
        return True
    except UserError:
        return False


def main(phase, argv=None):
    """Run one training phase ('mid' or 'sft'); returns a dict of results (first and last val loss, ...)."""
    parser = build_parser(phase)
    args = parser.parse_args(argv)
    user_config = vars(args).copy()
    out_dir_name = "mid" if phase == "mid" else "sft"

    # -------------------------------------------------------------------------
    # setup
    try:
        ddp, rank, local_rank, world_size, device = compute_init(args.device_type)
        device_type = device.type
        master = rank == 0
        dtype = get_compute_dtype(device_type, args.precision)
        autocast = autocast_ctx(device_type, dtype)
        # the source: resume needs only the output folder, a fresh run the checkpoint of the stage before
        sources = [args.source] if args.source else PHASES[phase]["sources"]
        source = next((s for s in sources if has_checkpoints(s, args.model_tag)), None)
        if source is None:
            raise UserError(f"no {' or '.join(sources)} checkpoint{' with tag ' + args.model_tag if args.model_tag else ''} "
                            f"to start from: train one first (python -m scripts.base_train)")
        model, tokenizer, source_meta = load_model(source, device, phase="train", model_tag=args.model_tag or None,
                                                   step=None if args.step < 0 else args.step)
    except (UserError, ValueError, FileNotFoundError) as e:
        die(str(e))
    config = model.config
    source_tag = args.model_tag or find_model_tag(get_checkpoints_dir(source))
    output_tag = args.output_tag or source_tag
    checkpoint_dir = os.path.join(get_checkpoints_dir(out_dir_name), output_tag)
    torch.manual_seed(args.seed)
    T = args.max_seq_len or config.sequence_len
    if T > model.cos.size(1):
        die(f"--max_seq_len {T} is longer than the model's rotary table ({model.cos.size(1)})")

    spec = default_mixture(phase) if args.mixture == "auto" else args.mixture
    try:
        from nanochat.tasks.mixture import parse_mixture
        train_mix = parse_mixture(spec, args.num_conversations, "train", seed=args.seed)
        val_mix = parse_mixture(spec, args.eval_conversations, "test", seed=args.seed + 1)
    except (UserError, ValueError) as e:
        die(f"--mixture: {e}")
    print0(f"device: {device} x {world_size} | compute dtype: {dtype}")
    print0(f"{NAMES[phase]} from {source}/{source_tag} step {source_meta['step']} -> {checkpoint_dir}")
    print0(f"mixture: {spec} | {len(train_mix):,d} conversations per epoch ({', '.join(map(str, train_mix.counts()))} by task)")

    try:
        B, total_batch_size, grad_accum_steps = resolve_batch_plan(
            args.device_batch_size, args.total_batch_size, config, T, dtype, args.optimizer, args.grad_checkpoint,
            args.compile, device, world_size)
    except UserError as e:
        die(str(e))
    if args.device_batch_size == "auto":
        print0(f"--device_batch_size auto: {B}")
    print0(f"tokens per step: {total_batch_size:,} = {B} x {T} x {world_size} ranks x {grad_accum_steps} accumulation steps")
    num_iterations = args.num_iterations
    total_conversations = args.num_epochs * len(train_mix)
    print0(f"iterations: {num_iterations:,}" if num_iterations > 0 else f"iterations: {args.num_epochs} epoch(s) of the mixture")

    optimizers = build_optimizers(model, kind=args.optimizer, matrix_lr=args.matrix_lr, embedding_lr=args.embedding_lr,
                                  unembedding_lr=args.unembedding_lr, scalar_lr=args.scalar_lr, adamw_lr=args.adamw_lr,
                                  weight_decay=args.weight_decay)
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] = group["lr"] * args.init_lr_frac
    scaler = torch.amp.GradScaler(device_type) if dtype == torch.float16 else None

    start_step, loader_state, loop_state = 0, {"index": 0, "epoch": 0}, {}
    if args.resume:
        try:
            start_step, meta = restore_training(checkpoint_dir, device, model, optimizers)
        except UserError as e:
            die(f"--resume: {e}")
        loader_state, loop_state = meta["dataloader_state"], meta.get("loop_state", {})
        print0(f"resumed from {checkpoint_dir} at step {start_step}")

    orig_model = model
    if args.compile:
        model = torch.compile(model, dynamic=False)
    if ddp:
        model = wrap_ddp(model, device)

    def train_batches(state):
        stop_epoch = None if num_iterations > 0 else args.num_epochs
        for x, y, s in conversation_rows(tokenizer, train_mix, B, T, state["index"], state["epoch"], rank, world_size, stop_epoch):
            yield x.to(device), y.to(device), s
    def val_batches():
        for x, y, _ in conversation_rows(tokenizer, val_mix, B, T, 0, 0, rank, world_size, stop_epoch=1):
            yield x.to(device), y.to(device)

    def progress(state, step):
        """Fraction of the run done: by steps, or by conversations seen."""
        if num_iterations > 0:
            return step / num_iterations
        return min(1.0, (state["epoch"] * len(train_mix) + state["index"]) / total_conversations)

    def get_lr_multiplier(frac):
        if frac < args.warmup_ratio:
            return (frac + 1e-8) / args.warmup_ratio
        if frac <= 1 - args.warmdown_ratio:
            return 1.0
        p = (1 - frac) / args.warmdown_ratio
        return p + (1 - p) * args.final_lr_frac

    wandb_run = init_wandb(args.run, "nanochat-" + out_dir_name, user_config, master)

    def save(step, val_loss, state):
        if not master:
            return
        meta = {
            "step": step, "phase": phase, "val_loss": val_loss, "model_config": config.to_dict(), "user_config": user_config,
            "source": {"phase": source, "model_tag": source_tag, "step": source_meta["step"]},
            "mixture": spec, "device_batch_size": B, "max_seq_len": T, "total_batch_size": total_batch_size,
            "dataloader_state": state, "loop_state": loop_state,
        }
        save_checkpoint(checkpoint_dir, step, orig_model.state_dict(), [opt.state_dict() for opt in optimizers], meta)
        print0(f"saved checkpoint {checkpoint_dir} step {step}")

    def evaluate():
        orig_model.eval()
        loss = evaluate_loss(orig_model, val_batches(), autocast)
        if ddp:
            t = torch.tensor(loss, device=device)
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.AVG)
            loss = t.item()
        orig_model.train()
        return loss

    def sample():
        from nanochat.engine import Engine, reply_parts, reply_text
        orig_model.eval()
        engine = Engine(orig_model, tokenizer)
        for prompt in SAMPLE_PROMPTS:
            ids = render_for_completion(tokenizer, {"messages": [{"role": "user", "content": prompt}]})
            out = engine.generate_batch(ids, max_tokens=48, temperature=0)[0]
            print0(f"  {prompt!r} -> {reply_text(reply_parts(tokenizer, out))!r}")
        orig_model.train()

    # -------------------------------------------------------------------------
    # training loop
    smooth_loss = loop_state.get("smooth_loss", 0.0)
    total_time = loop_state.get("total_time", 0.0)
    first_val_loss = loop_state.get("first_val_loss")
    val_loss = None
    step = start_step
    state = dict(loader_state)
    batches = train_batches(state)
    pending_batch = next(batches, None)
    in_update = False
    try:
        while True:
            last_step = pending_batch is None or (num_iterations > 0 and step >= num_iterations)
            if ddp:  # ranks pack different numbers of batches from their conversations: stop together
                flag = torch.tensor(int(last_step), device=device)
                torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
                last_step = bool(flag.item())
            loop_state = {"smooth_loss": smooth_loss, "total_time": total_time, "first_val_loss": first_val_loss}
            if last_step or (args.save_every > 0 and step > start_step and step % args.save_every == 0):
                save(step, val_loss, state)
            if last_step or step == start_step or (args.eval_every > 0 and step % args.eval_every == 0):
                val_loss = evaluate()
                if first_val_loss is None:
                    first_val_loss = val_loss
                print0(f"step {step:05d} | val loss: {val_loss:.4f}")
                wandb_run.log({"step": step, "val/loss": val_loss})
            if last_step:
                if master:
                    sample()
                break

            synchronize(device_type)
            t0 = time.time()
            frac = progress(state, step)
            lrm = get_lr_multiplier(frac)
            for opt in optimizers:
                for group in opt.param_groups:
                    group["lr"] = group["initial_lr"] * lrm
                    if "momentum" in group:
                        group["momentum"] = muon_momentum(step)
            for micro_step in range(grad_accum_steps):
                if pending_batch is None:  # the epoch ended inside an accumulation
                    break
                x, y, state = pending_batch
                sync = (not ddp) or micro_step == grad_accum_steps - 1
                if ddp:
                    model.require_backward_grad_sync = sync
                with autocast:
                    loss_sum = model(x, y, loss_reduction="sum")
                # mean over the trained tokens of this micro-batch (a row may train on few)
                loss = loss_sum / max(int((y >= 0).sum()), 1) / grad_accum_steps
                (scaler.scale(loss) if scaler else loss).backward()
                pending_batch = next(batches, None)
            in_update = True
            step_optimizers(optimizers, orig_model.parameters(), scaler, args.grad_clip)
            step += 1
            in_update = False

            train_loss = loss.item() * grad_accum_steps
            synchronize(device_type)
            dt = time.time() - t0
            if step > start_step + 1:
                total_time += dt
            smooth_loss = 0.9 * smooth_loss + 0.1 * train_loss
            debiased = smooth_loss / (1 - 0.9 ** (step - start_step))
            mem = f" | mem: {get_max_memory(device_type) / 2**30:.2f} GiB" if device_type == "cuda" else ""
            print0(f"step {step:05d}{'/%05d' % num_iterations if num_iterations > 0 else ''} | loss: {train_loss:.4f} | "
                   f"smooth: {debiased:.4f} | lrm: {lrm:.3f} | done: {100 * progress(state, step):.1f}% | "
                   f"dt: {dt * 1000:.0f} ms | tok/s: {total_batch_size / dt:,.0f}{mem}")
            wandb_run.log({"step": step, "train/loss": train_loss, "lrm": lrm})
    except KeyboardInterrupt:
        if in_update:
            print0("interrupted during the optimizer update: not saving (use the last checkpoint)")
        else:
            print0(f"interrupted: saving step {step} so --resume can continue from it")
            save(step, val_loss, state)
        compute_cleanup()
        raise SystemExit(130)

    print0(f"done: {step - start_step} steps, {total_time / 60:.2f} min of training | val loss {first_val_loss:.4f} -> {val_loss:.4f}")
    wandb_run.finish()
    compute_cleanup()
    return {"step": step, "first_val_loss": first_val_loss, "val_loss": val_loss, "checkpoint_dir": checkpoint_dir}
