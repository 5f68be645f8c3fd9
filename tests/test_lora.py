"""
LoRA (nanochat/lora.py, the adapters' memory in nanochat/vram_lora.py, scripts/lora_merge.py) on
tiny CPU models: a fresh adapter is the identity; training changes the adapters and nothing else
(no gradients or optimizer state for the frozen base); the merged model computes the adapted
function; adapter checkpoints are small, name their base, reload through load_model (and
chat_cli), resume exactly and merge into a normal checkpoint; a missing or changed base is a
one-line error. The memory estimate with adapters is checked against autograd on a CPU as
tests/test_calculators.py checks the full model's.
"""
import argparse
import copy
import json
import os
import re
import shutil

import pytest
import torch

from helpers import run_script, step_losses
from test_calculators import (NARROW_MLP, REFERENCE, autocast_for, batch, config as reference_config, live_memory_peak,
                              measured_step_peak, seeded_model, small_config)
from nanochat import batch_plan, fused_loss, vram, vram_lora
from nanochat.checkpoint_manager import load_checkpoint, load_model, save_checkpoint
from nanochat.common import UserError
from nanochat.gpt import GPTConfig, build_model
from nanochat.lora import LoRALinear, adapter_parameters, apply_lora, lora_from_args, merge_lora, parse_targets
from nanochat.trainer import Trainer

CONFIGS = {
    "relu2": GPTConfig(sequence_len=64, vocab_size=100, n_layer=2, n_head=2, n_kv_head=2, n_embd=32),
    "swiglu+tied+norms+gqa": GPTConfig(sequence_len=64, vocab_size=100, n_layer=2, n_head=4, n_kv_head=2, n_embd=32,
                                       mlp="swiglu", tie_embeddings=True, norm_weight=True),
    "diff": GPTConfig(sequence_len=64, vocab_size=100, n_layer=2, n_head=2, n_kv_head=1, n_embd=32, attn="diff"),
    "moe": GPTConfig(sequence_len=64, vocab_size=100, n_layer=2, n_head=2, n_kv_head=2, n_embd=32, moe_experts=4, mlp_hidden=64),
}


def random_model(cfg, seed=0):
    """A model whose every matrix is non-zero (a fresh one has a zero lm_head and zero residual
    projections: frozen, no gradient would reach an adapter), like a trained base."""
    torch.manual_seed(seed)
    model = build_model(cfg, "cpu")
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2 and not p.abs().sum():
                p.normal_(0.0, 0.1)
    return model


def train(model, steps=6, lora_lr=0.01, seed=1, **flags):
    """Train through the one training loop (nanochat.trainer) on random tokens; returns the trainer."""
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    data = [(torch.randint(0, cfg.vocab_size, (4, 16), generator=g), torch.randint(0, cfg.vocab_size, (4, 16), generator=g))
            for _ in range(steps)]
    args = argparse.Namespace(lora_lr=lora_lr, init_lr_frac=0.02, log_every=100, **flags)
    trainer = Trainer(model, args, "cpu", torch.float32, 4, 16, 1)
    trainer.run(iter(data), steps)
    return trainer

# -----------------------------------------------------------------------------
# the adapters


@pytest.mark.parametrize("name", list(CONFIGS))
def test_a_fresh_adapter_is_the_identity(name):
    model = random_model(CONFIGS[name])
    idx, targets = batch(model.config, 2, 24)
    model.train()
    with torch.no_grad():
        logits, loss = model(idx), model(idx, targets)
    apply_lora(model, 4, 8, dropout=0.1, targets="all")  # training mode: the dropout runs, B is zero
    with torch.no_grad():
        assert torch.equal(model(idx), logits) and torch.equal(model(idx, targets), loss)
    adapters = {id(p) for p in adapter_parameters(model)}
    assert adapters and all(p.requires_grad == (id(p) in adapters) for p in model.parameters())
    # every MLP linear of every expert, never the router; the names of the base stay
    lora_names = {n.rsplit(".", 1)[0] for n, _ in model.named_parameters() if ".lora_" in n}
    assert not any("router" in n for n in lora_names)
    assert all(k in model.state_dict() for k in random_model(CONFIGS[name]).state_dict())


