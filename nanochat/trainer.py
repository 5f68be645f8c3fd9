"""
The training loop. Pretraining (scripts/base_train.py), mid-training and SFT (scripts/mid_train.py,
scripts/chat_sft.py) and curriculum training (scripts/curriculum_train.py) all train through
Trainer.run; a script brings the model, the batches, and what to evaluate and sample. The flags
they share, the schedule and the batch plan are in nanochat.train_settings.

    trainer = Trainer(model, args, device, dtype, B, T, grad_accum_steps, checkpoint_dir)
    meta = trainer.resume()          # None for a fresh start; else meta["dataloader_state"] etc.
    batches = ...                    # an iterator of (x, y) with state_dict(), from meta's state
    trainer.run(batches, num_iterations, evaluate=..., sample=...)

One optimizer step is grad_accum_steps micro-steps of B x T tokens:
- every group's learning rate is its initial_lr (the flags, times --init_lr_frac, times the
  --layer_lr multiplier of its layers) times schedule(step): by default lr_multiplier's linear
  warmup, constant, then a linear or cosine decay to --final_lr_frac;
- under DDP gradients are all-reduced on the last micro-step only;
- nothing waits for the device: the loss (last step's and its moving average) stays on it and is
  read at logging steps only, where the time since the previous log line gives tokens/s and MFU;
- the update is optim.step_optimizers (unscale for fp16, clip, step, zero_grad).
Around the steps, every N steps and at the end: save first (so a crash in evaluation loses
nothing), then evaluate, then sample. Ctrl-C saves. --resume continues the identical loss
sequence from the latest checkpoint; --resume auto does so when there is one, else starts fresh.
Metrics and samples go to files next to the checkpoints (nanochat.metrics).

Batches: an iterator with state_dict() (where the next batch starts; saved with every checkpoint,
one entry per rank). One that can run out (SFT by epochs; `finite` not False) may do so on one rank
inside an accumulation: that rank finishes the step on zero-weighted repeats of its last batch, so
every rank runs the same micro-steps (DDP would hang otherwise), and all stop at the step's end.
One with `lookahead` False is not drawn ahead: each batch is drawn when its step needs it (RL
rollouts, sampled with the weights that step trains); such an iterator must never run out.
A batch is a tuple handed to loss_fn(model, *batch) -> loss, or (loss, {name: value}) to log more.
A model with MoE layers trains on loss + --moe_aux_weight x their load-balancing loss, whatever
the loss_fn; the logged loss stays the loss_fn's, with moe_aux and the expert loads beside it.
"""
import argparse
import gc
import os
import time

import torch
import torch.distributed as dist

from nanochat.common import (UserError, autocast_ctx, compute_cleanup, die, get_dist_info, get_max_memory, get_peak_flops,
                             init_wandb, print0, synchronize, wrap_ddp)
from nanochat.checkpoint_manager import find_last_step, load_checkpoint, save_checkpoint
from nanochat import lora
from nanochat.metrics import RunLog
from nanochat.mlp import moe_layers, moe_stats
from nanochat.optim import build_optimizers, describe_optimizers, muon_momentum, parse_layer_lr, step_optimizers
from nanochat.train_settings import LR_FLAGS, TRAIN_DEFAULTS, lr_multiplier, save_every_value

OOM_STEPS = 10  # an out-of-memory error in this many first steps of a run halves the micro-batch
_NOT_DRAWN = object()  # the pending batch of batches without lookahead: drawn when a step needs it


