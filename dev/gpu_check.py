"""
The Python half of dev/gpu_check.sh (which runs every part; read it first). Two jobs, no torch import:

1. A pytest plugin that keeps only the CUDA tests:

       python -m pytest -p dev.gpu_check tests

   selects the tests marked `@pytest.mark.cuda` or carrying a skipif whose reason names CUDA
   (`needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")`), whatever their name
   or file; on a machine without a GPU they are all collected and skipped.

2. The summary:

       python dev/gpu_check.py summarize OUT

   reads what gpu_check.sh left in OUT/parts (per part NAME: NAME.cmd the command, NAME.status
   "rc seconds limit_s", NAME.out its stdout, NAME.log its stderr, NAME.skipped a reason for not
   running it, NAME.notes lines "what<TAB>why" for the modes it left out, NAME.xml / NAME.metrics.jsonl
   results), parses each part's key numbers, writes OUT/summary.json and prints one line per part.
   Exit status 0 when every part is ok or skipped, 1 otherwise.

3. What the run is on, for OUT/run.json: python dev/gpu_check.py meta DRY_RUN BUDGET_S STARTED
"""
import json
import os
import re
import sys
import time
import xml.etree.ElementTree as ET

GiB = 2 ** 30
TAIL_LINES = 25  # of a failed part's log, in summary.json


# -----------------------------------------------------------------------------
# 1. pytest plugin: only the CUDA tests

def is_cuda_test(item):
    for mark in item.iter_markers():
        if mark.name == "cuda":
            return True
        if mark.name == "skipif" and "cuda" in str(mark.kwargs.get("reason", "")).lower():
            return True
    return False


def pytest_collection_modifyitems(config, items):
    keep = [item for item in items if is_cuda_test(item)]
    dropped = [item for item in items if not is_cuda_test(item)]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
    items[:] = keep


# -----------------------------------------------------------------------------
# 2. the summary: numbers of each kind of part

def gib(n):
    return None if n is None else round(n / GiB, 3)


def junit_numbers(part_dir, name):
    """Counts from the junit XML, and the names of the tests that failed."""
    path = os.path.join(part_dir, name + ".xml")
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    n = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    n["passed"] = n["tests"] - n["failures"] - n["errors"] - n["skipped"]
    failed = [f"{case.get('classname')}::{case.get('name')}" for s in suites for case in s.iter("testcase")
              if case.find("failure") is not None or case.find("error") is not None]
    skip_reasons = sorted({(case.find("skipped").get("message") or "") for s in suites for case in s.iter("testcase")
                           if case.find("skipped") is not None})
    return {**n, "failed_tests": failed, "skip_reasons": skip_reasons}


def read_json_stdout(part_dir, name):
    """The one JSON object a --json tool printed (the last line that parses, should anything precede it)."""
    with open(os.path.join(part_dir, name + ".out"), encoding="utf-8") as f:
        lines = [line for line in f.read().splitlines() if line.strip().startswith("{")]
    for line in reversed(lines):
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            continue
    raise ValueError("no JSON object on stdout")


def bench_train_numbers(r):
    s = r["settings"]
    return {"device": r["device"], "num_params": r["num_params"], "precision": s["precision"], "compile": s["compile"],
            "batch": f"{s['device_batch_size']} x {s['max_seq_len']}", "tokens_per_s": r["tokens_per_s"],
            "mfu": r["mfu"], "step_ms_median": r["step_ms_median"], "warmup_s": r["warmup_s"],
            "peak_memory_gib": {k: gib(v) for k, v in r["peak_memory"].items()}, "final_loss": r["final_loss"]}


def bench_infer_numbers(r):
    decode = {row["mode"]: {"tokens_per_s": row["tokens_per_s"], "ms_per_step": row["ms_per_step"],
                            "bandwidth_fraction": row["bandwidth_fraction"], "bandwidth_GBps": row["bandwidth_GBps"]}
              for row in r["decode"] if row["batch_size"] == 1}
    longest = max(row["prompt_len"] for row in r["ttft"])
    ttft = {row["mode"]: row["ms"] for row in r["ttft"] if row["prompt_len"] == longest}
    return {"device": r["device"], "num_params": r["num_params"], "precision": r["precision"],
            "decode_batch1": decode, "ttft_prompt_len": longest, "ttft_ms": ttft, "tokens_match": r["tokens_match"],
            "peak_memory_gib": {k: gib(v) for k, v in r["peak_memory"].items()}}, r.get("skipped") or {}


