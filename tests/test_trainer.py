"""
The shared training loop (nanochat.trainer): its schedule, no device waits inside a step, DDP
(gradient sync on the last micro-step only; a rank out of data does not hang the others), and
through base_train: resume (exact, auto, past the end, with other flags), Ctrl-C, metrics files,
per-layer learning rates.
"""
import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.multiprocessing as mp

from nanochat.gpt import GPTConfig, build_model
from nanochat.train_settings import TRAIN_DEFAULTS, lr_multiplier
from nanochat.trainer import Trainer
from nanochat.metrics import read_rows
from helpers import ROOT, run_script, step_losses, smooth_losses

TINY = ["--n_layer", "2", "--model_dim", "64", "--head_dim", "32", "--max_seq_len", "64", "--device_batch_size", "4",
        "--total_batch_size", "512", "--eval_tokens", "512", "--sample_every", "0", "--device_type", "cpu", "--data", "builtin"]


def tiny_model(seed=0, n_layer=2, **kw):
    torch.manual_seed(seed)
    return build_model(GPTConfig(vocab_size=64, sequence_len=32, n_layer=n_layer, n_embd=64, n_head=2, n_kv_head=1, **kw), "cpu")


def settings(**kw):
    return argparse.Namespace(**{**TRAIN_DEFAULTS, **kw})


class Batches:
    """A finite list of batches with a position, as the trainer wants them."""
    def __init__(self, batches):
        self.batches, self.i, self.finite = batches, 0, True

    def __iter__(self):
        return self

    def __next__(self):
        if self.i >= len(self.batches):
            raise StopIteration
        self.i += 1
        return self.batches[self.i - 1]

    def state_dict(self):
        return {"i": self.i}


