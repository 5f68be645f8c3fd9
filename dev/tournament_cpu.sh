#!/usr/bin/env bash
# The ten-contestant tournament, shrunk for a CPU (--scale tiny: widths / 8, layers / 4), on the
# built-in corpus: 100 steps each, the top 5 get 200 more, the top 3 get 400 more. Needs the
# built-in corpus and a tokenizer (ittybitty.sh makes both). Results, the plot and the winner in
# $NANOCHAT_BASE_DIR/tournament/cpu_tiny/; run it again after a kill and it continues.
#
#   bash ittybitty.sh && bash dev/tournament_cpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export NANOCHAT_BASE_DIR="${NANOCHAT_BASE_DIR:-$HOME/.cache/nanochat}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(python -c 'import os; print(len(os.sched_getaffinity(0)))')}"
T_START=$SECONDS
python -m scripts.tournament --name cpu_tiny --scale tiny --rounds 100:5,200:3,400:1 --max_seq_len 256 \
    --device_batch_size 8 --data builtin --eval_tokens 65536 --log_every 50 --device_type cpu --winner_tag tournament_tiny "$@"
echo "tournament_cpu: done in $((SECONDS - T_START))s: $NANOCHAT_BASE_DIR/tournament/cpu_tiny/results.md"
