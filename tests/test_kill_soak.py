"""The kill-9 soak, short: base training and SFT killed with SIGKILL at random steps and saves, resumed each
time, end with the uninterrupted runs' weights and logged losses, bit for bit."""
import os
import subprocess
import sys

from helpers import ROOT


def test_killed_and_resumed_runs_end_bitwise_identical(corpus_dir):
    p = subprocess.run([sys.executable, "dev/kill_soak.py", "--kills", "3", "--steps", "10", "--base_dir", corpus_dir, "--seed", "3"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.count(": kill ") == 6  # 3 landed in each run
    assert "base: 10 logged steps identical, final weights bitwise identical" in p.stdout
    assert "sft: 10 logged steps identical, final weights bitwise identical" in p.stdout
