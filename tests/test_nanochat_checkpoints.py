"""
karpathy/nanochat's own checkpoints load: tests/fixtures/nanochat_{2025,2026}/ were written by its
code (dfc8833 and 92d63d4, dev/make_nanochat_fixtures.py; README.txt there), with the logits its
model computed. Loaded the way the scripts load a model (load_model from NANOCHAT_BASE_DIR), ours
must compute the same logits; a checkpoint that does not fit is refused with one line naming why.
"""
import json
import os
import shutil

import pytest
import torch

from nanochat.checkpoint_manager import load_checkpoint, load_model
from nanochat.common import UserError
from nanochat.gpt import GPTConfig

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
ERAS = {"2025": "d2", "2026": "d3"}  # era -> model tag of its fp32 checkpoint; tag + "_bf16_compiled" the other
STEP = 5


@pytest.fixture
def base_dir(tiny_base_dir_session, tmp_path, monkeypatch):
    """An empty NANOCHAT_BASE_DIR with the tests' 400-token tokenizer (the fixtures' vocabulary)."""
    shutil.copytree(tiny_base_dir_session / "tokenizer", tmp_path / "tokenizer")
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path))
    return tmp_path


def install(base_dir, era, tag, as_tag=None):
    """Copy one fixture checkpoint folder to base_checkpoints/<as_tag>/, as a user would put a downloaded one."""
    dst = base_dir / "base_checkpoints" / (as_tag or tag)
    shutil.copytree(os.path.join(FIXTURES, f"nanochat_{era}", tag), dst)
    return dst


def edit_meta(ckpt, edit):
    path = ckpt / f"meta_{STEP:06d}.json"
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))


def edit_state(ckpt, edit):
    path = ckpt / f"model_{STEP:06d}.pt"
    state = torch.load(path)
    edit(state)
    torch.save(state, path)


@pytest.mark.parametrize("era", ERAS)
@pytest.mark.parametrize("variant", ["fp32", "bf16"])
def test_nanochat_checkpoint_gives_its_logits(base_dir, era, variant):
    tag = ERAS[era] + ("_bf16_compiled" if variant == "bf16" else "")
    install(base_dir, era, tag)
    ref = torch.load(os.path.join(FIXTURES, f"nanochat_{era}", "logits.pt"))
    model, tokenizer, meta = load_model("base", "cpu", "eval", model_tag=tag)
    assert meta["step"] == STEP and meta["model_config"]["n_layer"] == model.config.n_layer  # nanochat's meta as written
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with torch.no_grad():
        logits = model(ref["idx"])
    assert logits.shape[-1] == 400  # (2026: wte and lm_head padded to 448, the logits cut back)
    torch.testing.assert_close(logits[:, ref["positions"]], ref[variant], atol=1e-4, rtol=0)
    assert ref[variant].abs().max() > 1  # logits far from zero: the weights matter


def test_october_2025_config_is_our_default_model(base_dir):
    ckpt = install(base_dir, "2025", "d2")
    model, _, meta = load_model("base", "cpu", "eval", model_tag="d2")
    assert model.config == GPTConfig(**meta["model_config"])  # as it always loaded: our defaults, nothing else
    _, optim, _ = load_checkpoint(str(ckpt), STEP, "cpu", load_optimizer=True)
    assert isinstance(optim, list) and len(optim) == 2  # its [AdamW, Muon] state, readable for whoever wants it


def test_2026_config_maps_to_our_options(base_dir):
    ckpt = install(base_dir, "2026", "d3")
    model, _, _ = load_model("base", "cpu", "eval", model_tag="d3")
    c = model.config
    assert (c.window_pattern, c.value_embeds, c.smear, c.layer_lambdas, c.backout) == ("SSSL", True, True, True, True)
    assert (c.qk_gain, c.rope_base, c.pad_vocab_to, c.head_dim) == (1.2, 100000, 64, 16)
    assert model.transformer.wte.weight.shape == (448, 32) and sorted(model.value_embeds) == ["0", "2"]
    # its optimizer is in per-rank shards, which loading the model ignored and a resume cannot use
    assert sorted(f for f in os.listdir(ckpt) if f.startswith("optim")) == ["optim_000005_rank0.pt", "optim_000005_rank1.pt"]
    with pytest.raises(UserError, match="per-rank optimizer shards"):
        load_checkpoint(str(ckpt), STEP, "cpu", load_optimizer=True)


