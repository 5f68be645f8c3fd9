"""
TinyStories (Eldan & Li 2023, `roneneldan/TinyStories` on the Hugging Face hub) as pretraining
data: short stories in simple English, written by GPT-3.5 and GPT-4.

    python -m nanochat.dataset --tinystories [--tinystories_version 2|1] [--tinystories_max_stories N]

downloads the train and validation text files into $NANOCHAT_BASE_DIR/tinystories_raw/ (kept, so a
rerun only converts) and converts them, streaming, into parquet shards with one `text` column in
$NANOCHAT_BASE_DIR/tinystories_data/, one story per row: the train stories in shards of about
shard_chars characters, then the validation stories in the last shard (the project's convention).
Then train with `--data tinystories`.

Version 2 (the default) is TinyStoriesV2-GPT4-{train,valid}.txt: GPT-4 stories only, ~2.7M train
stories, 2.2 GB. Version 1 is TinyStories-{train,valid}.txt: GPT-3.5 and GPT-4, ~2.1M, 1.9 GB.
In both, stories are separated by `<|endoftext|>` lines. Downloads go through
nanochat.download.download_file (a .part file resumed with Range, retried with backoff); HF_TOKEN
is sent as a bearer token and NANOCHAT_HF_URL replaces the host (nanochat.tasks.hf_url).

Library API: raw_dir(), data_dir(), download_tinystories(version, ...), iter_stories(path, max_stories),
convert_tinystories(train_path, valid_path, out_dir, ...), build_tinystories(version, ...).
"""
import os
import shutil
import time

import pyarrow as pa
import pyarrow.parquet as pq

from nanochat.common import UserError, get_base_dir, print0
from nanochat.dataset import list_parquet_files, shard_name
from nanochat.download import DownloadError, download_file
from nanochat.shard_writer import ROW_GROUP_SIZE
from nanochat.tasks import hf_headers, hf_url

REPO = "roneneldan/TinyStories"
FILES = {  # version -> (train file, validation file), both at the root of the dataset repo
    2: ("TinyStoriesV2-GPT4-train.txt", "TinyStoriesV2-GPT4-valid.txt"),
    1: ("TinyStories-train.txt", "TinyStories-valid.txt"),
}
SEPARATOR = "<|endoftext|>"
SHARD_CHARS = 50_000_000


def raw_dir():
    return os.path.join(get_base_dir(), "tinystories_raw")


def data_dir():
    return os.path.join(get_base_dir(), "tinystories_data")

# -----------------------------------------------------------------------------
# downloading

def _not_tinystories(path):
    """A complaint when the start of the file has no story separator (e.g. an HTML error page sent with 200)."""
    with open(path, "rb") as f:
        head = f.read(1 << 20)
    return None if SEPARATOR.encode() in head else f"the server's answer is not a TinyStories text file (no {SEPARATOR} in it)"


def _check_reachable(url, timeout=10):
    import requests
    try:
        requests.head(url, headers=hf_headers(), timeout=timeout, allow_redirects=True)
    except (requests.ConnectionError, requests.Timeout) as e:
        raise UserError(f"cannot reach {url} ({type(e).__name__}; no network?): to work offline, build the built-in "
                        f"corpus instead with `python -m nanochat.dataset --builtin`") from None


def download_tinystories(version=2, out_dir=None, progress_every=10.0, log=print0, **kwargs):
    """
    Download the train and validation files of a TinyStories version into out_dir (default
    tinystories_raw/); files already there are kept. Returns (train_path, valid_path).
    kwargs go to download_file (max_attempts, backoff, timeout, ...).
    """
    if version not in FILES:
        raise UserError(f"--tinystories_version must be one of {', '.join(map(str, sorted(FILES)))}, got {version!r}")
    out_dir = out_dir or raw_dir()
    paths = [os.path.join(out_dir, name) for name in FILES[version]]
    todo = [(name, path) for name, path in zip(FILES[version], paths) if not os.path.exists(path)]
    log(f"TinyStories v{version}: {len(paths) - len(todo)} of {len(paths)} files already in {out_dir}")
    if todo:
        _check_reachable(hf_url(REPO, todo[0][0]))
        os.makedirs(out_dir, exist_ok=True)
    for name, path in todo:
        t0 = last = time.time()
        received = [0]

        def on_bytes(n):
            nonlocal last
            received[0] += n
            if time.time() - last >= progress_every:
                last = time.time()
                log(f"  {name}: {received[0] / 1e6:,.1f} MB received ({received[0] / 1e6 / (last - t0):.1f} MB/s)")

        try:
            download_file(hf_url(REPO, name), path, headers=hf_headers(), on_bytes=on_bytes,
                          validate=_not_tinystories, log=log, **kwargs)
        except DownloadError as e:
            raise UserError(f"{e}; run the same command again to resume") from None
        log(f"  {name}: {os.path.getsize(path) / 1e6:,.1f} MB in {time.time() - t0:.0f}s")
    return tuple(paths)

# -----------------------------------------------------------------------------
# converting

