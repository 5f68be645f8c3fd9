"""
scripts.download_assets against a local stand-in for the hub (helpers.HubServer: the model file-list API
and resolve URLs): a real tiny tokenizer and checkpoint go up, come down into a fresh NANOCHAT_BASE_DIR and
load with load_model giving the same logits; --skip-tokenizer; the token as a bearer header (missing or
refused: a one-line error); a file whose size differs from the listing is not put in place; a .part resumes.
"""
import os
import runpy
import shutil
import sys

import pytest
import torch

from helpers import HubServer, hub_path, run_script

REPO = "karpathy/nanochat-d32"
BUNDLE = f"{REPO}::base_checkpoints/d32::model_*.pt,meta_*.json"
CKPT = ("model_000002.pt", "meta_000002.json")  # conftest's tiny base model ("terse"), step 2


@pytest.fixture(scope="module")
def hub(tiny_base_dir_session, tmp_path_factory):
    from nanochat.tokenizer import Tokenizer, compute_token_bytes
    src = tiny_base_dir_session
    root = tmp_path_factory.mktemp("hub")

    def put(repo, name, source=None, data=None):
        path = hub_path(root, repo, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if source:
            shutil.copyfile(source, path)
        else:
            open(path, "wb").write(data)
        return path

    tok = str(src / "tokenizer" / "tokenizer.pkl")
    put(REPO, "tokenizer.pkl", tok)
    torch.save(compute_token_bytes(Tokenizer.from_directory(str(src / "tokenizer"))), hub_path(root, REPO, "token_bytes.pt"))
    for repo in (REPO, "acme/private", "acme/truncated"):
        for name in CKPT:
            put(repo, name, str(src / "base_checkpoints" / "tiny" / name))
    put(REPO, "optim_000002.pt", data=b"not wanted")  # matches neither pattern: must not come down
    put(REPO, "README.md", data=b"# d32\n")
    put("acme/tok-only", "tokenizer.pkl", tok)
    server = HubServer(root, gated={"acme/private": "hf_good"})
    # acme/truncated serves half of its model file while its listing still gives the whole size
    model = hub_path(root, "acme/truncated", CKPT[0])
    full = os.path.getsize(model)
    open(model, "r+b").truncate(full // 2)
    server.listed_sizes[("acme/truncated", CKPT[0])] = full
    yield server, root
    server.close()


@pytest.fixture(autouse=True)
def no_token(monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("NANOCHAT_HF_URL", raising=False)


def download(base, server, *args, check=True):
    """The script as a user runs it: python -m, in a process of its own."""
    return run_script(base, "scripts.download_assets", "--hub_url", server.url, *args, check=check, timeout=60)


def download_here(base, server, monkeypatch, capsys, *args):
    """The same script run in this process (no second torch import): returns (exit code, stdout, stderr)."""
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(base))
    monkeypatch.setattr(sys, "argv", ["download_assets", "--hub_url", server.url, *args])
    capsys.readouterr()
    try:
        runpy.run_module("scripts.download_assets", run_name="__main__")
        code = 0
    except SystemExit as e:  # die(): anything else (a traceback) fails the test
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def resolved(server):
    return [p for p, _ in server.requests if "/resolve/" in p]


def assert_one_line_error(code, err, text):
    assert code != 0 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and text in lines[0], err


def test_tokenizer_and_checkpoint_bundle_load_with_the_same_logits(hub, tiny_base_dir_session, tmp_path, monkeypatch, capsys):
    from nanochat.checkpoint_manager import load_model
    server, root = hub
    p = download(tmp_path, server, "--extra", BUNDLE)
    assert "base_checkpoints/d32: checkpoint step 2: python -m scripts.chat_cli -i base -g d32" in p.stdout, p.stdout
    for name in ("tokenizer.pkl", "token_bytes.pt"):
        assert open(tmp_path / "tokenizer" / name, "rb").read() == open(hub_path(root, REPO, name), "rb").read()
    assert sorted(os.listdir(tmp_path / "base_checkpoints" / "d32")) == sorted(CKPT)  # no optim, no README, no .part

    idx = torch.randint(0, 400, (2, 24), generator=torch.Generator().manual_seed(0))
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tiny_base_dir_session))
    original, _, _ = load_model("base", "cpu", "eval", model_tag="tiny")
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path))
    model, tokenizer, meta = load_model("base", "cpu", "eval")  # nothing named: the tag and step are found
    assert meta["step"] == 2 and tokenizer.get_vocab_size() == original.config.vocab_size
    with torch.no_grad():
        torch.testing.assert_close(model(idx), original(idx), rtol=0, atol=0)

    # the same command again: every file is there with the hub's size, so only the listing is asked for
    before = len(resolved(server))
    code, out, _ = download_here(tmp_path, server, monkeypatch, capsys, "--extra", BUNDLE)
    assert code == 0 and out.count("skipped") == 4 and len(resolved(server)) == before, out


