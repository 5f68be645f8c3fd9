"""Training: optimizers, checkpoints, base_train end to end, exact resume, DDP equivalence."""
import os
import re
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp

from nanochat.common import UserError
from nanochat.gpt import GPTConfig, build_model
from nanochat.optim import build_optimizers
from nanochat.checkpoint_manager import save_checkpoint, load_checkpoint, load_model, find_last_step, model_from_state
from helpers import run_script, step_losses, smooth_losses

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--n_layer", "2", "--model_dim", "64", "--head_dim", "32", "--max_seq_len", "64", "--device_batch_size", "4",
        "--total_batch_size", "512", "--eval_tokens", "512", "--sample_every", "0", "--device_type", "cpu", "--data", "builtin"]


@pytest.fixture(scope="module")
def base_dir(corpus_dir):
    return corpus_dir


def tiny_model(seed=0, **kw):
    torch.manual_seed(seed)
    return build_model(GPTConfig(vocab_size=64, sequence_len=32, n_layer=2, n_embd=64, n_head=2, n_kv_head=1, **kw), "cpu")


@pytest.mark.parametrize("kind", ["muon", "adamw"])
def test_a_few_steps_reduce_the_loss(kind):
    model = tiny_model()
    optimizers = build_optimizers(model, kind=kind)
    x = torch.randint(0, 64, (4, 32))
    losses = []
    for _ in range(15):
        loss = model(x, x.roll(-1, 1))
        loss.backward()
        for opt in optimizers:
            opt.step()
        model.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_optimizers_cover_every_parameter_once():
    for kw in ({}, {"tie_embeddings": True, "norm_weight": True, "mlp": "swiglu"}):
        model = tiny_model(**kw)
        for kind in ("muon", "adamw"):
            seen = [id(p) for opt in build_optimizers(model, kind=kind) for g in opt.param_groups for p in g["params"]]
            assert sorted(seen) == sorted(id(p) for p in model.parameters())


def test_checkpoint_round_trip_and_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path))
    model = tiny_model(tie_embeddings=True, norm_weight=True)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    ckpt = tmp_path / "base_checkpoints" / "d2"
    save_checkpoint(str(ckpt), 7, model.state_dict(), [{"x": 1}], {"step": 7, "model_config": model.config.to_dict()})
    assert sorted(os.listdir(ckpt)) == ["meta_000007.json", "model_000007.pt", "optim_000007.pt"]  # no temp files left
    assert find_last_step(str(ckpt)) == 7
    state, optim, meta = load_checkpoint(str(ckpt), 7, "cpu", load_optimizer=True)
    restored = model_from_state(state, meta["model_config"], "cpu")
    assert restored.lm_head.weight is restored.transformer.wte.weight  # still tied
    x = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(restored(x), model(x))
    assert optim == [{"x": 1}]
    # bf16 weights (as some nanochat checkpoints hold) load into the fp32 model
    restored = model_from_state({k: v.bfloat16() for k, v in state.items()}, meta["model_config"], "cpu")
    assert restored.transformer.wte.weight.dtype == torch.float32
    # a model file without its meta does not count; a corrupt file is a clear error
    (ckpt / "model_000009.pt").write_bytes(b"partial")
    assert find_last_step(str(ckpt)) == 7
    (ckpt / "model_000007.pt").write_bytes(b"garbage")
    with pytest.raises(UserError, match="corrupt"):
        load_checkpoint(str(ckpt), 7, "cpu")
    with pytest.raises(UserError, match="no checkpoints"):
        load_model("mid", "cpu", "eval")


