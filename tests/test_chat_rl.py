"""
RL (nanochat.rl, scripts/chat_rl.py): advantages normalised per question, the loss trains only the
tokens the model sampled (not the prompt, not the calculator's output), one step raises the
log-probability of a rewarded reply, and a short run writes a checkpoint that --resume continues.

The models are tiny "chain" models: their blocks start as the identity, so the next token depends
only on the current one (logits = lm_head(norm(wte[token]))), and their weights spell out which
tokens follow which: replies are known in advance, yet sampled by the real engine.
"""
import os
import re
import shutil

import pytest
import torch

from nanochat.exercises import is_correct
from nanochat.gpt import GPTConfig, build_model
from nanochat.rl import RolloutBatches, group_advantages, pg_loss, rollout_batch, sample_replies
from nanochat.tasks import Task
from nanochat.tokenizer import Tokenizer, render_for_completion

TEXT = "Are the brackets in ([)] balanced? yes no. What is 1+2? 3. Hello there, how are you? " * 30


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train_from_iterator(iter([TEXT]), vocab_size=300)


def chain_model(tokenizer, paths, logit=20.0, sequence_len=256):
    """A tiny model whose replies follow the token paths: each token is followed by the next one of its
    path (equally likely where paths branch); tokens on no path are followed by any token."""
    follow = {}
    for path in paths:
        for a, b in zip(path, path[1:]):
            follow.setdefault(a, [])
            if b not in follow[a]:
                follow[a].append(b)
    config = GPTConfig(sequence_len=sequence_len, vocab_size=tokenizer.get_vocab_size(), n_layer=1, n_head=2, n_kv_head=2, n_embd=64)
    torch.manual_seed(0)
    model = build_model(config, "cpu")
    assert len(follow) <= config.n_embd
    with torch.no_grad():
        model.transformer.wte.weight.zero_()
        model.lm_head.weight.zero_()
        for d, (a, nexts) in enumerate(follow.items()):
            model.transformer.wte.weight[a, d] = 1.0  # normed twice: 8 along dimension d at width 64
            for b in nexts:
                model.lm_head.weight[b, d] = logit / 8
    return model


def yes_no_model(tok):
    sp = tok.encode_special
    start, end = sp("<|assistant_start|>"), sp("<|assistant_end|>")
    yes, no = tok.encode("yes"), tok.encode("no")
    assert not set(yes) & set(no)
    return chain_model(tok, [[start, *yes, end], [start, *no, end]])


class Questions(Task):
    """Questions with exact answers, as the RL code wants them (a data source, not a model)."""
    eval_type = "generative"

    def __init__(self, pairs):
        self.pairs = pairs

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, i):
        q, a = self.pairs[i]
        return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}], "answer": a}

    def evaluate(self, conversation, completion):
        return is_correct(completion, conversation["answer"])

# -----------------------------------------------------------------------------
# advantages


def test_advantages_are_normalised_per_group():
    rewards = torch.tensor([1., 0., 0., 0., 1., 1., 1., 1., 0., 1., 0., 1.])
    adv = group_advantages(rewards, 4).view(3, 4)
    assert torch.equal(adv[1], torch.zeros(4))  # every sample got the same reward: nothing to learn
    for g in (0, 2):
        assert abs(adv[g].mean().item()) < 1e-6 and abs(adv[g].std(unbiased=False).item() - 1) < 1e-4
    assert adv[0, 0] > 0 > adv[0, 1] and torch.allclose(adv[0, 1:], adv[0, 1].expand(3))
    centered = group_advantages(rewards, 4, "centered").view(3, 4)
    assert torch.allclose(centered[0], torch.tensor([0.75, -0.25, -0.25, -0.25]))
    assert torch.equal(centered[1], torch.zeros(4))
    with pytest.raises(ValueError):
        group_advantages(rewards, 4, "ranked")