@pytest.mark.parametrize("targets,adapted", [("q,v", {"c_q", "c_v"}), ("o", {"c_proj"}), ("mlp", {"c_fc", "c_proj"}),
                                             ("attn", {"c_q", "c_k", "c_v", "c_proj"})])
def test_targets_name_the_projections(targets, adapted):
    model = apply_lora(random_model(CONFIGS["relu2"]), 2, targets=targets)
    block = model.transformer.h[0]
    got = {n for n in ("c_q", "c_k", "c_v", "c_proj") if isinstance(getattr(block.attn, n), LoRALinear)}
    got |= {n for n in ("c_fc", "c_proj") if isinstance(getattr(block.mlp, n), LoRALinear)}
    assert got == adapted


def test_only_the_adapters_change_and_only_they_have_optimizer_state():
    model = apply_lora(random_model(CONFIGS["swiglu+tied+norms+gqa"]), 4, dropout=0.1)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if ".lora_" not in n}
    start = {n: p.detach().clone() for n, p in model.named_parameters() if ".lora_" in n}
    trainer = train(model)
    for n, p in model.named_parameters():
        if ".lora_" in n:
            assert not torch.equal(p, start[n]), n  # A and B both moved
        else:
            assert torch.equal(p, frozen[n]) and p.grad is None, n
    [opt] = trainer.optimizers  # one AdamW: no Muon, no groups for the frozen weights
    assert isinstance(opt, torch.optim.AdamW) and {g["name"] for g in opt.param_groups} == {"lora adapters"}
    assert all(g["initial_lr"] == 0.01 for g in opt.param_groups)  # --lora_lr as given, not times --init_lr_frac
    assert {id(p) for p in opt.state} == {id(p) for p in adapter_parameters(model)}


def test_merged_model_equals_base_plus_adapter():
    model = apply_lora(random_model(CONFIGS["relu2"]), 4, alpha=8)
    train(model)
    model.eval()
    idx, _ = batch(model.config, 2, 24)
    c_q = model.transformer.h[1].attn.c_q
    by_hand = c_q.weight + 2.0 * c_q.lora_B @ c_q.lora_A  # alpha / rank = 2
    with torch.no_grad():
        adapted = model(idx)
        merged = merge_lora(copy.deepcopy(model))
        assert (merged(idx) - adapted).abs().max() < 1e-5
    assert not any(isinstance(m, LoRALinear) for m in merged.modules())
    assert set(merged.state_dict()) == set(random_model(CONFIGS["relu2"]).state_dict())
    torch.testing.assert_close(merged.transformer.h[1].attn.c_q.weight, by_hand, rtol=0, atol=1e-6)


def test_bad_settings_are_one_line_errors():
    with pytest.raises(UserError, match="unknown 'z'"):
        parse_targets("q,z")
    with pytest.raises(UserError, match="larger than the narrowest"):
        apply_lora(random_model(CONFIGS["relu2"]), 64)
    flags = argparse.Namespace(lora_rank=4, lora_alpha=0.0, lora_dropout=1.5, lora_targets="all", lora_lr=1e-3)
    with pytest.raises(UserError, match="--lora_dropout"):
        lora_from_args(flags)
    with pytest.raises(UserError, match="already"):
        apply_lora(apply_lora(random_model(CONFIGS["relu2"]), 2), 2)

# -----------------------------------------------------------------------------
# adapter checkpoints


@pytest.fixture
def lora_dir(tmp_path, tiny_base_dir_session, monkeypatch):
    """A base dir with the tiny tokenizer and a random tiny base model, base_checkpoints/t1 step 0."""
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path))
    shutil.copytree(tiny_base_dir_session / "tokenizer", tmp_path / "tokenizer")
    from nanochat.tokenizer import get_tokenizer
    cfg = GPTConfig(sequence_len=64, vocab_size=get_tokenizer().get_vocab_size(), n_layer=2, n_head=2, n_kv_head=2, n_embd=32)
    model = random_model(cfg)
    save_checkpoint(str(tmp_path / "base_checkpoints" / "t1"), 0, model.state_dict(), None, {"step": 0, "model_config": cfg.to_dict()})
    return tmp_path