def random_batches(n, B=2, T=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        d = torch.randint(0, 64, (B, T + 1), generator=g)
        out.append((d[:, :-1], d[:, 1:]))
    return out

# -----------------------------------------------------------------------------
# the schedule and the step


def test_lr_multiplier_shapes():
    N = 100
    lin = [lr_multiplier(s, N, 0.1, 0.3, 0.1, "linear") for s in range(N)]
    assert lin[0] == pytest.approx(0.1) and lin[9] == 1.0 and lin[10] == 1.0  # 10 warmup steps end at the peak
    assert all(lin[s] == 1.0 for s in range(10, 71))
    assert lin[71] == pytest.approx(0.1 + 0.9 * 29 / 30) and lin[-1] == pytest.approx(0.1 + 0.9 / 30)
    assert all(a >= b for a, b in zip(lin[10:], lin[11:]))  # never rises after warmup
    cos = [lr_multiplier(s, N, 0.0, 1.0, 0.0, "cosine") for s in range(N)]
    assert cos[0] == 1.0 and cos[50] == pytest.approx(0.5) and cos[-1] == pytest.approx(0.5 * (1 - math.cos(math.pi / 100)))
    assert all(lr_multiplier(s, N, 0.0, 0.5, 0.0, "constant") == 1.0 for s in range(N))
    assert [lr_multiplier(s, 10, 0.0, 0.0) for s in range(10)] == [1.0] * 10


def test_a_step_does_not_wait_for_the_device(monkeypatch):
    """Inside a step nothing in nanochat reads a tensor to the host (that is a device sync on a GPU)."""
    from nanochat.chat_data import chat_loss
    calls = []
    for name in ("item", "tolist", "__bool__", "__int__", "__float__"):
        original = getattr(torch.Tensor, name)
        def spy(self, *a, _name=name, _original=original, **k):
            caller = sys._getframe(1).f_code.co_filename
            if os.sep + "nanochat" + os.sep in caller:
                calls.append((_name, caller))
            return _original(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, spy)
    for loss_fn in (None, chat_loss):
        model = tiny_model()
        trainer = Trainer(model, settings(skip_nonfinite=False), "cpu", torch.float32, 2, 32, 3,
                          **({"loss_fn": loss_fn} if loss_fn else {}))
        trainer.set_batches(Batches(random_batches(7)))
        for _ in range(2):
            trainer.train_step(0.5)
    assert calls == []
    # --skip_nonfinite (the default) reads one number per step: whether the gradient is finite
    trainer = Trainer(tiny_model(), settings(), "cpu", torch.float32, 2, 32, 3)
    trainer.set_batches(Batches(random_batches(7)))
    for _ in range(2):
        trainer.train_step(0.5)
    assert [name for name, caller in calls] == ["item", "item"] and all(c.endswith("trainer.py") for _, c in calls)


def test_schedule_reaches_every_group_and_layer_rates_the_right_parameters():
    model = tiny_model(n_layer=4, norm_weight=True)
    initial = {id(p): p.detach().clone() for p in model.parameters()}
    trainer = Trainer(model, settings(layer_lr="1-2:0.25", init_lr_frac=0.5), "cpu", torch.float32, 2, 32, 1)
    layer_of = {id(p): i for i, b in enumerate(model.transformer.h) for p in b.parameters()}
    seen = set()
    for opt in trainer.optimizers:
        for g in opt.param_groups:
            mult = 0.25 if "x0.25" in g["name"] else 1.0
            base = {"matrices": 0.02 if type(opt).__name__ == "Muon" else 0.001}.get(g["name"].split()[0])
            for p in g["params"]:
                seen.add(id(p))
                if id(p) in layer_of:  # every block parameter sits in the group of its layer's multiplier
                    assert mult == (0.25 if layer_of[id(p)] in (1, 2) else 1.0), g["name"]
            if base:
                assert g["initial_lr"] == pytest.approx(base * mult * 0.5)
    assert seen == set(initial)
    assert "x0.25" in trainer.describe() and "layers 1-2" in trainer.describe()
    trainer.set_batches(Batches(random_batches(3)))
    trainer.train_step(0.3)
    for opt in trainer.optimizers:
        for g in opt.param_groups:
            assert g["lr"] == pytest.approx(g["initial_lr"] * 0.3)
    # a layer at multiplier 0 does not move; the others do
    model = tiny_model(n_layer=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = Trainer(model, settings(layer_lr="1:0", optimizer="adamw"), "cpu", torch.float32, 2, 32, 1)
    trainer.set_batches(Batches(random_batches(4)))
    for _ in range(3):
        trainer.train_step()
    for k, v in model.state_dict().items():
        if k.startswith("transformer.h.1."):
            assert torch.equal(v, before[k]), k
        elif "cos" not in k and "sin" not in k:
            assert not torch.equal(v, before[k]), k

# -----------------------------------------------------------------------------
# DDP: two gloo processes


def _ddp_worker(rank, world_size, init_file, out_path, n_batches, accum, count_hooks):
    import torch.distributed as dist
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    torch.set_num_threads(1)
    model = tiny_model(seed=1)
    trainer = Trainer(model, settings(eval_every=0, log_every=1), "cpu", torch.float32, 2, 32, accum)
    calls = [0]
    if count_hooks:
        def counting(state, bucket):
            calls[0] += 1
            return allreduce_hook(state, bucket)
        trainer.model.register_comm_hook(None, counting)
    batches = Batches(random_batches(n_batches[rank], seed=rank))
    result = trainer.run(batches, num_iterations=100)
    torch.save({"step": result["step"], "calls": calls[0], "state": model.state_dict()}, f"{out_path}.{rank}")
    # let go of the DDP module (its reducer and comm hook hold the process group) before the group:
    # destroying the group under it ended a worker with "terminate called without an active exception" once in CI
    dist.barrier()
    del trainer, model
    import gc
    gc.collect()
    dist.destroy_process_group()


def run_ddp(tmp_path, n_batches, accum, count_hooks=False):
    out = str(tmp_path / f"out{accum}")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_ddp_worker, args=(r, 2, str(tmp_path / f"init{accum}"), out, n_batches, accum, count_hooks))
             for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    hung = [p for p in procs if p.is_alive()]
    for p in hung:
        p.kill()
    assert not hung, "a rank hung"
    assert all(p.exitcode == 0 for p in procs)
    return [torch.load(f"{out}.{r}") for r in range(2)]


def test_a_rank_out_of_data_inside_an_accumulation_does_not_hang_the_others(tmp_path):
    # rank 0 has 7 batches, rank 1 has 4: with 3 micro-steps per step rank 1 runs out inside step 2
    a, b = run_ddp(tmp_path, [7, 4], accum=3)
    assert a["step"] == b["step"] == 2  # both stop at the end of the step in which rank 1 ran out
    for k in a["state"]:
        assert torch.equal(a["state"][k], b["state"][k]), k  # and took the same steps


def test_ddp_syncs_gradients_on_the_last_micro_step_only(tmp_path):
    one = run_ddp(tmp_path, [4, 4], accum=1, count_hooks=True)  # 4 steps of 1 micro-step
    three = run_ddp(tmp_path, [12, 12], accum=3, count_hooks=True)  # 4 steps of 3 micro-steps
    assert one[0]["step"] == three[0]["step"] == 4
    assert three[0]["calls"] == one[0]["calls"] > 0  # the same all-reduces per step, however many micro-steps

# -----------------------------------------------------------------------------
# through base_train


def test_save_comes_before_evaluation_and_metrics_are_written(corpus_dir):
    p = run_script(corpus_dir, "scripts.base_train", *TINY, "--num_iterations", "4", "--eval_every", "2", "--save_every", "2",
                   "--model_tag", "order")
    out = p.stdout
    for step in (2, 4):
        assert out.index(f"saved checkpoint") < out.index(f"step {step:05d} | val bpb")
        assert out.index(f"base_checkpoints/order step {step}") < out.index(f"step {step:05d} | val bpb")
    assert "tok/s:" in out and "mfu: n/a" in out  # no peak FLOPs known for a CPU
    rows = read_rows(os.path.join(corpus_dir, "base_checkpoints", "order", "metrics.jsonl"))
    train = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3, 4] and train[-1]["tokens"] == 4 * 512
    assert [r["step"] for r in rows if r["kind"] == "eval"] == [0, 2, 4]
    assert all(r["train_loss"] > 0 and r["tok_per_sec"] > 0 and r["lrm"] > 0 for r in train)