def iter_stories(path, max_stories=None):
    """The stories of a TinyStories text file, whitespace-stripped, read line by line (never the whole file)."""
    if max_stories is not None and max_stories <= 0:
        return
    n, current = 0, []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            *ends, rest = line.split(SEPARATOR)  # a separator usually has a line of its own
            for end in ends:
                story = ("".join(current) + end).strip()
                current = []
                if story:
                    yield story
                    n += 1
                    if n == max_stories:
                        return
            current.append(rest)
    story = "".join(current).strip()
    if story:
        yield story


def _row_groups(stories, row_group_size, shard_chars):
    """(batch, ends_shard): up to row_group_size stories at a time; a shard ends after ~shard_chars chars."""
    batch, chars = [], 0  # chars: of the shard being written
    for story in stories:
        batch.append(story)
        chars += len(story)
        if chars >= shard_chars or len(batch) == row_group_size:
            yield batch, chars >= shard_chars
            batch, chars = [], (0 if chars >= shard_chars else chars)
    if chars:  # a shard still open (its last row group may be empty: then only closed)
        yield batch, True


def _write_shards(stories, out_dir, first_index, shard_chars, row_group_size, role, log):
    """Write stories as shards from shard_<first_index> on, streaming one row group at a time. Returns [(path, n, chars)]."""
    written, writer, n, chars, t0 = [], None, 0, 0, time.time()
    for batch, ends_shard in _row_groups(stories, row_group_size, shard_chars):
        path = os.path.join(out_dir, shard_name(first_index + len(written)))
        if batch:
            table = pa.table({"text": pa.array(batch, type=pa.string())})
            writer = writer or pq.ParquetWriter(path + ".tmp", table.schema, compression="zstd")
            writer.write_table(table, row_group_size=row_group_size)
            n, chars = n + len(batch), chars + sum(len(s) for s in batch)
        if ends_shard and writer is not None:
            writer.close()
            os.replace(path + ".tmp", path)
            written.append((path, n, chars))
            log(f"  {os.path.basename(path)}  {role:5s}  {n:9,d} stories  {chars:13,d} chars  "
                f"{os.path.getsize(path) / 1e6:7.2f} MB  ({time.time() - t0:.0f}s)")
            writer, n, chars = None, 0, 0
    return written


def convert_tinystories(train_path, valid_path, out_dir, shard_chars=SHARD_CHARS, max_stories=None,
                        row_group_size=ROW_GROUP_SIZE, log=print0):
    """
    Convert the two text files into shard_00000.parquet, ... in out_dir: the train stories (the
    first max_stories of them, when given) in shards of about shard_chars characters, then all
    the validation stories in the last shard. Built in out_dir + ".tmp" and moved into place when
    complete, replacing what was there, so an interrupted conversion leaves no partial folder.
    Returns [(path, n_stories, n_chars)].
    """
    if shard_chars < 1:
        raise UserError(f"--tinystories_shard_chars must be positive, got {shard_chars:g}")
    tmp = out_dir.rstrip(os.sep) + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    log(f"converting {os.path.basename(train_path)}" + (f" (first {max_stories:,d} stories)" if max_stories else ""))
    train = _write_shards(iter_stories(train_path, max_stories), tmp, 0, shard_chars, row_group_size, "train", log)
    if not train:
        raise UserError(f"no train stories in {train_path}")
    log(f"converting {os.path.basename(valid_path)}")
    val = _write_shards(iter_stories(valid_path), tmp, len(train), float("inf"), row_group_size, "val", log)
    if not val:
        raise UserError(f"no validation stories in {valid_path}")
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return [(os.path.join(out_dir, os.path.basename(p)), n, c) for p, n, c in train + val]


def build_tinystories(version=2, shard_chars=SHARD_CHARS, max_stories=None, force=False, log=print0, **kwargs):
    """
    Download (when needed) and convert TinyStories into data_dir(). When shards are already
    there it says so and does nothing, unless force (which converts again from the kept raw
    files). Returns (written or None, out_dir); kwargs go to download_tinystories.
    """
    out_dir = data_dir()
    existing = list_parquet_files(out_dir)
    if existing and not force:
        log(f"{len(existing)} TinyStories shards already in {out_dir}: nothing to do "
            f"(--force converts again from the downloaded files)")
        return None, out_dir
    if max_stories is not None and max_stories < 1:
        raise UserError(f"--tinystories_max_stories must be at least 1, got {max_stories}")
    t0 = time.time()
    train_path, valid_path = download_tinystories(version, log=log, **kwargs)
    written = convert_tinystories(train_path, valid_path, out_dir, shard_chars, max_stories, log=log)
    n_train = sum(n for _, n, _ in written[:-1])
    chars = sum(c for _, _, c in written)
    log(f"wrote {len(written)} shards, {n_train:,d} train stories, {written[-1][1]:,d} val stories, {chars:,d} chars "
        f"to {out_dir} in {time.time() - t0:.1f}s; train on it with --data tinystories")
    return written, out_dir
