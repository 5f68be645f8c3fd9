"""
Our checkpoints as Hugging Face transformers folders and back (scripts.export_hf, scripts.import_hf).

A folder is config.json, generation_config.json, model.safetensors and the tokenizer files
(nanochat.hf_tokenizer). Two kinds:
- "native": transformers' own `nanochat` model type (the October 2025 architecture), loaded by
  plain AutoModelForCausalLM.from_pretrained(folder). It expresses our default model and these
  options: any width/depth/heads/GQA, relu^2 MLP of any hidden size, tied embeddings, the rotary
  base, a padded vocabulary (the padding rows are dropped: no token id reaches them). Names:
      transformer.wte.weight               <-> model.embed_tokens.weight
      transformer.h.{i}.attn.c_q|c_k|c_v|c_proj.weight <-> model.layers.{i}.self_attn.q_proj|k_proj|v_proj|o_proj.weight
      transformer.h.{i}.mlp.c_fc|c_proj.weight         <-> model.layers.{i}.mlp.fc1|fc2.weight
      lm_head.weight                       <-> lm_head.weight (absent when tied)
  (our weightless RMSNorms, ln_e / ln_1 / ln_2 / ln_f, have no tensors; neither have theirs).
  One numerical difference: transformers computes the rotary tables in the model's dtype, while
  our rope_dtype "bf16" (the default, as nanochat 2025) rounds them to bf16 first. In bf16 the two
  agree; in fp32 logits differ by about 1e-2. rope_dtype "compute", or --remote_code, is exact.
- "remote": everything else, as our own modeling file (nanochat/hf_modeling_template.py, copied
  in, model_type nanochat_ext, auto_map in config.json), loaded with trust_remote_code=True; the
  safetensors hold our state dict under our names and config.json our GPTConfig fields.
A GPTConfig field that neither can compute, set away from its default, is refused (UserError).

transformers and safetensors are optional (pip install '.[hf]'): imported only in here, when used.
"""
import ast
import json
import os
import shutil

import torch

from nanochat.common import UserError
from nanochat.gpt import GPTConfig
from nanochat.hf_tokenizer import write_hf_tokenizer

TEMPLATE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hf_modeling_template.py")
REMOTE_TYPE, REMOTE_MODULE = "nanochat_ext", "modeling_nanochat_ext"
NATIVE_TYPE = "nanochat"
SOFTCAP = 15.0
# GPTConfig fields that transformers' nanochat type takes as they are (or, pad_vocab_to, by cropping);
# init_scheme only says how training starts
NATIVE_FIELDS = {"sequence_len", "vocab_size", "n_layer", "n_head", "n_kv_head", "n_embd", "head_dim", "mlp_hidden",
                 "tie_embeddings", "rope_base", "rope_dtype", "pad_vocab_to", "init_scheme",
                 "window_short"}  # (the S window: nothing without a window_pattern, which native cannot do)
NATIVE_LAYER = {"attn.c_q": "self_attn.q_proj", "attn.c_k": "self_attn.k_proj", "attn.c_v": "self_attn.v_proj",
                "attn.c_proj": "self_attn.o_proj", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def need(module):
    """Import an optional dependency, or a one-line UserError saying how to install it."""
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"{module} is not installed: pip install -e '.[hf]' (transformers and safetensors)") from None


