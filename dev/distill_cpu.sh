#!/usr/bin/env bash
# Distillation on a CPU, on the built-in corpus: a small teacher (4 x 128, 1.8M parameters) trained
# first, then a smaller student (2 x 64, 0.6M) trained twice on the same tokens with the same seed:
# once distilled from the teacher, once without it (--kl_weight 0). Prints both students' val bpb
# and built-in exercise accuracy next to the teacher's and draws their retention curves to
# dev/distill_cpu.png. dev/distill_cpu.md holds the numbers of a run.
#
#   bash dev/distill_cpu.sh                       # ~15-25 min on 2 shared cores at nice 19
#
# Its own NANOCHAT_BASE_DIR (default ~/.cache/nanochat_distill_demo): the demo trains a tokenizer,
# which must not replace the one your models use. Run it again after a kill and it continues.
set -euo pipefail
cd "$(dirname "$0")/.."
export NANOCHAT_BASE_DIR="${DISTILL_DEMO_DIR:-$HOME/.cache/nanochat_distill_demo}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(python -c 'import os; print(len(os.sched_getaffinity(0)))')}"
T_START=$SECONDS
stage() { echo; echo "=== $1 (+$((SECONDS - T_START))s)"; }
STEPS="${STUDENT_STEPS:-150}"
COMMON="--max_seq_len 256 --device_batch_size 16 --total_batch_size 4096 --eval_tokens 65536 --data builtin --device_type cpu --log_every 25 --resume auto"
STUDENT="--n_layer 2 --model_dim 64 --head_dim 32 --num_iterations $STEPS --eval_every 50 --eval_exercises 100 --seed 42"

stage "built-in corpus and a 4,096-token tokenizer"
if [ ! -f "$NANOCHAT_BASE_DIR/tokenizer/tokenizer.pkl" ]; then
    python -m nanochat.dataset --builtin
    python -m scripts.tok_train --vocab_size 4096 --data builtin
fi

stage "teacher: 4 x 128, 200 steps"
python -m scripts.base_train --n_layer 4 --model_dim 128 --head_dim 32 --num_iterations 200 --eval_every 100 \
    --model_tag distill_teacher --sample_every 0 $COMMON

stage "student distilled from the teacher: 2 x 64, $STEPS steps"
python -m scripts.distill --teacher base/distill_teacher $STUDENT --kl_weight "${KL_WEIGHT:-0.9}" \
    --temperature "${TEMPERATURE:-1.0}" --output_tag distill_student $COMMON

stage "the same student without the teacher: the same tokens, the same seed"
python -m scripts.distill --teacher base/distill_teacher $STUDENT --kl_weight 0 --output_tag distill_baseline $COMMON

stage "results"
python - <<'PY'
import os
from nanochat.checkpoint_manager import get_checkpoints_dir
from nanochat.metrics import read_rows
for tag in ("distill_student", "distill_baseline"):
    rows = [r for r in read_rows(os.path.join(get_checkpoints_dir("base"), tag, "metrics.jsonl")) if r.get("kind") == "eval"]
    curve = ", ".join(f"{r['step']}: {r['val_bpb']:.4f}" for r in rows)
    last = rows[-1]
    print(f"{tag:<17} val bpb {last['val_bpb']:.4f} | exercises {last['exercise_acc']:.0%} | teacher {last['teacher_val_bpb']:.4f}, "
          f"{last['teacher_exercise_acc']:.0%} | val bpb by step: {curve}")
PY
if python -c "import matplotlib" 2>/dev/null; then
    python -m scripts.plot_training base/distill_student base/distill_baseline --out dev/distill_cpu.png
fi
echo "distill_cpu: done in $((SECONDS - T_START))s"
