"""
Export a checkpoint as a Hugging Face transformers folder: config.json, generation_config.json,
model.safetensors, tokenizer.json / tokenizer_config.json (with a chat template that renders our
conversation format), and, for architectures transformers' own `nanochat` type cannot run, our
modeling file (loaded with trust_remote_code=True). nanochat.hf_export says which is which.

    python -m scripts.export_hf --out hf/d20                      # the latest SFT model
    python -m scripts.export_hf --source base -g d20 -s 5000 --out hf/d20-base
    python -m scripts.export_hf --out hf/d20 --dtype bfloat16 --remote_code

Then, in Python (pip install -e '.[hf]'):
    model = AutoModelForCausalLM.from_pretrained("hf/d20")        # + trust_remote_code=True when it says so
    tokenizer = AutoTokenizer.from_pretrained("hf/d20")
    inputs = tokenizer.apply_chat_template([{"role": "user", "content": "Hi!"}], add_generation_prompt=True, return_tensors="pt")
    reply = model.generate(**inputs, max_new_tokens=64)  # stops at <|assistant_end|> (generation_config.json)
"""
import os

import torch

from nanochat.checkpoint_manager import find_model_tag, get_checkpoints_dir, load_model
from nanochat.common import ArgumentParser, UserError, die
from nanochat.flags import add_model_source_args
from nanochat.hf_export import export_folder

# -----------------------------------------------------------------------------
# settings
parser = ArgumentParser(prog="python -m scripts.export_hf",
                        description="Write a checkpoint as a Hugging Face transformers folder (weights, config, tokenizer, chat template).")
add_model_source_args(parser, source="sft", what="checkpoint to export")
parser.add_argument("--out", type=str, required=True, help="folder to write")
parser.add_argument("--dtype", type=str, default="float32", choices=["float32", "bfloat16", "float16"],
                    help="dtype of the saved weights (default float32, exact)")
parser.add_argument("--remote_code", action="store_true",
                    help="ship our modeling file even when transformers' nanochat type could run the model "
                         "(exact in fp32: ours rounds the rotary tables to bf16, transformers does not)")
parser.add_argument("--force", action="store_true", help="write into --out even when it is not empty")
args = parser.parse_args()

# -----------------------------------------------------------------------------
# export
try:
    if os.path.isdir(args.out) and os.listdir(args.out) and not args.force:
        raise UserError(f"{args.out} is not empty: choose another --out, or pass --force to write into it")
    tag = args.model_tag or find_model_tag(get_checkpoints_dir(args.source))
    with torch.no_grad():
        model, tokenizer, meta = load_model(args.source, "cpu", "eval", tag, args.step)
    c = model.config
    origin = {"source": args.source, "model_tag": tag, "step": meta["step"]}
    # (refuses a config it cannot express before it writes anything)
    kind = export_folder(model, tokenizer, args.out, args.dtype, args.remote_code, origin)
except UserError as e:
    die(str(e))

print(f"exported {args.source} step {meta['step']} ({c.n_layer} layers, {c.n_embd} wide, {model.num_params():,d} parameters, "
      f"{args.dtype}) -> {args.out}")
if kind == "native":
    print("model type nanochat (transformers' own): AutoModelForCausalLM.from_pretrained(folder)")
    if c.rope_dtype == "bf16" and args.dtype == "float32":
        print("note: transformers computes the rotary tables in the model's dtype, ours rounds them to bf16 (rope_dtype bf16): "
              "the tables agree in bf16, fp32 logits differ by ~1e-2 (--remote_code is exact)")
else:
    print("model type nanochat_ext (our modeling file): AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)")
