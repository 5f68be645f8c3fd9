"""
Saving and loading checkpoints in nanochat's layout, so its users' files load as they are (those
of karpathy/nanochat's October 2025 and 2026 code too: nanochat.nanochat_compat):
$NANOCHAT_BASE_DIR/{base,mid,chatsft,chatrl,curriculum}_checkpoints/<model_tag>/
    model_<step:06d>.pt   the model's state dict
    optim_<step:06d>.pt   the optimizers' state dicts (for --resume; nanochat 2026 writes one
                          optim_<step:06d>_rank<r>.pt per rank, which loading a model ignores)
    meta_<step:06d>.json  model_config, training settings, loop and dataloader state
Each file is written to a temporary name, fsynced, renamed, and the folder fsynced after the
rename; meta is written last. So a checkpoint whose meta exists is complete even after a kill or a
power loss while saving, and no file under a final name is ever partial. The space a checkpoint
needs is checked before anything is written: a full disk is a one-line UserError that says how
much was needed, and the previous checkpoint is untouched. keep_last removes older checkpoints only
after the new one is complete.
"""
import errno
import glob
import json
import os
import re
import shutil

import torch

from nanochat.common import get_base_dir, UserError
from nanochat.gpt import GPT
from nanochat.nanochat_compat import check_state, config_from_checkpoint

PHASE_DIRS = {"base": "base_checkpoints", "mid": "mid_checkpoints", "sft": "chatsft_checkpoints", "rl": "chatrl_checkpoints",
              "curriculum": "curriculum_checkpoints"}


def get_checkpoints_dir(source):
    if source not in PHASE_DIRS:
        raise UserError(f"unknown model source {source!r}: choose one of {', '.join(PHASE_DIRS)}")
    return os.path.join(get_base_dir(), PHASE_DIRS[source])


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path, write):
    """write(file) into path.tmp, fsync it, rename it to path, fsync the folder (the rename is durable)."""
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_dir(os.path.dirname(path) or ".")


def _atomic_torch_save(obj, path):
    _atomic_write(path, lambda f: torch.save(obj, f))


def _tensor_bytes(obj):
    """Bytes of the tensors in a (nested) state dict: about what torch.save writes."""
    if torch.is_tensor(obj):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def _disk_full(checkpoint_dir, needed):
    free = shutil.disk_usage(checkpoint_dir).free
    return UserError(f"not enough disk space for a checkpoint in {checkpoint_dir}: it needs about {needed / 2**20:,.0f} MiB, "
                     f"{free / 2**20:,.0f} MiB are free (free some space, or use --keep_last); the previous checkpoint is intact")


def save_checkpoint(checkpoint_dir, step, model_data, optimizer_data, meta_data, keep_last=0):
    """
    Write one checkpoint (call on rank 0 only: under DDP the states are the same on every rank);
    keep_last > 0 then removes all but the newest keep_last checkpoints. Raises UserError when the
    disk cannot hold it.
    """
    os.makedirs(checkpoint_dir, exist_ok=True)
    needed = int(1.05 * (_tensor_bytes(model_data) + _tensor_bytes(optimizer_data))) + (1 << 20)
    if shutil.disk_usage(checkpoint_dir).free < needed:
        raise _disk_full(checkpoint_dir, needed)
    meta_path = os.path.join(checkpoint_dir, f"meta_{step:06d}.json")
    try:
        if optimizer_data is not None:
            _atomic_torch_save(optimizer_data, os.path.join(checkpoint_dir, f"optim_{step:06d}.pt"))
        _atomic_torch_save(model_data, os.path.join(checkpoint_dir, f"model_{step:06d}.pt"))
        _atomic_write(meta_path, lambda f: f.write(json.dumps(meta_data, indent=2).encode("utf-8")))
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _disk_full(checkpoint_dir, needed) from None
        raise
    if keep_last > 0:
        remove_old_checkpoints(checkpoint_dir, keep_last)


def checkpoint_steps(checkpoint_dir):
    """The steps of the complete checkpoints (model and meta present), oldest first."""
    steps = []
    for path in glob.glob(os.path.join(checkpoint_dir, "model_*.pt")):
        m = re.fullmatch(r"model_(\d+)\.pt", os.path.basename(path))
        if m and os.path.exists(os.path.join(checkpoint_dir, f"meta_{m.group(1)}.json")):
            steps.append(int(m.group(1)))
    return sorted(steps)


def remove_old_checkpoints(checkpoint_dir, keep_last):
    """Remove all but the newest keep_last complete checkpoints: meta first, so a half-removed one is never taken for complete."""
    for step in checkpoint_steps(checkpoint_dir)[:-keep_last]:
        names = [f"meta_{step:06d}.json", f"model_{step:06d}.pt", f"optim_{step:06d}.pt"]
        shards = sorted(glob.glob(os.path.join(checkpoint_dir, f"optim_{step:06d}_rank*.pt")))  # nanochat 2026's
        for name in names + [os.path.basename(p) for p in shards]:
            path = os.path.join(checkpoint_dir, name)
            if os.path.exists(path):
                os.remove(path)


