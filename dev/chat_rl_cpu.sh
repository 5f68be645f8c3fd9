#!/usr/bin/env bash
# dev/chat_rl_cpu.sh: RL on a CPU in a few minutes (results and discussion: dev/chat_rl_cpu.md).
#
#   bash dev/chat_rl_cpu.sh
#
# A tiny chat model that gets subtraction partly right (SFT from an untrained 4 x 128 model on
# built-in exercises), its held-out accuracy, 100 steps of RL on subtraction, the accuracy again.
# Everything goes to its own base dir, $RL_DEMO_DIR (default /tmp/nanochat_chat_rl_cpu), so the
# tokenizer it trains never replaces yours.
set -euo pipefail
cd "$(dirname "$0")/.."
export NANOCHAT_BASE_DIR="${RL_DEMO_DIR:-/tmp/nanochat_chat_rl_cpu}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(python -c 'import os; print(len(os.sched_getaffinity(0)))')}"
T_START=$SECONDS
stage() { echo; echo "=== $1 (+$((SECONDS - T_START))s)"; }
CPU="--device_type cpu"

stage "built-in corpus and tokenizer (4,096 tokens)"
[ -d "$NANOCHAT_BASE_DIR/builtin_data" ] || python -m nanochat.dataset --builtin
[ -f "$NANOCHAT_BASE_DIR/tokenizer/tokenizer.pkl" ] || python -m scripts.tok_train --vocab_size 4096 --data builtin

# One pretraining step: an (almost) untrained model. Exercises through the calculator need no
# pretraining at this size (dev/BENCHMARKS.md), and this keeps the demo short.
stage "base model: 4 layers x 128, one step"
python -m scripts.base_train --n_layer 4 --model_dim 128 --head_dim 32 --max_seq_len 256 --device_batch_size 16 \
    --total_batch_size 4096 --num_iterations 1 --eval_every 0 --eval_tokens 4096 --sample_every 0 --data builtin \
    --model_tag rlcpu $CPU

# 120 steps on addition-heavy exercises: addition comes out right, subtraction only partly (the
# model miscopies operands into the calculator, mostly on "Subtract b from a.").
stage "SFT: 120 steps on exercises"
python -m scripts.chat_sft --source base --model_tag rlcpu --max_seq_len 256 --device_batch_size 16 --num_iterations 120 \
    --init_lr_frac 1.0 --mixture "exercises.addition:3,exercises:1" --warmdown_ratio 0.3 --eval_every 0 \
    --eval_conversations 32 $CPU

stage "before RL: held-out subtraction and addition, 40 per difficulty"
python -m scripts.chat_eval -i sft -g rlcpu -a builtin --kinds subtraction,addition -n 40 $CPU

# 8 questions x 8 samples per step; pass@1 on 200 held-out subtraction questions at steps 0, 50, 100
stage "RL: 100 steps on subtraction"
python -m scripts.chat_rl -i sft -g rlcpu --task exercises.subtraction --num_samples 8 --examples_per_step 8 \
    --device_batch_size 16 --max_new_tokens 32 --eval_examples 200 --num_iterations 100 --eval_every 50 \
    --init_lr_frac 0.1 $CPU

stage "after RL: the same held-out questions"
python -m scripts.chat_eval -i rl -g rlcpu -a builtin --kinds subtraction,addition -n 40 $CPU
python -m scripts.chat_cli -i rl -g rlcpu -t 0 -p "Subtract 14 from 78." $CPU
echo
echo "chat_rl_cpu: done in $((SECONDS - T_START))s"
