"""
LoRA (Hu et al., 2021, "LoRA: Low-Rank Adaptation of Large Language Models", arXiv:2106.09685):
fine-tune a model by training, beside each chosen projection W (out x in), two small matrices
A (rank x in) and B (out x rank), while every weight of the base model stays frozen:

    y = x W^T + (alpha / rank) * dropout(x) A^T B^T

B starts at zero, so a fresh adapter computes exactly the base model's function; A starts like
nn.Linear's weight. Only A and B get gradients and optimizer state (nanochat.optim gives them an
AdamW group of their own, at --lora_lr), which is what lets a larger model fit a card
(nanochat.vram_lora). The wrapped projection keeps its parameter name (`...attn.c_q.weight`),
and the adapters add `...attn.c_q.lora_A` and `...lora_B` beside it.

Checkpoints of a LoRA run hold the adapters alone (model_<step>.pt: a few MB) and a meta whose
"lora" entry names the base checkpoint (source, model_tag, step, and a fingerprint of its
weights) and the settings. checkpoint_manager.load_model loads such a checkpoint by loading
its base and folding the adapter in (merge_lora), so chat_cli, chat_web and chat_eval take it
like any other; `python -m scripts.lora_merge` writes that merged model as a normal checkpoint.

Targets (--lora_targets): q, k, v, o (the attention's c_q, c_k, c_v, c_proj) and mlp (every
linear of the MLP: c_fc, c_gate, c_proj, of each expert in a mixture of experts; never the
router); "attn" is q,k,v,o and "all" everything. The embedding, the lm_head and the norms are
never adapted.
"""
import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from nanochat.common import UserError

TARGETS = ("q", "k", "v", "o", "mlp")
_LINEARS = {"q": ("attn", "c_q"), "k": ("attn", "c_k"), "v": ("attn", "c_v"), "o": ("attn", "c_proj")}
_ALIASES = {"attn": ("q", "k", "v", "o"), "all": TARGETS}
DEFAULTS = dict(lora_rank=0, lora_alpha=0.0, lora_dropout=0.0, lora_targets="all", lora_lr=1e-3)


def parse_targets(spec):
    """'q,v' -> ('q', 'v'); 'attn', 'all' expand; raises UserError for an unknown name or none."""
    names = set()
    for part in str(spec).replace(" ", "").split(","):
        if not part:
            continue
        if part not in TARGETS and part not in _ALIASES:
            raise UserError(f"--lora_targets {spec!r}: unknown {part!r}; choose from {', '.join(TARGETS)} (or attn, all)")
        names.update(_ALIASES.get(part, (part,)))
    if not names:
        raise UserError(f"--lora_targets {spec!r}: name at least one of {', '.join(TARGETS)}")
    return tuple(t for t in TARGETS if t in names)


class LoRALinear(nn.Module):
    """A frozen linear (bias-free, as every linear of gpt.py) plus a trainable low-rank update."""

    def __init__(self, linear, rank, alpha, dropout):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight  # the same Parameter: the state dict keeps its name
        self.weight.requires_grad_(False)
        self.rank, self.alpha, self.dropout = rank, alpha, dropout
        self.scale = alpha / rank
        w = linear.weight
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, device=w.device, dtype=torch.float32))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, device=w.device, dtype=torch.float32))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # nn.Linear's init: U(-1/sqrt(in), 1/sqrt(in))

    def forward(self, x):
        y = F.linear(x, self.weight)
        h = F.dropout(x, self.dropout, self.training) if self.dropout > 0 else x
        # the scale on the rank-wide tensor, not the output: the same function, a smaller product
        return y + F.linear(F.linear(h, self.lora_A) * self.scale, self.lora_B)

    def merged_weight(self):
        """W + (alpha / rank) B A, in fp32 on the weight's device."""
        with torch.no_grad():
            return self.weight.float() + self.scale * (self.lora_B.float() @ self.lora_A.float())

    def extra_repr(self):
        return f"{self.in_features}, {self.out_features}, rank={self.rank}, alpha={self.alpha:g}, dropout={self.dropout:g}"


