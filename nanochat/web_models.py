"""
The web server's model registry: every checkpoint under $NANOCHAT_BASE_DIR by name
("stage/tag/step"), a request's model name resolved to one of them, and a Worker (one device and
the models loaded on it). Which steps exist is checkpoint_manager's to say (checkpoint_steps).
"""
import os
import re
from collections import OrderedDict

from nanochat.checkpoint_manager import PHASE_DIRS, checkpoint_steps, find_model_tag, get_checkpoints_dir, load_model
from nanochat.common import UserError
from nanochat.engine import Engine
from nanochat.web_request import ApiError

TAG = re.compile(r"[\w.+-]{1,100}")  # a model tag as a folder name: no separators, no control characters


def list_checkpoints():
    """Every complete checkpoint under the base dir, as dicts: id ("stage/tag/step"), stage, tag, step, created."""
    found = []
    for stage in PHASE_DIRS:
        root = get_checkpoints_dir(stage)
        if not os.path.isdir(root):
            continue
        for tag in os.listdir(root):
            d = os.path.join(root, tag)
            if not os.path.isdir(d):
                continue
            for step in checkpoint_steps(d):
                try:
                    created = int(os.path.getmtime(os.path.join(d, f"model_{step:06d}.pt")))
                except OSError:  # removed meanwhile (keep_last), or not named as load_checkpoint reads it
                    continue
                found.append(dict(id=f"{stage}/{tag}/{step}", stage=stage, tag=tag, step=step, created=created))
    stages = list(PHASE_DIRS)
    found.sort(key=lambda c: (stages.index(c["stage"]), c["tag"], -c["step"]))
    return found


def _split_name(name):
    """ "stage[/tag[/step]]" -> (stage, tag or None, step or None); raises ApiError for a malformed name."""
    parts = name.split("/")
    stage, tag, step = parts + [None] * (3 - len(parts)) if len(parts) <= 3 else (None, None, None)
    if stage not in PHASE_DIRS or (tag is not None and (not TAG.fullmatch(tag) or tag.startswith("."))) \
            or (step is not None and not re.fullmatch(r"[0-9]{1,12}", step)):
        raise ApiError(400, f"unknown model {name[:200]!r}: names are stage[/tag[/step]] with stage one of "
                            f"{', '.join(PHASE_DIRS)}; GET /v1/models lists them", "model", "model_not_found")
    return stage, tag, int(step) if step is not None else None


def resolve_model(name, default):
    """
    A model name -> (stage, tag, step) of an existing checkpoint. Names are "stage", "stage/tag" or
    "stage/tag/step" (tag defaults to the deepest model, step to the latest); None, "", "default" and
    "nanochat" mean the server's default, itself a (stage, tag or None, step or None).
    """
    stage, tag, step = default if name in (None, "", "default", "nanochat") else _split_name(name)
    try:
        root = get_checkpoints_dir(stage)
        tag = tag or find_model_tag(root)
        d = os.path.join(root, tag)
        if not os.path.isdir(d):
            raise UserError(f"no model tag {tag!r} in {root}")
        steps = checkpoint_steps(d)
        if not steps:
            raise UserError(f"no checkpoints in {d}")
        if step is None:
            step = steps[-1]
        elif step not in steps:
            raise UserError(f"no checkpoint at step {step} in {d}")
    except UserError as e:
        raise ApiError(400, f"model {(name or 'default')[:200]!r}: {e}", "model", "model_not_found") from None
    return stage, tag, step


class Worker:
    """One device and the models loaded on it (the least recently used is dropped past max_models)."""
    def __init__(self, device, max_models=2):
        self.device = device
        self.max_models = max(1, max_models)
        self.models = OrderedDict()  # (stage, tag, step) -> (engine, tokenizer, meta)

    def get(self, key):
        """(engine, tokenizer, meta, loaded_now) for a resolved (stage, tag, step); raises UserError."""
        if key in self.models:
            self.models.move_to_end(key)
            return self.models[key] + (False,)
        while len(self.models) >= self.max_models:  # free memory before loading the next one
            self.models.popitem(last=False)
            if self.device.type == "cuda":
                import torch
                torch.cuda.empty_cache()
        stage, tag, step = key
        model, tokenizer, meta = load_model(stage, self.device, phase="eval", model_tag=tag, step=step)
        self.models[key] = (Engine(model, tokenizer), tokenizer, meta)
        return self.models[key] + (True,)
