"""
The pretraining data loader: streams documents from parquet shards, tokenizes them (each with a
BOS token in front), concatenates them into one token stream, and cuts (B, T) batches of inputs
and targets (the same stream shifted by one token) from it.

    loader = DataLoader(tokenizer, B=32, T=2048, split="train", device="cuda")
    x, y = next(loader)
    state = loader.state_dict()  # small and JSON-serialisable; save it with the checkpoint
    ...
    loader = DataLoader(tokenizer, B=32, T=2048, split="train", device="cuda", state=state)
    # -> the same batches the first loader would have produced next

Under DDP rank r reads row groups r, r + world_size, r + 2 * world_size, ... counting across all
shards of the split (so a small corpus still feeds every rank), and ranks see disjoint documents. Each rank has its own state: for an exact resume save every rank's
state_dict() (e.g. torch.distributed.all_gather_object) and pass the list as `state`; a state
from another rank or world size resumes approximately, at the next round of row groups.
"""
import queue
import threading
from collections import deque

import pyarrow.parquet as pq
import torch

from nanochat.common import UserError, get_dist_info
from nanochat.dataset import get_data_dir, split_files


def rank_state(state, rank, world_size):
    """
    This rank's entry of a saved data position: checkpoints hold one per rank (a list, gathered
    from every rank). A list from another world size gives the first entry, which the sources
    treat as someone else's position; a single state is returned as it is.
    """
    if isinstance(state, (list, tuple)):
        return state[rank] if len(state) == world_size else state[0]
    return state


