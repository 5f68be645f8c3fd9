"""
Distillation (nanochat/distill.py, scripts/distill.py): the chunked KL and the teacher's
cross-entropy against autograd on full logits; the loss of a student equal to its teacher; the
trainer's loss_fn against an autograd reference through two real (tiny) models; one-line errors;
and the script run as a user runs it, on pretraining text and on conversations.
"""
import copy
import json
import os

import pytest
import torch
import torch.nn.functional as F

from nanochat import distill
from nanochat.common import UserError
from nanochat.distill import DistillLoss, distill_kl
from nanochat.gpt import GPTConfig, build_model
from tests.helpers import run_script, step_losses

CAP = 15.0


def reference_kl(h, w, h_t, w_t, targets, temperature):
    """T^2 KL(teacher || student) and the teacher's CE, summed over rows with a target, on full logits."""
    s = CAP * torch.tanh(h @ w.t() / CAP)
    t = CAP * torch.tanh(h_t @ w_t.t() / CAP)
    rows = targets != -1
    kl = F.kl_div(F.log_softmax(s[rows] / temperature, -1), F.log_softmax(t[rows] / temperature, -1),
                  log_target=True, reduction="sum") * temperature ** 2
    return kl, F.cross_entropy(t, targets, ignore_index=-1, reduction="sum")