def _load_file(path, device):
    if not os.path.exists(path):
        raise UserError(f"missing checkpoint file {path}")
    try:
        return torch.load(path, map_location=device)
    except Exception as e:
        raise UserError(f"cannot read {path} (corrupt or incomplete?): {type(e).__name__}: {e}") from None


def load_checkpoint(checkpoint_dir, step, device, load_optimizer=False):
    """Returns (model_state, optimizer_state or None, meta)."""
    meta_path = os.path.join(checkpoint_dir, f"meta_{step:06d}.json")
    if not os.path.exists(meta_path):
        raise UserError(f"missing {meta_path}")
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {meta_path} (corrupt?): {e}") from None
    model_state = _load_file(os.path.join(checkpoint_dir, f"model_{step:06d}.pt"), device)
    optim_state = None
    if load_optimizer:
        optim_path = os.path.join(checkpoint_dir, f"optim_{step:06d}.pt")
        if not os.path.exists(optim_path) and glob.glob(os.path.join(checkpoint_dir, f"optim_{step:06d}_rank*.pt")):
            raise UserError(f"{checkpoint_dir} step {step} holds nanochat 2026's per-rank optimizer shards "
                            f"(optim_{step:06d}_rank<r>.pt), which our optimizers do not resume from: start from its weights instead")
        optim_state = _load_file(optim_path, device)
    return model_state, optim_state, meta


def find_last_step(checkpoint_dir):
    """The highest step that has both a model file and its meta."""
    steps = checkpoint_steps(checkpoint_dir)
    if not steps:
        raise UserError(f"no checkpoints in {checkpoint_dir}")
    return steps[-1]


def find_model_tag(checkpoints_dir):
    """Default model tag: the deepest d<N> model (nanochat's rule), else the most recently written."""
    if not os.path.isdir(checkpoints_dir):
        raise UserError(f"no checkpoints in {checkpoints_dir}: train a model first (see README.md)")
    tags = [t for t in os.listdir(checkpoints_dir) if os.path.isdir(os.path.join(checkpoints_dir, t))]
    if not tags:
        raise UserError(f"no checkpoints in {checkpoints_dir}: train a model first (see README.md)")
    def key(tag):
        m = re.match(r"d(\d+)", tag)
        return (int(m.group(1)) if m else -1, os.path.getmtime(os.path.join(checkpoints_dir, tag)))
    return max(tags, key=key)


def model_from_state(model_state, model_config, device):
    """
    Build a GPT from a checkpoint's model_config (ours, or nanochat's of October 2025 or 2026:
    nanochat.nanochat_compat) and load its weights (bf16 tensors are cast to the model's fp32).
    Keys of the config we do not know, and tensors the model does not have or lacks, are a
    one-line UserError naming them: such a checkpoint is never loaded into a different model.
    """
    config, era = config_from_checkpoint(model_config)
    with torch.device("meta"):
        model = GPT(config)
    model.to_empty(device=device)
    model.init_weights()  # also builds the rotary tables, which are not in the state dict
    # a model saved from torch.compile has its keys prefixed
    model_state = {k.removeprefix("_orig_mod."): v for k, v in model_state.items()}
    check_state(model, model_state, era)
    try:
        model.load_state_dict(model_state, strict=True)
    except RuntimeError as e:  # (check_state has named missing, unexpected and reshaped tensors)
        raise UserError(f"checkpoint does not match its model_config: {' '.join(str(e).split())}") from None
    return model


def build_model(checkpoint_dir, step, device, phase):
    """Returns (model, tokenizer, meta) for one checkpoint; phase 'train' or 'eval'."""
    from nanochat.tokenizer import get_tokenizer
    model_state, _, meta = load_checkpoint(checkpoint_dir, step, device)
    if "lora" in meta:  # a LoRA adapter: its base checkpoint, with the adapter folded in (nanochat.lora)
        from nanochat.lora import model_from_adapter
        model = model_from_adapter(model_state, meta, device, checkpoint_dir)
    else:
        model = model_from_state(model_state, meta["model_config"], device)
    model.train() if phase == "train" else model.eval()
    try:
        tokenizer = get_tokenizer()
    except FileNotFoundError as e:
        raise UserError(str(e)) from None
    if tokenizer.get_vocab_size() != model.config.vocab_size:
        raise UserError(f"the tokenizer has {tokenizer.get_vocab_size()} tokens but the model expects "
                        f"{model.config.vocab_size}: the tokenizer under {get_base_dir()}/tokenizer is not the one this model was trained with")
    return model, tokenizer, meta


def load_model(source, device, phase, model_tag=None, step=None):
    """
    Load a model by stage: source is 'base', 'mid', 'sft' or 'rl'. model_tag defaults to the
    deepest model, step to the latest complete checkpoint. Returns (model, tokenizer, meta).
    A LoRA adapter checkpoint comes back as its base model with the adapter merged in.
    """
    checkpoints_dir = get_checkpoints_dir(source)
    if model_tag is None:
        model_tag = find_model_tag(checkpoints_dir)
    checkpoint_dir = os.path.join(checkpoints_dir, model_tag)
    if not os.path.isdir(checkpoint_dir):
        raise UserError(f"no model tag {model_tag!r} in {checkpoints_dir}")
    if step is None:
        step = find_last_step(checkpoint_dir)
    return build_model(checkpoint_dir, step, device, phase)

