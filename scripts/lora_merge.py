"""
Fold a LoRA adapter checkpoint into its base model and save the result as a normal checkpoint
(the full weights, W + alpha/rank * B A), which any tool loads without the base.

    python -m scripts.lora_merge -i sft -g d20_lora                    # -> chatsft_checkpoints/d20_lora_merged/
    python -m scripts.lora_merge -i sft -g d20_lora -s 400 --output_tag d20_chat

chat_cli, chat_web and chat_eval load an adapter checkpoint directly (base + adapter, merged on
load); merging is for sharing or exporting a model on its own, or to stop depending on the base.
Runs on the CPU: a merge is one matrix product per adapted projection.
"""
import os

import torch

from nanochat.flags import add_model_source_args
from nanochat.common import ArgumentParser, UserError, die
from nanochat.checkpoint_manager import (PHASE_DIRS, checkpoint_steps, find_last_step, find_model_tag, get_checkpoints_dir,
                                         load_checkpoint, save_checkpoint)
from nanochat.lora import model_from_adapter

# -----------------------------------------------------------------------------
# settings
parser = ArgumentParser(prog="python -m scripts.lora_merge",
                        description="Fold a LoRA adapter checkpoint into its base and save it as a normal (full) checkpoint.")
add_model_source_args(parser, source="sft", what="adapter checkpoint")
parser.add_argument("--output_tag", type=str, default="", help="model tag to write (default: the adapter's tag + '_merged')")
parser.add_argument("--output_source", type=str, default="", choices=[""] + list(PHASE_DIRS),
                    help="stage folder to write to (default: the adapter's)")
args = parser.parse_args()

# -----------------------------------------------------------------------------
# merge
try:
    tag = args.model_tag or find_model_tag(get_checkpoints_dir(args.source))
    src_dir = os.path.join(get_checkpoints_dir(args.source), tag)
    if not os.path.isdir(src_dir):
        raise UserError(f"no model tag {tag!r} in {get_checkpoints_dir(args.source)}")
    step = find_last_step(src_dir) if args.step is None else args.step
    if step not in checkpoint_steps(src_dir):
        raise UserError(f"no complete checkpoint at step {step} in {src_dir}")
    adapter, _, meta = load_checkpoint(src_dir, step, "cpu")
    if "lora" not in meta:
        raise UserError(f"{src_dir} step {step} is a full checkpoint, not a LoRA adapter: nothing to merge")
    out_source = args.output_source or args.source
    out_tag = args.output_tag or f"{tag}_merged"
    out_dir = os.path.join(get_checkpoints_dir(out_source), out_tag)
    if os.path.abspath(out_dir) == os.path.abspath(src_dir):
        raise UserError(f"--output_tag {out_tag!r} is the adapter's own folder: the merged model would replace the adapter")
    settings = meta["lora"]
    base = settings["base"]
    print(f"adapter {args.source}/{tag} step {step}: rank {settings['rank']}, alpha {settings['alpha']:g} on "
          f"{','.join(settings['targets'])}, base {base['source']}/{base['model_tag']} step {base['step']}")
    with torch.no_grad():
        model = model_from_adapter(adapter, meta, "cpu", src_dir)
except UserError as e:
    die(str(e))

merged_meta = {k: v for k, v in meta.items() if k not in ("lora", "dataloader_state", "loop_state")}
merged_meta["merged_from"] = {"source": args.source, "model_tag": tag, "step": step, "lora": settings}
try:
    save_checkpoint(out_dir, step, model.state_dict(), None, merged_meta)
except UserError as e:
    die(str(e))
print(f"merged: {model.num_params():,d} parameters -> {out_dir} (model_{step:06d}.pt, meta_{step:06d}.json)")
print(f"chat with it: python -m scripts.chat_cli -i {out_source} -g {out_tag}")
