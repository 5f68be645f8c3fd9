"""
Chat: conversation rendering and loss masks, packing conversations into rows, SFT on a tiny model
(lowers the loss, saves a resumable checkpoint), and chat_cli / chat_eval end to end.
"""
import json
import os
import re
import subprocess
import sys

import pytest
import torch

from nanochat.tokenizer import Tokenizer, render_conversation, render_for_completion, validate_conversation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tok():
    from nanochat.exercises import exercise_document
    import random
    text = exercise_document(random.Random(0), 300) + " Hello! I am nanochat. How can I help you today? Thanks, bye."
    return Tokenizer.train_from_iterator(iter([text]), vocab_size=400)

# -----------------------------------------------------------------------------
# rendering


def test_render_masks_only_what_the_assistant_writes(tok):
    conv = {"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2 + 3?"},
        {"role": "assistant", "content": [{"type": "text", "text": "Let me see. "}, {"type": "python", "text": "2 + 3"},
                                          {"type": "python_output", "text": "5"}, {"type": "text", "text": "It is 5."}]},
        {"role": "user", "content": "Thanks"},
        {"role": "assistant", "content": "You're welcome!"},
    ]}
    ids, mask = render_conversation(tok, conv)
    assert len(ids) == len(mask)
    sp = tok.encode_special
    trained = tok.decode([t for t, m in zip(ids, mask) if m])
    untrained = tok.decode([t for t, m in zip(ids, mask) if not m])
    assert trained == "Let me see. <|python_start|>2 + 3<|python_end|>It is 5.<|assistant_end|>You're welcome!<|assistant_end|>"
    assert "Be brief." in untrained and "What is 2 + 3?" in untrained and "Thanks" in untrained
    assert "<|output_start|>5<|output_end|>" in untrained  # the tool's output is not the model's to learn
    assert ids[0] == tok.get_bos_token_id() and mask[0] == 0
    assert ids.count(sp("<|assistant_start|>")) == 2 and all(not m for t, m in zip(ids, mask) if t == sp("<|assistant_start|>"))
    # truncation keeps ids and mask aligned
    short_ids, short_mask = render_conversation(tok, conv, max_tokens=10)
    assert short_ids == ids[:10] and short_mask == mask[:10]


def test_render_for_completion_primes_an_assistant_turn(tok):
    conv = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    ids = render_for_completion(tok, conv)
    assert ids[-1] == tok.encode_special("<|assistant_start|>")
    assert "hello" not in tok.decode(ids)  # the final assistant message is what is to be generated
    assert ids == render_for_completion(tok, {"messages": conv["messages"][:1]})


@pytest.mark.parametrize("messages, error", [
    ([], "non-empty"),
    ([{"role": "assistant", "content": "hi"}], "expected role 'user'"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "expected role 'assistant'"),
    ([{"role": "system", "content": "s"}], "user message after the system"),
    ([{"role": "user", "content": "a"}, {"role": "system", "content": "s"}], "expected role 'assistant'"),
    ([{"role": "user", "content": 3}], "content must be"),
    ([{"role": "user", "content": [{"type": "text", "text": "a"}]}], "only assistant"),
])
def test_malformed_conversations_give_clear_errors(tok, messages, error):
    with pytest.raises(ValueError, match=error):
        validate_conversation({"messages": messages})
    with pytest.raises(ValueError, match=error):
        render_conversation(tok, {"messages": messages})

# -----------------------------------------------------------------------------
# packing


def test_conversation_rows_pack_whole_conversations_and_resume(tok):
    from nanochat.chat_data import conversation_rows
    from nanochat.tasks.builtin import ExerciseChat
    task = ExerciseChat(60, seed=1)
    B, T = 3, 48
    batches = list(conversation_rows(tok, task, B, T, stop_epoch=1))
    assert all(x.shape == (B, T) and y.shape == (B, T) for x, y, _ in batches)
    # targets are the next tokens where trained, -1 elsewhere; every trained target is an assistant token
    x, y, _ = batches[0]
    assert ((y == -1) | (y == torch.cat([x[:, 1:], y[:, -1:]], 1)) | (torch.arange(T) == T - 1)).all()
    n_trained = sum(int((y >= 0).sum()) for _, y, _ in batches)
    # nothing lost, nothing trained twice (each conversation opens with an untrained <|bos|>)
    assert n_trained == sum(sum(render_conversation(tok, conv, max_tokens=T + 1)[1]) for conv in task)
    # resuming from a batch's state gives the same following batches
    state = batches[1][2]
    resumed = list(conversation_rows(tok, task, B, T, state["index"], state["epoch"], stop_epoch=1))
    assert len(resumed) == len(batches) - 2
    for (x1, y1, _), (x2, y2, _) in zip(resumed, batches[2:]):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)

