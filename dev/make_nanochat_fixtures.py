"""
Writes the tiny karpathy/nanochat checkpoints under tests/fixtures/nanochat_<era>/ with nanochat's
OWN code: its GPT, its init_weights, its optimizers, its checkpoint_manager.save_checkpoint, run
from a checkout of it (not from this repository), plus the logits its model computes for a fixed
input. tests/test_nanochat_checkpoints.py loads them with our loader and compares the logits.

    git --git-dir=<nanochat mirror> archive dfc8833 | tar -x -C /tmp/nc2025   # October 2025
    git --git-dir=<nanochat mirror> archive 92d63d4 | tar -x -C /tmp/nc2026   # 2026
    python dev/make_nanochat_fixtures.py /tmp/nc2025 tests/fixtures/nanochat_2025
    python dev/make_nanochat_fixtures.py /tmp/nc2026 tests/fixtures/nanochat_2026

Each era gets two checkpoint folders (model tags), as its base_train writes them:
  d2 / d3    fp32 (what a CPU run saves), orig_model.state_dict(), with the optimizers' state
             (2025: one optim_<step>.pt holding [adamw, muon]; 2026: one shard per rank,
             optim_<step>_rank<r>.pt, here ranks 0 and 1 written by save_checkpoint(rank=r) from
             the one process's optimizer); the state is that before a first step (param groups,
             no momenta), to keep the files small: the loader only has to leave them alone
  *_bf16_compiled   the same weights with the embeddings in bf16 (what a CUDA run keeps: 2025 wte,
             2026 wte and the value embeddings), saved from the torch.compile wrapper (keys
             prefixed `_orig_mod.`), no optimizer (as chat_sft saves)
and logits.pt: {"idx", "positions", "fp32", "bf16"}: the model's logits for idx at those positions
(all of them in 2025; in 2026 a sample, before and past the 128-token sliding window), from the
fp32 weights and from the bf16-rounded ones. Weights are nanochat's init plus noise (seed 0), so
no tensor is zero and every option (smear, backout, value embeddings, ...) changes the output.
This file is not imported by our tests, and it must not import our package: the checkout's
`nanochat` is put first on sys.path (so argparse, not nanochat.common's parser).
"""
import argparse
import dataclasses
import json
import os
import sys

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("checkout", help="a work tree of karpathy/nanochat (dfc8833 or 92d63d4)")
parser.add_argument("out", help="output folder, e.g. tests/fixtures/nanochat_2025")
parser.add_argument("--step", type=int, default=5, help="the step in the file names (default 5)")
args = parser.parse_args()

sys.path.insert(0, os.path.abspath(args.checkout))
import torch  # noqa: E402
import nanochat  # noqa: E402
if not os.path.abspath(nanochat.__file__).startswith(os.path.abspath(args.checkout)):
    sys.exit(f"imported {nanochat.__file__}, not the checkout's nanochat: run from a folder without a nanochat package")
from nanochat.gpt import GPT, GPTConfig  # noqa: E402
from nanochat.checkpoint_manager import save_checkpoint  # noqa: E402

ERA = "2026" if "window_pattern" in GPTConfig.__dataclass_fields__ else "2025"
VOCAB = 400  # the size of the tokenizer tests/conftest.py trains, so load_model's vocab check passes
if ERA == "2025":
    # GQA (2 query heads, 1 kv head); the context as short as the test needs
    config = GPTConfig(sequence_len=32, vocab_size=VOCAB, n_layer=2, n_head=2, n_kv_head=1, n_embd=32)
    tag, T, B = "d2", 32, 1
else:
    # sequence_len 512: the S window is ceil(512/4/128)*128 = 128, so an input of 160 tokens reaches
    # past it; 3 layers: S S L, value embeddings on layers 0 and 2, backout after layer 1; vocab 400
    # is padded to 448; width 32 >= the smear gate's 24 channels
    config = GPTConfig(sequence_len=512, vocab_size=VOCAB, n_layer=3, n_head=2, n_kv_head=1, n_embd=32, window_pattern="SSSL")
    tag, T, B = "d3", 160, 1
torch.manual_seed(0)

# build as base_train does: on the meta device, then to_empty + init_weights
with torch.device("meta"):
    model = GPT(config)
