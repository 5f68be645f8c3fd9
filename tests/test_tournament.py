"""The architecture tournament: rounds, budgets, ranking with seed noise, and tiny tournaments run end to end on a CPU."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from helpers import ROOT, run_script
from nanochat import tournament as tour

TINY = ["--scale", "tiny", "--max_seq_len", "32", "--device_batch_size", "2", "--data", "builtin", "--eval_tokens", "512",
        "--log_every", "50"]


def test_parse_rounds():
    assert tour.parse_rounds("500:5,1000:3,2000:1") == [(500, 5), (1000, 3), (2000, 1)]
    for bad in ("500", "500:0", "x:2", "10:2,10:3", "0:1"):
        with pytest.raises(ValueError):
            tour.parse_rounds(bad)


def test_round_steps_equal_tokens_and_equal_flops():
    rounds = [(100, 2), (200, 1)]
    assert tour.round_steps({"a": 1e6, "b": 4e6}, rounds, "tokens") == {"a": [100, 200], "b": [100, 200]}
    # equal FLOPs: the cheapest trains the round's steps, a 4x costlier one a quarter of them
    assert tour.round_steps({"a": 1e6, "b": 4e6}, rounds, "flops") == {"a": [100, 200], "b": [25, 50]}


def _state(results):
    return {"contestants": {n: {"results": [{"round": 1, "seed": i, "val_bpb": v, "steps": 10, "tokens": 100, "flops": 1.0}
                                            for i, v in enumerate(vals)]} for n, vals in results.items()}}


def test_rank_calls_a_difference_within_seed_noise_a_tie():
    state = _state({"a": [1.00, 1.04], "b": [1.01, 1.03], "c": [1.30, 1.31]})
    ranked = tour.rank(state, 1, ["a", "b", "c"])
    assert [n for n, _ in ranked] == ["a", "b", "c"]  # means 1.02, 1.02 (a first by a hair), 1.305
    a, b, c = (s for _, s in ranked)
    assert abs(a["spread"] - 0.04) < 1e-9 and b["tie_with"] == "a" and c["tie_with"] is None
    # one seed: no noise estimate, so no tie is called however close
    ranked = tour.rank(_state({"a": [1.000], "b": [1.001]}), 1, ["a", "b"])
    assert ranked[1][1]["tie_with"] is None


def _results(base, name):
    with open(os.path.join(base, "tournament", name, "state.json")) as f:
        state = json.load(f)
    return {n: (c["status"], c["reason"], [(r["round"], r["steps"], round(r["val_bpb"], 6)) for r in c["results"]])
            for n, c in state["contestants"].items()}


def test_tiny_tournament_runs_to_a_winner_and_drops_an_out_of_memory_contestant(corpus_dir):
    env = dict(os.environ, NANOCHAT_TOURNAMENT_OOM="v05_moe_small")
    args = ["--name", "oom", "--lineup", "v01,v03,v05,v09", "--rounds", "3:2,3:1", "--winner_tag", "tour_winner", *TINY]
    p = subprocess.run([sys.executable, "-m", "scripts.tournament", *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**env, "NANOCHAT_BASE_DIR": corpus_dir, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stdout + p.stderr
    res = _results(corpus_dir, "oom")
    status, reason, rows = res["v05_moe_small"]
    assert status == "eliminated" and reason.startswith("out of memory") and rows == []
    # round 1: the three others train 3 steps; two go on and train to step 6; one wins
    assert sorted(len(r) for _, _, r in res.values()) == [0, 1, 2, 2]
    alive = [n for n, (s, _, _) in res.items() if s == "alive"]
    assert len(alive) == 1 and res[alive[0]][2][-1][:2] == (2, 6)
    folder = os.path.join(corpus_dir, "tournament", "oom")
    table = open(os.path.join(folder, "round_1.md")).read()
    assert "v05_moe_small" in table and "out of memory" in table and table.count("| continues") == 2
    assert f"{alive[0]}: held-out bpb" in open(os.path.join(folder, "results.md")).read()
    # the winner's checkpoint is where chat_sft looks, and chat_sft trains from it
    p = run_script(corpus_dir, "scripts.chat_sft", "--source", "base", "--model_tag", "tour_winner", "--num_iterations", "2",
                   "--device_batch_size", "2", "--max_seq_len", "32", "--eval_every", "0", "--eval_conversations", "4",
                   "--num_conversations", "20", "--output_tag", "tour_winner_sft")
    assert "step 00002/00002" in p.stdout


def test_memory_estimate_over_the_card_eliminates_before_training(corpus_dir):
    from nanochat.variants import variant_config
    from nanochat.vram import estimate_memory
    from nanochat.tokenizer import Tokenizer
    vocab = Tokenizer.from_directory(os.path.join(corpus_dir, "tokenizer")).get_vocab_size()
    from nanochat.batch_plan import SAFETY_MARGIN
    est = {n: estimate_memory(variant_config(n, vocab, 32, "tiny"), 2, 32, "fp32", "muon", False, False)["total"]
           for n in ("v01_dense_small", "v06_moe_medium")}
    assert est["v01_dense_small"] < est["v06_moe_medium"]
    # a card that fits the one (with the calculator's margin), not the other
    card = (est["v01_dense_small"] + est["v06_moe_medium"]) / 2 / (1 - SAFETY_MARGIN) / 2**30
    assert est["v06_moe_medium"] > card * 2**30 * (1 - SAFETY_MARGIN) > est["v01_dense_small"]
    run_script(corpus_dir, "scripts.tournament", "--name", "mem", "--lineup", "v01,v06", "--rounds", "2:1",
               "--gpu_memory", f"{card:.9f}", "--winner_tag", "mem_winner", *TINY)
    res = _results(corpus_dir, "mem")
    assert res["v06_moe_medium"][0] == "eliminated" and res["v06_moe_medium"][1].startswith("memory estimate")
    assert res["v01_dense_small"][0] == "alive" and len(res["v01_dense_small"][2]) == 1


def test_killed_tournament_resumes_to_the_same_result(corpus_dir):
    args = ["--lineup", "v01,v03,v07", "--rounds", "4:2,4:1", "--save_every", "2", *TINY]
    run_script(corpus_dir, "scripts.tournament", "--name", "whole", "--winner_tag", "whole_w", *args)
    env = dict(os.environ, NANOCHAT_BASE_DIR=corpus_dir, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "scripts.tournament", "--name", "killed", "--winner_tag", "killed_w", *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    state_path = os.path.join(corpus_dir, "tournament", "killed", "state.json")
    deadline = time.time() + 240
    # kill -9 once round 1 has a result and the next contestant has a mid-round checkpoint (step 2 of 4)
    while time.time() < deadline and proc.poll() is None:
        done = json.load(open(state_path)) if os.path.exists(state_path) else None
        n = sum(len(c["results"]) for c in done["contestants"].values()) if done else 0
        if n >= 1 and os.path.exists(os.path.join(corpus_dir, "tournament", "killed", "v03_diffattn_small", "meta_000002.json")):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the tournament finished before it could be killed"
    assert not os.path.exists(os.path.join(corpus_dir, "tournament", "killed", "results.md"))
    p = run_script(corpus_dir, *cmd[2:])
    assert "continuing the tournament" in p.stdout and "resumed from" in p.stdout
    assert _results(corpus_dir, "killed") == _results(corpus_dir, "whole")
