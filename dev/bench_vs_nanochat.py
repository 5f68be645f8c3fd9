"""
Side by side on this machine: our base_train against karpathy/nanochat's, each with its own
defaults, at one small CPU shape (depth 4, width 256, heads of 64, sequence 256, batch 8 x 256 =
2,048 tokens per step, fp32), on the same corpus (our built-in one) and the same 4,096-token
tokenizer (nanochat's tokenizer.pkl format is ours: a pickled tiktoken Encoding). Runs are
interleaved (ours, theirs, theirs, ours, ...) and repeated; prints the median step time after
warm-up of each, the ratio, the training losses at the same steps, and with --decode the batch-1
greedy decode speed of each one's Engine (32-token prompt, 200 new tokens) on the checkpoint its
run saved.

    git clone https://github.com/karpathy/nanochat /tmp/nanochat      # any checkout
    python -m venv --system-site-packages /tmp/ncvenv && /tmp/ncvenv/bin/pip install wandb filelock jinja2 psutil
    python dev/bench_vs_nanochat.py /tmp/nanochat --nanochat_python /tmp/ncvenv/bin/python --rounds 3 --decode

Both runs use their base_train's defaults (optimizer, learning rates, schedule, compile or not);
only the shape, the step count and the evaluation cadence are set. nanochat 2026 (--head-dim
flags) trains at exactly this shape (with its own architecture: value embeddings, sliding
windows, ...); the October 2025 version (configurator flags) derives heads of 128 from the
depth, so against it both sides run 2 heads of 128 (--head_dim 128 is set for ours), and its
architecture is ours. Work files (data, tokenizers, checkpoints) go under --work (default
/tmp/bench_vs_nanochat); nothing is written into either checkout.
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEP_RE = re.compile(r"^step (\d+)/\d+ .*?\| loss: ([\d.]+) (?:\| smooth: ([\d.]+) )?.*?\| dt: ([\d.]+) ?ms", re.M)


def sh(cmd, cwd, env, log):
    t0 = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t0
    if rc != 0:
        sys.exit(f"failed ({rc}): {' '.join(cmd)}\n  see {log}")
    return wall


def nanochat_style(path):
    src = open(os.path.join(path, "scripts", "base_train.py")).read()
    return "new" if "--head-dim" in src else "oct2025"


def prepare(args, env):
    """Our built-in corpus and 4,096-token tokenizer, and a copy of both in nanochat's layout."""
    ours = os.path.join(args.work, "ours")
    if not os.path.exists(os.path.join(ours, "tokenizer", "tokenizer.pkl")):
        e = dict(env, NANOCHAT_BASE_DIR=ours)
        sh([sys.executable, "-m", "nanochat.dataset", "--builtin"], REPO, e, os.path.join(args.work, "prep_data.log"))
        sh([sys.executable, "-m", "scripts.tok_train", "--vocab_size", "4096", "--data", "builtin"], REPO, e,
           os.path.join(args.work, "prep_tok.log"))
    theirs = os.path.join(args.work, "nanochat")
    # nanochat 2026 reads base_data_climbmix/, October 2025 base_data/; both take the last shard as val (as ours)
    for sub in ("base_data", "base_data_climbmix"):
        os.makedirs(os.path.join(theirs, sub), exist_ok=True)
        for f in sorted(os.listdir(os.path.join(ours, "builtin_data"))):
            if f.endswith(".parquet"):
                shutil.copy(os.path.join(ours, "builtin_data", f), os.path.join(theirs, sub, f))
    shutil.copytree(os.path.join(ours, "tokenizer"), os.path.join(theirs, "tokenizer"), dirs_exist_ok=True)
    return ours, theirs


def our_cmd(args, head_dim):
    return [sys.executable, "-m", "scripts.base_train", "--depth", "4", "--model_dim", "256", "--head_dim", str(head_dim),
            "--max_seq_len", "256", "--device_batch_size", "8", "--total_batch_size", "2048",
            "--num_iterations", str(args.steps), "--data", "builtin", "--eval_every", "0", "--eval_tokens", "16384",
            "--sample_every", "0", "--device_type", "cpu", "--model_tag", "bench_vs_nanochat"]


