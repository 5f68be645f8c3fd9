"""
Kill-9 soak: a CPU training run is killed with SIGKILL at random moments (during steps, during
saves) and resumed with --resume auto each time; at the end its weights and its whole logged
loss sequence must be bitwise identical to an uninterrupted run's. Base training, then SFT from
the same base model.

    python dev/kill_soak.py                       # 10 kills of each, in a temporary base dir
    python dev/kill_soak.py --kills 3 --steps 12 --base_dir /tmp/soak

Needs no data: the built-in corpus and a small tokenizer are made in the base dir when missing.
Prints one line per kill and a verdict; exits 1 when anything differs.
"""
import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import torch

from nanochat.checkpoint_manager import checkpoint_steps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = ["--n_layer", "2", "--model_dim", "64", "--head_dim", "32", "--max_seq_len", "64", "--device_batch_size", "4",
         "--total_batch_size", "2048", "--data", "builtin"]


def command(kind, steps, tag):
    if kind == "base":
        return ["scripts.base_train", *MODEL, "--num_iterations", str(steps), "--eval_every", "0", "--eval_tokens", "512",
                "--sample_every", "0", "--save_every", "1", "--log_every", "1", "--model_tag", tag]
    return ["scripts.chat_sft", "--source", "base", "--model_tag", "soak_base", "--output_tag", tag, "--num_iterations", str(steps),
            "--device_batch_size", "4", "--max_seq_len", "64", "--eval_every", "0", "--eval_conversations", "8",
            "--num_conversations", "400", "--total_batch_size", "2048", "--save_every", "1", "--log_every", "1"]


