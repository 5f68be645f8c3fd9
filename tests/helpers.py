"""Helpers shared by the training tests: run a script on the CPU, read the numbers it prints."""
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_script(base, module, *args, torchrun=False, check=True, timeout=300):
    env = dict(os.environ, NANOCHAT_BASE_DIR=str(base), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", NANOCHAT_FAST_DECODE="0")
    cmd = [sys.executable, "-m", module, *args]
    if torchrun:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", module, *args]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert p.returncode == 0, p.stdout + p.stderr
    return p


def step_losses(output):
    """{step: printed loss} of the training log lines."""
    return {int(m.group(1)): m.group(2) for m in re.finditer(r"^step (\d+)/\d+ \| loss: ([\d.]+)", output, re.M)}


def smooth_losses(output):
    """{step: printed smoothed loss}."""
    return {int(m.group(1)): m.group(2) for m in re.finditer(r"^step (\d+)/\d+ \| loss: [\d.]+ \| smooth: ([\d.]+)", output, re.M)}


def assert_kv_decoding_matches(model, idx):
    """Prefill 11 tokens, a chunk of 6, then one token at a time through the KV cache: the logits of a full forward.
    Returns the cache."""
    import torch
    B, T = idx.shape
    with torch.no_grad():
        full = model(idx)
        cache = model.make_kv_cache(B, T)
        pieces = [model(idx[:, :11], kv_cache=cache), model(idx[:, 11:17], kv_cache=cache)]
        pieces += [model(idx[:, t:t + 1], kv_cache=cache) for t in range(17, T)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)
    assert cache.pos == T
    return cache
