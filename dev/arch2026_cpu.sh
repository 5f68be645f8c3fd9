#!/usr/bin/env bash
# Which of nanochat's 2026 options (nanochat/arch2026.py) pay at CPU scale: the same model
# (--n_layer 4 by default, width 128, heads of 32, 256 tokens) trained the same number of steps
# on the built-in corpus with all options off, all on, and all on but one, for each seed; then
# the table of final val bpb (dev/LOG.md, "nanochat 2026 architecture"). Needs the built-in corpus
# and a tokenizer (ittybitty.sh makes both); runs already finished are skipped, so run it again
# after a kill.
#
#   bash dev/arch2026_cpu.sh                   # depth 4, 300 steps, seeds 1 and 2
#   DEPTH=6 SEEDS=1 NAMES="value_embeds layer_lambdas" bash dev/arch2026_cpu.sh   # a smaller grid
set -euo pipefail
cd "$(dirname "$0")/.."
export NANOCHAT_BASE_DIR="${NANOCHAT_BASE_DIR:-$HOME/.cache/nanochat}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(python -c 'import os; print(len(os.sched_getaffinity(0)))')}"
DEPTH=${DEPTH:-4}
STEPS=${STEPS:-300}
SEEDS=${SEEDS:-"1 2"}
ARCH="--n_layer $DEPTH --model_dim 128 --head_dim 32"
TRAIN="--max_seq_len 256 --device_batch_size 16 --total_batch_size 4096 --num_iterations $STEPS --eval_every 0
       --eval_tokens 131072 --sample_every 0 --save_every -1 --log_every 50 --device_type cpu --data builtin"
# the 2026 set, option by option (pad_vocab_to is left out: a speed measure, the same function, and
# a no-op at this tokenizer's 4096 tokens; rope_dtype changes fp32 rounding only)
declare -A OPTION=(
    [value_embeds]="--value_embeds" [smear]="--smear" [layer_lambdas]="--layer_lambdas" [backout]="--backout"
    [qk_gain]="--qk_gain 1.2" [rope_base]="--rope_base 100000" [window_pattern]="--window_pattern SSSL"
    [init_scheme]="--init_scheme 2026"
)
ALL="value_embeds smear layer_lambdas backout qk_gain rope_base window_pattern init_scheme"
NAMES=${NAMES:-$ALL}  # the options left out one at a time (all of them by default)
PLUS=${PLUS:-}        # options added to all-off, one entry each: "value_embeds layer_lambdas value_embeds,layer_lambdas"

flags_of() {  # the flags of a comma-separated list of options
    local out=""
    for name in ${1//,/ }; do
        out="$out ${OPTION[$name]}"
    done
    echo "$out"
}

flags_without() {  # every option's flags but $1's (none: all of them)
    local out="--rope_dtype compute"
    for name in $ALL; do
        [ "$name" = "$1" ] || out="$out ${OPTION[$name]}"
    done
    echo "$out"
}

run() {  # tag, flags...
    local tag=$1; shift
    local metrics="$NANOCHAT_BASE_DIR/base_checkpoints/$tag/metrics.jsonl"
    if [ -f "$metrics" ] && grep -q "\"step\": $STEPS, .*val_bpb" "$metrics"; then
        echo "arch2026_cpu: $tag done already"
        return
    fi
    echo "arch2026_cpu: $tag ($*)"
    python -m scripts.base_train $ARCH $TRAIN --model_tag "$tag" "$@" > "$NANOCHAT_BASE_DIR/arch2026_$tag.log" 2>&1
}

T_START=$SECONDS
for seed in $SEEDS; do
    run "a26_d${DEPTH}_off_s$seed" --seed "$seed"
    run "a26_d${DEPTH}_on_s$seed" --seed "$seed" $(flags_without none)
    for name in $NAMES; do
        run "a26_d${DEPTH}_no_${name}_s$seed" --seed "$seed" $(flags_without "$name")
    done
    for entry in $PLUS; do
        run "a26_d${DEPTH}_plus_${entry//,/+}_s$seed" --seed "$seed" $(flags_of "$entry")
    done
done
echo "arch2026_cpu: done in $((SECONDS - T_START))s"

# the table: final val bpb per configuration and seed, and the change against all-on
python - "$DEPTH" "$STEPS" "$SEEDS" "$PLUS" $NAMES <<'EOF'
import json, os, sys
depth, steps, seeds, plus, names = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(), sys.argv[4].split(), sys.argv[5:]
base = os.path.join(os.environ["NANOCHAT_BASE_DIR"], "base_checkpoints")
def bpb(tag):
    rows = [json.loads(line) for line in open(os.path.join(base, tag, "metrics.jsonl"))]
    return [r["val_bpb"] for r in rows if r.get("kind") == "eval" and r["step"] == steps][-1]
configs = [("all off", "off"), ("all on", "on")] + [(f"all on but {n}", f"no_{n}") for n in names]
configs += [(f"only {p.replace(',', ' + ')}", "plus_" + p.replace(",", "+")) for p in plus]
table = {label: [bpb(f"a26_d{depth}_{key}_s{s}") for s in seeds] for label, key in configs}
on = sum(table["all on"]) / len(seeds)
print(f"depth {depth}, {steps} steps, val bpb at step {steps} (seeds {', '.join(seeds)}):")
print(f"| configuration | {' | '.join('seed ' + s for s in seeds)} | mean | vs all on |")
print(f"|---|{'---|' * len(seeds)}---|---|")
for label, values in table.items():
    mean = sum(values) / len(values)
    print(f"| {label} | {' | '.join(f'{v:.4f}' for v in values)} | {mean:.4f} | {mean - on:+.4f} |")
EOF