def train_adapter(base_dir, tag="ad", steps=3):
    """An adapter trained in-process on base/t1 through the trainer, saved to chatsft_checkpoints/<tag>/; returns the model."""
    model, _, meta = load_model("base", "cpu", "train", "t1")
    torch.manual_seed(0)  # the adapters' A, as the scripts seed it (--seed)
    apply_lora(model, 4, 4, 0.0, "all", base={"source": "base", "model_tag": "t1", "step": meta["step"]})
    g = torch.Generator().manual_seed(0)
    V = model.config.vocab_size
    data = [(torch.randint(0, V, (2, 16), generator=g), torch.randint(0, V, (2, 16), generator=g)) for _ in range(steps)]
    trainer = Trainer(model, argparse.Namespace(lora_lr=0.01, log_every=100), "cpu", torch.float32, 2, 16, 1,
                      str(base_dir / "chatsft_checkpoints" / tag))
    trainer.resume()
    trainer.run(iter(data), steps)
    return model


def test_adapter_checkpoints_are_small_name_their_base_and_reload(lora_dir):
    model = train_adapter(lora_dir)
    d = lora_dir / "chatsft_checkpoints" / "ad"
    state, optim, meta = load_checkpoint(str(d), 3, "cpu", load_optimizer=True)
    assert state and all(".lora_" in k for k in state)  # the adapters alone
    assert os.path.getsize(d / "model_000003.pt") < os.path.getsize(lora_dir / "base_checkpoints" / "t1" / "model_000000.pt") / 4
    assert meta["lora"]["rank"] == 4 and meta["lora"]["targets"] == ["q", "k", "v", "o", "mlp"]
    assert {k: meta["lora"]["base"][k] for k in ("source", "model_tag", "step")} == {"source": "base", "model_tag": "t1", "step": 0}
    # load_model: the base with the adapter folded in, as chat_cli / chat_web / chat_eval get it
    loaded, _, _ = load_model("sft", "cpu", "eval", "ad")
    assert not any(isinstance(m, LoRALinear) for m in loaded.modules())
    model.eval()
    idx, _ = batch(model.config, 2, 24)
    with torch.no_grad():
        assert (loaded(idx) - model(idx)).abs().max() < 1e-5


def test_a_missing_or_changed_base_is_a_one_line_error(lora_dir):
    train_adapter(lora_dir)
    base = lora_dir / "base_checkpoints" / "t1"
    state = torch.load(base / "model_000000.pt")
    meta = json.loads((base / "meta_000000.json").read_text())
    save_checkpoint(str(base), 0, {k: v + 0.01 for k, v in state.items()}, None, meta)  # retrained under the same tag and step
    with pytest.raises(UserError, match="have changed since") as e:
        load_model("sft", "cpu", "eval", "ad")
    assert "\n" not in str(e.value)
    shutil.rmtree(base)
    with pytest.raises(UserError, match="base checkpoint base/t1 step 0, which is missing"):
        load_model("sft", "cpu", "eval", "ad")


def test_an_adapter_resumes_and_refuses_other_settings(lora_dir):
    a = train_adapter(lora_dir, "a", steps=4)
    # the step-2 checkpoint of a second run, resumed to 4: the same adapters as the straight run
    train_adapter(lora_dir, "b", steps=2)
    assert (lora_dir / "chatsft_checkpoints" / "b" / "optim_000002.pt").exists()  # the adapters' AdamW state
    model, _, meta = load_model("base", "cpu", "train", "t1")
    apply_lora(model, 4, 4, 0.0, "all", base={"source": "base", "model_tag": "t1", "step": 0})
    g = torch.Generator().manual_seed(0)
    V = model.config.vocab_size
    data = [(torch.randint(0, V, (2, 16), generator=g), torch.randint(0, V, (2, 16), generator=g)) for _ in range(4)]
    trainer = Trainer(model, argparse.Namespace(lora_lr=0.01, log_every=100, resume="yes"), "cpu", torch.float32, 2, 16, 1,
                      str(lora_dir / "chatsft_checkpoints" / "b"))
    assert trainer.resume()["step"] == 2
    trainer.run(iter(data[2:]), 4)
    for (n, p), q in zip(model.named_parameters(), a.parameters()):
        assert torch.equal(p, q), n
    # other settings, or no adapters, cannot resume it
    for other in (dict(rank=2), dict(targets="q,v")):
        m, _, _ = load_model("base", "cpu", "train", "t1")
        apply_lora(m, other.get("rank", 4), 4, 0.0, other.get("targets", "all"), base={"source": "base", "model_tag": "t1", "step": 0})
        with pytest.raises(UserError, match="resume with the same"):
            Trainer(m, argparse.Namespace(resume="yes"), "cpu", torch.float32, 2, 16, 1, str(lora_dir / "chatsft_checkpoints" / "b")).resume()
    m, _, _ = load_model("base", "cpu", "train", "t1")
    with pytest.raises(UserError, match="is a LoRA adapter"):
        Trainer(m, argparse.Namespace(resume="yes"), "cpu", torch.float32, 2, 16, 1, str(lora_dir / "chatsft_checkpoints" / "b")).resume()


