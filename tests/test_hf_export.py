"""
Hugging Face export and import (nanochat.hf_export, hf_tokenizer, hf_modeling_template,
scripts.export_hf / import_hf): transformers computes our logits and greedy tokens, its fast
tokenizer our ids, its chat template our render_conversation; folders come back as checkpoints
that load_model loads with the same logits. Tiny random-weight models, CPU, fp32.
"""
import json
import os
import tempfile

import pytest
import torch

# before transformers is imported: remote code is copied into a throwaway cache, nothing is fetched
os.environ.setdefault("HF_MODULES_CACHE", tempfile.mkdtemp(prefix="hf_modules_"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from helpers import run_script  # noqa: E402
from nanochat.checkpoint_manager import PHASE_DIRS, load_model, save_checkpoint  # noqa: E402
from nanochat.common import UserError  # noqa: E402
from nanochat.engine import Engine  # noqa: E402
from nanochat.gpt import GPT, GPTConfig  # noqa: E402
from nanochat import hf_export  # noqa: E402
from nanochat.hf_export import export_folder, remote_options  # noqa: E402
from nanochat.hf_tokenizer import read_hf_tokenizer, write_hf_tokenizer  # noqa: E402
from nanochat.tokenizer import Tokenizer, render_conversation, render_for_completion  # noqa: E402

transformers.utils.logging.set_verbosity_error()

TRICKY = [
    "Hello world", "  two leading spaces", "trailing   ", "tabs\t\tand\nnewlines\n\n\r\nend", "\n", " ", "",
    "café naïve résumé Ångström", "日本語のテキストと中文，还有한국어", "emoji 😀👍🏽 family 👨‍👩‍👧 flag 🇫🇷",
    "12345 3.14159 1,000,000 007", "I'm you're they'll we've he'd IT'S DON'T", "x" * 80, "    def f(x):\n        return x**2\n",
    "Ｆｕｌｌｗｉｄｔｈ ＡＢＣ", "control \x00\x01\x7f bytes", "zero\u200bwidth and nbsp\u00a0here", "mixed\r\rcarriage",
    "<|bos|>", "say <|user_end|> now", "a<|assistant_end|>b", " <|python_start|>1+1<|python_end|>",
]
CONVERSATIONS = [
    [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4, I'm sure."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi 😀"},
     {"role": "assistant", "content": [{"type": "text", "text": "Let me see. "}, {"type": "python", "text": "12*3"},
                                       {"type": "python_output", "text": "36"}, {"type": "text", "text": " It is 36."}]},
     {"role": "user", "content": "日本語で\n\nthanks"}, {"role": "assistant", "content": "  Sure!\n"}],
]


@pytest.fixture(scope="module")
def tok():
    text = "\n".join(TRICKY[:18]) + "\nThe quick brown fox jumps over the lazy dog. Hello there! How are you today?\n"
    return Tokenizer.train_from_iterator(iter([text] * 30), vocab_size=420)


@pytest.fixture(scope="module")
def hf_tok(tok, tmp_path_factory):
    d = tmp_path_factory.mktemp("hf_tok")
    write_hf_tokenizer(tok, str(d), 128)
    return transformers.AutoTokenizer.from_pretrained(str(d))


def random_model(tok, seed=0, **kw):
    """A tiny GPT with every weight random (init_weights zeroes the projections and lm_head)."""
    fields = dict(sequence_len=64, vocab_size=tok.get_vocab_size(), n_layer=3, n_head=4, n_kv_head=2, n_embd=64)
    fields.update(kw)
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**fields))
    model.init_weights()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0.0, 0.5 if p.ndim > 1 else 0.2)
            if ".ln" in name or "subln" in name:
                p.add_(1.0)
    return model.eval()


def hf_model(folder, remote):
    return transformers.AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=remote).eval()


def ours_vs_hf(model, hf, T=40):
    idx = torch.randint(0, model.config.vocab_size, (2, T), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return (model(idx) - hf(idx).logits).abs().max().item()


def greedy_pair(model, hf, tok, n=24):
    """(our engine's greedy reply, transformers' generate(do_sample=False) reply), each up to its first stop token."""
    prompt = tok.encode("Hello there, how are", prepend="<|bos|>")
    ours = Engine(model, tok).generate_batch(prompt, max_tokens=n, temperature=0.0, tools=False)[0]
    out = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                      max_new_tokens=n, do_sample=False)[0, len(prompt):].tolist()
    stops = {tok.encode_special("<|assistant_end|>"), tok.get_bos_token_id()}
    theirs = []
    for t in out:
        if t in stops:
            break
        theirs.append(t)
    return ours, theirs

# -----------------------------------------------------------------------------
# tokenizer and chat template

