"""
Shared test fixtures. tiny_base_dir: a NANOCHAT_BASE_DIR with a real (tiny) tokenizer and models,
made once per test session in a few seconds on a CPU.
"""
import pytest
import torch



TEXT = """The quick brown fox jumps over the lazy dog. A small model can still talk, if only a little.
Hello there! How are you today? I am fine, thank you. What is two plus two? Two plus two is four.
Tell me a story about a cat who lived in a big house by the sea, and the boat that took her away.
"""


def make_tiny_model(base_dir, tokenizer, source="sft", tag="tiny", step=1, style="chatty", sequence_len=2048):
    """
    Save a tiny model as a checkpoint under base_dir. Its weights make replies predictable:
    style "chatty": samples only tokens made of letters and spaces, never a special token, so a
    reply always runs to max_tokens; "terse": the first token is always <|assistant_end|>.
    Returns the GPTConfig.
    """
    import os
    from nanochat.checkpoint_manager import PHASE_DIRS, save_checkpoint
    from nanochat.gpt import GPTConfig, build_model
    config = GPTConfig(sequence_len=sequence_len, vocab_size=tokenizer.get_vocab_size(), n_layer=2, n_head=2,
                       n_kv_head=2, n_embd=64)
    model = build_model(config, "cpu")
    special = {tokenizer.encode_special(s) for s in tokenizer.get_special_tokens()}
    with torch.no_grad():
        # the blocks start as identity, so after the final RMSNorm every position's state points
        # (mostly) along dimension 0, and lm_head's column 0 sets the logits
        model.transformer.wte.weight[:, 0] = 30.0
        model.lm_head.weight.zero_()
        for i in range(config.vocab_size):
            if style == "terse":
                good = i == tokenizer.encode_special("<|assistant_end|>")
            else:
                text = tokenizer.id_to_token(i)
                good = i not in special and any(c.isalpha() for c in text) and all(c.isalpha() or c == " " for c in text)
            model.lm_head.weight[i, 0] = 0.0 if good else -1.0
    checkpoint_dir = os.path.join(base_dir, PHASE_DIRS[source], tag)
    save_checkpoint(checkpoint_dir, step, model.state_dict(), None, {"step": step, "model_config": config.to_dict()})
    return config


@pytest.fixture(scope="session")
def tiny_base_dir_session(tmp_path_factory):
    from nanochat.tokenizer import Tokenizer
    base = tmp_path_factory.mktemp("nanochat_base")
    tokenizer = Tokenizer.train_from_iterator(iter([TEXT] * 20), vocab_size=400)
    tokenizer.save(str(base / "tokenizer"))
    make_tiny_model(str(base), tokenizer, "sft", "tiny", 5, "chatty")
    make_tiny_model(str(base), tokenizer, "base", "tiny", 2, "terse")
    return base


@pytest.fixture
def tiny_base_dir(tiny_base_dir_session, monkeypatch):
    """A base dir with tokenizer/, chatsft_checkpoints/tiny/ step 5 (chatty) and base_checkpoints/tiny/ step 2 (terse);
    NANOCHAT_BASE_DIR points at it for the test."""
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tiny_base_dir_session))
    return tiny_base_dir_session


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory):
    """A NANOCHAT_BASE_DIR with a small built-in corpus and a 512-token tokenizer (made once, a few seconds)."""
    import os
    from nanochat.builtin_corpus import build_builtin
    from nanochat.dataset import get_data_dir, text_iterator
    from nanochat.tokenizer import Tokenizer, compute_token_bytes
    base = str(tmp_path_factory.mktemp("corpus"))
    old = os.environ.get("NANOCHAT_BASE_DIR")
    os.environ["NANOCHAT_BASE_DIR"] = base
    try:
        build_builtin(total_chars=300_000, shard_chars=150_000)  # ~75 docs a shard: 2 row groups, one per rank
        tok = Tokenizer.train_from_iterator(text_iterator(get_data_dir("builtin"), max_chars=300_000), 512)
        tok.save(os.path.join(base, "tokenizer"))
        torch.save(compute_token_bytes(tok), os.path.join(base, "tokenizer", "token_bytes.pt"))
    finally:
        if old is None:
            del os.environ["NANOCHAT_BASE_DIR"]
        else:
            os.environ["NANOCHAT_BASE_DIR"] = old
    return base
