#!/usr/bin/env bash
# dev/gpu_check.sh: what a CUDA GPU should be checked for, offline, in at most 8 minutes.
#
#   bash dev/gpu_check.sh               # on a machine with a CUDA GPU
#   bash dev/gpu_check.sh --dry_run     # every part at toy sizes on the CPU (under 2 minutes): the script's own test
#   OUT=/tmp/gc bash dev/gpu_check.sh   # results there (default: out/gpu_check, which git ignores)
#
# The parts, in order:
#   (a) cuda_tests           the tests marked for CUDA (pytest, junit XML)
#   (b) train_*              scripts.bench_train, bf16, eager and compiled: a 12-layer model at sequence 2048
#                            and Hamner-164M at 1024: tokens/s, MFU, peak memory
#   (c) infer_hamner         scripts.bench_infer, Hamner-164M at batch 1, modes eager, graph and compile:
#                            decode tokens/s, fraction of memory bandwidth, TTFT of a 512-token prompt
#   (d) vram_*               scripts.vram_calc --measure: the estimate against the measured peak, 8 configurations
#                            (sizes, batch sizes, bf16/fp16, checkpointing, compile, differential attention, MoE)
#   (e) corpus, tokenizer,   the commands of ittybitty.sh on the built-in corpus, 50 steps each of base_train and
#       base_train, chat_sft chat_sft, in a NANOCHAT_BASE_DIR of its own under $OUT (nothing of yours is touched)
# Each part runs under its own time limit (timeout; never more than what is left of the 8 minutes);
# a part that fails or times out is recorded (exit status, log tail) and the next one runs. In $OUT:
# parts/NAME.cmd (the exact command), .out (stdout: the JSON of --json tools), .log (stderr), .status;
# summary.json (per part: status ok/failed/timeout/skipped, seconds, the key numbers); gpu_check.log
# (this console). Exit status 0 when no part failed or timed out. Needs `pip install -e .`, no internet.
set -uo pipefail

DRY=0
for arg in "$@"; do
    case "$arg" in
        --dry_run) DRY=1 ;;
        -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "gpu_check: unknown argument $arg (usage: bash dev/gpu_check.sh [--dry_run])" >&2; exit 2 ;;
    esac
done

OUT="${OUT:-$(dirname "$0")/../out/gpu_check}"  # a relative $OUT is taken from where you are
mkdir -p "$OUT" && OUT="$(cd "$OUT" && pwd)" || exit 2
cd "$(dirname "$0")/.."

PARTS="$OUT/parts"
rm -rf "$PARTS" "$OUT/nanochat_base" "$OUT/summary.json" "$OUT/run.json"  # what an earlier run left here
mkdir -p "$PARTS"
exec > >(tee "$OUT/gpu_check.log") 2>&1
export NANOCHAT_BASE_DIR="$OUT/nanochat_base"  # corpus, tokenizer, checkpoints of part (e)
export PYTHONUNBUFFERED=1                      # a killed part's log is complete up to the kill
export WANDB_MODE=disabled
export LC_NUMERIC=C                            # a decimal point in $EPOCHREALTIME, whatever the locale
T0=$SECONDS
STARTED=$EPOCHREALTIME
RESERVE_S=5  # kept back for the summary

if [ "$DRY" = 1 ]; then
    export CUDA_VISIBLE_DEVICES=""                   # the CPU, even where there is a GPU
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"   # a small machine's cores are better left to one thread
    BUDGET_S=120
else
    BUDGET_S=480
fi
python dev/gpu_check.py meta "$DRY" "$BUDGET_S" "$STARTED" > "$OUT/run.json" || {
    echo "gpu_check: no CUDA GPU visible to torch; bash dev/gpu_check.sh --dry_run rehearses every part on the CPU" >&2
    exit 2
}
echo "gpu_check$([ "$DRY" = 1 ] && echo ' (dry run)'): results in $OUT, ${BUDGET_S} s budget"