@pytest.mark.parametrize("era", ERAS)
def test_unknown_config_key_is_refused(base_dir, era):
    ckpt = install(base_dir, era, ERAS[era])
    edit_meta(ckpt, lambda m: m["model_config"].update(rope_scaling_xyz=2.0))
    with pytest.raises(UserError, match="does not know: rope_scaling_xyz") as e:
        load_model("base", "cpu", "eval", model_tag=ERAS[era])
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("era", ERAS)
def test_unexpected_or_missing_tensor_is_refused(base_dir, era):
    tag = ERAS[era]
    ckpt = install(base_dir, era, tag)
    edit_state(ckpt, lambda s: s.update({"transformer.h.0.attn.c_extra.weight": torch.zeros(2, 2)}))
    with pytest.raises(UserError, match=r"unexpected transformer\.h\.0\.attn\.c_extra\.weight") as e:
        load_model("base", "cpu", "eval", model_tag=tag)
    assert "\n" not in str(e.value) and f"nanochat's {era} architecture" in str(e.value)
    ckpt = install(base_dir, era, tag + "_bf16_compiled", as_tag="m1")
    edit_state(ckpt, lambda s: s.pop("_orig_mod.transformer.h.1.mlp.c_fc.weight"))
    with pytest.raises(UserError, match=r"missing transformer\.h\.1\.mlp\.c_fc\.weight"):
        load_model("base", "cpu", "eval", model_tag="m1")


def test_other_nanochat_era_is_refused_not_misread(base_dir):
    """A 2026 state dict under a config without window_pattern (as checkpoints between the two eras
    have) reads as October 2025: refused, naming the tensors that architecture lacks."""
    ckpt = install(base_dir, "2026", "d3")
    edit_meta(ckpt, lambda m: m["model_config"].pop("window_pattern"))
    with pytest.raises(UserError, match=r"nanochat's 2025 architecture: unexpected backout_lambda, resid_lambdas, "
                                        r"smear_gate\.weight.*other shapes: transformer\.wte\.weight \(448, 32\)"):
        load_model("base", "cpu", "eval", model_tag="d3")


def test_own_checkpoint_with_a_wrong_tensor_shape_is_refused(tmp_path):
    """Our own format: a tensor of another shape is named too (before the strict load's multi-line error)."""
    from nanochat.checkpoint_manager import model_from_state
    from nanochat.gpt import build_model
    config = GPTConfig(sequence_len=16, vocab_size=64, n_layer=1, n_head=2, n_kv_head=2, n_embd=32)
    state = build_model(config, "cpu").state_dict()
    state["lm_head.weight"] = torch.zeros(65, 32)
    with pytest.raises(UserError, match=r"do not fit its model_config: other shapes: lm_head\.weight \(65, 32\)"):
        model_from_state(state, config.to_dict(), "cpu")


def test_keep_last_removes_a_2026_checkpoints_rank_shards(tmp_path):
    from nanochat.checkpoint_manager import checkpoint_steps, remove_old_checkpoints
    ckpt = tmp_path / "d3"
    shutil.copytree(os.path.join(FIXTURES, "nanochat_2026", "d3"), ckpt)
    for name in ("model_000006.pt", "meta_000006.json"):  # a newer checkpoint beside it
        shutil.copy(ckpt / name.replace("6", "5"), ckpt / name)
    remove_old_checkpoints(str(ckpt), keep_last=1)
    assert checkpoint_steps(str(ckpt)) == [6] and sorted(os.listdir(ckpt)) == ["meta_000006.json", "model_000006.pt"]
