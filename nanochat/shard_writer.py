"""
Writing pretraining shards: a list of documents -> shard_00000.parquet, shard_00001.parquet, ...
with one `text` column, the last shard the validation split (the layout nanochat.dataset reads).
The built-in corpus (nanochat.builtin_corpus) and the user's text (nanochat.user_text) are
written here; TinyStories (nanochat.tinystories) streams its own shards in the same layout.
"""
import os

import pyarrow as pa
import pyarrow.parquet as pq

from nanochat.common import UserError, print0
from nanochat.dataset import list_parquet_files, shard_name

ROW_GROUP_SIZE = 1024  # documents per row group in the FineWeb shards (and TinyStories', written alike)
# The built-in corpus and the user's text are small, so their row groups are smaller: the data
# loader hands out whole row groups to ranks (r, r + world, ...) and each rank needs some.
SMALL_ROW_GROUP_SIZE = 64


def write_shards(docs, out_dir, shard_chars=100_000_000, val_fraction=0.05, row_group_size=SMALL_ROW_GROUP_SIZE):
    """
    Write a list of documents as shard_00000.parquet, ... into out_dir, replacing the shards
    already there. The last val_fraction of the documents (at least one) becomes the last shard,
    the validation split; the rest is cut into shards of about shard_chars characters.
    Returns [(path, n_docs, n_chars)].
    """
    if len(docs) < 2:
        raise UserError(f"need at least 2 documents (one for training, one for validation), got {len(docs)}")
    n_val = min(len(docs) - 1, max(1, round(len(docs) * val_fraction)))
    train, val = docs[:-n_val], docs[-n_val:]
    groups, current, size = [], [], 0
    for doc in train:
        current.append(doc)
        size += len(doc)
        if size >= shard_chars:
            groups.append(current)
            current, size = [], 0
    if current:
        groups.append(current)
    groups.append(val)
    os.makedirs(out_dir, exist_ok=True)
    # stale shards from a bigger earlier build would otherwise be read, the last one as val
    for old in list_parquet_files(out_dir):
        os.remove(old)
    written = []
    for i, group in enumerate(groups):
        path = os.path.join(out_dir, shard_name(i))
        table = pa.table({"text": pa.array(group, type=pa.string())})
        pq.write_table(table, path + ".tmp", row_group_size=row_group_size, compression="zstd")
        os.replace(path + ".tmp", path)
        written.append((path, len(group), sum(len(d) for d in group)))
    return written


def print_written(written, out_dir, seconds):
    """The table of what write_shards() wrote: one line per shard, then the totals."""
    total_docs = sum(n for _, n, _ in written)
    total_chars = sum(c for _, _, c in written)
    total_bytes = sum(os.path.getsize(p) for p, _, _ in written)
    for i, (path, n, c) in enumerate(written):
        role = "val" if i == len(written) - 1 else "train"
        print0(f"  {os.path.basename(path)}  {role:5s}  {n:7,d} docs  {c:13,d} chars  {os.path.getsize(path) / 1e6:7.2f} MB")
    print0(f"wrote {len(written)} shards, {total_docs:,d} docs, {total_chars:,d} chars ({total_bytes / 1e6:.2f} MB on disk) "
           f"to {out_dir} in {seconds:.1f}s")