def env_for(base_dir):
    return dict(os.environ, NANOCHAT_BASE_DIR=base_dir, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def run(base_dir, module_args, resume=False):
    args = [sys.executable, "-m", *module_args] + (["--resume", "auto"] if resume else [])
    p = subprocess.run(args, cwd=ROOT, env=env_for(base_dir), capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"kill_soak: {' '.join(module_args[:1])} failed:\n{p.stdout[-2000:]}{p.stderr[-2000:]}")


def folder(base_dir, kind, tag):
    return os.path.join(base_dir, "base_checkpoints" if kind == "base" else "chatsft_checkpoints", tag)


def logged_step(metrics):
    """The last training step metrics.jsonl holds (0 before any)."""
    if not os.path.exists(metrics):
        return 0
    rows = []
    for line in open(metrics, encoding="utf-8"):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # a line cut short by a kill
    return max((r["step"] for r in rows if r.get("kind") == "train"), default=0)


def last_step(path):
    """The step of the newest checkpoint in a folder (0 without one): where a resumed run starts."""
    return (checkpoint_steps(path) or [0])[-1]


def wait_for_step(proc, metrics, step):
    while proc.poll() is None and logged_step(metrics) < step:
        time.sleep(0.005)


def reference_run(base_dir, kind, steps, tag):
    """The uninterrupted run; returns the seconds one of its steps takes (its save included)."""
    proc = subprocess.Popen([sys.executable, "-m", *command(kind, steps, tag)], cwd=ROOT, env=env_for(base_dir),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    metrics = os.path.join(folder(base_dir, kind, tag), "metrics.jsonl")
    wait_for_step(proc, metrics, 1)
    t0 = time.time()
    wait_for_step(proc, metrics, steps)
    step_time = (time.time() - t0) / max(1, steps - 1)
    err = proc.communicate()[1].decode()
    if proc.returncode != 0:
        raise SystemExit(f"kill_soak: the uninterrupted {kind} run failed:\n{err[-2000:]}")
    return step_time


def killed_run(base_dir, kind, steps, tag, kills, rng, step_time):
    """
    The same run, SIGKILLed `kills` times and resumed with --resume auto each time: each kill once
    a randomly chosen step has been logged, a random part of a step later (so in the next step or
    in the save before it), then the run is let finish.
    """
    metrics = os.path.join(folder(base_dir, kind, tag), "metrics.jsonl")
    args = [sys.executable, "-m", *command(kind, steps, tag), "--resume", "auto"]
    targets = sorted(rng.sample(range(1, steps), min(kills, steps - 1)))
    for k, target in enumerate(targets):
        proc = subprocess.Popen(args, cwd=ROOT, env=env_for(base_dir), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_for_step(proc, metrics, target)
        time.sleep(rng.uniform(0.0, step_time))
        if proc.poll() is not None:
            err = proc.stderr.read().decode()[-2000:]
            raise SystemExit(f"kill_soak: the {kind} run ended before kill {k + 1} (rc {proc.returncode}):\n{err}")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
        print(f"  {kind}: kill {k + 1} after step {logged_step(metrics)} was logged (resumes from step "
              f"{last_step(folder(base_dir, kind, tag))})")
    run(base_dir, command(kind, steps, tag), resume=True)
    return len(targets)


def losses(base_dir, kind, tag):
    rows = [json.loads(l) for l in open(os.path.join(folder(base_dir, kind, tag), "metrics.jsonl"))]
    return [(r["step"], r["train_loss"], r["smooth_loss"]) for r in rows if r.get("kind") == "train"]


def weights(base_dir, kind, tag, step):
    return torch.load(os.path.join(folder(base_dir, kind, tag), f"model_{step:06d}.pt"), map_location="cpu")


def compare(base_dir, kind, steps):
    same_losses = losses(base_dir, kind, "soak_" + kind) == losses(base_dir, kind, "soak_killed_" + kind)
    a, b = weights(base_dir, kind, "soak_" + kind, steps), weights(base_dir, kind, "soak_killed_" + kind, steps)
    same_weights = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    n = len(losses(base_dir, kind, "soak_" + kind))
    print(f"{kind}: {n} logged steps {'identical' if same_losses else 'DIFFER'}, final weights "
          f"{'bitwise identical' if same_weights else 'DIFFER'}")
    return same_losses and same_weights


def main():
    parser = argparse.ArgumentParser(description="Kill a CPU training run with SIGKILL at random moments and check that "
                                                 "resuming gives the uninterrupted run's weights and losses, bit for bit.")
    parser.add_argument("--kills", type=int, default=10, help="kills per run (default 10)")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps of each run (default 30)")
    parser.add_argument("--sft_steps", type=int, default=0, help="steps of the SFT run (default: --steps; 0 with --no_sft)")
    parser.add_argument("--no_sft", action="store_true", help="only base training")
    parser.add_argument("--base_dir", type=str, default="", help="NANOCHAT_BASE_DIR to use (default: a new temporary one)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    args = parser.parse_args()
    base_dir = args.base_dir or tempfile.mkdtemp(prefix="kill_soak_")
    rng = random.Random(args.seed)
    t0 = time.time()
    if not os.path.exists(os.path.join(base_dir, "tokenizer", "tokenizer.pkl")):
        print(f"kill_soak: built-in corpus and a 512-token tokenizer in {base_dir}")
        run(base_dir, ["nanochat.dataset", "--builtin"])
        run(base_dir, ["scripts.tok_train", "--vocab_size", "512", "--data", "builtin", "--max_chars", "2000000"])
    ok = True
    kinds = [("base", args.steps)] + ([] if args.no_sft else [("sft", args.sft_steps or args.steps)])
    for kind, steps in kinds:
        for tag in ("soak_" + kind, "soak_killed_" + kind):  # a soak starts both runs from nothing
            shutil.rmtree(folder(base_dir, kind, tag), ignore_errors=True)
        if kind == "sft":  # both SFT runs start from the same base model
            run(base_dir, command("base", 4, "soak_base"))
        step_time = reference_run(base_dir, kind, steps, "soak_" + kind)
        print(f"{kind}: the uninterrupted run: {steps} steps of {step_time * 1000:.0f} ms (with its save); now the killed one")
        killed_run(base_dir, kind, steps, "soak_killed_" + kind, args.kills, rng, step_time)
        ok = compare(base_dir, kind, steps) and ok
    print(f"kill_soak: {'PASS' if ok else 'FAIL'} in {time.time() - t0:.0f} s ({base_dir})")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