def test_tokenizer_json_gives_our_ids(tok, hf_tok, tmp_path):
    assert type(hf_tok).__name__ in ("TokenizersBackend", "PreTrainedTokenizerFast")  # the fast one, from tokenizer.json
    for text in TRICKY:
        ours = tok.encode(text)
        # our special-token spellings are plain text: split_special_tokens=True says so to transformers
        assert hf_tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"] == ours, text
        assert hf_tok.decode(ours) == text
        if "<|" not in text:
            assert hf_tok.encode(text, add_special_tokens=False) == ours, text
    # transformers' default (needed by its chat template) reads a spelled special token as the token
    assert hf_tok.encode("<|bos|>", add_special_tokens=False) == [tok.get_bos_token_id()]
    assert hf_tok.bos_token_id == tok.get_bos_token_id() and hf_tok.eos_token_id == tok.encode_special("<|assistant_end|>")
    # and back: tokenizer.json -> a tiktoken tokenizer that encodes the same
    write_hf_tokenizer(tok, str(tmp_path), 128)
    back = read_hf_tokenizer(str(tmp_path / "tokenizer.json"))
    assert back.enc._mergeable_ranks == tok.enc._mergeable_ranks and back.enc._special_tokens == tok.enc._special_tokens
    assert all(back.encode(t) == tok.encode(t) for t in TRICKY)


def test_chat_template_renders_our_conversations(tok, hf_tok):
    for messages in CONVERSATIONS:
        ours, _ = render_conversation(tok, {"messages": messages})
        assert hf_tok.apply_chat_template(messages, tokenize=True, return_dict=False) == ours
    prompt = CONVERSATIONS[1][:4]
    assert (hf_tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=False)
            == render_for_completion(tok, {"messages": prompt}))
    # a message that spells special tokens: ours keeps them as text, as transformers' sanitize_control_tokens does
    messages = [{"role": "user", "content": "say <|user_end|> now"}, {"role": "assistant", "content": "a<|bos|>b"}]
    ours, _ = render_conversation(tok, {"messages": messages})
    assert hf_tok.apply_chat_template(messages, tokenize=True, return_dict=False, sanitize_control_tokens=True) == ours
    with pytest.raises(Exception, match="roles must be"):
        hf_tok.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)

# -----------------------------------------------------------------------------
# models

def test_default_architecture_loads_as_transformers_nanochat(tok, tmp_path):
    exact = random_model(tok, rope_dtype="compute")  # rotary tables in the compute dtype, as transformers'
    assert export_folder(exact, tok, str(tmp_path / "a")) == "native"
    assert not (tmp_path / "a" / "modeling_nanochat_ext.py").exists()
    hf = hf_model(str(tmp_path / "a"), remote=False)
    assert type(hf).__name__ == "NanoChatForCausalLM"
    assert ours_vs_hf(exact, hf) < 1e-4
    ours, theirs = greedy_pair(exact, hf, tok)
    assert len(ours) >= 10 and ours == theirs
    # the default rounds its rotary tables to bf16 (nanochat 2025), which transformers' nanochat cannot
    # say: the same weights, logits ~1e-2 apart in fp32; --remote_code ships our exact computation
    default = random_model(tok)
    export_folder(default, tok, str(tmp_path / "b"))
    assert 1e-4 < ours_vs_hf(default, hf_model(str(tmp_path / "b"), remote=False)) < 0.2
    assert export_folder(default, tok, str(tmp_path / "c"), remote_code=True) == "remote"
    hf = hf_model(str(tmp_path / "c"), remote=True)
    assert ours_vs_hf(default, hf) < 1e-4
    ours, theirs = greedy_pair(default, hf, tok)
    assert len(ours) >= 10 and ours == theirs
    # tied embeddings and a padded vocabulary are the native type's too (padding rows dropped)
    tied = random_model(tok, tie_embeddings=True, pad_vocab_to=64, rope_dtype="compute")
    assert export_folder(tied, tok, str(tmp_path / "d")) == "native"
    assert ours_vs_hf(tied, hf_model(str(tmp_path / "d"), remote=False)) < 1e-4


@pytest.mark.parametrize("options", [
    dict(mlp="swiglu", tie_embeddings=True, norm_weight=True),
    dict(attn="diff", n_head=2, n_kv_head=1),
    dict(moe_experts=4, moe_top_k=2),
    dict(value_embeds=True, smear=True, layer_lambdas=True, backout=True, qk_gain=1.2, rope_base=100000,
         rope_dtype="compute", window_pattern="SL", window_short=8, pad_vocab_to=64),
], ids=["swiglu_tied_normweight", "diff_attn", "moe", "arch2026"])
def test_other_architectures_load_as_remote_code(tok, tmp_path, options):
    model = random_model(tok, **options)
    assert export_folder(model, tok, str(tmp_path)) == "remote"
    doc = json.loads((tmp_path / "config.json").read_text())
    assert doc["model_type"] == "nanochat_ext" and "AutoModelForCausalLM" in doc["auto_map"]
    hf = hf_model(str(tmp_path), remote=True)
    assert ours_vs_hf(model, hf) < 1e-4
    ours, theirs = greedy_pair(model, hf, tok)  # through transformers' KV cache, one token at a time
    assert len(ours) >= 10 and ours == theirs
    # a left-padded batch: the short prompt's reply is its reply alone
    short, long_ = tok.encode("Hi", prepend="<|bos|>"), tok.encode("Hello there, how are", prepend="<|bos|>")
    pad = len(long_) - len(short)
    ids = torch.tensor([long_, [tok.get_bos_token_id()] * pad + short])
    mask = torch.tensor([[1] * len(long_), [0] * pad + [1] * len(short)])
    with torch.no_grad():
        padded, plain = hf(ids, attention_mask=mask).logits[1, pad:], hf(torch.tensor([short])).logits[0]
    assert (padded - plain).abs().max().item() < 1e-4
    out = hf.generate(ids, attention_mask=mask, max_new_tokens=12, min_new_tokens=12, do_sample=False)
    alone = hf.generate(torch.tensor([short]), max_new_tokens=12, min_new_tokens=12, do_sample=False)
    assert out[1, len(long_):].tolist() == alone[0, len(short):].tolist()


