"""Crash-proof checkpoints: fsync'd atomic files, a full disk as one line, --keep_last, --save_every by the clock."""
import errno
import os
import shutil
import time
from collections import namedtuple

import pytest
import torch

from nanochat import checkpoint_manager as cm
from nanochat.common import UserError
from nanochat.train_settings import save_every_value
from nanochat.trainer import Trainer
from test_trainer import Batches, random_batches, settings, tiny_model


def _save(folder, step, value=0.0):
    cm.save_checkpoint(str(folder), step, {"w": torch.full((1000,), value)}, [{"m": torch.zeros(10)}], {"step": step})


def test_files_and_folder_are_fsynced_before_and_after_the_rename(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd))[1])
    _save(tmp_path, 3)
    names = [os.path.basename(p) for p in synced]
    for stem in ("optim_000003.pt", "model_000003.pt", "meta_000003.json"):
        assert stem + ".tmp" in names  # the file, before its rename
    assert names.count(os.path.basename(str(tmp_path))) == 3  # the folder, after each rename
    assert sorted(os.listdir(tmp_path)) == ["meta_000003.json", "model_000003.pt", "optim_000003.pt"]


def test_a_full_disk_is_one_line_and_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    _save(tmp_path, 1, value=1.0)
    before = {n: open(tmp_path / n, "rb").read() for n in os.listdir(tmp_path)}
    # the space check, before anything is written
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(cm.shutil, "disk_usage", lambda p: Usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(UserError, match=r"needs about .* MiB.*free.*previous checkpoint is intact"):
        _save(tmp_path, 2)
    monkeypatch.undo()
    # the disk filling up while writing (the check passed, then ENOSPC)
    real_save = torch.save

    def full(obj, f):
        real_save(obj, f)
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(cm.torch, "save", full)
    with pytest.raises(UserError, match="not enough disk space"):
        _save(tmp_path, 2)
    after = {n: open(tmp_path / n, "rb").read() for n in os.listdir(tmp_path)}
    assert after == before  # no partial file under any name, the old checkpoint byte for byte
    assert cm.find_last_step(str(tmp_path)) == 1


def test_keep_last_removes_older_checkpoints_after_the_new_one(tmp_path):
    for step in (1, 2, 3, 4):
        cm.save_checkpoint(str(tmp_path), step, {"w": torch.zeros(3)}, None, {"step": step}, keep_last=2)
    assert cm.checkpoint_steps(str(tmp_path)) == [3, 4]
    assert sorted(os.listdir(tmp_path)) == ["meta_000003.json", "meta_000004.json", "model_000003.pt", "model_000004.pt"]


def test_save_every_accepts_steps_and_times():
    assert save_every_value("250") == (250, 0.0)
    assert save_every_value("-1") == (0, 0.0)
    assert save_every_value("30m") == (0, 1800.0) and save_every_value("2h") == (0, 7200.0)
    assert save_every_value("90s") == (0, 90.0) and save_every_value("0.5h") == (0, 1800.0)
    import argparse
    with pytest.raises(argparse.ArgumentTypeError):
        save_every_value("often")


def test_save_every_by_the_clock_saves_when_the_time_has_passed(tmp_path):
    model = tiny_model()
    trainer = Trainer(model, settings(save_every="1h", log_every=1, eval_every=0), "cpu", torch.float32, 2, 32, 1, str(tmp_path))
    trainer.resume()
    clock = [0.0]
    real = time.monotonic
    try:
        # a run whose steps take "20 minutes" each: it saves at step 3 (1 h after the start), 6, and the end
        def fake():
            return clock[0]
        time.monotonic = fake

        class Slow(Batches):
            def __next__(self):
                clock[0] += 1200.0
                return super().__next__()
        trainer.run(Slow(random_batches(8)), 7)
    finally:
        time.monotonic = real
    assert cm.checkpoint_steps(str(tmp_path)) == [3, 6, 7]


def test_base_train_keep_last_leaves_the_newest(corpus_dir):
    from helpers import run_script
    run_script(corpus_dir, "scripts.base_train", "--n_layer", "1", "--model_dim", "32", "--head_dim", "16", "--max_seq_len", "32",
               "--device_batch_size", "2", "--total_batch_size", "64", "--num_iterations", "6", "--eval_every", "0",
               "--eval_tokens", "64", "--sample_every", "0", "--save_every", "2", "--keep_last", "1", "--data", "builtin",
               "--model_tag", "keep1")
    folder = os.path.join(corpus_dir, "base_checkpoints", "keep1")
    assert cm.checkpoint_steps(folder) == [6]
    assert not [n for n in os.listdir(folder) if n.endswith(".tmp")]