@pytest.mark.slow
def test_lora_sft_then_chat_then_merge(lora_dir):
    """chat_sft --lora_rank end to end, then chat_cli on the adapter and lora_merge into a normal checkpoint."""
    common = ["--device_type", "cpu", "--mixture", "exercises.addition.1:2,chat:1", "--device_batch_size", "4", "--max_seq_len", "64",
              "--eval_conversations", "32", "--eval_every", "0", "--num_iterations", "10", "--lora_rank", "4", "--lora_lr", "0.01",
              "--output_tag", "lo"]
    out = run_script(lora_dir, "scripts.chat_sft", *common).stdout
    assert "LoRA: rank 4" in out and "adamw lora adapters" in out
    first, last = [float(v) for v in re.findall(r"val loss: ([\d.]+)", out)[:2]]
    assert last < first - 0.1
    assert len(step_losses(out)) == 10
    p = run_script(lora_dir, "scripts.chat_cli", "-g", "lo", "-p", "Hello", "--max_tokens", "4", "-t", "0")
    assert p.stdout.strip()
    merged = run_script(lora_dir, "scripts.lora_merge", "-g", "lo").stdout
    assert "lo_merged" in merged
    state, _, meta = load_checkpoint(str(lora_dir / "chatsft_checkpoints" / "lo_merged"), 10, "cpu")
    assert "lora" not in meta and meta["merged_from"]["model_tag"] == "lo"
    adapted, _, _ = load_model("sft", "cpu", "eval", "lo")
    for k, v in adapted.state_dict().items():
        assert torch.equal(state[k], v), k
    # a resume without the adapter's flags is a one-line error
    p = run_script(lora_dir, "scripts.chat_sft", *common[:-6], "--output_tag", "lo", "--resume", check=False)
    assert p.returncode != 0 and "is a LoRA adapter (rank 4" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.slow
def test_curriculum_and_mid_train_take_the_lora_flags(corpus_dir, tmp_path):
    base = tmp_path / "base"
    shutil.copytree(corpus_dir, base)
    cfg = GPTConfig(sequence_len=64, vocab_size=512, n_layer=2, n_head=2, n_kv_head=2, n_embd=32)
    save_checkpoint(str(base / "base_checkpoints" / "c"), 5, random_model(cfg).state_dict(), None,
                    {"step": 5, "model_config": cfg.to_dict()})
    plan = tmp_path / "one.json"
    plan.write_text(json.dumps({"phases": [{"name": "only", "steps": 2, "mixture": {"exercises": 1, "pretrain": 1}}]}))
    p = run_script(base, "scripts.curriculum_train", "--config", str(plan), "--model_tag", "c", "--output_tag", "cl", "--data", "builtin",
                   "--device_type", "cpu", "--device_batch_size", "2", "--max_seq_len", "64", "--eval_tokens", "256",
                   "--lora_rank", "2", "--lora_targets", "q,v")
    assert "LoRA: rank 2" in p.stdout
    state, _, meta = load_checkpoint(str(base / "curriculum_checkpoints" / "cl"), 2, "cpu")
    assert all(".lora_" in k for k in state) and meta["lora"]["base"]["model_tag"] == "c" and meta["curriculum"]["phase"] == 1
    assert "--lora_rank" in run_script(base, "scripts.mid_train", "--help").stdout

# -----------------------------------------------------------------------------
# memory: the estimate with adapters against autograd (CPU), as tests/test_calculators.py checks the full model


