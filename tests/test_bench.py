"""
The benchmarks run end to end on a CPU on a tiny model (as subprocesses, with --json) and report
sane numbers; bad flags give a one-line error. Timings themselves are not asserted.
"""
import json
import math
import os
import subprocess
import sys

import pytest

from nanochat.hardware import lookup_bandwidth

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--device_type", "cpu", "--depth", "2", "--model_dim", "64", "--head_dim", "32", "--n_kv_head", "1",
        "--vocab_size", "256", "--max_seq_len", "32"]


def run(module, *flags):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", module, *flags], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def run_json(module, *flags):
    proc = run(module, *flags, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_bench_train_cpu():
    r = run_json("scripts.bench_train", *TINY, "--device_batch_size", "2", "--warmup", "1", "--steps", "2")
    assert r["benchmark"] == "train" and r["device_type"] == "cpu"
    assert r["config"]["n_layer"] == 2 and r["config"]["n_kv_head"] == 1
    assert r["tokens_per_step"] == 2 * 32
    assert r["tokens_per_s"] > 0 and r["step_ms_mean"] > 0 and r["step_ms_min"] <= r["step_ms_median"]
    assert math.isclose(r["tokens_per_s"], r["tokens_per_step"] / (r["step_ms_mean"] / 1000), rel_tol=1e-6)
    assert r["mfu"] is None and r["peak_flops"] is None  # no peak FLOPs for a CPU
    assert r["peak_memory"]["process_rss"] > 0
    assert math.isfinite(r["final_loss"])


def test_bench_train_options_cpu():
    r = run_json("scripts.bench_train", *TINY, "--mlp", "swiglu", "--tie_embeddings", "--norm_weight",
                 "--device_batch_size", "2", "--grad_accum_steps", "2", "--warmup", "0", "--steps", "1",
                 "--grad_checkpoint", "--optimizer", "adamw", "--precision", "bf16", "--peak_tflops", "1")
    s = r["settings"]
    assert s["grad_checkpoint"] and s["optimizer"] == "adamw" and s["precision"] == "bfloat16" and not s["grad_scaler"]
    assert r["tokens_per_step"] == 2 * 32 * 2
    assert r["config"]["mlp"] == "swiglu" and r["config"]["tie_embeddings"]
    assert 0 < r["mfu"] == pytest.approx(r["flops_per_token"] * r["tokens_per_s"] / 1e12)


def test_bench_infer_cpu():
    r = run_json("scripts.bench_infer", *TINY, "--prompt_lengths", "8,24", "--batch_sizes", "1,4",
                 "--decode_prompt_len", "8", "--decode_tokens", "8", "--repeats", "1", "--check_tokens", "12")
    assert r["benchmark"] == "infer" and r["modes"] == ["eager", "static"]
    assert [(t["mode"], t["prompt_len"]) for t in r["ttft"]] == [("eager", 8), ("static", 8), ("eager", 24), ("static", 24)]
    assert all(t["ms"] > 0 for t in r["ttft"])
    assert [(d["mode"], d["batch_size"]) for d in r["decode"]] == [("eager", 1), ("static", 1), ("eager", 4), ("static", 4)]
    for d in r["decode"]:
        assert d["tokens_per_s"] > 0 and d["bandwidth_GBps"] > 0
        assert d["bandwidth_fraction"] is None  # no peak bandwidth for a CPU
        assert d["bytes_per_step"] > r["weight_bytes_per_step"] > 0
    assert set(r["speedup_vs_eager"]) == {"1", "4"}
    assert r["tokens_match"] is True
    assert r["peak_bandwidth"] is None


# a contestant of nanochat.variants (differential attention + MoE) shrunk for a CPU: 5 layers of 96
VARIANT = ["--device_type", "cpu", "--variant", "v07_hybrid_small", "--scale", "tiny", "--vocab_size", "256",
           "--max_seq_len", "32"]


def test_bench_train_variant_tiny_cpu():
    r = run_json("scripts.bench_train", *VARIANT, "--device_batch_size", "2", "--warmup", "1", "--steps", "2")
    c = r["config"]
    assert (c["attn"], c["moe_experts"], c["moe_top_k"], c["n_layer"], c["n_embd"], c["vocab_size"]) == ("diff", 8, 2, 5, 96, 256)
    assert 0 < r["active_params"] < r["num_params"]  # a token runs 2 of the 8 experts
    assert r["flops_per_token"] < 6 * r["num_params"]  # FLOPs count the active experts only
    assert r["tokens_per_s"] > 0 and math.isfinite(r["final_loss"])


def test_bench_infer_variant_tiny_cpu_skips_the_fast_decoder():
    r = run_json("scripts.bench_infer", *VARIANT, "--modes", "naive,eager,fast", "--prompt_lengths", "8",
                 "--batch_sizes", "1,4", "--decode_prompt_len", "8", "--decode_tokens", "8", "--repeats", "1",
                 "--check_tokens", "12")
    assert r["modes"] == ["naive", "eager"]  # the eager KV-cache path is still measured
    assert list(r["skipped"]) == ["static"] and "does not support" in r["skipped"]["static"]
    assert [(t["mode"], t["prompt_len"]) for t in r["ttft"]] == [("naive", 8), ("eager", 8)]
    assert [(d["mode"], d["batch_size"]) for d in r["decode"]] == [("naive", 1), ("eager", 1), ("naive", 4), ("eager", 4)]
    assert all(d["tokens_per_s"] > 0 for d in r["decode"])
    assert r["tokens_match"] is True  # the KV cache decodes the hybrid like the no-cache loop
    # two keys of 8 and one value of 16 per kv head (2 kv heads), 5 layers, fp32
    assert r["kv_bytes_per_position"] == 5 * 2 * (2 * 8 + 16) * 4
    # batch 1 reads 2 of each layer's 8 experts, batch 4 can reach all 8
    b1, b4 = (d["bytes_per_step"] for d in r["decode"] if d["mode"] == "eager")
    assert r["weight_bytes_per_step"] < b1 < b4


def test_bench_infer_variant_with_only_fast_modes_is_a_one_line_error():
    proc = run("scripts.bench_infer", *VARIANT, "--modes", "static")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and "nothing left to measure" in lines[0], proc.stderr


@pytest.mark.parametrize("module,flags,message", [
    ("scripts.bench_train", ["--variant", "v03"], "drop --depth"),
    ("scripts.bench_infer", ["--prompt_lengths", "5000"], "rotary table"),
    ("scripts.bench_train", ["--model_dim", "100"], "head_dim"),
])
def test_bad_flags_one_line_error(module, flags, message):
    proc = run(module, *TINY, *flags)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], proc.stderr


def test_bandwidth_table():
    assert lookup_bandwidth("NVIDIA H100 80GB HBM3") == 3.35e12
    assert lookup_bandwidth("NVIDIA H100 PCIe") == 2.0e12
    assert lookup_bandwidth("NVIDIA H200") == 4.8e12
    assert lookup_bandwidth("NVIDIA A100-SXM4-40GB") == 1.555e12
    assert lookup_bandwidth("NVIDIA A100-SXM4-80GB") == 2.039e12
    assert lookup_bandwidth("NVIDIA A100 80GB PCIe") == 1.935e12
    assert lookup_bandwidth("NVIDIA GeForce RTX 3090") == 0.936e12
    assert lookup_bandwidth("NVIDIA GeForce RTX 3090 Ti") == 1.008e12
    assert lookup_bandwidth("NVIDIA GeForce RTX 4090") == 1.008e12
    assert lookup_bandwidth("NVIDIA L4") == 0.3e12
    assert lookup_bandwidth("NVIDIA A10G") == 0.6e12
    assert lookup_bandwidth("NVIDIA L40S") == 0.864e12
    assert lookup_bandwidth("Some Future GPU") is None
