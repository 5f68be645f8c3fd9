#!/usr/bin/env bash
# speedrun.sh: from nothing to a chat model on ONE 24 GB GPU (an RTX 3090 is the reference card).
#
#   bash speedrun.sh                       # plain
#   WANDB_RUN=speedrun bash speedrun.sh    # log to wandb (pip install wandb; wandb login)
#   GPU_HOURLY_COST=0.30 bash speedrun.sh  # the report card ($NANOCHAT_BASE_DIR/report/report.md) adds the cost
#   screen -L -Logfile speedrun.log -S speedrun bash speedrun.sh   # keep it running when you log out
#
# Expected time and memory on an RTX 3090 (estimates from the FLOP count at ~35% MFU and from
# scripts.vram_calc; not yet measured on a 3090, see dev/BENCHMARKS.md):
#   downloads            ~2.5 GB FineWeb-Edu (24 shards) + ~1 GB SmolTalk + ~10 MB eval sets: minutes
#   tokenizer            32,768 tokens trained on 1B characters: ~5 min (CPU)
#   pretraining          d8 w512 (8 layers, 512 wide, 8 heads of 64; 58.7M parameters), 1024 tokens of
#                        context, 1.17B tokens (20 per parameter), 3.6e17 FLOPs: ~4-5 hours,
#                        ~15 GB of GPU memory at the batch size `auto` picks (16 x 1024)
#   mid-training         200,000 conversations (SmolTalk + built-in exercises, chat): ~30 min
#   SFT                  20,000 conversations: ~5 min
#   evaluation           built-in exercises, ARC, MMLU, GSM8K (1,000 questions each at most): ~20 min
# Everything goes to $NANOCHAT_BASE_DIR (default ~/.cache/nanochat). Run again after a failure:
# downloads skip or resume what is already there; the training stages start over.
set -euo pipefail
cd "$(dirname "$0")"

export OMP_NUM_THREADS=1
export NANOCHAT_BASE_DIR="${NANOCHAT_BASE_DIR:-$HOME/.cache/nanochat}"
WANDB_RUN="${WANDB_RUN:-dummy}"  # 'dummy' = no wandb, as in base_train's --run
mkdir -p "$NANOCHAT_BASE_DIR"

# the model: change these three lines for another size (python -m scripts.arch_calc, scripts.vram_calc)
ARCH="--n_layer 8 --model_dim 512 --head_dim 64"
SEQ_LEN=1024
TAG=d8w512

stage() { echo; echo "=== $1 ($(date +%H:%M:%S))"; }
stage "install"
if ! python -c "import torch, tiktoken, rustbpe, pyarrow, requests" 2>/dev/null; then
    bash dev/install.sh
fi
python -c "import torch; assert torch.cuda.is_available(), 'speedrun.sh needs a CUDA GPU; on a CPU run ittybitty.sh'"
python -m scripts.report --reset  # every stage adds its section to $NANOCHAT_BASE_DIR/report/

stage "download: FineWeb-Edu (24 train shards + validation), SmolTalk, eval sets"
python -m nanochat.dataset -n 24
python -m nanochat.tasks.smoltalk
python -m scripts.chat_eval --download

stage "tokenizer"
python -m scripts.tok_train --vocab_size 32768 --max_chars 1e9 --data fineweb
python -m scripts.tok_eval

stage "pretraining"
python -m scripts.base_train $ARCH --max_seq_len $SEQ_LEN --model_tag $TAG --data fineweb \
    --device_batch_size auto --total_batch_size 524288 --target_param_data_ratio 20 --run "$WANDB_RUN"
python -m scripts.base_loss -g $TAG
python -m scripts.base_complete -g $TAG -p "The capital of France is" -t 0 -m 16

stage "mid-training"
python -m scripts.mid_train --model_tag $TAG --max_seq_len $SEQ_LEN --device_batch_size auto --total_batch_size 262144 --run "$WANDB_RUN"

stage "SFT"
python -m scripts.chat_sft --model_tag $TAG --max_seq_len $SEQ_LEN --device_batch_size auto --run "$WANDB_RUN"

stage "evaluation"
python -m scripts.chat_eval -i sft -g $TAG -x 1000 | tee "$NANOCHAT_BASE_DIR/chat_eval_$TAG.txt"

stage "a chat answer"
python -m scripts.chat_cli -i sft -g $TAG -t 0 -p "What is 23 + 45?"
python -m scripts.chat_cli -i sft -g $TAG -p "Why is the sky blue?"
echo
python -m scripts.report ${GPU_HOURLY_COST:+--gpu_hourly_cost $GPU_HOURLY_COST}  # prints where report.md is
echo "done. Talk to it: python -m scripts.chat_cli -g $TAG   (or the web chat: python -m scripts.chat_web)"