def test_resume_auto_past_the_end_and_changed_flags(corpus_dir):
    args = TINY + ["--num_iterations", "4", "--save_every", "2", "--eval_every", "0", "--model_tag", "auto"]
    first = run_script(corpus_dir, "scripts.base_train", *args, "--resume", "auto")
    assert "no checkpoint" in first.stdout and "starting fresh" in first.stdout and len(step_losses(first.stdout)) == 4
    ckpt = os.path.join(corpus_dir, "base_checkpoints", "auto")
    # the same command again: resumes at step 4, which is the end, so it ends at once
    again = run_script(corpus_dir, "scripts.base_train", *args, "--resume", "auto")
    assert "resumed from" in again.stdout and "nothing to train" in again.stdout and not step_losses(again.stdout)
    # a resume past --num_iterations ends at once too
    past = run_script(corpus_dir, "scripts.base_train", *TINY, "--num_iterations", "2", "--model_tag", "auto", "--resume")
    assert "nothing to train" in past.stdout and not step_losses(past.stdout)
    assert sorted(f for f in os.listdir(ckpt) if f.startswith("model_")) == ["model_000002.pt", "model_000004.pt"]
    # learning-rate flags given on --resume are used (and said), not replaced by the checkpoint's
    more = run_script(corpus_dir, "scripts.base_train", *TINY, "--num_iterations", "6", "--model_tag", "auto", "--resume",
                      "--matrix_lr", "0.01", "--eval_every", "0")
    assert "--matrix_lr 0.01 replaces the checkpoint's 0.02" in more.stdout
    assert "planned for 4" in more.stdout and sorted(step_losses(more.stdout)) == [5, 6]
    optim = torch.load(os.path.join(ckpt, "optim_000006.pt"))
    muon_groups = optim[1]["param_groups"]
    assert [g["initial_lr"] for g in muon_groups] == [0.01]
    meta = json.load(open(os.path.join(ckpt, "meta_000006.json")))
    assert meta["user_config"]["matrix_lr"] == 0.01 and meta["num_iterations"] == 6


