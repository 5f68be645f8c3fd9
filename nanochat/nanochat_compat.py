"""
Which model a checkpoint's model_config and tensors describe, and a check that they agree, so a
checkpoint either loads into a model that computes what it was trained to compute or is refused
with one line naming what does not fit. Two eras of karpathy/nanochat load, besides our own:

  October 2025 (dfc8833)  model_config {sequence_len, vocab_size, n_layer, n_head, n_kv_head, n_embd}:
                          our default architecture, the same fields, the same tensor names
  2026 (92d63d4)          the same six and window_pattern: our 2026 options (nanochat.arch2026) with
                          the values nanochat's gpt.py fixes in code (NANOCHAT_2026), window_pattern as
                          it is; the tensor names are nanochat's (resid_lambdas, x0_lambdas,
                          smear_gate, smear_lambda, backout_lambda, value_embeds.<i>,
                          transformer.h.<i>.attn.ve_gate), wte / lm_head / value_embeds padded to 64
A model_config with any other of our fields is one of ours. torch.compile's `_orig_mod.` prefix is
dropped; bf16 tensors are cast to the model's dtype by the load.
"""
from dataclasses import fields

from nanochat.common import UserError
from nanochat.gpt import GPTConfig

NANOCHAT_2025_KEYS = ("sequence_len", "vocab_size", "n_layer", "n_head", "n_kv_head", "n_embd")
NANOCHAT_2026_KEYS = NANOCHAT_2025_KEYS + ("window_pattern",)
# What nanochat 92d63d4's GPT does without a config key for it, as our options. Pinned here rather
# than taken from arch2026.PRESET: a checkpoint's function is fixed, whatever our training preset
# becomes. (window_short 0 is its S window, ceil(sequence_len/4/128)*128; init_scheme only matters
# for a fresh model, and is its for a config that describes it.)
NANOCHAT_2026 = dict(value_embeds=True, smear=True, layer_lambdas=True, backout=True, qk_gain=1.2,
                     rope_base=100000, rope_dtype="compute", window_short=0, pad_vocab_to=64, init_scheme="2026")
ERAS = "nanochat's October 2025 (dfc8833) and 2026 (92d63d4) checkpoints, and ours"


def era(model_config):
    """'2025' or '2026' for a nanochat model_config, None for one of ours."""
    keys = set(model_config)
    if keys <= set(NANOCHAT_2025_KEYS):
        return "2025"
    if keys <= set(NANOCHAT_2026_KEYS):
        return "2026"
    return None


def config_from_checkpoint(model_config):
    """(GPTConfig, era) for a checkpoint's model_config; UserError for keys we do not know or a config that cannot work."""
    known = {f.name for f in fields(GPTConfig)}
    unknown = sorted(set(model_config) - known)
    if unknown:
        raise UserError(f"the checkpoint's model_config has keys this version does not know: {', '.join(unknown)} "
                        f"(loadable: {ERAS}); not loaded, so as not to build a model that computes something else")
    which = era(model_config)
    kwargs = dict(model_config)
    if which is not None:
        missing = [k for k in NANOCHAT_2025_KEYS if k not in kwargs]
        if missing:  # nanochat's defaults differ from ours: do not fill them in
            raise UserError(f"the checkpoint's model_config lacks {', '.join(missing)}")
    if which == "2026":
        lacking = sorted(set(NANOCHAT_2026) - known)
        if lacking:
            raise UserError(f"a nanochat 2026 checkpoint needs model options this version lacks: {', '.join(lacking)}")
        kwargs.update(NANOCHAT_2026)
    try:
        return GPTConfig(**kwargs).validate(), which
    except (TypeError, ValueError) as e:
        raise UserError(f"the checkpoint's model_config cannot work: {e}") from None


def _names(keys, limit=6):
    keys = sorted(keys)
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def check_state(model, state, which):
    """UserError naming the tensors a state dict has that the model does not, lacks, or has in another shape."""
    expected = model.state_dict()
    unexpected = set(state) - set(expected)
    missing = set(expected) - set(state)
    shapes = [f"{k} {tuple(state[k].shape)} (the model's: {tuple(v.shape)})" for k, v in expected.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if not (unexpected or missing or shapes):
        return
    what = "its model_config" if which is None else f"nanochat's {which} architecture"
    parts = [f"unexpected {_names(unexpected)}"] if unexpected else []
    parts += [f"missing {_names(missing)}"] if missing else []
    parts += [f"other shapes: {'; '.join(shapes[:3])}"] if shapes else []
    hint = f" (loadable: {ERAS})" if which is not None else ""
    raise UserError(f"the checkpoint's tensors do not fit {what}: {'; '.join(parts)}{hint}")