def test_gsm8k_questions_are_rewarded_by_the_final_answer(tok, tmp_path, monkeypatch):
    """GSM8K through its own loader (a local file in its layout): reward 1 for the right number after ####."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from nanochat.common import UserError
    from nanochat.rl import load_task, reward
    from nanochat.tasks import eval_data_path
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path))
    with pytest.raises(UserError):
        load_task("gsm8k", "train")  # not downloaded: a one-line error
    path = eval_data_path("gsm8k", "main", "train-00000-of-00001.parquet")
    os.makedirs(os.path.dirname(path))
    pq.write_table(pa.table({"question": ["Natalia sold 48 clips in April and half as many in May. How many in all?"],
                             "answer": ["In May she sold 48/2 = <<48/2=24>>24 clips. 48+24 = <<48+24=72>>72\n#### 72"]}), path)
    task = load_task("gsm8k", "train")
    conversation = task[0]
    assert reward(task, conversation, tok, tok.encode("48+24 = 72\n#### 72")) == 1.0
    assert reward(task, conversation, tok, tok.encode("48+24 = 71\n#### 71")) == 0.0
    with pytest.raises(UserError):
        load_task("chat", "train")  # no exact answers to reward

# -----------------------------------------------------------------------------
# the loss


def test_loss_trains_sampled_tokens_only_not_prompt_or_tool_output(tok):
    """A reply through the calculator: the tool's forced output and the prompt get zero gradient (autograd)."""
    from nanochat.engine import Engine
    sp = tok.encode_special
    expr = tok.encode("1+2")
    three = tok.encode("3")
    start, end = sp("<|assistant_start|>"), sp("<|assistant_end|>")
    py_start, py_end, out_start, out_end = (sp(f"<|{s}|>") for s in ("python_start", "python_end", "output_start", "output_end"))
    # the model writes <|python_start|>1+2<|python_end|>; the engine forces <|output_start|>3<|output_end|>; the model says 3
    model = chain_model(tok, [[start, py_start, *expr, py_end], [out_end, *three, end]])
    model.eval()
    prompt = render_for_completion(tok, {"messages": [{"role": "user", "content": "What is 1+2?"}]})
    [(reply, sampled)] = sample_replies(Engine(model, tok), prompt, 1, 20, temperature=0.5, seed=0)
    assert reply == [py_start, *expr, py_end, out_start, *three, out_end, *three, end]
    assert sampled == [True] * (len(expr) + 2) + [False] * (len(three) + 2) + [True] * (len(three) + 1)
    inputs, targets = rollout_batch([(prompt + reply, [False] * len(prompt) + sampled)], tok.get_bos_token_id(), "cpu")
    assert targets[targets >= 0].tolist() == [py_start, *expr, py_end, *three, end]

    model.train()
    seen = {}

    def keep_logits(module, inputs, out):
        out.retain_grad()
        seen["logits"] = out
    model.lm_head.register_forward_hook(keep_logits)
    loss = pg_loss(model, inputs, targets, torch.tensor([1.0]))
    loss.backward()
    grad = seen["logits"].grad[0]  # (T, vocab): row j is the prediction of token j + 1
    untrained = (targets[0] < 0).nonzero().view(-1)
    trained = (targets[0] >= 0).nonzero().view(-1)
    assert len(untrained) == len(prompt) - 1 + len(three) + 2
    assert torch.count_nonzero(grad[untrained]) == 0
    assert all(grad[j].abs().sum() > 0 for j in trained)
    # and the loss is -advantage x the mean log-probability of the trained tokens
    logp = torch.log_softmax(model.softcap * torch.tanh(seen["logits"][0].detach().float() / model.softcap), dim=-1)
    expected = -logp[trained, targets[0, trained]].mean()
    assert abs(loss.item() - expected.item()) < 1e-5


def reply_logprob(model, tok, question, answer):
    sp = tok.encode_special
    prompt = render_for_completion(tok, {"messages": [{"role": "user", "content": question}]})
    reply = tok.encode(answer) + [sp("<|assistant_end|>")]
    inputs, targets = rollout_batch([(prompt + reply, [False] * len(prompt) + [True] * len(reply))], tok.get_bos_token_id(), "cpu")
    with torch.no_grad():
        return -model(inputs, targets, loss_reduction="sum").item()


def test_one_step_raises_the_logprob_of_the_rewarded_reply(tok):
    """Sampled yes/no replies, "yes" rewarded: one trainer step with the RL batches makes "yes" more likely, "no" less."""
    import argparse
    from nanochat.train_settings import TRAIN_DEFAULTS
    from nanochat.trainer import Trainer
    model = yes_no_model(tok)
    task = Questions([("Are the brackets in () balanced?", "yes")])
    before = reply_logprob(model, tok, task.pairs[0][0], "yes"), reply_logprob(model, tok, task.pairs[0][0], "no")
    assert abs(before[0] - before[1]) < 1e-4  # even odds
    modes = []  # (training mode, gradients on) of every forward: with a KV cache (sampling) or not (training)
    model.register_forward_pre_hook(lambda m, args, kw: modes.append((kw.get("kv_cache") is not None, m.training,
                                                                     torch.is_grad_enabled())), with_kwargs=True)
    trainer = Trainer(model, argparse.Namespace(**{**TRAIN_DEFAULTS, "optimizer": "adamw"}), "cpu", torch.float32, 8, 16, 1,
                      loss_fn=pg_loss)
    batches = RolloutBatches(model, tok, task, num_samples=8, batch_size=8, max_new_tokens=8, seed=1,
                             weights_version=lambda: trainer.step)
    trainer.set_batches(batches)
    trainer.train_step()
    rewards = trainer.extras["reward"]
    assert 0 < rewards < 1  # both answers were sampled
    sampling = {(train, grad) for cached, train, grad in modes if cached}
    training = {(train, grad) for cached, train, grad in modes if not cached}
    assert sampling == {(False, False)} and training == {(True, True)}
    after = reply_logprob(model, tok, task.pairs[0][0], "yes"), reply_logprob(model, tok, task.pairs[0][0], "no")
    assert after[0] > before[0] + 0.01 and after[1] < before[1] - 0.01
    assert batches.state_dict() == {"question": 1} and model.training