def _target_linears(model, targets):
    """(parent module, attribute name, full name) of every linear the targets name."""
    found = []
    for i, block in enumerate(model.transformer.h):
        for t in targets:
            if t in _LINEARS:
                part, attr = _LINEARS[t]
                found.append((getattr(block, part), attr, f"transformer.h.{i}.{part}.{attr}"))
        if "mlp" in targets:
            mlp = block.mlp
            experts = list(enumerate(mlp.experts)) if hasattr(mlp, "experts") else [(None, mlp)]
            for e, m in experts:
                prefix = f"transformer.h.{i}.mlp" + (f".experts.{e}" if e is not None else "")
                for attr in ("c_fc", "c_gate", "c_proj"):
                    if isinstance(getattr(m, attr, None), nn.Linear):
                        found.append((m, attr, f"{prefix}.{attr}"))
    return found


def fingerprint(model):
    """A number that changes when the base weights do (the sum of |w| over every non-adapter
    parameter, in float64): an adapter remembers its base's, so a base retrained under the same
    tag and step is found out."""
    with torch.no_grad():
        return float(sum(p.detach().double().abs().sum() for n, p in model.named_parameters() if ".lora_" not in n))


def apply_lora(model, rank, alpha=0.0, dropout=0.0, targets=TARGETS, base=None):
    """
    Freeze every parameter of model and put an adapter on each targeted linear (in place; returns
    the model). alpha 0: the rank (scale 1). base: {"source", "model_tag", "step"} of the
    checkpoint the model was loaded from, recorded with its fingerprint for the adapter's meta.
    The settings go to model.lora (read by the trainer, the optimizer and the memory estimate).
    """
    targets = parse_targets(",".join(targets) if isinstance(targets, (list, tuple)) else targets)
    if getattr(model, "lora", None):
        raise UserError("this model has adapters already: merge them first (nanochat.lora.merge_lora)")
    if not isinstance(rank, int) or rank <= 0:
        raise UserError(f"--lora_rank must be a positive integer, got {rank!r}")
    if not 0 <= dropout < 1:
        raise UserError(f"--lora_dropout must be in [0, 1), got {dropout}")
    if alpha < 0:
        raise UserError(f"--lora_alpha must be positive (0: the rank), got {alpha}")
    linears = _target_linears(model, targets)
    narrowest = min(min(getattr(parent, attr).weight.shape) for parent, attr, _ in linears)
    if rank > narrowest:
        raise UserError(f"--lora_rank {rank} is larger than the narrowest adapted projection ({narrowest}): "
                        f"a rank above it adds parameters, not capacity")
    alpha = float(alpha or rank)
    if base is not None:
        base = {**base, "fingerprint": fingerprint(model)}
    for p in model.parameters():
        p.requires_grad_(False)
    for parent, attr, _ in linears:
        setattr(parent, attr, LoRALinear(getattr(parent, attr), rank, alpha, dropout))
    model.lora = {"rank": rank, "alpha": alpha, "dropout": dropout, "targets": list(targets), "base": base}
    return model


def lora_settings(model):
    """The model's LoRA settings (see apply_lora), or None for a plain model."""
    return getattr(model, "lora", None) or None


def adapter_modules(model):
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LoRALinear)]


def adapter_parameters(model):
    """The adapters' A and B matrices, in model order (empty for a plain model)."""
    return [p for _, m in adapter_modules(model) for p in (m.lora_A, m.lora_B)]


def adapter_state(model):
    """The adapters' tensors by parameter name: what an adapter checkpoint holds."""
    return {f"{name}.{k}": getattr(m, k).detach() for name, m in adapter_modules(model) for k in ("lora_A", "lora_B")}


def model_state(model):
    """What a checkpoint of model saves: the adapters alone with LoRA, else the whole state dict."""
    return adapter_state(model) if lora_settings(model) else model.state_dict()


def load_adapter(model, state, where="the checkpoint"):
    """Copy an adapter state into model's adapters: exactly the same names and shapes, or a one-line UserError."""
    state = {k.removeprefix("_orig_mod."): v for k, v in state.items()}
    ours = adapter_state(model)
    if set(state) != set(ours):
        missing, extra = sorted(set(ours) - set(state)), sorted(set(state) - set(ours))
        raise UserError(f"{where} does not hold these adapters: "
                        + (f"missing {missing[0]} ({len(missing)} in all)" if missing else f"unexpected {extra[0]} ({len(extra)} in all)"))
    with torch.no_grad():
        for name, m in adapter_modules(model):
            for k in ("lora_A", "lora_B"):
                t = state[f"{name}.{k}"]
                if t.shape != getattr(m, k).shape:
                    raise UserError(f"{where}: {name}.{k} is {tuple(t.shape)}, the model's adapter is {tuple(getattr(m, k).shape)}")
                getattr(m, k).copy_(t)