# quote COMMAND...: the command as one line to paste into a shell
quote() {
    local a words=()
    for a in "$@"; do
        if [[ $a =~ ^[A-Za-z0-9_./:,=+@%-]+$ ]]; then words+=("$a"); else words+=("$(printf '%q' "$a")"); fi
    done
    echo "${words[*]}"
}
# part NAME LIMIT_S COMMAND...: run COMMAND under a time limit, clipped to what is left of the budget
part() {
    local name=$1 limit=$2; shift 2
    local left=$((BUDGET_S - RESERVE_S - (SECONDS - T0)))
    echo "$name" >> "$PARTS/order.txt"
    quote "$@" > "$PARTS/$name.cmd"
    ((left < limit)) && limit=$left
    if ((limit < 5)); then
        echo "not run: the ${BUDGET_S} s budget is spent" > "$PARTS/$name.skipped"
        echo "-- $name: skipped, the budget is spent"
        return
    fi
    echo "-- $name (limit ${limit} s): $(cat "$PARTS/$name.cmd")"
    local start=$EPOCHREALTIME
    timeout -k 5 "$limit" "$@" < /dev/null > "$PARTS/$name.out" 2> "$PARTS/$name.log"
    local rc=$?
    local seconds
    seconds=$(awk "BEGIN { printf \"%.2f\", $EPOCHREALTIME - $start }")
    echo "$rc $seconds $limit" > "$PARTS/$name.status"
    case $rc in
        0) echo "   ok in ${seconds} s" ;;
        124|137) echo "   TIMEOUT after ${limit} s: $(tail -n 1 "$PARTS/$name.log")" ;;
        *) echo "   FAILED (exit $rc) in ${seconds} s: $(tail -n 1 "$PARTS/$name.log")" ;;
    esac
}
# skip NAME WHY: a part not run here
skip() {
    echo "$1" >> "$PARTS/order.txt"
    echo "$2" > "$PARTS/$1.skipped"
    echo "-- $1: skipped: $2"
}
# note NAME WHAT WHY: a mode a part leaves out here
note() {
    printf '%s\t%s\n' "$2" "$3" >> "$PARTS/$1.notes"
}

# -----------------------------------------------------------------------------
# sizes: the real ones on the GPU, toy ones (same flags, tiny shapes, fp32, few steps) for the dry run
if [ "$DRY" = 0 ]; then
    DEV="--device_type cuda"
    PREC="--precision bf16"
    D4="--depth 4 --max_seq_len 2048"
    D12="--depth 12 --max_seq_len 2048"
    HAMNER="--n_layer 20 --model_dim 768 --head_dim 64 --n_kv_head 4 --mlp swiglu --mlp_hidden 2048 \
        --tie_embeddings --norm_weight --vocab_size 49152 --max_seq_len 1024"
    DIFF="--variant v03_diffattn_small --max_seq_len 1024"
    MOE="--variant v05_moe_small --max_seq_len 1024"
    BATCH_D12="--device_batch_size 16"
    BATCH_HAMNER="--device_batch_size 32"
    STEPS="--warmup 3 --steps 10"
    # no token check between the modes: in compile mode each new length compiles again (the CUDA tests compare the tokens)
    INFER="--prompt_lengths 512 --batch_sizes 1 --decode_prompt_len 64 --decode_tokens 128 --repeats 3 --check_tokens 0"
    INFER_MODES="eager,graph,compile"
    MEASURE="--measure"
    CORPUS=""
    VOCAB=4096
    BASE="--n_layer 4 --model_dim 512 --head_dim 64 --max_seq_len 1024 --device_batch_size 32 --total_batch_size 65536 \
        --eval_every 25 --eval_tokens 131072"
    SFT="--max_seq_len 1024 --device_batch_size 16 --eval_conversations 64"
    ITERS=50
else
    DEV="--device_type cpu --threads 1"
    PREC="--precision fp32"  # CPU autocast to bf16 is emulated, 15x slower
    TOY="--model_dim 64 --head_dim 32 --vocab_size 512 --max_seq_len 64"
    D4="--depth 1 $TOY"
    D12="--depth 2 $TOY"
    HAMNER="--n_layer 2 --model_dim 64 --head_dim 32 --n_kv_head 1 --mlp swiglu --mlp_hidden 128 \
        --tie_embeddings --norm_weight --vocab_size 512 --max_seq_len 64"
    DIFF="--variant v03_diffattn_small --scale tiny --vocab_size 512 --max_seq_len 64"
    MOE="--variant v05_moe_small --scale tiny --vocab_size 512 --max_seq_len 64"
    BATCH_D12="--device_batch_size 2"
    BATCH_HAMNER="--device_batch_size 2"
    STEPS="--warmup 1 --steps 3"
    INFER="--prompt_lengths 512 --batch_sizes 1 --decode_prompt_len 16 --decode_tokens 16 --repeats 1 --check_tokens 4"
    INFER_MODES="eager,static"  # static: the fast decoder's step without the CUDA graph
    MEASURE=""
    CORPUS="--builtin_chars 200000"
    VOCAB=512
    BASE="--n_layer 2 --model_dim 64 --head_dim 32 --max_seq_len 64 --device_batch_size 4 --total_batch_size 512 \
        --eval_every 5 --eval_tokens 2048 --device_type cpu"
    SFT="--max_seq_len 64 --device_batch_size 4 --eval_conversations 16 --device_type cpu"
    ITERS=10