# -----------------------------------------------------------------------------
# the script


@pytest.fixture
def rl_base_dir(tmp_path, tok):
    """A base dir with the tokenizer and the yes/no model as an SFT checkpoint (tag yn)."""
    from nanochat.checkpoint_manager import save_checkpoint
    tok.save(str(tmp_path / "tokenizer"))
    model = yes_no_model(tok)
    save_checkpoint(str(tmp_path / "chatsft_checkpoints" / "yn"), 3, model.state_dict(), None,
                    {"step": 3, "model_config": model.config.to_dict()})
    return tmp_path


def test_chat_rl_writes_checkpoints_and_resumes(rl_base_dir, monkeypatch):
    """Brackets questions (yes/no): a short run saves at steps 2 and 4; resuming at 2 gives the same steps 3-4 and weights."""
    from helpers import run_script

    def step_losses(output):  # a policy-gradient loss can be negative
        return {int(m.group(1)): m.group(2) for m in re.finditer(r"^step (\d+)/\d+ \| loss: (-?[\d.]+)", output, re.M)}
    from nanochat.checkpoint_manager import load_checkpoint, load_model
    common = ["--device_type", "cpu", "--task", "exercises.brackets.1", "--num_samples", "4", "--examples_per_step", "2",
              "--device_batch_size", "4", "--max_new_tokens", "6", "--eval_examples", "8", "--eval_every", "0",
              "--init_lr_frac", "1.0", "--num_iterations", "4", "--save_every", "2"]
    out = run_script(rl_base_dir, "scripts.chat_rl", *common).stdout
    assert "2 questions x 4 samples = 8 replies (4 per micro-step x 2 accumulation steps x 1 ranks)" in out
    assert re.search(r"^step 00000 \| pass@1: [\d.]+", out, re.M) and re.search(r"held-out pass@1 [\d.]+ -> [\d.]+", out)
    assert re.search(r"^step 00004/00004 \| loss: .* \| reward: [\d.]+ \| reply_len: [\d.]+", out, re.M)
    ckpt = rl_base_dir / "chatrl_checkpoints" / "yn"
    assert {"model_000002.pt", "optim_000002.pt", "meta_000002.json", "model_000004.pt", "meta_000004.json"} <= set(os.listdir(ckpt))
    a, _, meta = load_checkpoint(str(ckpt), 4, "cpu")
    assert meta["phase"] == "rl" and meta["source"] == {"phase": "sft", "model_tag": "yn", "step": 3}
    assert meta["dataloader_state"] == {"question": 8}  # 4 steps of 2 questions
    start = load_checkpoint(str(rl_base_dir / "chatsft_checkpoints" / "yn"), 3, "cpu")[0]
    assert any(not torch.equal(a[k], start[k]) for k in a)  # it learned something
    # resume from step 2 (copied to another tag): the same losses and the same weights as the straight run
    (rl_base_dir / "chatrl_checkpoints" / "r").mkdir()
    for name in ("model_000002.pt", "optim_000002.pt", "meta_000002.json"):
        shutil.copy(ckpt / name, rl_base_dir / "chatrl_checkpoints" / "r" / name)
    again = run_script(rl_base_dir, "scripts.chat_rl", *common, "--model_tag", "yn", "--output_tag", "r", "--resume").stdout
    assert "resumed from" in again and sorted(step_losses(again)) == [3, 4]
    assert all(step_losses(again)[s] == step_losses(out)[s] for s in (3, 4))
    b, _, meta_b = load_checkpoint(str(rl_base_dir / "chatrl_checkpoints" / "r"), 4, "cpu")
    assert meta_b["dataloader_state"] == {"question": 8}
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # chat_cli -i rl loads it
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(rl_base_dir))
    model, _, meta = load_model("rl", "cpu", "eval", model_tag="yn")
    assert meta["step"] == 4