@pytest.mark.parametrize("flags, message", [
    (["--optimizer", "adamw"], "was trained with --optimizer muon"),
    (["--model_dim", "128"], "different architecture"),
    (["--layer_lr", "0:0.5"], "--layer_lr"),
])
def test_resume_with_other_optimizer_or_architecture_is_one_line(corpus_dir, flags, message):
    tag = "mismatch"
    if not os.path.isdir(os.path.join(corpus_dir, "base_checkpoints", tag)):
        run_script(corpus_dir, "scripts.base_train", *TINY, "--num_iterations", "1", "--eval_every", "0", "--model_tag", tag)
    p = run_script(corpus_dir, "scripts.base_train", *TINY, "--num_iterations", "3", "--model_tag", tag, "--resume", *flags,
                   check=False)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and p.stderr.startswith("error: --resume:") and message in p.stderr


def test_ctrl_c_saves_and_resume_continues_the_same_losses(corpus_dir):
    common = TINY + ["--eval_every", "0", "--warmdown_ratio", "0", "--log_every", "1"]
    straight = run_script(corpus_dir, "scripts.base_train", *common, "--num_iterations", "40", "--model_tag", "straight")
    env = dict(os.environ, NANOCHAT_BASE_DIR=corpus_dir, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "scripts.base_train", *common, "--num_iterations", "1000", "--model_tag", "ctrlc"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("step 00003/"):
            proc.send_signal(signal.SIGINT)
            break
    out, err = proc.communicate(timeout=120)
    out = "".join(lines) + out
    assert proc.returncode == 130, err
    assert "interrupted: saving step" in out and "Traceback" not in err
    # constant LR: the schedule does not depend on --num_iterations, so 40 steps in two goes match 40 in one
    resumed = run_script(corpus_dir, "scripts.base_train", *common, "--num_iterations", "40", "--model_tag", "ctrlc", "--resume")
    want, got = step_losses(straight.stdout), step_losses(resumed.stdout)
    assert got and max(got) == 40 and min(got) >= 4
    assert all(got[s] == want[s] for s in got), (want, got)
    assert all(smooth_losses(resumed.stdout)[s] == smooth_losses(straight.stdout)[s] for s in got)
    # the metrics file holds each step once, in order, across the interruption
    rows = read_rows(os.path.join(corpus_dir, "base_checkpoints", "ctrlc", "metrics.jsonl"))
    steps = [r["step"] for r in rows if r["kind"] == "train"]
    assert steps == list(range(1, 41))


def test_runlog_on_resume_keeps_each_row_once(tmp_path):
    from nanochat.metrics import RunLog
    log = RunLog(str(tmp_path))
    for step in (1, 2, 3, 3, 4, 5, 6):  # step 3 twice: a Ctrl-C inside the logging of step 3
        log.metrics(kind="train", step=step)
    log.metrics(kind="eval", step=4, val_bpb=2.0)
    log.metrics(kind="eval", step=6, val_bpb=1.0)  # after the save at 6
    log.sample(step=6, prompt="a", completion="b")
    log.metrics(kind="train", step=7)  # after the checkpoint at 6: dropped on resume
    log.metrics(kind="eval", step=8, val_bpb=0.5)
    (tmp_path / "metrics.jsonl").open("a").write('{"kind": "train", "st')  # a line cut short by a kill
    resumed = RunLog(str(tmp_path), resume_step=6)
    rows = read_rows(str(tmp_path / "metrics.jsonl"))
    # the evaluation at 6 stays (a run that does not evaluate at its resume step keeps it) ...
    assert [(r["kind"], r["step"]) for r in rows] == [("train", s) for s in range(1, 7)] + [("eval", 4), ("eval", 6)]
    # ... and one that evaluates there again replaces it, as a sample there replaces the old one
    resumed.metrics(kind="eval", step=6, val_bpb=0.9)
    resumed.sample(step=6, prompt="a", completion="c")
    rows = read_rows(str(tmp_path / "metrics.jsonl"))
    assert [(r["kind"], r["step"], r.get("val_bpb")) for r in rows if r["kind"] == "eval"] == [("eval", 4, 2.0), ("eval", 6, 0.9)]
    assert [r["completion"] for r in read_rows(str(tmp_path / "samples.jsonl"))] == ["c"]
    RunLog(str(tmp_path))  # a fresh run starts fresh files
    assert read_rows(str(tmp_path / "metrics.jsonl")) == []


# -----------------------------------------------------------------------------
# bad numbers and memory at run time

def test_a_non_finite_step_is_skipped_and_too_many_in_a_row_stop_the_run(tmp_path, capsys):
    from nanochat.trainer import default_loss
    poisoned = set()

    def loss_fn(model, x, y):
        loss = default_loss(model, x, y)
        return loss * float("nan") if trainer.step + 1 in poisoned else loss
    trainer = Trainer(tiny_model(), settings(), "cpu", torch.float32, 2, 32, 1, str(tmp_path), loss_fn=loss_fn)
    trainer.set_batches(Batches(random_batches(20)))
    trainer.train_step()
    trainer.save(trainer.data_state())  # a good checkpoint at step 1
    before = {k: v.clone() for k, v in trainer.orig_model.state_dict().items()}
    poisoned.add(2)
    trainer.train_step()  # step 2: NaN loss -> NaN gradients -> no update
    assert all(torch.equal(before[k], v) for k, v in trainer.orig_model.state_dict().items())
    assert trainer.step == 2 and trainer.nonfinite == 1
    trainer.train_step()  # step 3 is fine again: an update, the run in a row is reset
    assert not all(torch.equal(before[k], v) for k, v in trainer.orig_model.state_dict().items())
    assert trainer.nonfinite_in_row == 0
    poisoned.update({4, 5, 6})
    trainer.train_step()
    trainer.train_step()
    with pytest.raises(SystemExit):
        trainer.train_step()  # the third in a row
    err = capsys.readouterr().err
    assert "3 steps in a row had a non-finite loss or gradient" in err and "last good checkpoint is step 1" in err


def test_out_of_memory_in_the_first_steps_halves_the_micro_batch(capsys):
    """An (injected) out-of-memory error for micro-batches of more than 2 rows: the trainer retries with
    halves until it fits, and trains the same function of the same rows as an unsplit run."""
    from nanochat.trainer import default_loss

    def tight(model, x, y):
        if x.size(0) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
        return default_loss(model, x, y)
    runs = {}
    for name, loss_fn in (("plain", default_loss), ("tight", tight)):
        trainer = Trainer(tiny_model(), settings(), "cpu", torch.float32, 8, 32, 2, loss_fn=loss_fn)
        trainer.set_batches(Batches(random_batches(8, B=8)))
        runs[name] = ([trainer.train_step().item() for _ in range(3)], trainer)
    out = capsys.readouterr().out
    assert "out of memory at 8 rows per micro-step" in out and "retrying with 2 rows and 8 accumulation steps" in out
    assert runs["tight"][1].split == 4
    for a, b in zip(runs["plain"][0], runs["tight"][0]):
        assert abs(a - b) < 1e-5
    for (k, a), b in zip(runs["plain"][1].orig_model.state_dict().items(), runs["tight"][1].orig_model.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    # past the first steps an out-of-memory error is not caught
    trainer = runs["tight"][1]
    trainer.split = 1
    trainer.step = 50
    with pytest.raises(torch.cuda.OutOfMemoryError):
        trainer.train_step()