def test_base_train_end_to_end_and_exact_resume(base_dir):
    tag = "resume"
    args = TINY + ["--num_iterations", "6", "--save_every", "3", "--eval_every", "3", "--model_tag", tag]
    full = run_script(base_dir, "scripts.base_train", *args)
    losses = step_losses(full.stdout)
    assert len(losses) == 6 and float(losses[6]) < float(losses[1])
    assert "val bpb" in full.stdout and "tok/s" in full.stdout
    ckpt = os.path.join(base_dir, "base_checkpoints", tag)
    assert find_last_step(ckpt) == 6
    # pretend the run died after step 3: drop the later checkpoint and resume
    for name in ("model", "optim", "meta"):
        os.remove(os.path.join(ckpt, f"{name}_000006.{'json' if name == 'meta' else 'pt'}"))
    resumed = run_script(base_dir, "scripts.base_train", *args, "--resume")
    assert "resumed from" in resumed.stdout
    again = step_losses(resumed.stdout)
    assert sorted(again) == [4, 5, 6]
    assert all(again[s] == losses[s] for s in again), (losses, again)  # the same losses, to the printed digit
    # and the same smoothed loss: its average and debiasing come back with the checkpoint
    assert {s: v for s, v in smooth_losses(full.stdout).items() if s > 3} == smooth_losses(resumed.stdout)
    # the finished model completes text
    out = run_script(base_dir, "scripts.base_complete", "-g", tag, "-p", "Question: What is 2 + 3?", "-m", "8", "-t", "0",
                     "--device_type", "cpu")
    assert out.stdout.startswith("Question: What is 2 + 3?") and len(out.stdout) > len("Question: What is 2 + 3?")
    loss = run_script(base_dir, "scripts.base_loss", "-g", tag, "--split_tokens", "1024", "--device_type", "cpu")
    assert re.search(r"train bpb: \d+\.\d+", loss.stdout) and re.search(r"val bpb: \d+\.\d+", loss.stdout)


def test_base_train_rejects_bad_shapes_in_one_line(base_dir):
    p = run_script(base_dir, "scripts.base_train", *TINY, "--head_dim", "48", "--num_iterations", "1", check=False)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert p.stderr.strip() == "error: head_dim (48) must divide the width model_dim (64)"
    p = run_script(base_dir, "scripts.base_train", *TINY, "--n_kv_head", "3", "--num_iterations", "1", check=False)
    assert p.returncode == 1 and "Traceback" not in p.stderr and "n_kv_head" in p.stderr


def test_base_train_under_torchrun(base_dir):
    p = run_script(base_dir, "scripts.base_train", *TINY, "--num_iterations", "2", "--eval_every", "0", "--model_tag", "ddp",
                   torchrun=True)
    assert "x 2 |" in p.stdout  # two ranks
    assert len(step_losses(p.stdout)) == 2
    state, _, meta = load_checkpoint(os.path.join(base_dir, "base_checkpoints", "ddp"), 2, "cpu")
    assert isinstance(meta["dataloader_state"], list) and len(meta["dataloader_state"]) == 2  # each rank's position


# -----------------------------------------------------------------------------
# DDP: two gloo processes with half the batch each take the same step as one process
# accumulating gradients over both halves

def _ddp_worker(rank, world_size, init_file, x, y, out_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    torch.set_num_threads(1)
    model = tiny_model(seed=1)
    optimizers = build_optimizers(model)
    ddp_model = DDP(model)
    half = x.size(0) // world_size
    for _ in range(3):  # zero-initialised outputs (lm_head, then c_proj) hold some gradients at 0 for two steps
        ddp_model(x[rank * half:(rank + 1) * half], y[rank * half:(rank + 1) * half]).backward()
        for opt in optimizers:
            opt.step()
        model.zero_grad(set_to_none=True)
    if rank == 0:
        torch.save(model.state_dict(), out_path)
    dist.destroy_process_group()


def test_two_process_ddp_equals_gradient_accumulation(tmp_path):
    torch.manual_seed(0)
    x, y = torch.randint(0, 64, (4, 32)), torch.randint(0, 64, (4, 32))
    out = str(tmp_path / "ddp.pt")
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), x, y, out), nprocs=2, join=True)
    model = tiny_model(seed=1)
    optimizers = build_optimizers(model)
    for _ in range(3):
        for i in range(2):
            (model(x[i * 2:(i + 1) * 2], y[i * 2:(i + 1) * 2]) / 2).backward()
        for opt in optimizers:
            opt.step()
        model.zero_grad(set_to_none=True)
    ddp_state = torch.load(out)
    before = tiny_model(seed=1).state_dict()
    for k, v in model.state_dict().items():
        assert not torch.equal(v, before[k]), k  # the steps changed every weight
        torch.testing.assert_close(ddp_state[k], v, atol=1e-5, rtol=1e-4)
