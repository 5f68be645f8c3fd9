#!/usr/bin/env bash
# Curriculum training on a CPU, in about 2 minutes on 2 cores: warm-start the ittybitty base model
# (made by `bash ittybitty.sh`), train it through the 3 short phases of dev/curriculum_cpu.json on
# built-in data (generated exercises with a rising difficulty, the built-in corpus) and the demo
# transcripts in dev/demo_personal/ as "personal" data, the middle layers at 0.2x the learning
# rate; then plot the run with its phases shaded.
#
#   bash ittybitty.sh && bash dev/curriculum_demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export NANOCHAT_BASE_DIR="${NANOCHAT_BASE_DIR:-$HOME/.cache/nanochat}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(python -c 'import os; print(len(os.sched_getaffinity(0)))')}"
T_START=$SECONDS
if [ ! -d "$NANOCHAT_BASE_DIR/base_checkpoints/ittybitty" ]; then
    echo "curriculum_demo: no ittybitty base model in $NANOCHAT_BASE_DIR: run 'bash ittybitty.sh' first" >&2
    exit 1
fi

echo "=== the demo transcripts -> training samples"
python -m scripts.process_transcripts dev/demo_personal --out "$NANOCHAT_BASE_DIR/personal/demo_transcripts.jsonl"

echo "=== curriculum: 3 phases, 180 steps (+$((SECONDS - T_START))s)"
python -m scripts.curriculum_train --config dev/curriculum_cpu.json --source base --model_tag ittybitty --output_tag demo \
    --personal "$NANOCHAT_BASE_DIR/personal/demo_transcripts.jsonl" --data builtin --layer_lr 1-2:0.2 \
    --device_batch_size 16 --max_seq_len 256 --eval_every 60 --eval_tokens 32768 --device_type cpu

echo "=== the plot (+$((SECONDS - T_START))s)"
if python -c "import matplotlib" 2>/dev/null; then
    python -m scripts.plot_training curriculum/demo
else
    echo "curriculum_demo: matplotlib is not installed (pip install matplotlib): no plot; the numbers are in" \
         "$NANOCHAT_BASE_DIR/curriculum_checkpoints/demo/metrics.jsonl"
fi
echo "curriculum_demo: done in $((SECONDS - T_START))s"
