"""
dev/gpu_check.sh: the dry run (every part at toy sizes on the CPU) passes in under two minutes and
its summary.json holds every part with positive numbers; the summary records failures and timeouts;
the pytest plugin keeps exactly the CUDA-marked tests; without a GPU the real run refuses.
"""
import json
import math
import os
import subprocess
import sys
import time

import pytest
import torch

from helpers import ROOT

SCRIPT = os.path.join(ROOT, "dev", "gpu_check.sh")
PARTS = ["cuda_tests", "train_d12_eager", "train_d12_compile", "train_hamner_eager", "train_hamner_compile",
         "infer_hamner", "vram_d12_bf16", "vram_d12_bf16_ckpt", "vram_hamner_fp16", "vram_d4_bf16_compile", "vram_diffattn", "vram_moe", "corpus", "tokenizer", "base_train", "chat_sft"]
CUDA_ONLY = {"train_d12_compile", "train_hamner_compile"}  # skipped in the dry run, with the reason


def script_env(tmp_path, **extra):
    env = dict(os.environ, **extra)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")  # `python` is this Python
    # the user's own base dir must not be touched; and nothing may go to the network
    env["NANOCHAT_BASE_DIR"] = str(tmp_path / "users_base_dir")
    env.update(HTTP_PROXY="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9", NO_PROXY="")
    return env


