"""
The CORE metric of a base model (DCLM's in-context-learning tasks, as nanochat reports it).

    python -m scripts.base_eval                           # the latest base model, all 22 tasks
    python -m scripts.base_eval --max_per_task 100        # a quick look: 100 examples per task
    python -m scripts.base_eval -g d4 -s 2000 --tasks hellaswag_zeroshot,arc_easy
    torchrun --nproc_per_node 8 -m scripts.base_eval      # examples split over the GPUs

The first run downloads the eval bundle (nanochat's eval_bundle.zip) and unpacks it to
$NANOCHAT_BASE_DIR/eval_bundle/ (offline: put eval_bundle.zip in $NANOCHAT_BASE_DIR). Prints each
task's accuracy and centered accuracy, then CORE, the mean of the centered accuracies, and writes
them to $NANOCHAT_BASE_DIR/base_eval/<source>_<tag>_<step>.json and .csv (nanochat's CSV layout);
a partial run (--max_per_task, --tasks) adds _max<N> / _subset to the name.
"""
import csv
import io
import json
import os
import time

from nanochat.checkpoint_manager import _atomic_write, find_model_tag, get_checkpoints_dir, load_model
from nanochat.common import ArgumentParser, UserError, autocast_ctx, compute_cleanup, compute_init, die, get_base_dir, get_compute_dtype, print0
from nanochat.core_eval import EVAL_BUNDLE_URL, core_metric, ensure_bundle, evaluate_core, load_bundle, select_tasks
from nanochat.flags import add_device_args, add_model_source_args, add_precision_args
from nanochat import report

# -----------------------------------------------------------------------------
# settings
parser = ArgumentParser(prog="python -m scripts.base_eval", description=(
    "Evaluate the CORE metric of a model: accuracy on the eval bundle's multiple-choice, schema and language-modeling "
    "tasks, centered against random guessing, and their mean. Results: $NANOCHAT_BASE_DIR/base_eval/"
    "<source>_<tag>_<step>.json and .csv (_max<N> / _subset added for partial runs)."))
add_model_source_args(parser, source="base")
parser.add_argument("--max_per_task", type=int, default=-1, help="at most this many examples per task, for a quick look (-1: all)")
parser.add_argument("--tasks", type=str, default="", help="comma-separated task labels of core.yaml (default: all)")
parser.add_argument("--batch_tokens", type=int, default=8192,
                    help="padded tokens per forward pass (default 8192; the logits take batch_tokens x vocab entries: lower it if out of memory)")
parser.add_argument("--bundle_url", type=str, default=EVAL_BUNDLE_URL, help="where to download the eval bundle from (default: nanochat's)")
parser.add_argument("--out", type=str, default="", help="write the results to this .json (and the .csv beside it) instead")
add_precision_args(parser, optimizer=False)
add_device_args(parser)
args = parser.parse_args()
if args.batch_tokens <= 0:
    die(f"--batch_tokens must be positive, got {args.batch_tokens}")
if args.max_per_task == 0 or args.max_per_task < -1:
    die(f"--max_per_task must be positive (or -1 for all), got {args.max_per_task}")

# -----------------------------------------------------------------------------
# setup
try:
    ddp, rank, _, world_size, device = compute_init(args.device_type)
    base_dir = get_base_dir()
    tasks = select_tasks(load_bundle(ensure_bundle(base_dir, args.bundle_url)), args.tasks)
    model_tag = args.model_tag or find_model_tag(get_checkpoints_dir(args.source))
    model, tokenizer, meta = load_model(args.source, device, phase="eval", model_tag=model_tag, step=args.step)
    dtype = get_compute_dtype(device.type, args.precision)
except UserError as e:
    die(str(e))
step = meta["step"]
print0(f"CORE of {args.source}/{model_tag} step {step}: {len(tasks)} tasks on {world_size} x {device.type}, {str(dtype).removeprefix('torch.')}"
       + (f", at most {args.max_per_task} examples each" if args.max_per_task > 0 else ""))

# -----------------------------------------------------------------------------
# evaluation
t0 = time.time()
try:
    with autocast_ctx(device.type, dtype):
        results = evaluate_core(model, tokenizer, tasks, device, args.max_per_task, args.batch_tokens)
except UserError as e:
    die(str(e))
core = core_metric(results)

# -----------------------------------------------------------------------------
# report
print0("")
print0(f"{'task':<34} {'type':<18} {'shots':>5} {'n':>6} {'accuracy':>9} {'centered':>9}")
for r in results:
    print0(f"{r['label']:<34} {r['type']:<18} {r['shots']:>5} {r['examples']:>6} {r['accuracy']:>9.4f} {r['centered']:>9.4f}")
partial = args.max_per_task > 0 or bool(args.tasks)
print0(f"{'CORE' + (' (partial)' if partial else ''):<34} {'':<18} {'':>5} {'':>6} {'':>9} {core:>9.4f}")
if rank == 0:
    # a partial run gets its own name, so a quick look never replaces the full result a report reads
    name = f"{args.source}_{model_tag}_{step:06d}" + (f"_max{args.max_per_task}" if args.max_per_task > 0 else "") + ("_subset" if args.tasks else "")
    out = args.out or os.path.join(base_dir, "base_eval", name + ".json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    summary = {"source": args.source, "model_tag": model_tag, "step": step, "core": core, "complete": not partial,
               "max_per_task": args.max_per_task, "world_size": world_size, "dtype": str(dtype).removeprefix("torch."),
               "seconds": round(time.time() - t0, 1), "tasks": results}
    _atomic_write(out, lambda f: f.write((json.dumps(summary, indent=2) + "\n").encode()))
    table = io.StringIO()
    w = csv.writer(table)
    w.writerow(["Task", "Accuracy", "Centered"])
    w.writerows([r["label"], f"{r['accuracy']:.6f}", f"{r['centered']:.6f}"] for r in results)
    w.writerow(["CORE", "", f"{core:.6f}"])
    _atomic_write(os.path.splitext(out)[0] + ".csv", lambda f: f.write(table.getvalue().encode()))
    print0(f"results: {out} (and .csv)")
    report.append_section("base_eval", phase=args.source, settings=vars(args), device=device,
                          metrics={"model": f"{args.source}/{model_tag} step {step}", "CORE": core, "tasks": len(results),
                                   "complete": not partial, "evaluation time (s)": summary["seconds"], "results": out},
                          tables=[("CORE tasks", ["task", "type", "shots", "n", "accuracy", "centered"],
                                   [[r["label"], r["type"], r["shots"], r["examples"], r["accuracy"], r["centered"]] for r in results])],
                          summary={"CORE" if not partial else "CORE (partial)": core})
compute_cleanup()