def their_cmd(args, style):
    py = args.nanochat_python
    if style == "new":
        return [py, "-m", "scripts.base_train", "--depth", "4", "--aspect-ratio", "64", "--head-dim", "64",
                "--max-seq-len", "256", "--device-batch-size", "8", "--total-batch-size", "2048",
                "--num-iterations", str(args.steps), "--eval-every", "-1", "--eval-tokens", "16384",
                "--core-metric-every", "-1", "--sample-every", "-1", "--device-type", "cpu", "--model-tag", "d4"]
    return [py, "-m", "scripts.base_train", "--depth=4", "--max_seq_len=256", "--device_batch_size=8",
            "--total_batch_size=2048", f"--num_iterations={args.steps}", f"--eval_every={args.steps}",
            "--eval_tokens=16384", "--core_metric_every=-1", f"--sample_every={10 * args.steps}", "--device_type=cpu",
            "--model_tag=d4"]


def parse_steps(log, ours):
    """{step: (smooth loss, dt ms)}; nanochat prints step k-1 for the k-th step and its debiased smooth loss as 'loss'."""
    out = {}
    for m in STEP_RE.finditer(open(log).read()):
        step, loss, smooth, dt = int(m.group(1)), float(m.group(2)), m.group(3), float(m.group(4))
        out[step if ours else step + 1] = (float(smooth) if ours else loss, dt)
    return out


DECODE_OURS = r"""
import json, sys, time, torch
from nanochat.checkpoint_manager import load_model
from nanochat.engine import Engine
model, tok, _ = load_model("base", torch.device("cpu"), "eval", model_tag="bench_vs_nanochat")
prompt = json.loads(sys.argv[1]); n = int(sys.argv[2]); reps = int(sys.argv[3])
eng = Engine(model, tok)
times = []
for _ in range(reps):
    t0 = time.perf_counter()
    ids = [t[0] for t in eng.generate(prompt, max_tokens=n, temperature=0, stop_tokens=set(), tools=False)]
    times.append(time.perf_counter() - t0)
print("RESULT " + json.dumps({"times": times, "tokens": ids}))
"""

DECODE_THEIRS = r"""
import json, sys, time, torch, os
from nanochat.checkpoint_manager import build_model
from nanochat.common import get_base_dir
from nanochat.engine import Engine
d = os.path.join(get_base_dir(), "base_checkpoints", "d4")
step = max(int(f[6:12]) for f in os.listdir(d) if f.startswith("model_"))
model, tok, _ = build_model(d, step, torch.device("cpu"), "eval")
prompt = json.loads(sys.argv[1]); n = int(sys.argv[2]); reps = int(sys.argv[3])
eng = Engine(model, tok)
times = []
for _ in range(reps):
    t0 = time.perf_counter()
    ids = [col[0] for col, _ in eng.generate(prompt, num_samples=1, max_tokens=n, temperature=0)]
    times.append(time.perf_counter() - t0)
print("RESULT " + json.dumps({"times": times, "tokens": ids}))
"""