def positive(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.mark.slow
def test_dry_run(tmp_path):
    out = tmp_path / "out"
    t0 = time.time()
    p = subprocess.run(["bash", SCRIPT, "--dry_run"], cwd=ROOT, env=script_env(tmp_path, OUT=str(out)),
                       capture_output=True, text=True, timeout=300)
    elapsed = time.time() - t0
    assert p.returncode == 0, p.stdout[-5000:] + p.stderr[-5000:]
    assert elapsed < 120, f"the dry run took {elapsed:.0f} s"
    assert not (tmp_path / "users_base_dir").exists()
    assert (out / "gpu_check.log").read_text().strip()

    s = json.loads((out / "summary.json").read_text())
    assert s["dry_run"] is True and s["ok"] is True and s["device"] == "cpu" and 0 < s["wall_s"] < 120
    assert list(s["parts"]) == PARTS
    for name, part in s["parts"].items():
        if name in CUDA_ONLY:
            assert part["status"] == "skipped" and "compile" in part["reason"], (name, part)
        else:
            assert part["status"] == "ok", (name, part)
            assert (out / "parts" / f"{name}.cmd").read_text().startswith("python -m "), name
            assert 0 < part["seconds"] <= part["limit_s"], (name, part)
    parts = {name: p.get("numbers", {}) for name, p in s["parts"].items()}

    # (a) the CUDA tests are found, and skip without a GPU
    t = parts["cuda_tests"]
    assert t["tests"] >= 1 and t["skipped"] == t["tests"] and t["failures"] == t["errors"] == 0
    assert all("CUDA" in r for r in t["skip_reasons"])

    # (b) training throughput
    for name in ("train_d12_eager", "train_hamner_eager"):
        n = parts[name]
        assert positive(n["tokens_per_s"]) and positive(n["step_ms_median"]) and positive(n["final_loss"]), n
        assert positive(n["peak_memory_gib"]["process_rss"]) and n["mfu"] is None  # no peak FLOPs for a CPU
        assert n["precision"] == "float32" and n["compile"] is False
    assert parts["train_hamner_eager"]["num_params"] != parts["train_d12_eager"]["num_params"]

    # (c) decode and TTFT: eager and the static step measured, graph and compile skipped with a reason
    n = parts["infer_hamner"]
    assert set(n["decode_batch1"]) == {"eager", "static"} and n["ttft_prompt_len"] == 512
    for mode in ("eager", "static"):
        assert positive(n["decode_batch1"][mode]["tokens_per_s"]) and positive(n["ttft_ms"][mode])
    assert n["tokens_match"] is True
    skipped = s["parts"]["infer_hamner"]["skipped_modes"]
    assert set(skipped) == {"graph", "compile"} and "CUDA" in skipped["graph"]

    # (d) the VRAM estimate for at least 8 configurations, among them differential attention and MoE
    vram = {name: n for name, n in parts.items() if name.startswith("vram_")}
    assert sum(len(n["batches"]) for n in vram.values()) >= 8
    for name, n in vram.items():
        assert all(positive(b["estimate_gib"]) and b["measured_gib"] is None for b in n["batches"].values()), n
        assert "CUDA" in s["parts"][name]["skipped_modes"]["measure"]
    assert vram["vram_diffattn"]["attn"] == "diff" and vram["vram_moe"]["moe_experts"] > 0
    assert {n["precision"] for n in vram.values()} == {"bf16", "fp16"}
    assert {n["grad_checkpoint"] for n in vram.values()} == {True, False} == {n["compile"] for n in vram.values()}

    # (e) the pipeline
    assert positive(parts["corpus"]["chars"]) and parts["tokenizer"]["vocab_size"] == 512
    for name, val in (("base_train", "val_bpb"), ("chat_sft", "val_loss")):
        n = parts[name]
        assert n["steps"] == 10 and positive(n["tokens_per_s"]), n
        assert positive(n["first_train_loss"]) and positive(n["final_train_loss"])
        assert positive(n[f"first_{val}"]) and positive(n[f"final_{val}"])
    assert "chat_sft" in p.stdout and "gpu_check:" in p.stdout  # the human summary


def write_part(parts, name, cmd, status=None, out="", log="", skipped=None):
    (parts / f"{name}.cmd").write_text(cmd)
    with open(parts / "order.txt", "a") as f:
        f.write(name + "\n")
    if skipped is not None:
        (parts / f"{name}.skipped").write_text(skipped)
        return
    if status is not None:
        (parts / f"{name}.status").write_text(status)
    (parts / f"{name}.out").write_text(out)
    (parts / f"{name}.log").write_text(log)


def test_summary_records_ok_failed_timeout_skipped(tmp_path):
    """GPU-shaped results (MFU, measured memory, an out-of-memory batch) and the failure statuses, without a GPU."""
    parts = tmp_path / "parts"
    parts.mkdir()
    (tmp_path / "run.json").write_text(json.dumps({"dry_run": False, "device": "NVIDIA H100 80GB HBM3"}))
    train = {"device": "NVIDIA H100 80GB HBM3", "num_params": 10, "tokens_per_s": 1.5e6, "mfu": 0.52, "step_ms_median": 21.0,
             "warmup_s": 40.0, "peak_memory": {"allocated": 30 * 2**30, "reserved": 32 * 2**30}, "final_loss": 10.4,
             "settings": {"precision": "bfloat16", "compile": True, "device_batch_size": 16, "max_seq_len": 2048}}
    write_part(parts, "train", "python -m scripts.bench_train --compile --json", "0 50.5 60", "log line\n" + json.dumps(train))
    vram = {"config": {"n_layer": 12, "n_embd": 768, "attn": "standard", "moe_experts": 0}, "params": {"total": 2e8},
            "seq_len": 2048, "precision": "bf16", "grad_checkpoint": False, "compile": False, "measured_cuda_context": 2**29,
            "batches": [{"batch_size": 4, "reserved": 10 * 2**30, "measured_reserved": 10.5 * 2**30, "error_pct": -4.8,
                         "peak_phase": "backward_block"},
                        {"batch_size": 64, "reserved": 90 * 2**30, "measured_reserved": None, "peak_phase": "forward_loss"}]}
    write_part(parts, "vram", "python -m scripts.vram_calc --measure --json", "0 9.0 15", json.dumps(vram))
    write_part(parts, "broken", "python -m scripts.bench_infer --json", "1 3.0 50", "", "Traceback\nerror: it broke\n")
    write_part(parts, "hung", "python -m scripts.base_train", "124 40.0 40", "step 1\n", "")
    write_part(parts, "garbled", "python -m scripts.bench_train --json", "0 2.0 20", "not json")
    write_part(parts, "later", "", skipped="not run: the 480 s budget is spent")
    p = subprocess.run([sys.executable, os.path.join(ROOT, "dev", "gpu_check.py"), "summarize", str(tmp_path)],
                       capture_output=True, text=True)
    assert p.returncode == 1, p.stdout + p.stderr
    s = json.loads((tmp_path / "summary.json").read_text())
    st = {name: part["status"] for name, part in s["parts"].items()}
    assert st == {"train": "ok", "vram": "ok", "broken": "failed", "hung": "timeout", "garbled": "failed", "later": "skipped"}
    assert s["counts"] == {"ok": 2, "skipped": 1, "failed": 2, "timeout": 1} and s["ok"] is False
    t = s["parts"]["train"]["numbers"]
    assert t["mfu"] == 0.52 and t["peak_memory_gib"] == {"allocated": 30.0, "reserved": 32.0}
    v = s["parts"]["vram"]["numbers"]
    assert v["batches"]["4"]["measured_gib"] == 10.5 and v["max_abs_error_pct"] == 4.8
    assert v["batches"]["64"]["out_of_memory"] is True and not v["batches"]["4"]["out_of_memory"]
    assert "error: it broke" in s["parts"]["broken"]["log_tail"] and s["parts"]["broken"]["rc"] == 1
    assert "40 s limit" in s["parts"]["hung"]["reason"] and "step 1" in s["parts"]["hung"]["out_tail"]
    assert "do not parse" in s["parts"]["garbled"]["reason"]
    assert "MFU 52.0%" in p.stdout and "out of memory" in p.stdout and "-4.8%" in p.stdout


def test_pytest_plugin_keeps_the_cuda_tests(tmp_path):
    (tmp_path / "test_marks.py").write_text(
        "import pytest\n"
        "needs_cuda = pytest.mark.skipif(True, reason='needs a CUDA GPU')\n"
        "@pytest.mark.cuda\n"
        "def test_marked(): pass\n"
        "@needs_cuda\n"
        "def test_skip_marker(): pass\n"
        "@pytest.mark.skipif(True, reason='no Chromium')\n"
        "def test_other_skip(): pass\n"
        "def test_cuda_in_the_name_only(): pass\n")
    p = subprocess.run([sys.executable, "-m", "pytest", "-p", "dev.gpu_check", "-p", "no:cacheprovider", "--collect-only", "-q",
                        "--rootdir", str(tmp_path), str(tmp_path / "test_marks.py")], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    collected = [line.split("::")[-1] for line in p.stdout.splitlines() if "::" in line]
    assert collected == ["test_marked", "test_skip_marker"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="there is a GPU: the real run would run")
def test_real_run_without_a_gpu_refuses(tmp_path):
    p = subprocess.run(["bash", SCRIPT], cwd=ROOT, env=script_env(tmp_path, OUT=str(tmp_path / "out")),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert "no CUDA GPU" in p.stdout + p.stderr and "--dry_run" in p.stdout + p.stderr