def load_model_state(model, state, where="the checkpoint"):
    """A checkpoint's model state into model (the trainer's resume): its adapters, or every weight."""
    if lora_settings(model):
        load_adapter(model, state, where)
    else:
        model.load_state_dict({k.removeprefix("_orig_mod."): v for k, v in state.items()})


@torch.no_grad()
def merge_lora(model):
    """Fold every adapter into its weight (W + scale B A) and make the model a plain one again, all
    of it trainable (in place; returns it). The merged function is the adapted one (fp32 rounding aside)."""
    for name, m in adapter_modules(model):
        parent = model.get_submodule(name.rpartition(".")[0])
        linear = nn.Linear(m.in_features, m.out_features, bias=False, device="meta")
        linear.weight = nn.Parameter(m.merged_weight().to(m.weight.dtype))
        setattr(parent, name.rpartition(".")[2], linear)
    for p in model.parameters():
        p.requires_grad_(True)
    model.lora = None
    return model


def lora_meta(model):
    """The meta entry of a checkpoint: {"lora": settings and base} with adapters, else nothing."""
    settings = lora_settings(model)
    return {"lora": dict(settings)} if settings else {}


def count_adapter_params(model):
    return sum(p.numel() for p in adapter_parameters(model))


def estimate_flops(model):
    """
    Training FLOPs per token (GPT.estimate_flops for a plain model). With LoRA the frozen weights
    need no weight gradient: 4 FLOPs per frozen matmul weight (forward and input gradient)
    instead of 6, 6 per adapter weight, attention as before. (The first projections, whose input
    needs no gradient either, are counted at 4 too: a small overcount.)
    """
    full = model.estimate_flops()
    if not lora_settings(model):
        return full
    frozen = (full - _attention_flops(model.config)) // 6 - count_adapter_params(model)  # frozen matmul weights
    return full - 2 * frozen


def _attention_flops(c):
    heads = 3 * c.n_head if c.attn == "diff" else c.n_head
    return 12 * c.n_layer * heads * c.head_dim * c.sequence_len


def check_resume(model, meta, where):
    """A resumed run must have the checkpoint's adapters (or none, as it had) on the same base: else a one-line UserError."""
    ours, saved = lora_settings(model), meta.get("lora")
    if saved and not ours:
        raise UserError(f"the checkpoint in {where} is a LoRA adapter (rank {saved['rank']}, targets {','.join(saved['targets'])}): "
                        f"resume with --lora_rank {saved['rank']} --lora_targets {','.join(saved['targets'])}")
    if ours and not saved:
        raise UserError(f"the checkpoint in {where} is a full model, not a LoRA adapter: resume it without --lora_rank, "
                        f"or start the adapter in another --output_tag")
    if not ours:
        return
    for key in ("rank", "alpha", "dropout", "targets"):
        if saved.get(key) != ours[key]:
            raise UserError(f"the adapter in {where} has {key} {saved.get(key)}, these flags make {ours[key]}: "
                            f"resume with the same --lora_{key}")
    _check_base(saved.get("base") or {}, ours.get("base") or {}, where)


def _check_base(saved, ours, where):
    name = lambda b: f"{b.get('source')}/{b.get('model_tag')} step {b.get('step')}"
    if any(saved.get(k) != ours.get(k) for k in ("source", "model_tag", "step")):
        raise UserError(f"the adapter in {where} was trained on {name(saved)}, this run starts from {name(ours)}: "
                        f"pass --source/--model_tag/--step of its base to resume it")
    a, b = saved.get("fingerprint"), ours.get("fingerprint")
    if a is not None and b is not None and abs(a - b) > 1e-5 * max(abs(a), abs(b), 1e-30):
        raise UserError(f"the adapter in {where} was trained on {name(saved)}, whose weights have changed since "
                        f"(retrained under the same tag and step?): it no longer fits that base")


