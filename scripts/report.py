"""
The report card of a pipeline run: $NANOCHAT_BASE_DIR/report/report.md.

    python -m scripts.report --reset                  # at the start of a pipeline: clear the sections, note the start
    python -m scripts.report                          # at its end: system, every stage's section, a summary table
    python -m scripts.report --gpu_hourly_cost 2.49   # ... and what the run cost at that price per hour

Each stage (tok_train, tok_eval, base_train, base_loss, base_eval, mid_train, chat_sft, chat_rl,
chat_eval) writes its own section to the folder when it finishes (nanochat.report); this script
only clears the folder or puts the sections together.
"""
import math

from nanochat.common import ArgumentParser, die, print0

# -----------------------------------------------------------------------------
# settings
parser = ArgumentParser(prog="python -m scripts.report", description=(
    "Write $NANOCHAT_BASE_DIR/report/report.md from the sections the stages wrote there (or, with --reset, clear them)."))
parser.add_argument("--reset", action="store_true", help="clear the report folder and note the start time and the machine")
parser.add_argument("--gpu_hourly_cost", type=float, default=None, metavar="DOLLARS",
                    help="price of the machine per hour (all its GPUs): the report adds wall hours x this")
args = parser.parse_args()
if args.gpu_hourly_cost is not None and not (math.isfinite(args.gpu_hourly_cost) and args.gpu_hourly_cost >= 0):
    die(f"--gpu_hourly_cost must be a price of 0 or more dollars per hour, got {args.gpu_hourly_cost}")
if args.reset and args.gpu_hourly_cost is not None:
    die("--gpu_hourly_cost goes with writing the report, not with --reset")

# -----------------------------------------------------------------------------
# work
from nanochat import report

try:
    if args.reset:
        path = report.reset()
        print0(f"report reset: {path} (the start time); the stages add their sections as they finish")
    else:
        path = report.generate(args.gpu_hourly_cost)
        print0(f"report: {path}")
except OSError as e:
    die(f"cannot write the report in {report.get_report_dir()}: {e}")