def lora_settings(targets, dropout=0.0, rank=4):
    return {"rank": rank, "targets": targets, "dropout": dropout}


@pytest.mark.parametrize("name,precision,targets,dropout", [
    ("relu2", "fp32", "all", 0.0), ("relu2", "bf16", "q,v", 0.1), ("relu2", "fp32", "mlp", 0.1), ("relu2", "bf16", "o", 0.0),
    ("gqa", "bf16", "all", 0.1), ("swiglu+tied+norms+mqa", "fp32", "k,o", 0.1), ("swiglu+tied+norms+mqa", "bf16", "mlp", 0.0),
    ("diff", "fp32", "q,v", 0.0), ("diff+swiglu+tied+norms", "bf16", "all", 0.1), ("diff", "bf16", "o", 0.1),
    ("moe", "fp32", "mlp", 0.0), ("moe 2 of 2", "bf16", "all", 0.1), ("v07_hybrid_small", "fp32", "k,o", 0.0),
])
def test_lora_saved_activations_match_autograd(name, precision, targets, dropout):
    """What a LoRA forward keeps for backward (unique storages, parameters aside) == the estimate:
    the first block's partial graph, the adapters' inputs, casts and dropout noise."""
    cfg = small_config(name)
    model = seeded_model(cfg)
    apply_lora(model, 4, 4, dropout, targets)
    params = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    saved = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            saved[s.data_ptr()] = s.nbytes()
        return t

    idx, tg = batch(cfg, 3, 40)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast_for(precision):
        loss = model(idx, tg)
    loss.backward()
    real = sum(saved.values())
    est = vram_lora.saved_activation_bytes(cfg, 3, 40, precision, lora_settings(targets, dropout), device_type="cpu")
    assert abs(est - real) / real < 0.001, (est, real)


BIG_VOCAB = GPTConfig(sequence_len=64, vocab_size=4096, n_layer=2, n_head=4, n_kv_head=2, n_embd=64)