def model_from_adapter(adapter_state_dict, meta, device, where):
    """
    An adapter checkpoint as a plain model: its base checkpoint loaded (itself perhaps an
    adapter, loaded the same way), the adapter applied and folded in. A missing or changed base,
    or an adapter that does not fit it, is a one-line UserError.
    """
    from nanochat.checkpoint_manager import PHASE_DIRS, get_checkpoints_dir, load_checkpoint, model_from_state
    settings = meta["lora"]
    base = settings.get("base") or {}
    if base.get("source") not in PHASE_DIRS or not base.get("model_tag") or not isinstance(base.get("step"), int):
        raise UserError(f"the LoRA adapter in {where} does not say which base it belongs to (meta 'lora.base')")
    base_dir = os.path.join(get_checkpoints_dir(base["source"]), base["model_tag"])
    label = f"{base['source']}/{base['model_tag']} step {base['step']}"
    if not os.path.exists(os.path.join(base_dir, f"meta_{base['step']:06d}.json")):
        raise UserError(f"the LoRA adapter in {where} belongs to the base checkpoint {label}, which is missing "
                        f"({base_dir}): put it back, or load a full checkpoint")
    base_state, _, base_meta = load_checkpoint(base_dir, base["step"], device)
    if "lora" in base_meta:
        model = model_from_adapter(base_state, base_meta, device, base_dir)
    else:
        model = model_from_state(base_state, base_meta["model_config"], device)
    if meta.get("model_config") and model.config.to_dict() != type(model.config)(**{
            k: v for k, v in meta["model_config"].items() if k in type(model.config).__dataclass_fields__}).to_dict():
        raise UserError(f"the LoRA adapter in {where} was made for another architecture than its base {label} has now")
    _check_base(base, {**base, "fingerprint": fingerprint(model)}, where)
    apply_lora(model, settings["rank"], settings["alpha"], settings.get("dropout", 0.0), settings["targets"])
    load_adapter(model, adapter_state_dict, f"the adapter in {where}")
    return merge_lora(model)

# -----------------------------------------------------------------------------
# the flags of a fine-tuning run


def add_lora_args(parser):
    """--lora_rank and its settings (chat_sft, mid_train, curriculum_train; vram_calc for the estimate)."""
    d = DEFAULTS
    g = parser.add_argument_group("LoRA (low-rank adapters: the base model frozen, only the adapters train)")
    g.add_argument("--lora_rank", type=int, default=d["lora_rank"], help="rank of the adapters (0: off, full fine-tuning)")
    g.add_argument("--lora_alpha", type=float, default=d["lora_alpha"], help="the update is scaled by alpha / rank (0: alpha = rank)")
    g.add_argument("--lora_dropout", type=float, default=d["lora_dropout"], help="dropout on the adapters' input while training")
    g.add_argument("--lora_targets", type=str, default=d["lora_targets"],
                   help=f"projections to adapt: {', '.join(TARGETS)} (attention q/k/v/o, every MLP linear), attn or all")
    g.add_argument("--lora_lr", type=float, default=d["lora_lr"],
                   help="AdamW learning rate of the adapters, as given (--init_lr_frac scales the base model's rates, "
                        "which LoRA does not train); the schedule applies")
    return g


def lora_from_args(args):
    """The flags' LoRA settings {"rank", "alpha", "dropout", "targets"} (None when --lora_rank is 0); raises UserError."""
    rank = getattr(args, "lora_rank", 0)
    if rank == 0:
        return None
    if rank < 0:
        raise UserError(f"--lora_rank must be positive (0: off), got {rank}")
    if not 0 <= args.lora_dropout < 1:
        raise UserError(f"--lora_dropout must be in [0, 1), got {args.lora_dropout}")
    if args.lora_alpha < 0 or args.lora_lr <= 0:
        raise UserError(f"--lora_alpha must be >= 0 and --lora_lr positive, got {args.lora_alpha} and {args.lora_lr}")
    return {"rank": rank, "alpha": float(args.lora_alpha or rank), "dropout": args.lora_dropout,
            "targets": list(parse_targets(args.lora_targets))}


def apply_lora_from_args(model, args, base):
    """The scripts' step: adapters on model when --lora_rank asks for them (returns a line to print, or None)."""
    s = lora_from_args(args)
    if s is None:
        return None
    total = model.num_params()
    apply_lora(model, s["rank"], s["alpha"], s["dropout"], s["targets"], base)
    n = count_adapter_params(model)
    return (f"LoRA: rank {s['rank']}, alpha {s['alpha']:g}, dropout {s['dropout']:g} on {','.join(s['targets'])}: "
            f"{n:,d} trainable parameters ({100 * n / total:.2f}% of the {total:,d} frozen ones), lr {args.lora_lr:g}")