class DataLoader:
    def __init__(self, tokenizer, B, T, split, device="cpu", data_dir=None, state=None, rank=None, world_size=None,
                 tokenizer_threads=4, tokenizer_batch_size=128):
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        _, dist_rank, _, dist_world = get_dist_info()
        self.rank = dist_rank if rank is None else rank
        self.world_size = dist_world if world_size is None else world_size
        self.tokenizer, self.B, self.T, self.split = tokenizer, B, T, split
        self.device = torch.device(device)
        self.tokenizer_threads, self.tokenizer_batch_size = tokenizer_threads, tokenizer_batch_size
        self.data_dir = data_dir or get_data_dir("auto")
        self.files = split_files(split, self.data_dir)
        if not self.files:
            raise UserError(f"no {split} shards in {self.data_dir}")
        self.bos = tokenizer.get_bos_token_id()
        # the train split loops over epochs forever; val is one pass. The trainer checks a finite
        # source for its end every step (an all-reduce under DDP): pretraining must not pay that
        self.finite = split == "val"

        # every row group of the split, numbered across shards; rank r takes r, r + world_size, ...
        self.groups = [(i, g) for i, f in enumerate(self.files) for g in range(pq.ParquetFile(f).num_row_groups)]
        if self.rank >= len(self.groups) and split == "train":
            raise UserError(f"rank {self.rank} of {self.world_size} has no row groups to read in the {split} "
                            f"split of {self.data_dir} ({len(self.groups)} in all): use fewer ranks or more data")
        group_index = {sg: k for k, sg in enumerate(self.groups)}

        # Where the stream starts: (epoch, shard, row group, doc index, token offset in that doc)
        # (a val split smaller than the world leaves some ranks nothing: the others evaluate)
        k = self.rank
        start = (1, *self.groups[k], 0, 0) if k < len(self.groups) else (1, 0, 0, 0, 0)
        state = rank_state(state, self.rank, self.world_size)
        if state is not None:
            k = group_index.get((state["shard"], state["row_group"]))
            if k is None:
                raise UserError(f"the saved data position (shard {state['shard']}, row group {state['row_group']}) "
                                f"is not in {self.data_dir}: was the data changed?")
            if state.get("rank") == self.rank and state.get("world_size") == self.world_size:
                start = (state["epoch"], state["shard"], state["row_group"], state["doc"], state["token"])
            else:
                # another rank's position: go to the next round of row groups, so nothing repeats
                k = (k // state["world_size"] + 1) * self.world_size + self.rank
                epoch = state["epoch"]
                if k >= len(self.groups):
                    epoch, k = epoch + 1, self.rank
                start = (epoch, *self.groups[k], 0, 0)
        self._start = start
        epoch, _, _, doc, token = start
        self._batches = self._doc_batches(epoch, k, doc, token)

        # The token stream: _buf holds tokens from stream position _base on, _i indexes the next
        # token to hand out. _docs holds (stream position of the doc's first token, epoch, shard,
        # row group, doc index) for the documents that still have tokens in _buf, oldest first,
        # which is all state_dict() needs.
        self._buf, self._base, self._i = [], 0, 0
        self._docs = deque()

    def _doc_batches(self, epoch, k, doc, token):
        """Yield (epoch, shard, row group, first doc index, texts, tokens to skip in the first text)."""
        pf, pf_shard = None, None
        while True:
            for k in range(k, len(self.groups), self.world_size):
                shard, rg = self.groups[k]
                if shard != pf_shard:
                    pf, pf_shard = pq.ParquetFile(self.files[shard]), shard
                texts = pf.read_row_group(rg, columns=["text"]).column("text").to_pylist()
                for i in range(doc, len(texts), self.tokenizer_batch_size):
                    yield epoch, shard, rg, i, texts[i:i + self.tokenizer_batch_size], token
                    token = 0
                doc = 0
            if self.split == "val":
                return  # one pass
            epoch, k, doc, token = epoch + 1, self.rank, 0, 0

    def _refill(self):
        """Tokenize the next batch of documents onto the stream; False when the data has ended."""
        try:
            epoch, shard, rg, doc, texts, skip = next(self._batches)
        except StopIteration:
            return False
        token_lists = self.tokenizer.encode(texts, prepend=self.bos, num_threads=self.tokenizer_threads)
        for j, ids in enumerate(token_lists):
            start = self._base + len(self._buf)
            if j == 0 and skip:  # resuming in the middle of this document
                ids, start = ids[skip:], start - skip
            self._docs.append((start, epoch, shard, rg, doc + j))
            self._buf.extend(ids)
        return True

    def __iter__(self):
        return self

    def __next__(self):
        return self.to_device(self.next_host())

    def _fill(self, need):
        """Tokenize documents until the stream holds `need` tokens from the current position."""
        while len(self._buf) - self._i < need:
            if not self._refill():
                raise StopIteration

    def _advance(self, n):
        """Consume n tokens; forget the documents and tokens that are behind the position now."""
        self._i += n
        pos = self._base + self._i
        while len(self._docs) > 1 and self._docs[1][0] <= pos:
            self._docs.popleft()
        if self._i > len(self._buf) // 2:  # drop consumed tokens now and then, not every step
            del self._buf[:self._i]
            self._base += self._i
            self._i = 0

    def next_host(self):
        """The next batch as one CPU tensor of B*T+1 tokens (pinned for CUDA); to_device() cuts it."""
        need = self.B * self.T + 1
        self._fill(need)
        batch = torch.tensor(self._buf[self._i:self._i + need], dtype=torch.long, pin_memory=self.device.type == "cuda")
        # B*T tokens are consumed; the last target is also the first input of the next batch,
        # so every token of the stream is a target exactly once
        self._advance(self.B * self.T)
        return batch

    def take(self, n):
        """The next n tokens of the stream as a list, consumed (nanochat.streams mixes sources this way)."""
        self._fill(n)
        out = self._buf[self._i:self._i + n]
        self._advance(n)
        return out

    def to_device(self, batch):
        """(inputs, targets), each (B, T), on the device; from pinned memory the copy does not block."""
        if self.device.type != "cpu":
            batch = batch.to(self.device, non_blocking=self.device.type == "cuda")
        return batch[:-1].view(self.B, self.T), batch[1:].view(self.B, self.T)

    def state_dict(self):
        """Where the next batch starts, as a small JSON-serialisable dict (cheap: no tokens)."""
        if not self._docs:
            epoch, shard, rg, doc, token = self._start
        else:
            start, epoch, shard, rg, doc = self._docs[0]
            token = self._base + self._i - start
        return {"epoch": epoch, "shard": shard, "row_group": rg, "doc": doc, "token": token,
                "rank": self.rank, "world_size": self.world_size}

    @property
    def epoch(self):
        """The pass over the data that the next batch comes from (1 = first)."""
        return self.state_dict()["epoch"]


class BackgroundLoader:
    """
    Prepares the next batches of a DataLoader in a background thread (parquet reads and the BPE
    encoder release the GIL), so the training loop never waits for tokenization: it only issues
    the non-blocking copy of a ready, pinned batch. state_dict() is the position after the last
    batch handed out (not after those prepared ahead), so checkpoints resume exactly.
    """
    def __init__(self, loader, depth=2):
        self.loader = loader
        self.finite = getattr(loader, "finite", True)
        self._state = loader.state_dict()
        self._queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, daemon=True)
        self._thread.start()

    def _work(self):
        if self.loader.device.type == "cuda":
            torch.cuda.set_device(self.loader.device)  # pinning in a new thread must not touch cuda:0 under DDP
        try:
            while not self._stop.is_set():
                item = (self.loader.next_host(), self.loader.state_dict())
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        pass
        except BaseException as e:  # StopIteration at the end of the data included: hand it over
            self._queue.put(e)

    def __iter__(self):
        return self

    def __next__(self):
        item = self._queue.get()
        if isinstance(item, BaseException):
            self._queue.put(item)  # later calls fail the same way
            raise item
        batch, self._state = item
        return self.loader.to_device(batch)

    def state_dict(self):
        return self._state

    @property
    def epoch(self):
        return self._state["epoch"]

    def close(self):
        self._stop.set()