def inputs(N=50, C=16, C_t=24, V=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    h, w = torch.randn(N, C, generator=g), torch.randn(V, C, generator=g) * 2.0  # logits of a few units: the softcap matters
    h_t, w_t = torch.randn(N, C_t, generator=g), torch.randn(V, C_t, generator=g) * 2.0
    targets = torch.randint(0, V, (N,), generator=g)
    targets[torch.rand(N, generator=g) < 0.3] = -1
    return h, w, h_t, w_t, targets


@pytest.mark.parametrize("temperature", [1.0, 2.0, 0.1])  # 0.1: |logits / T| up to 150, the softmax takes its row maximum
@pytest.mark.parametrize("rows", [7, 64])  # 7 does not divide 50; 64: one chunk bigger than N
def test_kl_and_gradients_match_autograd(temperature, rows, monkeypatch):
    h, w, h_t, w_t, targets = inputs()
    monkeypatch.setattr(distill, "CHUNK_LOGITS", rows * w.size(0))
    h, w = h.requires_grad_(), w.requires_grad_()
    kl, teacher_ce = distill_kl(h, w, h_t, w_t, targets, temperature)
    got = torch.autograd.grad(kl, (h, w))
    ref_kl, ref_ce = reference_kl(h, w, h_t, w_t, targets, temperature)
    want = torch.autograd.grad(ref_kl, (h, w))
    assert kl.item() > 1.0  # the models disagree: the test compares something
    torch.testing.assert_close(kl, ref_kl, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(teacher_ce, ref_ce.detach(), rtol=1e-5, atol=1e-4)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # rows without a target get no gradient; without autograd the same loss comes back
    assert got[0][targets == -1].abs().max() == 0
    with torch.no_grad():
        torch.testing.assert_close(distill_kl(h, w, h_t, w_t, targets, temperature)[0], kl.detach())


def tiny_gpt(n_layer, n_embd, vocab=96, seed=0):
    torch.manual_seed(seed)
    model = build_model(GPTConfig(sequence_len=32, vocab_size=vocab, n_layer=n_layer, n_head=2, n_kv_head=2, n_embd=n_embd), "cpu")
    with torch.no_grad():
        model.lm_head.weight.normal_(0, 0.5)  # (it starts at zero: every distribution uniform)
    return model


def batch(vocab=96, masked=True, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, vocab, (3, 32), generator=g)
    y = torch.randint(0, vocab, (3, 32), generator=g)
    if masked:
        y[:, :10] = -1  # as conversations: only some positions are trained
    return x, y


def grads_of(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("masked", [False, True])
def test_student_equal_to_teacher(masked):
    """The KL part is 0 with 0 gradient; the CE part is the student's ordinary cross-entropy, weighted 1 - kl_weight."""
    student = tiny_gpt(2, 32)
    teacher = copy.deepcopy(student)
    x, y = batch(masked=masked)
    loss, logged = DistillLoss(student, teacher, kl_weight=1.0)(student, x, y)
    assert loss.item() == 0.0 and logged["kl"].item() == 0.0
    assert all(g.abs().max() == 0 for g in grads_of(student, loss).values())
    ce_grads = grads_of(student, student(x, y))
    loss, logged = DistillLoss(student, teacher, kl_weight=0.3)(student, x, y)
    assert logged["kl"].item() == 0.0
    torch.testing.assert_close(logged["teacher_ce"], logged["ce"])  # the teacher's CE, from the KL's chunks
    torch.testing.assert_close(loss, 0.7 * student(x, y))
    for name, grad in grads_of(student, loss).items():
        torch.testing.assert_close(grad, 0.7 * ce_grads[name], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_loss_fn_gradients_match_autograd_through_models(temperature, monkeypatch):
    monkeypatch.setattr(distill, "CHUNK_LOGITS", 13 * 96)  # several chunks
    student, teacher = tiny_gpt(1, 32, seed=0), tiny_gpt(2, 64, seed=1)
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    x, y = batch()
    loss_fn = DistillLoss(student, teacher, kl_weight=0.6, temperature=temperature)
    loss, logged = loss_fn(student, x, y)
    got = grads_of(student, loss)
    # the reference: full logits of both models, autograd through the student
    logits, rows = student(x), y != -1
    with torch.no_grad():
        t = teacher(x)
    n = rows.sum()
    kl = F.kl_div(F.log_softmax(logits[rows] / temperature, -1), F.log_softmax(t[rows] / temperature, -1),
                  log_target=True, reduction="sum") * temperature ** 2 / n
    ce = F.cross_entropy(logits.view(-1, 96), y.view(-1), ignore_index=-1)
    want = grads_of(student, 0.6 * kl + 0.4 * ce)
    assert logged["kl"].item() > 0.1
    torch.testing.assert_close(logged["kl"], kl.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss, (0.6 * kl + 0.4 * ce).detach(), rtol=1e-5, atol=1e-6)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6, msg=name)
    # the teacher: eval mode, frozen, unchanged, and its hook keeps nothing outside the loss
    assert not teacher.training and not any(p.requires_grad or p.grad is not None for p in teacher.parameters())
    assert all(torch.equal(v, teacher_before[k]) for k, v in teacher.state_dict().items())
    with torch.no_grad():
        assert teacher(x).shape == (3, 32, 96)  # outside the loss its forward runs to the logits


def test_one_line_errors():
    with pytest.raises(UserError, match="same tokenizer"):
        DistillLoss(tiny_gpt(1, 32, vocab=96), tiny_gpt(1, 32, vocab=128))
    with pytest.raises(UserError, match="kl_weight"):
        DistillLoss(tiny_gpt(1, 32), tiny_gpt(1, 32), kl_weight=1.5)
    with pytest.raises(UserError, match="temperature"):
        DistillLoss(tiny_gpt(1, 32), tiny_gpt(1, 32), temperature=0)

# -----------------------------------------------------------------------------
# the script


def private_base(tmp_path, corpus_dir):
    """A base dir of its own (new tags here must not change other tests' default model) with the corpus and tokenizer."""
    base = tmp_path / "base"
    base.mkdir()
    for name in ("tokenizer", "builtin_data"):
        os.symlink(os.path.join(corpus_dir, name), base / name)
    return base


def save_teacher(base, source, tag, vocab, n_layer=2, n_embd=64, seq=64):
    from nanochat.checkpoint_manager import PHASE_DIRS, save_checkpoint
    model = tiny_gpt(n_layer, n_embd, vocab=vocab)
    model.config.sequence_len = seq
    save_checkpoint(os.path.join(base, PHASE_DIRS[source], tag), 3, model.state_dict(), None,
                    {"step": 3, "model_config": model.config.to_dict()})


def eval_rows(folder):
    with open(os.path.join(folder, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if r["kind"] == "eval"]


STUDENT = ["--n_layer", "1", "--model_dim", "32", "--head_dim", "16", "--device_batch_size", "4", "--num_iterations", "4",
           "--eval_every", "2", "--eval_exercises", "4", "--device_type", "cpu"]


@pytest.mark.slow
def test_distill_on_text_and_its_baseline(tmp_path, corpus_dir):
    base = private_base(tmp_path, corpus_dir)
    save_teacher(base, "base", "teacher", 512)
    text = ["--teacher", "base/teacher", "--data", "builtin", "--max_seq_len", "32", "--eval_tokens", "256", *STUDENT]
    p = run_script(base, "scripts.distill", *text, "--output_tag", "student", "--kl_weight", "0.5", "--temperature", "2")
    folder = os.path.join(base, "base_checkpoints", "student")
    rows = eval_rows(folder)
    assert [r["step"] for r in rows] == [0, 2, 4]
    for key in ("val_bpb", "exercise_acc", "teacher_val_bpb", "teacher_exercise_acc"):
        assert all(0 <= r[key] < 20 for r in rows), key
    assert len({r["teacher_val_bpb"] for r in rows}) == 1  # the teacher does not change
    assert rows[-1]["val_bpb"] < rows[0]["val_bpb"]
    assert "teacher_ce" in p.stdout and "retention" in p.stdout
    # the student is a normal checkpoint that load_model reads, and says where it came from
    os.environ["NANOCHAT_BASE_DIR"] = str(base)
    try:
        from nanochat.checkpoint_manager import load_model
        model, _, meta = load_model("base", "cpu", "eval", "student")
    finally:
        del os.environ["NANOCHAT_BASE_DIR"]
    assert model.config.n_layer == 1 and meta["step"] == 4
    assert meta["distill"]["teacher"] == {"phase": "base", "model_tag": "teacher", "step": 3}
    # --kl_weight 0 is base_train's run: the same initialisation and tokens, so the same losses
    plain = ["--data", "builtin", "--max_seq_len", "32", "--eval_tokens", "256", *STUDENT, "--sample_every", "0"]
    no_teacher = run_script(base, "scripts.distill", *text, "--output_tag", "baseline", "--kl_weight", "0")
    base_train = run_script(base, "scripts.base_train", *plain_args(plain), "--model_tag", "plain")
    a, b = step_losses(no_teacher.stdout), step_losses(base_train.stdout)
    assert a and [float(v) for v in a.values()] == pytest.approx([float(v) for v in b.values()], abs=2e-6)


def plain_args(args):
    """The student's flags as base_train takes them (it has no --eval_exercises)."""
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a == "--eval_exercises":
            skip = True
        else:
            out.append(a)
    return out


@pytest.mark.slow
def test_distill_on_conversations(tmp_path, corpus_dir):
    base = private_base(tmp_path, corpus_dir)
    save_teacher(base, "sft", "chatty", 512, seq=128)
    run_script(base, "scripts.distill", "--teacher", "sft/chatty", "--mixture", "exercises:2,chat:1", "--num_conversations", "64",
               "--eval_conversations", "8", "--max_seq_len", "128", *STUDENT)
    rows = eval_rows(os.path.join(base, "chatsft_checkpoints", "d1w32_from_chatty"))
    assert [r["step"] for r in rows] == [0, 2, 4]
    assert all({"val_loss", "exercise_acc", "teacher_val_loss", "teacher_exercise_acc"} <= set(r) for r in rows)


def test_distill_script_errors(tmp_path, corpus_dir):
    base = private_base(tmp_path, corpus_dir)
    save_teacher(base, "base", "other_tokenizer", 600)
    p = run_script(base, "scripts.distill", "--teacher", "base/other_tokenizer", *STUDENT, check=False)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert "tokenizer" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    p = run_script(base, "scripts.distill", "--teacher", "nowhere/x", *STUDENT, check=False)
    assert p.returncode == 1 and "SOURCE/TAG" in p.stderr and "Traceback" not in p.stderr