model.to_empty(device="cpu")
model.init_weights()
with torch.no_grad():
    for name, p in model.named_parameters():
        p.add_(0.05 * torch.randn_like(p))  # zero-initialised projections / lambdas become non-zero
    model.lm_head.weight.add_(0.3 * torch.randn_like(model.lm_head.weight))  # logits of O(1), into the soft-cap

# nanochat's optimizers over these weights; their state_dict() before a first step (param groups,
# no momenta) keeps the files small, and our loader never reads them
optimizers = model.setup_optimizers() if ERA == "2025" else [model.setup_optimizer()]

# the logits for a fixed input, from the fp32 weights and from the bf16-rounded embeddings
idx = torch.randint(0, VOCAB, (B, T), generator=torch.Generator().manual_seed(1))
positions = list(range(T)) if ERA == "2025" else sorted(set(range(0, T, 8)) | {126, 127, 128, 129, 130, 150, T - 1})
model.eval()
with torch.no_grad():
    logits_fp32 = model(idx)[:, positions].clone()
state = {k: v.detach().clone() for k, v in model.state_dict().items()}
bf16_names = [k for k in state if k == "transformer.wte.weight" or k.startswith("value_embeds.")]
state_bf16 = {k: (v.bfloat16() if k in bf16_names else v) for k, v in state.items()}
model.load_state_dict({k: v.float() for k, v in state_bf16.items()})  # as nanochat's loader does on CPU
with torch.no_grad():
    logits_bf16 = model(idx)[:, positions].clone()
if ERA == "2026":
    # evidence that the input reaches past the window: the same weights with full context differ there
    windows = model.window_sizes
    model.window_sizes = [(config.sequence_len, 0)] * config.n_layer
    with torch.no_grad():
        no_window = model(idx)[:, positions]
    model.window_sizes = windows
    late = [i for i, p in enumerate(positions) if p > 128]
    print(f"sliding window: max |logit change| past position 128 without it: {(no_window - logits_bf16)[:, late].abs().max():.4f}, "
          f"before: {(no_window - logits_bf16)[:, [i for i, p in enumerate(positions) if p <= 128]].abs().max():.2e}")

# meta as base_train writes it (the values are made up; the keys and their kinds are nanochat's)
model_config = dataclasses.asdict(config) if ERA == "2026" else {k: getattr(config, k) for k in
                                                                   ("sequence_len", "vocab_size", "n_layer", "n_head", "n_kv_head", "n_embd")}
meta = {"step": args.step, "val_bpb": 3.21, "model_config": model_config,
        "user_config": {"depth": config.n_layer, "max_seq_len": config.sequence_len, "device_batch_size": 2},
        "device_batch_size": 2, "max_seq_len": config.sequence_len}
if ERA == "2026":
    meta.update(total_batch_size=64, dataloader_state_dict={"pq_idx": 0, "rg_idx": 1, "epoch": 1},
                loop_state={"min_val_bpb": 3.21, "smooth_train_loss": 5.9, "total_training_time": 1.5})

os.makedirs(args.out, exist_ok=True)
out = os.path.abspath(args.out)
if ERA == "2025":
    save_checkpoint(os.path.join(out, tag), args.step, state, [opt.state_dict() for opt in optimizers], meta)
else:
    for rank in (0, 1):
        save_checkpoint(os.path.join(out, tag), args.step, state, optimizers[0].state_dict(), meta, rank=rank)
# the compiled wrapper's state dict (keys `_orig_mod.`...), with the bf16 embeddings
model.load_state_dict({k: v.float() for k, v in state_bf16.items()})
compiled = torch.compile(model)
compiled_state = {k: (v.bfloat16() if k.removeprefix("_orig_mod.") in bf16_names else v) for k, v in compiled.state_dict().items()}
assert all(k.startswith("_orig_mod.") for k in compiled_state), list(compiled_state)[:3]
save_checkpoint(os.path.join(out, tag + "_bf16_compiled"), args.step, compiled_state, None, meta)
torch.save({"idx": idx, "positions": positions, "fp32": logits_fp32, "bf16": logits_bf16}, os.path.join(out, "logits.pt"))
print(f"era {ERA}, tags {tag} and {tag}_bf16_compiled, bf16 in the second: {', '.join(bf16_names)}")
print("model_config", json.dumps(model_config))
for k, v in state.items():
    print(f"  {k} {tuple(v.shape)}")