def test_skip_tokenizer_and_the_token_as_a_bearer_header(hub, tmp_path, monkeypatch, capsys):
    server, _ = hub
    bundle = "acme/private::chatsft_checkpoints/p::*"
    p = download(tmp_path, server, "--skip-tokenizer", "--extra", bundle, check=False)
    assert_one_line_error(p.returncode, p.stderr, "needs a token")
    code, _, err = download_here(tmp_path, server, monkeypatch, capsys, "--skip_tokenizer", "--extra", bundle, "--token", "hf_wrong")
    assert_one_line_error(code, err, "the token was refused (HTTP 403)")
    assert not (tmp_path / "chatsft_checkpoints").exists()

    monkeypatch.setenv("HF_TOKEN", "hf_good")
    start = len(server.requests)
    code, out, _ = download_here(tmp_path, server, monkeypatch, capsys, "--skip-tokenizer", "--extra", bundle)
    assert code == 0 and sorted(os.listdir(tmp_path / "chatsft_checkpoints" / "p")) == sorted(CKPT)
    assert not (tmp_path / "tokenizer").exists() and "warning: no tokenizer" in out
    mine = server.requests[start:]
    assert len(mine) == 3 and {auth for _, auth in mine} == {"Bearer hf_good"}  # the listing and two files


def test_a_file_whose_size_differs_from_the_listing_is_not_put_in_place(hub, tmp_path, monkeypatch, capsys):
    server, _ = hub
    code, _, err = download_here(tmp_path, server, monkeypatch, capsys, "--skip_tokenizer", "--extra", "acme/truncated::base_checkpoints/t::*")
    assert_one_line_error(code, err, "but the hub lists")
    folder = tmp_path / "base_checkpoints" / "t"
    assert sorted(os.listdir(folder)) == [CKPT[1]]  # the meta came; the short model file (and its .part) did not stay


def test_a_partial_download_resumes_and_token_bytes_are_computed(hub, tiny_base_dir_session, tmp_path):
    from nanochat.tokenizer import Tokenizer, compute_token_bytes
    server, root = hub
    whole = open(hub_path(root, "acme/tok-only", "tokenizer.pkl"), "rb").read()
    (tmp_path / "tokenizer").mkdir()
    (tmp_path / "tokenizer" / "tokenizer.pkl.part").write_bytes(whole[:1000])
    p = download(tmp_path, server, "--repo", "acme/tok-only")
    assert "resuming after 1,000 bytes" in p.stdout and "computed from tokenizer.pkl" in p.stdout, p.stdout
    assert ("/acme/tok-only/resolve/main/tokenizer.pkl", "bytes=1000-") in server.ranges
    assert (tmp_path / "tokenizer" / "tokenizer.pkl").read_bytes() == whole
    assert sorted(os.listdir(tmp_path / "tokenizer")) == ["token_bytes.pt", "tokenizer.pkl"]
    expected = compute_token_bytes(Tokenizer.from_directory(str(tiny_base_dir_session / "tokenizer")))
    assert torch.equal(torch.load(tmp_path / "tokenizer" / "token_bytes.pt"), expected)


def test_a_malformed_extra_is_a_one_line_error(hub, tmp_path, monkeypatch, capsys):
    server, _ = hub
    before = len(server.requests)
    code, _, err = download_here(tmp_path, server, monkeypatch, capsys, "--extra", "karpathy/nanochat-d32::model_*.pt")
    assert_one_line_error(code, err, "expected REPO::SUBDIR::PATTERNS")
    assert len(server.requests) == before  # said before asking the hub anything
