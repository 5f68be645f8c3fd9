"""
Import a Hugging Face transformers folder of a nanochat model (one that scripts.export_hf wrote,
or a model of transformers' `nanochat` type, e.g. from the hub) as one of our checkpoints:
$NANOCHAT_BASE_DIR/<stage>_checkpoints/<tag>/model_<step>.pt + meta_<step>.json, which
load_model (chat_cli, chat_web, chat_eval, ...) loads. The folder's tokenizer.json becomes our
tokenizer (tokenizer/tokenizer.pkl + token_bytes.pt) when we have none yet, or with --tokenizer.

    python -m scripts.import_hf hf/d20                    # stage, tag and step as exported (else base, d<layers>, 0)
    python -m scripts.import_hf ~/models/nanochat-d32 --source sft -g d32 --tokenizer
"""
import os

import torch

from nanochat.checkpoint_manager import PHASE_DIRS, get_checkpoints_dir, model_from_state, save_checkpoint
from nanochat.common import ArgumentParser, UserError, die
from nanochat.gpt import model_tag_for
from nanochat.hf_export import read_folder
from nanochat.hf_tokenizer import read_hf_tokenizer
from nanochat.tokenizer import compute_token_bytes, get_tokenizer_dir

# -----------------------------------------------------------------------------
# settings
parser = ArgumentParser(prog="python -m scripts.import_hf",
                        description="Turn a transformers folder of a nanochat model into one of our checkpoints.")
parser.add_argument("folder", type=str, help="the transformers model folder (config.json, model.safetensors, tokenizer.json)")
parser.add_argument("-i", "--source", type=str, default="", choices=[""] + list(PHASE_DIRS),
                    help="stage to file it under (default: the one it was exported from, else base)")
parser.add_argument("-g", "--model_tag", type=str, default="", help="model tag (default: as exported, else d<layers>)")
parser.add_argument("-s", "--step", type=int, default=None, help="step number to save it as (default: as exported, else 0)")
parser.add_argument("--tokenizer", action="store_true", help="replace our tokenizer with the folder's even when we have one")
parser.add_argument("--force", action="store_true", help="overwrite a checkpoint of the same stage, tag and step")
args = parser.parse_args()

# -----------------------------------------------------------------------------
# read and check: build the model from the weights before anything is written
try:
    config, state, doc = read_folder(args.folder)
    with torch.no_grad():
        model = model_from_state(state, config.to_dict(), "cpu")  # a strict load: shapes and names
    origin = doc.get("nanochat_origin") or {}
    source = args.source or origin.get("source") or "base"
    tag = args.model_tag or origin.get("model_tag") or model_tag_for(config)
    step = args.step if args.step is not None else int(origin.get("step", 0))
    checkpoint_dir = os.path.join(get_checkpoints_dir(source), tag)
    if os.path.exists(os.path.join(checkpoint_dir, f"model_{step:06d}.pt")) and not args.force:
        raise UserError(f"{checkpoint_dir} already has step {step}: choose another -g/-s, or pass --force")
    tok_path = os.path.join(args.folder, "tokenizer.json")
    tokenizer = None
    if os.path.exists(tok_path):
        try:
            tokenizer = read_hf_tokenizer(tok_path)
        except ValueError as e:
            raise UserError(str(e)) from None
        if tokenizer.get_vocab_size() != config.vocab_size:
            raise UserError(f"{tok_path} has {tokenizer.get_vocab_size()} tokens, the model {config.vocab_size}")
except UserError as e:
    die(str(e))

eps = doc.get("rms_norm_eps")
if eps is not None and eps != torch.finfo(torch.float32).eps:
    print(f"note: the folder's RMSNorm eps is {eps:g}; ours uses finfo(dtype).eps ({torch.finfo(torch.float32).eps:.3g} in fp32)")

# -----------------------------------------------------------------------------
# write
meta = {"step": step, "model_config": config.to_dict(),
        "imported_from": {"folder": os.path.abspath(args.folder), "model_type": doc.get("model_type")}}
try:
    save_checkpoint(checkpoint_dir, step, state, None, meta)
except UserError as e:
    die(str(e))
print(f"imported {doc.get('model_type')} model ({config.n_layer} layers, {config.n_embd} wide, {model.num_params():,d} parameters) "
      f"-> {checkpoint_dir} (model_{step:06d}.pt, meta_{step:06d}.json)")

tok_dir = get_tokenizer_dir()
ours = os.path.exists(os.path.join(tok_dir, "tokenizer.pkl"))
if tokenizer is None:
    print(f"the folder has no tokenizer.json{'' if ours else f'; put a tokenizer in {tok_dir} before using the model'}")
elif not ours or args.tokenizer:
    tokenizer.save(tok_dir)
    torch.save(compute_token_bytes(tokenizer), os.path.join(tok_dir, "token_bytes.pt"))
    print(f"tokenizer ({tokenizer.get_vocab_size():,d} tokens) -> {tok_dir}")
else:
    from nanochat.tokenizer import Tokenizer
    mine = Tokenizer.from_directory(tok_dir).enc
    same = (mine._mergeable_ranks == tokenizer.enc._mergeable_ranks and mine._special_tokens == tokenizer.enc._special_tokens
            and mine._pat_str == tokenizer.enc._pat_str)
    if not same:
        print(f"warning: the folder's tokenizer differs from ours in {tok_dir}: pass --tokenizer to replace ours")
print(f"chat with it: python -m scripts.chat_cli -i {source} -g {tag}")