def vram_numbers(r):
    batches = {}
    for row in r["batches"]:
        batches[str(row["batch_size"])] = {"estimate_gib": gib(row["reserved"]),
                                           "measured_gib": gib(row.get("measured_reserved")),
                                           "error_pct": row.get("error_pct"), "peak_phase": row["peak_phase"],
                                           # --measure ran but the batch did not fit the card
                                           "out_of_memory": "measured_reserved" in row and row["measured_reserved"] is None}
    errors = [abs(b["error_pct"]) for b in batches.values() if b["error_pct"] is not None]
    c = r["config"]
    return {"params_M": round(r["params"]["total"] / 1e6, 2), "layers": c["n_layer"], "width": c["n_embd"],
            "attn": c["attn"], "moe_experts": c["moe_experts"], "seq_len": r["seq_len"], "precision": r["precision"],
            "grad_checkpoint": r["grad_checkpoint"], "compile": r["compile"], "batches": batches,
            "max_abs_error_pct": max(errors) if errors else None,
            "measured_cuda_context_gib": gib(r.get("measured_cuda_context"))}


def training_numbers(part_dir, name):
    """From the run's metrics.jsonl (nanochat.metrics): steps, losses, throughput, evaluations."""
    rows = []
    with open(os.path.join(part_dir, name + ".metrics.jsonl"), encoding="utf-8") as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    train = [r for r in rows if r.get("kind") == "train"]
    evals = [r for r in rows if r.get("kind") == "eval"]
    if not train:
        raise ValueError("no training rows in metrics.jsonl")
    later = [r["tok_per_sec"] for r in train[len(train) // 2:] if r.get("tok_per_sec")]  # past the first steps' warm-up
    mfus = [r["mfu"] for r in train[len(train) // 2:] if r.get("mfu") is not None]
    out = {"steps": train[-1]["step"], "tokens": train[-1]["tokens"], "first_train_loss": train[0]["train_loss"],
           "final_train_loss": train[-1]["train_loss"],
           "tokens_per_s": sorted(later)[len(later) // 2] if later else None,
           "mfu": sorted(mfus)[len(mfus) // 2] if mfus else None}
    for key in ("val_bpb", "val_loss"):
        vals = [r[key] for r in evals if key in r]
        if vals:
            out[f"first_{key}"], out[f"final_{key}"] = vals[0], vals[-1]
    return out


def part_numbers(part_dir, name, command):
    """(numbers, skipped modes) of a part that exited 0, by the program it ran."""
    if "pytest" in command:
        return junit_numbers(part_dir, name), {}
    if "scripts.bench_train" in command:
        return bench_train_numbers(read_json_stdout(part_dir, name)), {}
    if "scripts.bench_infer" in command:
        return bench_infer_numbers(read_json_stdout(part_dir, name))
    if "scripts.vram_calc" in command:
        return vram_numbers(read_json_stdout(part_dir, name)), {}
    if "scripts.base_train" in command or "scripts.chat_sft" in command:
        return training_numbers(part_dir, name), {}
    if "nanochat.dataset" in command or "scripts.tok_train" in command:
        return text_numbers(read(os.path.join(part_dir, name + ".out"), "")), {}
    return {}, {}


def text_numbers(text):
    """The corpus (shards, documents, characters) and the tokenizer (characters trained on) from what they print."""
    n = {}
    if m := re.search(r"wrote (\d+) shards, ([\d,]+) docs, ([\d,]+) chars", text):
        n.update(shards=int(m[1]), docs=int(m[2].replace(",", "")), chars=int(m[3].replace(",", "")))
    if m := re.search(r"training a (\d+)-token tokenizer", text):
        n["vocab_size"] = int(m[1])
    if m := re.search(r"trained on ([\d,]+) characters in ([\d.]+)s", text):
        n.update(trained_chars=int(m[1].replace(",", "")), train_s=float(m[2]))
    if not n:
        raise ValueError("none of the expected lines in its output")
    return n


def read(path, default=None):
    if not os.path.exists(path):
        return default
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def tails(part_dir, name):
    """What a failed part said last: its stderr (log_tail) and its stdout (out_tail), long lines cut."""
    out = {}
    for key, ext, n in (("log_tail", ".log", TAIL_LINES), ("out_tail", ".out", 10)):
        lines = (read(os.path.join(part_dir, name + ext), "") or "").rstrip().splitlines()[-n:]
        if lines:
            out[key] = "\n".join(line if len(line) <= 300 else line[:300] + " ..." for line in lines)
    return out


def summarize_part(part_dir, name):
    p = {"status": None, "seconds": 0.0, "limit_s": None, "command": (read(os.path.join(part_dir, name + ".cmd"), "") or "").strip()}
    skipped = read(os.path.join(part_dir, name + ".skipped"))
    if skipped is not None:
        p.update(status="skipped", reason=skipped.strip())
        return p
    status = read(os.path.join(part_dir, name + ".status"))
    if status is None:  # the script was killed while this part ran
        p.update(status="failed", reason="no status recorded (gpu_check.sh was interrupted)", **tails(part_dir, name))
        return p
    rc, seconds, limit = status.split()
    p.update(rc=int(rc), seconds=round(float(seconds), 2), limit_s=int(limit), log=name + ".log")
    notes = {}
    for line in (read(os.path.join(part_dir, name + ".notes"), "") or "").splitlines():
        if "\t" in line:
            what, why = line.split("\t", 1)
            notes[what] = why
    if p["rc"] in (124, 137):  # timeout's status (137: still alive after the grace period, killed)
        p.update(status="timeout", reason=f"over its {limit} s limit", **tails(part_dir, name))
    elif p["rc"] != 0:
        p.update(status="failed", reason=f"exit status {p['rc']}", **tails(part_dir, name))
    else:
        try:
            numbers, skipped_modes = part_numbers(part_dir, name, p["command"])
            p.update(status="ok", numbers=numbers)
            notes.update(skipped_modes)
        except (OSError, ValueError, KeyError, TypeError, ET.ParseError) as e:
            p.update(status="failed", reason=f"exit status 0 but its results do not parse: {type(e).__name__}: {e}",
                     **tails(part_dir, name))
    if notes:
        p["skipped_modes"] = notes
    return p


# -----------------------------------------------------------------------------
# the human summary: one line per part

def fmt(x, spec=",.0f", unit=""):
    if x is None:
        return "n/a"
    return f"{x:{spec}}{unit}"


def pct(x):
    return "n/a" if x is None else f"{100 * x:.1f}%"


def one_line(name, p):
    n = p.get("numbers") or {}
    if p["status"] != "ok":
        last = (p.get("log_tail") or p.get("out_tail") or "").splitlines()[-1:]
        return p.get("reason", "") + (f": {last[0][:160]}" if last else "")
    if "tests" in n:
        return f"{n['tests']} tests: {n['passed']} passed, {n['skipped']} skipped, {n['failures'] + n['errors']} failed"
    if "tokens_per_s" in n and "batch" in n:
        mem = n["peak_memory_gib"]
        peak = mem.get("reserved", mem.get("process_rss"))
        return (f"{fmt(n['tokens_per_s'])} tok/s | MFU {pct(n['mfu'])} | step {fmt(n['step_ms_median'], '.1f', ' ms')} | "
                f"peak {fmt(peak, '.2f', ' GiB')} | {n['precision']}, batch {n['batch']}, warm-up {n['warmup_s']:.0f} s")
    if "decode_batch1" in n:
        parts = [f"{m} {fmt(d['tokens_per_s'])} tok/s (bw {pct(d['bandwidth_fraction'])})" for m, d in n["decode_batch1"].items()]
        ttft = ", ".join(f"{m} {v:.1f} ms" for m, v in n["ttft_ms"].items())
        return f"batch 1: {'; '.join(parts)} | TTFT({n['ttft_prompt_len']}): {ttft}"
    if "batches" in n:
        rows = []
        for b, r in n["batches"].items():
            meas = "out of memory" if r["out_of_memory"] else "not measured" if r["measured_gib"] is None else f"measured {r['measured_gib']:.2f}"
            err = "" if r["error_pct"] is None else f" ({r['error_pct']:+.1f}%)"
            rows.append(f"B={b}: est {r['estimate_gib']:.2f} GiB, {meas}{err}")
        return "; ".join(rows)
    if "steps" in n:
        val = next((f"{k.removeprefix('final_')} {n['first_' + k.removeprefix('final_')]:.3f} -> {n[k]:.3f}"
                    for k in ("final_val_bpb", "final_val_loss") if k in n), "no eval")
        return (f"{n['steps']} steps | loss {n['first_train_loss']:.3f} -> {n['final_train_loss']:.3f} | {val} | "
                f"{fmt(n['tokens_per_s'])} tok/s | MFU {pct(n['mfu'])}")
    if "docs" in n:
        return f"{n['shards']} shards, {n['docs']:,} documents, {n['chars']:,} characters"
    if "trained_chars" in n:
        return f"{n.get('vocab_size', '?')} tokens, trained on {n['trained_chars']:,} characters in {n['train_s']:.1f} s"
    return ""


def summarize(out):
    part_dir = os.path.join(out, "parts")
    names = [line.strip() for line in (read(os.path.join(part_dir, "order.txt"), "") or "").splitlines() if line.strip()]
    meta = json.loads(read(os.path.join(out, "run.json"), "{}") or "{}")
    parts = {name: summarize_part(part_dir, name) for name in names}
    counts = {s: sum(p["status"] == s for p in parts.values()) for s in ("ok", "skipped", "failed", "timeout")}
    wall_s = round(time.time() - meta["started"], 1) if "started" in meta else None  # the parts and what runs between them
    summary = {**meta, "wall_s": wall_s, "seconds": round(sum(p["seconds"] for p in parts.values()), 1), "counts": counts,
               "ok": counts["failed"] == 0 and counts["timeout"] == 0, "parts": parts}
    with open(os.path.join(out, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")

    print()
    print(f"gpu_check {'(dry run) ' if meta.get('dry_run') else ''}on {meta.get('device', '?')}: "
          f"{counts['ok']} ok, {counts['skipped']} skipped, {counts['failed']} failed, {counts['timeout']} timed out, "
          f"{summary['seconds']:.0f} s of parts" + (f", {wall_s:.0f} s in all" if wall_s is not None else ""))
    width = max(len(n) for n in names) if names else 10
    said = set()  # a note said once (each vram part of the dry run has the same)
    for name, p in parts.items():
        print(f"  {p['status']:<8} {p['seconds']:6.1f}s  {name:<{width}}  {one_line(name, p)}")
        for what, why in (p.get("skipped_modes") or {}).items():
            if (what, why) not in said:
                said.add((what, why))
                print(f"  {'':<8} {'':>7}  {'':<{width}}    skipped {what}: {why}")
    print(f"summary: {os.path.join(out, 'summary.json')}")
    return 0 if summary["ok"] else 1


# -----------------------------------------------------------------------------
# what the run is on (gpu_check.sh writes it to OUT/run.json before the first part)

def meta(dry_run, budget_s, started):
    """The run's machine as JSON on stdout; exit status 1 when a real run finds no CUDA GPU."""
    import subprocess
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    info = {"dry_run": dry_run, "budget_s": budget_s, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "started": started,
            "commit": commit or None}
    if dry_run:  # the CPU: no need to import torch (a few seconds of the dry run's two minutes)
        from importlib.metadata import version
        info.update(device="cpu", torch=version("torch"))
    else:
        import torch  # also warms the page cache for the parts' own imports
        if not torch.cuda.is_available():
            return 1
        info.update(device=torch.cuda.get_device_name(), torch=torch.__version__, cuda=torch.version.cuda,
                    gpu_memory_gib=round(torch.cuda.get_device_properties(0).total_memory / GiB, 1))
    print(json.dumps(info))
    return 0


USAGE = """usage: python dev/gpu_check.py summarize OUT
       python dev/gpu_check.py meta DRY_RUN(0|1) BUDGET_S STARTED(epoch seconds)
       python -m pytest -p dev.gpu_check tests        (the CUDA tests only)"""

if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "summarize":
        sys.exit(summarize(sys.argv[2]))
    if len(sys.argv) == 5 and sys.argv[1] == "meta":
        sys.exit(meta(sys.argv[2] == "1", int(sys.argv[3]), float(sys.argv[4])))
    sys.exit(USAGE)