def decode(args, style, env_ours, env_theirs, prompt):
    res = {}
    for name, code, cwd, env, py in (("ours", DECODE_OURS, REPO, env_ours, sys.executable),
                                     ("nanochat", DECODE_THEIRS, args.nanochat, env_theirs, args.nanochat_python)):
        out = subprocess.run([py, "-c", code, json.dumps(prompt), str(args.decode_tokens), str(args.decode_reps)],
                             cwd=cwd, env=env, capture_output=True, text=True)
        line = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
        if not line:
            sys.exit(f"{name} decode failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
        r = json.loads(line[0][7:])
        r["ms_per_token"] = 1000 * min(r["times"]) / max(1, len(r["tokens"]))
        res[name] = r
    return res


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("nanochat", help="path to a karpathy/nanochat checkout (its scripts/base_train.py)")
    p.add_argument("--nanochat_python", default=sys.executable, help="the python for nanochat (needs wandb, filelock, jinja2, psutil)")
    p.add_argument("--steps", type=int, default=60, help="steps per run (at least 20)")
    p.add_argument("--warmup", type=int, default=10, help="steps left out of the median (compilation, allocator)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved pairs of runs")
    p.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS for both (0: the cores this process may use)")
    p.add_argument("--work", default="/tmp/bench_vs_nanochat", help="data, tokenizers, checkpoints and logs")
    p.add_argument("--decode", action="store_true", help="also time batch-1 greedy decode of both checkpoints")
    p.add_argument("--decode_tokens", type=int, default=200)
    p.add_argument("--decode_reps", type=int, default=5, help="decodes per side per round (the fastest counts)")
    p.add_argument("--json", default="", help="write the results to this file too")
    args = p.parse_args()
    args.nanochat = os.path.abspath(args.nanochat)
    if args.steps < args.warmup + 5:
        sys.exit("--steps must exceed --warmup by 5 or more")
    os.makedirs(args.work, exist_ok=True)
    style = nanochat_style(args.nanochat)
    head_dim = 64 if style == "new" else 128
    threads = args.threads or len(os.sched_getaffinity(0))
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    env.pop("NANOCHAT_MUON_NS", None)
    ours_dir, theirs_dir = prepare(args, env)
    env_ours, env_theirs = dict(env, NANOCHAT_BASE_DIR=ours_dir), dict(env, NANOCHAT_BASE_DIR=theirs_dir)
    commit = subprocess.run(["git", "-C", args.nanochat, "log", "-1", "--format=%h %ad", "--date=short"],
                            capture_output=True, text=True).stdout.strip() or "(not a git checkout)"
    print(f"nanochat: {args.nanochat} ({style} base_train, {commit}); ours: {REPO}; {threads} threads; "
          f"heads of {head_dim}; {args.steps} steps x {args.rounds} rounds")

    runs = {"ours": [], "nanochat": []}
    dec = {"ours": [], "nanochat": []}
    prompt = None
    for r in range(args.rounds):
        order = ["ours", "nanochat"] if r % 2 == 0 else ["nanochat", "ours"]
        for name in order:
            log = os.path.join(args.work, f"{name}_round{r}.log")
            if name == "ours":
                wall = sh(our_cmd(args, head_dim), REPO, env_ours, log)
            else:
                wall = sh(their_cmd(args, style), args.nanochat, env_theirs, log)
            steps = parse_steps(log, name == "ours")
            timed = [dt for s, (_, dt) in steps.items() if s > args.warmup]
            if len(timed) < 5:
                sys.exit(f"could not read the step lines of {log}")
            runs[name].append({"wall_s": wall, "median_ms": statistics.median(timed), "steps": steps})
            print(f"  round {r} {name:8s}: median step {statistics.median(timed):7.1f} ms after step {args.warmup} | "
                  f"first step {steps[min(steps)][1] / 1000:.1f} s | run wall {wall:.0f} s | "
                  f"loss at {max(steps)}: {steps[max(steps)][0]:.4f}")
        if args.decode:
            if prompt is None:
                sys.path.insert(0, REPO)
                os.environ["NANOCHAT_BASE_DIR"] = ours_dir
                from nanochat.tokenizer import get_tokenizer
                tok = get_tokenizer()
                text = open(os.path.join(REPO, "README.md")).read()
                prompt = [tok.get_bos_token_id()] + tok.encode(text)[:31]
            d = decode(args, style, env_ours, env_theirs, prompt)
            for name in dec:
                dec[name].append(d[name])
            print(f"  round {r} decode: ours {d['ours']['ms_per_token']:.2f} ms/token ({len(d['ours']['tokens'])} tokens), "
                  f"nanochat {d['nanochat']['ms_per_token']:.2f} ms/token ({len(d['nanochat']['tokens'])} tokens)")

    med = {k: statistics.median(x["median_ms"] for x in v) for k, v in runs.items()}
    print(f"\ntraining step, median over rounds of each run's median after step {args.warmup}:")
    print(f"  ours     {med['ours']:7.1f} ms | run wall median {statistics.median(x['wall_s'] for x in runs['ours']):.0f} s")
    print(f"  nanochat {med['nanochat']:7.1f} ms | run wall median {statistics.median(x['wall_s'] for x in runs['nanochat']):.0f} s")
    print(f"  speed ratio (nanochat step / ours): {med['nanochat'] / med['ours']:.3f}x")
    print("smoothed training loss at the same step (each side's own debiased EMA, round 0):")
    s_o, s_n = runs["ours"][0]["steps"], runs["nanochat"][0]["steps"]
    for s in sorted(set(s_o) & set(s_n)):
        if s % 10 == 0 or s == max(s_o):
            print(f"  step {s:4d}: ours {s_o[s][0]:.4f} | nanochat {s_n[s][0]:.4f}")
    result = {"nanochat": args.nanochat, "style": style, "commit": commit, "threads": threads, "median_ms": med,
              "ratio": med["nanochat"] / med["ours"], "runs": runs}
    if args.decode:
        dm = {k: statistics.median(x["ms_per_token"] for x in v) for k, v in dec.items()}
        print(f"decode, batch 1, greedy, {len(prompt)}-token prompt, {args.decode_tokens} tokens (Engine.generate, "
              f"fastest of {args.decode_reps} per round, median over rounds):")
        print(f"  ours {dm['ours']:.2f} ms/token | nanochat {dm['nanochat']:.2f} ms/token | "
              f"speed ratio {dm['nanochat'] / dm['ours']:.3f}x")
        result["decode_ms_per_token"] = dm
        result["decode_ratio"] = dm["nanochat"] / dm["ours"]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
