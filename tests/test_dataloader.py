"""The pretraining DataLoader: batch layout, document boundaries, determinism, exact resume, ranks."""
import json
import random

import pytest
import torch

from nanochat.common import UserError
from nanochat.dataloader import BackgroundLoader, DataLoader
from nanochat.dataset import parquets_iter_batched
from nanochat.shard_writer import write_shards
from nanochat.tokenizer import Tokenizer

B, T = 2, 16


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Synthetic shards (4 train, 1 val, row groups of 5 docs) of documents that name themselves, and a tokenizer."""
    rng = random.Random(0)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
    docs = [f"doc{i:03d} " + " ".join(rng.choice(words) for _ in range(rng.randint(0, 40))) for i in range(120)]
    data_dir = str(tmp_path_factory.mktemp("shards"))
    write_shards(docs, data_dir, shard_chars=2500, val_fraction=0.1, row_group_size=5)
    tokenizer = Tokenizer.train_from_iterator(iter(docs), 300)
    return tokenizer, data_dir


def loader(data, split="train", **kwargs):
    tokenizer, data_dir = data
    return DataLoader(tokenizer, kwargs.pop("B", B), kwargs.pop("T", T), split, data_dir=data_dir, **kwargs)


def take(dl, n):
    return [next(dl) for _ in range(n)]


def stream_of(batches):
    """The token stream the batches were cut from (each batch's last target opens the next batch)."""
    ids = [int(t) for x, _ in batches for t in x.flatten()]
    return ids + [int(batches[-1][1][-1, -1])]


def expected_stream(data, split, start=0, step=1):
    tokenizer, data_dir = data
    ids = []
    for texts in parquets_iter_batched(split, data_dir, start=start, step=step):
        for ids_doc in tokenizer.encode(texts, prepend=tokenizer.get_bos_token_id()):
            ids += ids_doc
    return ids


def test_shapes_and_shift(data):
    batches = take(loader(data), 5)
    for x, y in batches:
        assert x.shape == y.shape == (B, T) and x.dtype == y.dtype == torch.int64 and x.device.type == "cpu"
        flat_x, flat_y = x.flatten(), y.flatten()
        assert torch.equal(flat_x[1:], flat_y[:-1])  # targets are the inputs shifted by one, across rows too
    for (_, y0), (x1, _) in zip(batches, batches[1:]):
        assert y0[-1, -1] == x1[0, 0]  # and across batches: no token is skipped


def test_stream_is_documents_with_bos(data):
    tokenizer, _ = data
    batches = take(loader(data), 20)
    stream = stream_of(batches)
    assert stream == expected_stream(data, "train")[:len(stream)]
    bos = tokenizer.get_bos_token_id()
    assert stream[0] == bos
    # every document starts right after a BOS, in order
    pieces = tokenizer.decode(stream).split("<|bos|>")[1:-1]
    assert len(pieces) > 5 and all(p.startswith("doc") for p in pieces)
    assert [p[:6] for p in pieces] == [f"doc{i:03d}" for i in range(len(pieces))]


def test_deterministic(data):
    a, b = take(loader(data), 10), take(loader(data), 10)
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))


@pytest.mark.parametrize("skip", [0, 1, 3, 7, 130])
def test_exact_resume(data, skip):
    # the train split is ~3,700 tokens, 32 per batch: 130 batches goes into the second epoch
    dl = loader(data)
    take(dl, skip)
    state = json.loads(json.dumps(dl.state_dict()))  # it must survive a checkpoint's meta.json
    assert state["epoch"] == (2 if skip == 130 else 1)
    expected = take(dl, 12)
    resumed = loader(data, state=state, tokenizer_batch_size=3)  # batching of the tokenizer does not matter
    got = take(resumed, 12)
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(expected, got))
    assert resumed.state_dict() == dl.state_dict()


def test_epochs(data):
    expected = expected_stream(data, "train")
    dl = loader(data)
    assert dl.epoch == 1
    batches = take(dl, len(expected) * 3 // 2 // (B * T))
    assert dl.epoch == 2
    # the second epoch starts over with the first document
    stream = stream_of(batches)
    assert len(stream) > len(expected) and stream == (expected * 2)[:len(stream)]
    # so the trainer need not check (an all-reduce per step under DDP) whether the train data has ended
    assert not dl.finite and loader(data, "val").finite
    background = BackgroundLoader(loader(data))
    assert not background.finite
    background.close()


def test_val_is_one_pass_of_the_last_shard(data):
    batches = list(loader(data, "val"))
    expected = expected_stream(data, "val")
    assert len(batches) == (len(expected) - 1) // (B * T) and len(batches) > 0
    assert stream_of(batches) == expected[:len(stream_of(batches))]


def test_ranks_read_disjoint_row_groups(data):
    tokenizer, _ = data
    docs_by_rank = []
    for rank in range(2):
        dl = loader(data, rank=rank, world_size=2)
        stream = stream_of(take(dl, 15))
        assert stream == expected_stream(data, "train", start=rank, step=2)[:len(stream)]
        docs_by_rank.append({p[:6] for p in tokenizer.decode(stream).split("<|bos|>")[1:]})
    assert docs_by_rank[0] and docs_by_rank[1] and not docs_by_rank[0] & docs_by_rank[1]
    # each rank resumes exactly from its own state, given the list of all ranks' states
    loaders = [loader(data, rank=r, world_size=2) for r in range(2)]
    for dl in loaders:
        take(dl, 4)
    states = [dl.state_dict() for dl in loaders]
    for r, dl in enumerate(loaders):
        resumed = loader(data, rank=r, world_size=2, state=states)
        assert all(torch.equal(a[0], b[0]) for a, b in zip(take(dl, 5), take(resumed, 5)))


def test_state_from_another_rank_resumes_later(data):
    dl = loader(data, rank=0, world_size=2)
    take(dl, 6)
    state = dl.state_dict()
    other = loader(data, rank=1, world_size=2, state=state)
    s = other.state_dict()
    assert s["rank"] == 1 and (s["shard"], s["row_group"]) > (state["shard"], state["row_group"])
    next(other)


def test_rank_without_data_is_a_user_error(data):
    with pytest.raises(UserError, match="no row groups"):
        next(loader(data, rank=50, world_size=64))


def test_no_data_is_a_user_error(data, tmp_path, monkeypatch):
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path))
    with pytest.raises(UserError, match="--builtin"):
        DataLoader(data[0], B, T, "train")