def test_options_and_refusal(tok, tmp_path, monkeypatch):
    # the modeling file's "off" values are GPTConfig's defaults (what the refusal compares against)
    default = GPTConfig()
    for name, off in remote_options().items():
        if name not in ("head_dim", "mlp_hidden"):  # (derived in __post_init__)
            assert getattr(default, name) == off, name
    # a field the modeling file does not compute, set away from its default: one-line refusal, nothing written
    monkeypatch.setattr(hf_export, "remote_options", lambda: {k: v for k, v in remote_options().items() if k != "smear"})
    with pytest.raises(UserError, match="cannot export smear=True"):
        export_folder(random_model(tok, smear=True), tok, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
    assert export_folder(random_model(tok), tok, str(tmp_path / "ok")) == "native"  # (smear off: fine)

# -----------------------------------------------------------------------------
# scripts: export, import back, import a transformers-made model

def save_random(base, tok, source, tag, step, **kw):
    model = random_model(tok, **kw)
    save_checkpoint(os.path.join(base, PHASE_DIRS[source], tag), step, model.state_dict(), None,
                    {"step": step, "model_config": model.config.to_dict()})
    return model


def logits_of(model, T=20):
    idx = torch.arange(T)[None] % model.config.vocab_size
    with torch.no_grad():
        return model(idx)


def test_export_import_scripts_round_trip(tok, tmp_path, monkeypatch):
    base, out = tmp_path / "base", tmp_path / "hf"
    tok.save(str(base / "tokenizer"))
    model = save_random(str(base), tok, "sft", "tiny", 7, tie_embeddings=True, pad_vocab_to=64)
    p = run_script(base, "scripts.export_hf", "-g", "tiny", "--out", str(out))
    assert "nanochat (transformers' own)" in p.stdout
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(os.listdir(out))
    assert run_script(base, "scripts.export_hf", "-g", "tiny", "--out", str(out), check=False).returncode == 1  # not empty
    # import into a fresh base dir: checkpoint and tokenizer, as exported (stage sft, tag tiny, step 7)
    fresh = tmp_path / "fresh"
    p = run_script(fresh, "scripts.import_hf", str(out))
    assert "tokenizer" in p.stdout and (fresh / "chatsft_checkpoints" / "tiny" / "model_000007.pt").exists()
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(fresh))
    back, tok_back, meta = load_model("sft", "cpu", "eval", "tiny")
    assert back.config == model.config and meta["step"] == 7
    assert tok_back.enc._mergeable_ranks == tok.enc._mergeable_ranks
    torch.testing.assert_close(logits_of(back), logits_of(model), atol=1e-6, rtol=0)
    p = run_script(fresh, "scripts.import_hf", str(out), check=False)  # the same step again
    assert p.returncode == 1 and "already has step 7" in p.stderr and "Traceback" not in p.stderr


def test_import_transformers_nanochat_model(tok, tmp_path, monkeypatch):
    cfg = transformers.NanoChatConfig(vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=192,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
                                      max_position_embeddings=64, rms_norm_eps=torch.finfo(torch.float32).eps)
    torch.manual_seed(3)
    hf = transformers.NanoChatForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0.0, 0.5)
    folder = tmp_path / "hub_model"
    hf.save_pretrained(str(folder))
    write_hf_tokenizer(tok, str(folder), 64)
    base = tmp_path / "base"
    p = run_script(base, "scripts.import_hf", str(folder), "--source", "sft", "-g", "hub")
    assert "chat_cli -i sft -g hub" in p.stdout
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(base))
    model, _, _ = load_model("sft", "cpu", "eval", "hub")
    assert model.config.mlp_hidden == 192 and model.config.n_kv_head == 1 and model.config.rope_dtype == "compute"
    assert ours_vs_hf(model, hf) < 1e-4
    # what ours does not compute is refused in one line
    doc = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(dict(doc, hidden_act="gelu")))
    p = run_script(base, "scripts.import_hf", str(folder), "-g", "other", check=False)
    assert p.returncode == 1 and "hidden_act 'gelu'" in p.stderr and "Traceback" not in p.stderr
    (folder / "config.json").write_text(json.dumps(dict(doc, model_type="llama")))
    p = run_script(base, "scripts.import_hf", str(folder), "-g", "other", check=False)
    assert p.returncode == 1 and "'llama' model" in p.stderr