# -----------------------------------------------------------------------------
# training


@pytest.fixture
def tiny_train_dir(tmp_path, tok, monkeypatch):
    """A base dir with the tokenizer and a freshly initialised tiny base model."""
    from nanochat.checkpoint_manager import save_checkpoint
    from nanochat.gpt import GPTConfig, build_model
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path))
    tok.save(str(tmp_path / "tokenizer"))
    torch.manual_seed(0)
    config = GPTConfig(sequence_len=64, vocab_size=tok.get_vocab_size(), n_layer=1, n_head=2, n_kv_head=2, n_embd=32)
    model = build_model(config, "cpu")
    save_checkpoint(str(tmp_path / "base_checkpoints" / "t1"), 0, model.state_dict(), None,
                    {"step": 0, "model_config": config.to_dict()})
    return tmp_path


def train_script(module, argv, base_dir):
    """Run a training script on the CPU; returns its stdout (fails the test on a non-zero exit)."""
    env = dict(os.environ, NANOCHAT_BASE_DIR=str(base_dir), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    p = subprocess.run([sys.executable, "-m", module, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


def val_losses(out):
    return [float(v) for v in re.findall(r"^step \d+ \| val loss: ([\d.]+)", out, re.M)]


def test_sft_lowers_the_loss_and_resumes(tiny_train_dir):
    from nanochat.checkpoint_manager import load_checkpoint
    common = ["--device_type", "cpu", "--mixture", "exercises.addition.1:2,chat:1", "--device_batch_size", "4",
              "--max_seq_len", "64", "--init_lr_frac", "1.0", "--eval_conversations", "32", "--eval_every", "0"]
    out = train_script("scripts.chat_sft", common + ["--num_iterations", "12", "--save_every", "6"], tiny_train_dir)
    first, last = val_losses(out)
    assert last < first - 0.5
    ckpt = tiny_train_dir / "chatsft_checkpoints" / "t1"
    assert {"model_000006.pt", "meta_000006.json", "optim_000006.pt", "model_000012.pt", "meta_000012.json"} <= set(os.listdir(ckpt))
    _, _, meta = load_checkpoint(str(ckpt), 12, "cpu")
    assert meta["phase"] == "sft" and meta["source"]["phase"] == "base" and meta["model_config"]["n_embd"] == 32
    # resume from the step-6 checkpoint (copied to a second tag): the same weights as the straight run
    import shutil
    (tiny_train_dir / "chatsft_checkpoints" / "r").mkdir()
    for name in ("model_000006.pt", "optim_000006.pt", "meta_000006.json"):
        shutil.copy(ckpt / name, tiny_train_dir / "chatsft_checkpoints" / "r" / name)
    again = train_script("scripts.chat_sft", common + ["--num_iterations", "12", "--save_every", "6", "--output_tag", "r", "--resume"],
                         tiny_train_dir)
    # the same losses and smoothed losses as the straight run, to the printed digit (the average is debiased
    # by the steps since the run started, not since the resume)
    from helpers import step_losses, smooth_losses
    assert sorted(step_losses(again)) == list(range(7, 13))
    assert all(step_losses(again)[s] == step_losses(out)[s] for s in range(7, 13))
    assert all(smooth_losses(again)[s] == smooth_losses(out)[s] for s in range(7, 13))
    a, _, _ = load_checkpoint(str(ckpt), 12, "cpu")
    b, _, meta_b = load_checkpoint(str(tiny_train_dir / "chatsft_checkpoints" / "r"), 12, "cpu")
    assert meta_b["step"] == 12
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_mid_training_then_sft_from_mid(tiny_train_dir):
    out = train_script("scripts.mid_train", ["--device_type", "cpu", "--mixture", "chat", "--num_conversations", "40",
                                             "--device_batch_size", "4", "--max_seq_len", "64", "--eval_conversations", "8"],
                       tiny_train_dir)
    # one epoch of 40 conversations, counted before the run so the schedule ends with it
    n = int(re.search(r"iterations: (\d+) \(1 epoch", out).group(1))
    assert re.search(rf"^step {n:05d}/{n:05d} \| loss", out, re.M) and f"step {n + 1:05d}" not in out
    assert (tiny_train_dir / "mid_checkpoints" / "t1").is_dir()
    train_script("scripts.chat_sft", ["--device_type", "cpu", "--mixture", "chat", "--num_iterations", "1",
                                      "--device_batch_size", "2", "--eval_conversations", "4"], tiny_train_dir)
    from nanochat.checkpoint_manager import load_checkpoint, find_last_step
    d = str(tiny_train_dir / "chatsft_checkpoints" / "t1")
    step = find_last_step(d)
    _, _, meta = load_checkpoint(d, step, "cpu")
    assert meta["source"]["phase"] == "mid" and step == 1

def test_sft_by_epochs_under_torchrun_ends_together(tiny_train_dir):
    """Two ranks pack different conversations, so their data ends at different points (inside an accumulation)."""
    from helpers import run_script as run
    p = run(tiny_train_dir, "scripts.chat_sft", "--device_type", "cpu", "--mixture", "exercises:3,chat:1", "--num_conversations", "33",
            "--device_batch_size", "2", "--max_seq_len", "64", "--total_batch_size", "768", "--eval_conversations", "8",
            "--output_tag", "ddp", torchrun=True, timeout=180)
    n = int(re.search(r"iterations: (\d+) \(1 epoch", p.stdout).group(1))
    assert "x 2 ranks x 3 accumulation steps" in p.stdout
    assert re.search(rf"^step {n:05d}/{n:05d} \| loss", p.stdout, re.M) and "val loss" in p.stdout
    # 33 conversations pack into 7 batches on rank 0 and 8 on rank 1: both run out inside step 3, at different micro-steps
    assert n == 3 and "rank 0: out of data inside step 3" in p.stdout and "rank 1: out of data inside step 3" in p.stdout


# -----------------------------------------------------------------------------
# scripts end to end


def run_script(module, *argv, base_dir):
    env = dict(os.environ, NANOCHAT_BASE_DIR=str(base_dir), NANOCHAT_FAST_DECODE="0", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", module, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_chat_cli_one_shot_prints_an_answer(tiny_base_dir):
    r = run_script("scripts.chat_cli", "-p", "Hello there", "--max_tokens", "8", "-t", "0", "--device_type", "cpu",
                   base_dir=tiny_base_dir)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() and all(c.isalpha() or c.isspace() for c in r.stdout.strip())  # the chatty model's letters
    # a missing stage is a one-line error, not a traceback
    r = run_script("scripts.chat_cli", "-i", "rl", "-p", "hi", "--device_type", "cpu", base_dir=tiny_base_dir)
    assert r.returncode == 1 and r.stderr.startswith("error:") and "Traceback" not in r.stderr


def test_chat_eval_prints_a_table_and_json(tiny_base_dir):
    r = run_script("scripts.chat_eval", "-i", "base", "-a", "builtin", "--kinds", "addition,copy", "--difficulties", "1,2",
                   "-n", "2", "--device_type", "cpu", base_dir=tiny_base_dir)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    cells = result["results"]["builtin"]["by_cell"]
    assert set(cells) == {"addition/1", "addition/2", "copy/1", "copy/2"}
    assert result["results"]["builtin"]["accuracy"] == 0.0  # the terse model says nothing
    assert "addition" in r.stdout and "d2" in r.stdout
    r = run_script("scripts.chat_eval", "-a", "mmlu", "--device_type", "cpu", base_dir=tiny_base_dir)
    assert r.returncode == 1 and "chat_eval --download" in r.stderr and "Traceback" not in r.stderr
