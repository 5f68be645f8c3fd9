#!/usr/bin/env bash
# ittybitty.sh: the tiny pipeline, tokenizer -> base model -> chat model, on the machine you have.
#
#   bash ittybitty.sh
#
# With a CUDA GPU and internet: downloads 8 FineWeb-Edu shards and trains the ittybitty target of
# GUIDE.md (4 layers, 512 wide, 8 heads of 64, vocab 24,576, ~38M parameters) at 1024 tokens of context.
# Without a GPU, or offline: builds the built-in corpus (nothing downloaded) and trains a CPU-sized
# model on it, in under 5 minutes on 2 cores. It says which it is doing.
# Everything goes to $NANOCHAT_BASE_DIR (default ~/.cache/nanochat).
set -euo pipefail
cd "$(dirname "$0")"
export NANOCHAT_BASE_DIR="${NANOCHAT_BASE_DIR:-$HOME/.cache/nanochat}"
WANDB_RUN="${WANDB_RUN:-dummy}"
T_START=$SECONDS
stage() { echo; echo "=== $1 (+$((SECONDS - T_START))s)"; }

stage "install"
if ! python -c "import torch, tiktoken, rustbpe, pyarrow, requests" 2>/dev/null; then
    bash dev/install.sh
fi

if python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" && python -m nanochat.dataset -n 8; then
    MODE=gpu
    echo "ittybitty: CUDA GPU and FineWeb-Edu shards: training the ittybitty target (4 x 512, ~38M parameters)"
    DATA=fineweb
    VOCAB=24576
    ARCH="--n_layer 4 --model_dim 512 --head_dim 64"
    TRAIN="--max_seq_len 1024 --device_batch_size 32 --total_batch_size 262144 --target_param_data_ratio 20 --eval_every 100"
else
    MODE=cpu
    echo "ittybitty: no CUDA GPU (or no FineWeb data): training a CPU-sized model on the built-in corpus"
    # a thread per core: more threads than cores only contend
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(python -c 'import os; print(len(os.sched_getaffinity(0)))')}"
    DATA=builtin
    python -m nanochat.dataset --builtin
    VOCAB=4096
    ARCH="--n_layer 4 --model_dim 128 --head_dim 32"
    TRAIN="--max_seq_len 256 --device_batch_size 16 --total_batch_size 4096 --num_iterations 200 --eval_every 100 --eval_tokens 32768 --device_type cpu"
fi
TAG=ittybitty
python -m scripts.report --reset  # every stage adds its section to $NANOCHAT_BASE_DIR/report/

stage "tokenizer ($VOCAB tokens)"
python -m scripts.tok_train --vocab_size $VOCAB --data $DATA

stage "pretraining ($MODE)"
python -m scripts.base_train $ARCH $TRAIN --data $DATA --model_tag $TAG --sample_every 0 --run "$WANDB_RUN"
python -m scripts.base_complete -g $TAG -p "Question: What is 12 + 34?
Answer:" -t 0 -m 8

# --- chat: SFT on the built-in conversations, then one answer -----------------------------------
# Arithmetic in the SFT data goes through the calculator tool (a tiny model copies numbers far
# more reliably than it adds them), so the mixture is heavy in addition; see dev/BENCHMARKS.md.
if [ "$MODE" = gpu ]; then
    SFT="--max_seq_len 1024 --device_batch_size 16 --num_iterations 200"
else
    SFT="--max_seq_len 256 --device_batch_size 16 --num_iterations 80 --device_type cpu"
fi
stage "SFT on built-in conversations ($MODE)"
python -m scripts.chat_sft --source base --model_tag $TAG $SFT --init_lr_frac 1.0 \
    --mixture "exercises.addition.2:4,exercises.addition:2,exercises:2,chat:1" --warmdown_ratio 0.3 \
    --eval_every 0 --eval_conversations 64 --run "$WANDB_RUN"

stage "chat eval: two-digit addition, 50 held-out questions"
python -m scripts.chat_eval -i sft -g $TAG -a builtin --kinds addition --difficulties 2 -n 50

stage "a chat answer"
python -m scripts.chat_cli -i sft -g $TAG -t 0 -p "What is 23 + 45?"
echo
python -m scripts.report
echo "ittybitty: done in $((SECONDS - T_START))s. Talk to it: python -m scripts.chat_cli"