def remote_options():
    """The template's OPTIONS (field -> off value), read from its source: no transformers import needed."""
    with open(TEMPLATE, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "OPTIONS":
            return {kw.arg: ast.literal_eval(kw.value) for kw in node.value.keywords}
    raise RuntimeError(f"no OPTIONS in {TEMPLATE}")


def _changed(config):
    """{field: value} of the GPTConfig fields away from their defaults (head_dim, mlp_hidden: from what they derive from)."""
    default, derived = GPTConfig(), GPTConfig(n_embd=config.n_embd, n_head=config.n_head, mlp=config.mlp, attn=config.attn)
    return {k: v for k, v in config.to_dict().items()
            if v != getattr(derived if k in ("head_dim", "mlp_hidden") else default, k)}


def native_problem(config):
    """Why transformers' nanochat type cannot compute this config (None: it can)."""
    for k, v in _changed(config).items():
        if k not in NATIVE_FIELDS:
            return f"{k}={v!r}"
    return None


def remote_problem(config):
    """A GPTConfig field our modeling file does not compute, set away from its default (None: all fine)."""
    known = remote_options()
    for k, v in _changed(config).items():
        if k not in known:
            return f"{k}={v!r}"
    return None


def choose_kind(config, remote_code=False):
    """'native' or 'remote'; UserError when neither can express the config."""
    problem = remote_problem(config)
    if problem:
        raise UserError(f"cannot export {problem}: the Hugging Face modeling file does not compute it yet "
                        f"(add it to nanochat/hf_modeling_template.py OPTIONS)")
    return "remote" if remote_code or native_problem(config) else "native"

# -----------------------------------------------------------------------------
# state dicts and configs

def native_state_dict(state, config):
    """Our state dict -> transformers' nanochat names (padding rows dropped, lm_head left out when tied)."""
    V = config.vocab_size
    out = {"model.embed_tokens.weight": state["transformer.wte.weight"][:V]}
    if not config.tie_embeddings:
        out["lm_head.weight"] = state["lm_head.weight"][:V]
    for i in range(config.n_layer):
        for ours, theirs in NATIVE_LAYER.items():
            out[f"model.layers.{i}.{theirs}.weight"] = state[f"transformer.h.{i}.{ours}.weight"]
    return out


def state_dict_from_native(tensors, config):
    """transformers' nanochat tensors -> our state dict for config (padding rows zero, lm_head = wte when tied)."""
    from nanochat.arch2026 import padded_vocab
    def padded(t):
        extra = padded_vocab(config) - t.size(0)
        return torch.cat([t, t.new_zeros(extra, t.size(1))]) if extra else t
    wte = padded(tensors["model.embed_tokens.weight"])
    state = {"transformer.wte.weight": wte}
    state["lm_head.weight"] = wte if config.tie_embeddings else padded(tensors["lm_head.weight"])
    for i in range(config.n_layer):
        for ours, theirs in NATIVE_LAYER.items():
            state[f"transformer.h.{i}.{ours}.weight"] = tensors[f"model.layers.{i}.{theirs}.weight"]
    return state


def token_ids(tokenizer):
    sp = tokenizer.encode_special
    return {"bos_token_id": tokenizer.get_bos_token_id(), "eos_token_id": [sp("<|assistant_end|>"), tokenizer.get_bos_token_id()]}


def native_config(config, dtype, ids):
    return {
        "architectures": ["NanoChatForCausalLM"], "model_type": NATIVE_TYPE, "dtype": dtype,
        "vocab_size": config.vocab_size, "hidden_size": config.n_embd, "intermediate_size": config.mlp_hidden,
        "num_hidden_layers": config.n_layer, "num_attention_heads": config.n_head, "num_key_value_heads": config.n_kv_head,
        "max_position_embeddings": config.sequence_len, "hidden_act": "relu2",
        "rms_norm_eps": torch.finfo(torch.float32).eps,  # ours: F.rms_norm's default, finfo(dtype).eps
        "rope_parameters": {"rope_type": "default", "rope_theta": float(config.rope_base)},
        "final_logit_softcapping": SOFTCAP, "attention_bias": False, "attention_dropout": 0.0,
        "tie_word_embeddings": config.tie_embeddings, "use_cache": True,
        "bos_token_id": ids["bos_token_id"], "eos_token_id": ids["eos_token_id"][0],
        "pad_token_id": None,  # (transformers' embedding would freeze the pad row's gradient)
    }


def remote_config(config, dtype, ids):
    doc = {"architectures": ["NanoChatExtForCausalLM"], "model_type": REMOTE_TYPE, "dtype": dtype,
           "auto_map": {"AutoConfig": f"{REMOTE_MODULE}.NanoChatExtConfig",
                        "AutoModelForCausalLM": f"{REMOTE_MODULE}.NanoChatExtForCausalLM"},
           "use_cache": True, "bos_token_id": ids["bos_token_id"], "eos_token_id": ids["eos_token_id"][0]}
    known = remote_options()
    doc.update({k: v for k, v in config.to_dict().items() if k in known})
    return doc

# -----------------------------------------------------------------------------
# export

def export_folder(model, tokenizer, out_dir, dtype="float32", remote_code=False, origin=None):
    """
    Write model (our GPT) and tokenizer as a transformers folder. Returns 'native' or 'remote'.
    origin: {"source", "model_tag", "step"} recorded in config.json (import_hf reads it back).
    """
    save_file = need("safetensors.torch").save_file
    config = model.config
    kind = choose_kind(config, remote_code)
    if tokenizer.get_vocab_size() != config.vocab_size:
        raise UserError(f"the tokenizer has {tokenizer.get_vocab_size()} tokens, the model {config.vocab_size}")
    state = {k.removeprefix("_orig_mod."): v for k, v in model.state_dict().items()}
    if kind == "native":
        tensors = native_state_dict(state, config)
        doc = native_config(config, dtype, token_ids(tokenizer))
    else:
        tensors = {k: v for k, v in state.items() if not (config.tie_embeddings and k == "lm_head.weight")}
        doc = remote_config(config, dtype, token_ids(tokenizer))
    # our whole config and where it came from, so import_hf restores it exactly (transformers keeps unknown keys)
    doc["nanochat_config"] = config.to_dict()
    if origin:
        doc["nanochat_origin"] = origin
    os.makedirs(out_dir, exist_ok=True)
    # cloned: safetensors refuses tensors that share memory (tied weights, slices of the padded vocab)
    save_file({k: v.detach().to(DTYPES[dtype]).contiguous().clone() for k, v in tensors.items()},
              os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    _write_json(os.path.join(out_dir, "config.json"), doc)
    ids = token_ids(tokenizer)
    _write_json(os.path.join(out_dir, "generation_config.json"),
                {"bos_token_id": ids["bos_token_id"], "eos_token_id": ids["eos_token_id"],
                 # a stop token: generate() then never takes a prompt's <|bos|> for padding
                 "pad_token_id": ids["eos_token_id"][0], "max_length": config.sequence_len})
    write_hf_tokenizer(tokenizer, out_dir, config.sequence_len)
    stale = os.path.join(out_dir, REMOTE_MODULE + ".py")
    if kind == "remote":
        shutil.copyfile(TEMPLATE, stale)
    elif os.path.exists(stale):  # (a remote export written here before)
        os.remove(stale)
    return kind


def _write_json(path, doc):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2, ensure_ascii=False)
        f.write("\n")

# -----------------------------------------------------------------------------
# import

def read_tensors(folder):
    """model.safetensors, or the shards named in model.safetensors.index.json -> {name: tensor}."""
    load_file = need("safetensors.torch").load_file
    single, index = os.path.join(folder, "model.safetensors"), os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(single):
        return load_file(single)
    if os.path.exists(index):
        with open(index, encoding="utf-8") as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        tensors = {}
        for shard in shards:
            tensors.update(load_file(os.path.join(folder, shard)))
        return tensors
    raise UserError(f"no model.safetensors (or model.safetensors.index.json) in {folder}")


def _gpt_config(fields):
    known = set(GPTConfig.__dataclass_fields__)
    unknown = sorted(set(fields) - known)
    if unknown:
        raise UserError(f"the folder's config has {unknown[0]}={fields[unknown[0]]!r}, which our GPTConfig does not know")
    try:
        return GPTConfig(**fields).validate()
    except (TypeError, ValueError) as e:
        raise UserError(f"the folder's model config is not one we can build: {e}") from None


def config_from_native(doc):
    """Our GPTConfig for a transformers nanochat config.json (UserError for what ours does not compute)."""
    def check(ok, what):
        if not ok:
            raise UserError(f"cannot import this nanochat model: {what}")
    rope = doc.get("rope_parameters") or {"rope_type": "default", "rope_theta": doc.get("rope_theta", 10000.0)}
    check(doc.get("hidden_act", "relu2") == "relu2", f"hidden_act {doc.get('hidden_act')!r} (ours: relu2)")
    check(doc.get("final_logit_softcapping", SOFTCAP) == SOFTCAP, f"final_logit_softcapping {doc.get('final_logit_softcapping')} (ours: 15)")
    check(not doc.get("attention_bias"), "attention biases (ours have none)")
    check(rope.get("rope_type", "default") == "default", f"rope_type {rope.get('rope_type')!r} (ours: default)")
    theta = float(rope.get("rope_theta", 10000.0))
    check(theta == int(theta), f"rope_theta {theta} (ours: a whole number)")
    n_embd, n_head = doc.get("hidden_size", 768), doc.get("num_attention_heads", 6)
    check(doc.get("head_dim") in (None, n_embd // n_head), f"head_dim {doc.get('head_dim')} != hidden_size / heads")
    fields = dict(sequence_len=doc.get("max_position_embeddings", 2048), vocab_size=doc.get("vocab_size", 50304),
                  n_layer=doc.get("num_hidden_layers", 12), n_head=n_head, n_kv_head=doc.get("num_key_value_heads") or n_head,
                  n_embd=n_embd, mlp_hidden=doc.get("intermediate_size", 8192),
                  tie_embeddings=bool(doc.get("tie_word_embeddings", False)), rope_base=int(theta),
                  # transformers does not round the rotary tables: "compute" is its function, in fp32 and in bf16
                  rope_dtype="compute")
    saved = doc.get("nanochat_config")
    if saved and all(saved.get(k) == v for k, v in fields.items() if k != "rope_dtype"):
        return _gpt_config(saved)  # one of ours: its exact config (rope_dtype, padding, init scheme)
    return _gpt_config(fields)


def read_folder(folder):
    """A transformers folder -> (our GPTConfig, our state dict, config.json as a dict)."""
    path = os.path.join(folder, "config.json")
    if not os.path.exists(path):
        raise UserError(f"no config.json in {folder}: not a transformers model folder")
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    kind = doc.get("model_type")
    if kind == NATIVE_TYPE:
        config = config_from_native(doc)
        tensors = read_tensors(folder)
        try:
            state = state_dict_from_native(tensors, config)
        except KeyError as e:
            raise UserError(f"{folder}: the weights lack {e.args[0]}") from None
    elif kind == REMOTE_TYPE:
        known, options = set(GPTConfig.__dataclass_fields__), remote_options()
        for k, off in options.items():
            if k not in known and doc.get(k, off) != off:
                raise UserError(f"the folder's model has {k}={doc[k]!r}, which our GPTConfig does not know")
        config = _gpt_config({k: v for k, v in doc.items() if k in options and k in known})
        state = read_tensors(folder)
        if config.tie_embeddings:
            state["lm_head.weight"] = state["transformer.wte.weight"]
    else:
        raise UserError(f"{folder} holds a {kind!r} model: only nanochat models ({NATIVE_TYPE}, {REMOTE_TYPE}) can be imported")
    return config, state, doc