@pytest.mark.parametrize("name,precision,ckpt,targets,dropout,chunks,phase", [
    ("big vocab", "bf16", False, "all", 0.1, 4, "forward_loss"), ("big vocab", "fp32", True, "q,v", 0.0, 1, "forward_loss"),
    ("big vocab", "bf16", False, "mlp", 0.0, 1, "forward_loss"),
    ("relu2", "fp32", False, "all", 0.0, 1, "backward_block"), ("relu2", "fp32", False, "mlp", 0.1, 1, "forward_block"),
    ("relu2", "fp32", True, "all", 0.1, 1, "forward_block"), ("swiglu+tied+norms+mqa", "fp32", True, "q,v", 0.1, 1, "backward_block"),
    ("swiglu+tied+norms+mqa", "bf16", False, "q,v", 0.0, 1, "backward_block"),
])
def test_lora_step_peak_matches(name, precision, ckpt, targets, dropout, chunks, phase, monkeypatch):
    """
    Peak live memory of a LoRA forward + backward (the adapters' gradients already exist) == the
    estimate's peak phase, within 2%: the loss with a wide vocabulary; with a narrow one the last
    block's MLP backward, or (dropout on an adapted MLP) its forward where c_proj adds its update
    beside the product, again during the recomputation when checkpointed. (bf16 with a narrow
    vocabulary peaks on a CPU in its decomposed rms_norm backward, which CUDA's fused kernel does
    not have: checked in fp32 there, except where the MLP still peaks; bf16 with checkpointing:
    the autocast emulation does not reach the recomputation.)
    """
    cfg = BIG_VOCAB if name == "big vocab" else small_config(name, vocab_size=64)
    B, T = 4, 64
    model = seeded_model(cfg, ckpt)
    apply_lora(model, 4, 4, dropout, targets)
    monkeypatch.setattr(fused_loss, "CHUNK_LOGITS", cfg.vocab_size * B * T // chunks)
    real = measured_step_peak(model, cfg, precision, B, T)
    phases = vram.estimate_phases(cfg, B, T, precision, "muon", ckpt, False, device_type="cpu", lora=lora_settings(targets, dropout))
    assert vram.peak_phase(phases) == phase
    est = phases[phase]["total"]
    assert abs(est - real) / real < 0.02, (est, real)


@pytest.mark.parametrize("name,precision,vocab,targets", [("relu2", "fp32", 64, "all"), ("narrow mlp", "fp32", 64, "q,v"),
                                                          ("gqa", "bf16", 4096, "all"), ("gqa", "fp32", 4096, "mlp")])
def test_lora_evaluation_peak_matches(name, precision, vocab, targets):
    """The evaluation between steps with adapters (no_grad, eval mode): an adapted linear's add, or the loss's chunk."""
    from nanochat.loss_eval import evaluate_bpb
    from nanochat.optim import build_optimizers
    cfg = NARROW_MLP if name == "narrow mlp" else small_config(name, vocab_size=vocab)
    B, T = 4, 64
    model = seeded_model(cfg)
    apply_lora(model, 4, 4, 0.0, targets)
    optimizers = build_optimizers(model)
    idx, tg = batch(cfg, B, T)
    with autocast_for(precision):
        model(idx, tg).backward()
    for opt in optimizers:
        opt.step()
    model.zero_grad(set_to_none=True)
    model.eval()
    token_bytes = torch.randint(1, 4, (cfg.vocab_size,), generator=torch.Generator().manual_seed(0), dtype=torch.int32)

    def evaluate():
        with autocast_for(precision):
            evaluate_bpb(model, iter([(idx, tg)]), 1, token_bytes)

    real = live_memory_peak(evaluate)
    est = vram.estimate_phases(cfg, B, T, precision, "muon", False, False, device_type="cpu",
                               lora=lora_settings(targets))["evaluation"]["total"]
    assert abs(est - real) / real < 0.02, (est, real)


def test_lora_needs_no_gradients_or_optimizer_state_for_the_base():
    for name in REFERENCE:
        cfg = reference_config(name, 1024)
        lora = lora_settings("all", rank=16)
        n = vram_lora.adapter_info(cfg, lora)["adapters"]
        full = vram.estimate_memory(cfg, 8, 1024, "bf16", "muon", True, False)
        est = vram.estimate_memory(cfg, 8, 1024, "bf16", "muon", True, False, lora=lora)
        assert est["gradients"] == 4 * n and est["optimizer"] == 8 * n
        assert est["weights"] == full["weights"] + 4 * n
        assert est["total"] < full["total"] - 8 * vram.param_info(cfg)["total"]
        assert (batch_plan.auto_batch_size(cfg, 1024, "bf16", "muon", True, False, 24 * vram.GiB, lora=lora)
                >= batch_plan.auto_batch_size(cfg, 1024, "bf16", "muon", True, False, 24 * vram.GiB))
    # nanochat d32 (1.9B): full fine-tuning does not fit a 24 GB card even at batch 1 x 2048; with LoRA it does
    d32 = reference_config("nanochat d32", 2048)
    assert not batch_plan.fits(d32, 1, 2048, "bf16", "muon", True, False, 24 * vram.GiB)
    assert batch_plan.fits(d32, 4, 2048, "bf16", "muon", True, False, 24 * vram.GiB, lora=lora_settings("all", rank=16))


def test_vram_calc_compares_lora_with_full_fine_tuning():
    p = run_script(".", "scripts.vram_calc", "--depth", "32", "--max_seq_len", "2048", "--batch_sizes", "1,4",
                   "--grad_checkpoint", "--lora_rank", "16")
    assert "LoRA: rank 16 on q,k,v,o,mlp" in p.stdout and "total with full fine-tuning" in p.stdout
    assert re.search(r"^full fine-tuning fits +no +no$", p.stdout, re.M) and re.search(r"^fits 24 GiB +yes +yes$", p.stdout, re.M)
    assert "with full fine-tuning: none of the powers of two" in p.stdout
    out = json.loads(run_script(".", "scripts.vram_calc", "--depth", "32", "--max_seq_len", "2048", "--batch_sizes", "4",
                                "--grad_checkpoint", "--lora_rank", "16", "--json").stdout)
    assert out["batches"][0]["fits"] and not out["batches"][0]["full_fits"] and out["auto_batch_size"] >= 4
    assert out["lora"]["full_auto_batch_size"] == 0 and out["lora"]["adapter_params"] > 0