fi
NO_COMPILE="left out of the dry run: torch.compile's inductor build takes 15-50 s per model on a CPU"

# -----------------------------------------------------------------------------
# (a) the CUDA tests: dev/gpu_check.py as a pytest plugin keeps those marked cuda or skipped without CUDA
part cuda_tests 35 python -m pytest -p dev.gpu_check -p no:cacheprovider tests -q -rA --junitxml="$PARTS/cuda_tests.xml"

# -----------------------------------------------------------------------------
# (b) training throughput: eager, then compiled
part train_d12_eager 20 python -m scripts.bench_train $DEV $PREC $D12 $BATCH_D12 $STEPS --json
if [ "$DRY" = 0 ]; then
    part train_d12_compile 70 python -m scripts.bench_train $DEV $PREC $D12 $BATCH_D12 $STEPS --compile --json
else
    skip train_d12_compile "$NO_COMPILE"
fi
part train_hamner_eager 20 python -m scripts.bench_train $DEV $PREC $HAMNER $BATCH_HAMNER $STEPS --json
if [ "$DRY" = 0 ]; then
    part train_hamner_compile 70 python -m scripts.bench_train $DEV $PREC $HAMNER $BATCH_HAMNER $STEPS --compile --json
else
    skip train_hamner_compile "$NO_COMPILE"
fi

# -----------------------------------------------------------------------------
# (c) batch-1 decode and TTFT of Hamner-164M
if [ "$DRY" = 1 ]; then
    note infer_hamner graph "needs a CUDA device (CUDA graph capture)"
    note infer_hamner compile "$NO_COMPILE"
fi
part infer_hamner 50 python -m scripts.bench_infer $DEV $PREC $HAMNER $INFER --modes $INFER_MODES --json

# -----------------------------------------------------------------------------
# (d) the VRAM estimate against the measured peak (one configuration per batch size: 8 in all)
# vram NAME LIMIT_S ARCH SETTINGS BATCH_SIZES
vram() {
    local batches=$5
    if [ "$DRY" = 1 ]; then
        batches=1,2
        note "$1" measure "needs a CUDA GPU (torch.cuda.max_memory_reserved): the dry run checks the estimate only"
    fi
    part "$1" "$2" python -m scripts.vram_calc $3 $4 --batch_sizes $batches $MEASURE --json
}
vram vram_d12_bf16         15 "$D12"    "--precision bf16"                   4,16
vram vram_d12_bf16_ckpt    15 "$D12"    "--precision bf16 --grad_checkpoint" 16
vram vram_hamner_fp16      15 "$HAMNER" "--precision fp16"                   8,32
vram vram_d4_bf16_compile  30 "$D4"     "--precision bf16 --compile"         8
vram vram_diffattn         15 "$DIFF"   "--precision bf16"                   8
vram vram_moe              15 "$MOE"    "--precision bf16"                   8

# -----------------------------------------------------------------------------
# (e) the tiny pipeline of ittybitty.sh on the built-in corpus: corpus, tokenizer, base model, SFT
MIXTURE="exercises.addition.2:4,exercises.addition:2,exercises:2,chat:1"
part corpus 15 python -m nanochat.dataset --builtin $CORPUS
part tokenizer 15 python -m scripts.tok_train --vocab_size $VOCAB --data builtin
part base_train 40 python -m scripts.base_train $BASE --num_iterations $ITERS --data builtin --model_tag gpu_check \
    --sample_every 0 --run dummy
cp "$NANOCHAT_BASE_DIR/base_checkpoints/gpu_check/metrics.jsonl" "$PARTS/base_train.metrics.jsonl" 2>/dev/null
if [ -f "$PARTS/base_train.metrics.jsonl" ] && [ "$(cut -d' ' -f1 "$PARTS/base_train.status" 2>/dev/null)" = 0 ]; then
    part chat_sft 35 python -m scripts.chat_sft --source base --model_tag gpu_check $SFT --num_iterations $ITERS \
        --init_lr_frac 1.0 --mixture "$MIXTURE" --warmdown_ratio 0.3 --eval_every 0 --run dummy
    cp "$NANOCHAT_BASE_DIR/chatsft_checkpoints/gpu_check/metrics.jsonl" "$PARTS/chat_sft.metrics.jsonl" 2>/dev/null
else
    skip chat_sft "base_train did not finish: no base model to fine-tune"
fi

# -----------------------------------------------------------------------------
python dev/gpu_check.py summarize "$OUT"
rc=$?
echo "gpu_check: $((SECONDS - T0)) s in all"
exit $rc