def split_batch(batch, parts):
    """A batch (a tuple of tensors of the same rows, and other values) as `parts` batches of fewer rows."""
    if parts == 1:
        return [batch]
    rows = next(t.size(0) for t in batch if torch.is_tensor(t))
    pieces = [[] for _ in range(parts)]
    for item in batch:
        chunks = item.split(rows // parts) if torch.is_tensor(item) and item.size(0) == rows else [item] * parts
        for piece, chunk in zip(pieces, chunks):
            piece.append(chunk)
    return [tuple(p) for p in pieces]


def default_loss(model, x, y):
    return model(x, y)


class Trainer:
    def __init__(self, model, args, device, dtype, B, T, grad_accum_steps, checkpoint_dir=None, run_meta=None,
                 loss_fn=default_loss, wandb_project="nanochat"):
        self.args = argparse.Namespace(**{**TRAIN_DEFAULTS, **vars(args)})
        args = self.args
        self.orig_model = model  # uncompiled, unwrapped: for eval, sampling and saving
        self.device = torch.device(device)
        self.device_type = self.device.type
        self.ddp, self.rank, _, self.world_size = get_dist_info()
        self.master = self.rank == 0
        self.dtype = dtype
        self.autocast = autocast_ctx(self.device_type, dtype)
        self.B, self.T, self.grad_accum_steps = B, T, grad_accum_steps
        self.tokens_per_step = B * T * self.world_size * grad_accum_steps
        self.checkpoint_dir = checkpoint_dir
        self.run_meta = run_meta if callable(run_meta) else dict(run_meta or {})  # or a function of the step
        self.loss_fn = loss_fn
        self.wandb_project = wandb_project
        self.user_config = vars(args).copy()
        model.grad_checkpoint = args.grad_checkpoint
        self.optimizers = build_optimizers(model, kind=args.optimizer, matrix_lr=args.matrix_lr, embedding_lr=args.embedding_lr,
                                           unembedding_lr=args.unembedding_lr, scalar_lr=args.scalar_lr, adamw_lr=args.adamw_lr,
                                           weight_decay=args.weight_decay, layer_lr=parse_layer_lr(args.layer_lr, model.config.n_layer),
                                           lora_lr=getattr(args, "lora_lr", lora.DEFAULTS["lora_lr"]))
        for opt in self.optimizers:
            for group in opt.param_groups:  # (LoRA adapters: --lora_lr as given, see nanochat.optim)
                group["lr"] = group["initial_lr"] = group["initial_lr"] * (1.0 if group.get("fixed_lr") else args.init_lr_frac)
        self.scaler = torch.amp.GradScaler(self.device_type) if dtype == torch.float16 else None
        self.num_flops_per_token = lora.estimate_flops(model)
        self.peak_flops = get_peak_flops(self.device)
        self.model = model
        if args.compile:
            self.model = torch.compile(self.model, dynamic=False)
        if self.ddp:
            self.model = wrap_ddp(self.model, self.device)
        # the loop's state, saved with every checkpoint
        self.step = 0
        self.first_step = 0  # where this run (and its loss average) started: 0, or a curriculum's --phase
        self.smooth_loss = torch.zeros((), device=self.device)
        self.total_time = 0.0
        self.val, self.first_val, self.min_val = {}, None, None
        self.planned_iterations = None
        self.log = RunLog(None)
        self.in_update = False
        self.extras = {}
        self.has_moe = bool(moe_layers(model))
        self.split = 1  # pieces each batch is cut into (more after an out-of-memory error)
        self.save_every = save_every_value(args.save_every)  # (steps, seconds), one of them 0
        self.nonfinite, self.nonfinite_in_row = 0, 0
        self.timed = [0, 0.0]  # steps and seconds of this process's timed windows: the report's tokens/s

    def describe(self):
        """The optimizer groups with their learning rates (printed at start-up)."""
        return describe_optimizers(self.optimizers)

    def start_at(self, step):
        """A fresh run that starts at `step` (a curriculum's --phase): schedules and metrics count from there."""
        self.step = self.first_step = step

    # -------------------------------------------------------------------------
    # checkpoints

    def resume(self):
        """
        Load the latest checkpoint of checkpoint_dir into the model, optimizers and loop when --resume
        asks for it (with 'auto': when there is one). Returns its meta (None for a fresh start), which
        holds the data position. Raises UserError (one line) when it cannot continue that run.
        """
        mode = self.args.resume
        if mode != "no":
            try:
                step = find_last_step(self.checkpoint_dir)
            except UserError:
                if mode == "yes":
                    raise
                print0(f"--resume auto: no checkpoint in {self.checkpoint_dir} yet: starting fresh")
                mode = "no"
        if mode == "no":
            self.log = RunLog(self.checkpoint_dir, enabled=self.master)
            return None
        model_state, optim_state, meta = load_checkpoint(self.checkpoint_dir, step, self.device, load_optimizer=True)
        self._check_resumable(meta, optim_state)
        lora.load_model_state(self.orig_model, model_state, self.checkpoint_dir)  # with LoRA: the adapters alone
        fresh = [[{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups] for opt in self.optimizers]
        for opt, state, groups in zip(self.optimizers, optim_state, fresh):
            opt.load_state_dict(state)
            for group, hyper in zip(opt.param_groups, groups):
                group.update(hyper)  # the flags of this run, not the saved ones
        self._say_changed_flags(meta.get("user_config", {}))
        loop = meta.get("loop_state", {})
        self.step = step
        self.first_step = int(loop.get("first_step", 0))
        self.smooth_loss.fill_(float(loop.get("smooth_loss", 0.0)))
        self.total_time = float(loop.get("total_time", 0.0))
        self.first_val, self.min_val = loop.get("first_val"), loop.get("min_val")
        self.planned_iterations = meta.get("num_iterations")
        self.log = RunLog(self.checkpoint_dir, resume_step=step, enabled=self.master)
        print0(f"resumed from {self.checkpoint_dir} at step {step}")
        return meta

    def _check_resumable(self, meta, optim_state):
        saved = meta.get("user_config", {}).get("optimizer", "muon")
        if saved != self.args.optimizer:
            raise UserError(f"the checkpoint in {self.checkpoint_dir} was trained with --optimizer {saved}, not "
                            f"{self.args.optimizer}: resume with --optimizer {saved}, or start a new run without --resume")
        known = set(type(self.orig_model.config).__dataclass_fields__)
        saved_config = type(self.orig_model.config)(**{k: v for k, v in meta.get("model_config", {}).items() if k in known})
        if saved_config.to_dict() != self.orig_model.config.to_dict():  # (fields added since default in the saved one)
            raise UserError(f"the checkpoint in {self.checkpoint_dir} has a different architecture: pass the same "
                            f"architecture flags, or another --model_tag/--output_tag")
        lora.check_resume(self.orig_model, meta, self.checkpoint_dir)
        groups = [len(s.get("param_groups", [])) for s in optim_state] if isinstance(optim_state, list) else None
        if groups != [len(opt.param_groups) for opt in self.optimizers]:
            raise UserError(f"the optimizer state in {self.checkpoint_dir} has other parameter groups than these flags make "
                            f"(--layer_lr changed from {meta.get('user_config', {}).get('layer_lr', '')!r}?): "
                            f"resume with the same --layer_lr")

    def _say_changed_flags(self, saved_config):
        for name in LR_FLAGS:
            old, new = saved_config.get(name, TRAIN_DEFAULTS[name]), getattr(self.args, name)
            if old != new:
                print0(f"--resume: --{name} {new} replaces the checkpoint's {old} from here on")

    def _loop_state(self):
        return {"smooth_loss": self.smooth_loss.clone(), "total_time": self.total_time, "first_step": self.first_step,
                "first_val": self.first_val, "min_val": self.min_val}

    def save(self, data_state, loop_state=None, gather=True):
        """A checkpoint of the current weights with the data position (every rank calls this under DDP)."""
        states = data_state
        if self.ddp and gather:  # every rank reads its own part of the data: keep each rank's position
            states = [None] * self.world_size
            dist.all_gather_object(states, data_state)
        if not self.master or self.checkpoint_dir is None:
            return
        loop = loop_state or self._loop_state()
        loop = {k: (v.item() if torch.is_tensor(v) else v) for k, v in loop.items()}
        run_meta = self.run_meta(self.step) if callable(self.run_meta) else self.run_meta
        meta = {
            "step": self.step, **self.val, "model_config": self.orig_model.config.to_dict(), "user_config": self.user_config,
            "device_batch_size": self.B, "max_seq_len": self.T, "total_batch_size": self.tokens_per_step,
            "num_iterations": self.planned_iterations, **run_meta, **lora.lora_meta(self.orig_model),
            "dataloader_state": states, "loop_state": loop,
        }
        try:  # a LoRA model saves its adapters alone (and their optimizer state): a few MB
            save_checkpoint(self.checkpoint_dir, self.step, lora.model_state(self.orig_model),
                            [opt.state_dict() for opt in self.optimizers], meta, keep_last=self.args.keep_last)
        except UserError as e:  # a full disk: say so in one line; the previous checkpoint is intact
            die(str(e))
        self._last_save = time.monotonic()
        print0(f"saved checkpoint {self.checkpoint_dir} step {self.step}")

    # -------------------------------------------------------------------------
    # one optimizer step

    def set_batches(self, batches):
        """Start drawing from batches; one batch is drawn ahead (unless batches.lookahead is False), so a run out of
        data is known before its step."""
        self.batches = batches
        self._state_of = getattr(batches, "state_dict", lambda: None)  # (a benchmark's batches have no position)
        self._lookahead = getattr(batches, "lookahead", True)
        self._pending_state = self._state_of()  # where the pending batch starts: the resume point
        self._pending = next(batches, None) if self._lookahead else _NOT_DRAWN
        self._last_batch = None

    def data_state(self):
        """Where the data of the next step starts (the position after the last batch trained)."""
        return self._pending_state

    def _next_batch(self):
        """(batch, weight): weight 0 for a repeat of the last batch once this rank's data has run out."""
        if self._pending is _NOT_DRAWN:
            self._pending = next(self.batches, None)
        if self._pending is None:
            if not getattr(self, "_said_out", False):
                print(f"rank {self.rank}: out of data inside step {self.step + 1}: it finishes on zero-weighted repeats", flush=True)
                self._said_out = True
            return self._last_batch, 0
        batch = self._last_batch = self._pending
        self._pending_state = self._state_of()
        self._pending = next(self.batches, None) if self._lookahead else _NOT_DRAWN
        return batch, 1

    def _out_of_data(self, finite):
        out = self._pending is None
        if self.ddp and finite:  # ranks may run out at different steps: stop together
            flag = torch.tensor(int(out), device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            out = bool(flag.item())
        return out

    def train_step(self, lrm=1.0):
        """
        grad_accum_steps micro-steps and one update at lrm x the initial rates; returns the step's
        mean loss (on the device). Out of memory in a run's first steps: the micro-batch is halved
        and the accumulation doubled (the same rows, so the same tokens per step) and the step
        retried. A non-finite gradient (--skip_nonfinite): the update is skipped and counted.
        """
        for opt in self.optimizers:
            for group in opt.param_groups:
                group["lr"] = group["initial_lr"] * lrm
                if "momentum" in group:
                    group["momentum"] = muon_momentum(self.step)
        drawn = [self._next_batch() for _ in range(self.grad_accum_steps)]
        while True:
            try:
                total, real = self._accumulate(drawn)
                break
            except torch.cuda.OutOfMemoryError as e:
                self._halve_micro_batch(e)
        self.in_update = True
        finite, grad_norm = self._update_is_finite()
        if finite:
            step_optimizers(self.optimizers, self.orig_model.parameters(), self.scaler, self.args.grad_clip, grad_norm)
        self.step += 1
        step_loss = total / real if real > 1 else total
        self.smooth_loss.mul_(0.9).add_(step_loss, alpha=0.1)  # on the device: no wait
        self.last_loss = step_loss
        self.snapshot = (self._loop_state(), self._pending_state)
        self.in_update = False
        return step_loss

    def _accumulate(self, drawn):
        """Forward and backward of the step's batches, each in self.split pieces; returns (summed loss, real micro-steps)."""
        pieces = [(part, weight) for batch, weight in drawn for part in split_batch(batch, self.split)]
        total, real = None, 0
        for i, (batch, weight) in enumerate(pieces):
            if self.ddp:  # all-reduce the gradients only on the last micro-step
                self.model.require_backward_grad_sync = i == len(pieces) - 1
            with self.autocast:
                out = self.loss_fn(self.model, *batch)
            loss, extras = out if isinstance(out, tuple) else (out, None)
            objective = loss
            if self.has_moe:
                aux, load = moe_stats(self.orig_model)
                objective = loss + self.args.moe_aux_weight * aux
                extras = {**(extras or {}), "moe_aux": aux.detach(), "load_min": load.min(), "load_max": load.max()}
            scaled = objective / len(pieces) if weight else objective * 0.0  # a repeat only keeps the ranks in step
            (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            if weight:
                total = loss.detach() if total is None else total + loss.detach()
                real += 1
                if extras:
                    self.extras = {k: v.detach() if torch.is_tensor(v) else v for k, v in extras.items()}
        return total, real

    def _halve_micro_batch(self, error):
        """Out of memory: in the first OOM_STEPS steps of a run, split every batch in two more pieces; else re-raise."""
        rows = self.B // self.split
        if self.step - self.first_step >= OOM_STEPS or rows < 2 or self.B % (self.split * 2):
            raise error
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        if self.device_type == "cuda":
            torch.cuda.empty_cache()
        self.split *= 2
        print0(f"out of memory at {rows} rows per micro-step (step {self.step + 1}): retrying with {rows // 2} rows and "
               f"{self.grad_accum_steps * self.split} accumulation steps, the same {self.tokens_per_step:,} tokens per step "
               f"(next time: --device_batch_size {rows // 2})")

    def _update_is_finite(self):
        """
        --skip_nonfinite: (whether the gradients are finite, their norm) - a non-finite loss makes them
        non-finite too; the norm (None when not computed) serves the clipping. If not finite: drop them,
        count it, and stop after --max_nonfinite in a row. Under fp16 the GradScaler skips such steps
        itself. This reads one number from the device per step.
        """
        if not self.args.skip_nonfinite or self.scaler is not None:
            return True, None
        grads = [p.grad for p in self.orig_model.parameters() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads) if grads else None
        if norm is not None and torch.isfinite(norm).item():
            self.nonfinite_in_row = 0
            return True, norm
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        self.nonfinite += 1
        self.nonfinite_in_row += 1
        print0(f"step {self.step + 1}: non-finite gradient: update skipped ({self.nonfinite_in_row} in a row, {self.nonfinite} in all)")
        if self.nonfinite_in_row >= self.args.max_nonfinite:
            last = find_last_step(self.checkpoint_dir) if self.checkpoint_dir and os.path.isdir(self.checkpoint_dir) else None
            where = (f"the last good checkpoint is step {last} in {self.checkpoint_dir}: --resume continues from it"
                     if last is not None else "there is no checkpoint yet")
            die(f"{self.nonfinite_in_row} steps in a row had a non-finite loss or gradient (up to step {self.step + 1}): "
                f"stopping; {where} (a lower learning rate, or --precision fp32, may help)")
        return False, None

    # -------------------------------------------------------------------------
    # the loop

    def run(self, batches, num_iterations, evaluate=None, sample=None, schedule=None, phase_fn=None, phase_end=None,
            eval_at_start=False, sample_steps=()):
        """
        Train until step num_iterations (or until the data runs out). evaluate() -> {"val_bpb": ...}
        and sample() -> [(prompt, completion)] run in eval mode, without gradients, under autocast; schedule(step) -> LR multiplier (default: lr_multiplier
        with the flags); phase_fn(step) -> the phase name of a step (curricula); phase_end(name,
        data_state) -> a dict logged as a "shares" row when a phase ends. Returns a summary dict.
        """
        args = self.args
        if self.planned_iterations not in (None, num_iterations) and schedule is None:
            print0(f"--resume: the run now ends at step {num_iterations} (it was planned for {self.planned_iterations}); "
                   f"the schedule follows {num_iterations}")
        self.planned_iterations = num_iterations
        start = self.step
        if start >= num_iterations:
            print0(f"step {start} is already at or past --num_iterations {num_iterations}: nothing to train")
            return self.summary()
        schedule = schedule or (lambda s: lr_multiplier(s, num_iterations, args.warmup_ratio, args.warmdown_ratio,
                                                        args.final_lr_frac, args.lr_decay))
        finite = getattr(batches, "finite", True)
        log_every = args.log_every if args.log_every > 0 else (10 if self.device_type == "cuda" else 1)
        wandb_run = init_wandb(args.run, self.wandb_project, self.user_config, self.master)
        self.set_batches(batches)
        self.snapshot = (self._loop_state(), self._pending_state)
        self._last_save = time.monotonic()  # a time-based --save_every counts from the start of the run
        synchronize(self.device_type)
        self._window = [time.perf_counter(), 0]  # start of the timing window, steps in it
        lrm = schedule(start)
        try:
            while True:
                step = self.step
                last = step >= num_iterations or self._out_of_data(finite)
                # eval and sample rows belong to the phase of the last step trained
                phase = phase_fn(step - 1 if step > start else step) if phase_fn else None
                do_save = last or (step > start and self._save_due(step, log_every))
                do_eval = evaluate is not None and (last or (args.eval_every > 0 and step % args.eval_every == 0)
                                                    or (eval_at_start and step == start))
                do_sample = sample is not None and self.master and (
                    last or (args.sample_every > 0 and step > 0 and step % args.sample_every == 0) or step in sample_steps)
                ended = phase_fn(step - 1) if phase_fn and step > 0 and (last or phase_fn(step - 1) != phase_fn(step)) else None
                if self._window[1] and (do_save or do_eval or do_sample):
                    self._log_window(lrm, num_iterations, phase_fn, wandb_run)  # close the timing window before the pause
                if ended is not None and phase_end is not None:
                    self._phase_end(phase_end, ended)
                if do_save:  # first, so a crash in evaluation or sampling loses nothing
                    self.save(self._pending_state)
                if do_eval:
                    self._evaluate(evaluate, phase, wandb_run)
                if do_sample:
                    self._sample(sample, phase)
                if last:
                    break
                if do_save or do_eval or do_sample:
                    synchronize(self.device_type)
                    self._window[0] = time.perf_counter()  # the pause is not training time
                lrm = schedule(step)
                self.train_step(lrm)
                self._window[1] += 1
                if self.step % log_every == 0 or self.step == start + 1 or self.step == num_iterations:
                    self._log_window(lrm, num_iterations, phase_fn, wandb_run)
                if self.device_type == "cuda" and self.step == start + 3:
                    self._check_memory_estimate()
        except KeyboardInterrupt:
            # keep the work done so far: the weights as of the start of this step, and where its data was
            if self.in_update:
                print0("interrupted during the optimizer update: not saving (use the last checkpoint)")
            else:
                if self._window[1]:
                    self._log_window(lrm, num_iterations, phase_fn, wandb_run)  # the steps done since the last line
                print0(f"interrupted: saving step {self.step} so --resume can continue from it")
                loop_state, data_state = self.snapshot
                self.save(data_state, loop_state, gather=False)  # other ranks may be gone: theirs resume approximately
            self.close()
            compute_cleanup()
            raise SystemExit(130)
        wandb_run.finish()
        return self.summary()

    def _save_due(self, step, log_every):
        """--save_every: every N steps, or (a time) once that long has passed since the last save, checked
        at logging steps (rank 0's clock decides, so under DDP every rank saves at the same step)."""
        steps, seconds = self.save_every
        if steps:
            return step % steps == 0
        if not seconds or step % log_every:
            return False
        due = torch.tensor(int(time.monotonic() - self._last_save >= seconds), device=self.device)
        if self.ddp:
            dist.broadcast(due, src=0)
        return bool(due.item())

    def close(self):
        """Let go of the DDP wrapper (before compute_cleanup destroys the process group: a DDP module outliving
        it ends the process with 'terminate called without an active exception')."""
        self.model = self.orig_model
        gc.collect()  # the wrapper's hooks hold it in reference cycles

    def summary(self):
        return {"step": self.step, "val": dict(self.val), "first_val": self.first_val, "min_val": self.min_val,
                "total_time": self.total_time, "checkpoint_dir": self.checkpoint_dir,
                "tok_per_sec": self.tokens_per_step * self.timed[0] / self.timed[1] if self.timed[1] else None}

    def _log_window(self, lrm, num_iterations, phase_fn, wandb_run):
        """Print the steps since the last log line: the only place the loop waits for the device."""
        t0, n = self._window
        train_loss = self.last_loss.item()
        synchronize(self.device_type)
        now = time.perf_counter()
        dt = (now - t0) / n
        if self.step > self.first_step + 1 or self.step == num_iterations:
            self.total_time += dt * n  # a run's first step (its own window) includes compilation and warm-up
            self.timed[0] += n
            self.timed[1] += dt * n
        self._window = [now, 0]  # closed before any I/O: a Ctrl-C from here on does not log these steps again
        debiased = self.smooth_loss.item() / (1 - 0.9 ** (self.step - self.first_step))
        tok_per_sec = self.tokens_per_step / dt
        mfu = 100 * self.num_flops_per_token * tok_per_sec / (self.peak_flops * self.world_size) if self.peak_flops else None
        eta = (num_iterations - self.step) * dt / 60
        phase = phase_fn(self.step - 1) if phase_fn else None
        extras = {k: (v.item() if torch.is_tensor(v) else v) for k, v in self.extras.items()}
        mem = f" | mem: {get_max_memory(self.device_type) / 2**30:.2f} GiB" if self.device_type == "cuda" else ""
        row = {"step": self.step, "tokens": self.step * self.tokens_per_step, "phase": phase, "train_loss": train_loss,
               "smooth_loss": debiased, "lrm": lrm, "tok_per_sec": tok_per_sec, "mfu": mfu, "time": self.total_time, **extras}
        self.log.metrics(kind="train", **row)  # the file before the screen: whoever reads the line finds the row
        print0(f"step {self.step:05d}/{num_iterations:05d} | loss: {train_loss:.6f} | smooth: {debiased:.4f} | lrm: {lrm:.3f} | "
               f"dt: {dt * 1000:.0f} ms | tok/s: {tok_per_sec:,.0f} | mfu: {f'{mfu:.1f}%' if mfu is not None else 'n/a'}"
               f"{''.join(f' | {k}: {v:.4g}' for k, v in extras.items())}{mem} | eta: {eta:.1f} min"
               f"{f' | phase: {phase}' if phase else ''}")
        wandb_run.log({"step": self.step, "train/loss": train_loss, "train/tok_per_sec": tok_per_sec, "lrm": lrm})

    def _evaluate(self, evaluate, phase, wandb_run):
        self.orig_model.eval()
        with torch.no_grad(), self.autocast:
            self.val = dict(evaluate())
        self.orig_model.train()
        key, value = next(iter(self.val.items()))
        if self.first_val is None:
            self.first_val = value
        self.min_val = value if self.min_val is None else min(self.min_val, value)
        print0(f"step {self.step:05d} | " + " | ".join(f"{k.replace('_', ' ')}: {v:.4f}" for k, v in self.val.items()))
        self.log.metrics(kind="eval", step=self.step, tokens=self.step * self.tokens_per_step, phase=phase, **self.val)
        wandb_run.log({"step": self.step, **{f"val/{k}": v for k, v in self.val.items()}})

    def _sample(self, sample, phase):
        self.orig_model.eval()
        with torch.no_grad(), self.autocast:
            pairs = list(sample())
        self.orig_model.train()
        for prompt, completion in pairs:
            print0(f"  {prompt!r} -> {completion!r}")
            self.log.sample(step=self.step, tokens=self.step * self.tokens_per_step, phase=phase, prompt=prompt,
                            completion=completion)

    def _phase_end(self, phase_end, name):
        shares = phase_end(name, self._pending_state)
        if shares:
            self.log.metrics(kind="shares", step=self.step, tokens=self.step * self.tokens_per_step, phase=name, shares=shares)

    def _check_memory_estimate(self):
        """The calculator's promise, checked on this run (scripts.vram_calc explains the parts)."""
        from nanochat.vram import estimate_memory, precision_name
        est = estimate_memory(self.orig_model.config, self.B, self.T, precision_name(self.dtype), self.args.optimizer,
                              self.args.grad_checkpoint, self.args.compile, lora=lora.lora_settings(self.orig_model))["reserved"]
        measured = get_max_memory(self.device_type)
        print0(f"memory: estimated {est / 2**30:.2f} GiB, measured peak reserved {measured / 2**30:.2f} GiB "
               f"({100 * (est - measured) / measured:+.1f}%)")
