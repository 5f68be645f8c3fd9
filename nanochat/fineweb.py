"""
FineWeb-Edu (karpathy/fineweb-edu-100b-shuffle on the Hugging Face hub): parquet shards of ~100 MB
downloaded into $NANOCHAT_BASE_DIR/base_data/, several at once, each through
nanochat.download.download_file (a .part resumed with Range, retried with backoff):

    python -m nanochat.dataset -n 8 [-w 4]     train shards 0..7 plus the validation shard

The validation shard is always the last one (shard_01822.parquet). HF_TOKEN (if set) is sent as a
bearer token; NANOCHAT_DATA_URL replaces the address (a mirror, or a test server).

Library API: download_shard(index, data_dir, ...), download_fineweb(num_shards, num_workers, ...),
shards_to_download(num_shards), MAX_SHARD.
"""
import concurrent.futures
import os
import threading
import time

from nanochat.common import UserError, get_base_dir, print0
from nanochat.dataset import shard_name
from nanochat.download import DownloadError, download_file

FINEWEB_URL = "https://huggingface.co/datasets/karpathy/fineweb-edu-100b-shuffle/resolve/main"
MAX_SHARD = 1822  # shard_01822.parquet is the last one; nanochat always uses it for validation


def _resolve_url(base_url):
    return (base_url or os.environ.get("NANOCHAT_DATA_URL") or FINEWEB_URL).rstrip("/")


def _auth_headers():
    token = os.environ.get("HF_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


def _not_parquet(path):
    """A complaint when the file lacks parquet's magic bytes at both ends (e.g. an HTML error page sent with 200)."""
    with open(path, "rb") as f:
        head = f.read(4)
        f.seek(max(0, os.path.getsize(path) - 4))
        tail = f.read(4)
    if os.path.getsize(path) < 8 or head != b"PAR1" or tail != b"PAR1":
        return "the server's answer is not a parquet file"
    return None


def download_shard(index, data_dir, base_url=None, **kwargs):
    """Download one FineWeb-Edu shard into data_dir (skipped when already there); returns its path."""
    base_url = _resolve_url(base_url)
    path = os.path.join(data_dir, shard_name(index))
    if os.path.exists(path):
        return path
    os.makedirs(data_dir, exist_ok=True)
    return download_file(f"{base_url}/{shard_name(index)}", path, headers=_auth_headers(), validate=_not_parquet, **kwargs)


def shards_to_download(num_shards):
    """Train shards 0..num_shards-1 (-1: all) plus the validation shard, which is always the last one."""
    n = MAX_SHARD if num_shards < 0 else min(num_shards, MAX_SHARD)
    return list(range(n)) + [MAX_SHARD]


def check_reachable(base_url, index, timeout=10):
    """Raise UserError with a one-line fix when the data server cannot be reached at all."""
    import requests
    try:
        requests.head(f"{base_url.rstrip('/')}/{shard_name(index)}", headers=_auth_headers(),
                      timeout=timeout, allow_redirects=True)
    except (requests.ConnectionError, requests.Timeout) as e:
        reason = type(e).__name__
        raise UserError(f"cannot reach {base_url} ({reason}; no network?): to work offline, build the built-in "
                        f"corpus instead with `python -m nanochat.dataset --builtin`") from None


def download_fineweb(num_shards, num_workers=4, data_dir=None, base_url=None, progress_every=10.0, **kwargs):
    """
    Download FineWeb-Edu shards 0..num_shards-1 and the validation shard, num_workers at a time.
    Returns the list of error messages (empty when every shard is there).
    """
    data_dir = data_dir or os.path.join(get_base_dir(), "base_data")
    base_url = _resolve_url(base_url)
    indices = shards_to_download(num_shards)
    todo = [i for i in indices if not os.path.exists(os.path.join(data_dir, shard_name(i)))]
    print0(f"{len(indices)} shards wanted in {data_dir}: {len(indices) - len(todo)} already there, {len(todo)} to download "
           f"from {base_url} with {num_workers} workers")
    if not todo:
        return []
    check_reachable(base_url, todo[0])
    lock, received, t0 = threading.Lock(), [0], time.time()
    stop = threading.Event()

    def on_bytes(n):
        with lock:
            received[0] += n

    errors, done = [], 0
    with concurrent.futures.ThreadPoolExecutor(max_workers=num_workers) as pool:
        futures = {pool.submit(download_shard, i, data_dir, base_url, on_bytes=on_bytes, stop=stop, **kwargs): i for i in todo}
        pending = set(futures)
        try:
            while pending:
                finished, pending = concurrent.futures.wait(pending, timeout=progress_every,
                                                            return_when=concurrent.futures.FIRST_COMPLETED)
                for fut in finished:
                    done += 1
                    try:
                        path = fut.result()
                        print0(f"[{done}/{len(todo)}] {os.path.basename(path)} ({os.path.getsize(path) / 1e6:.1f} MB)")
                    except DownloadError as e:
                        errors.append(str(e))
                        print0(f"[{done}/{len(todo)}] failed: {e}")
                if finished:
                    continue
                elapsed = time.time() - t0
                print0(f"  {done}/{len(todo)} shards, {received[0] / 1e6:,.1f} MB received in {elapsed:.0f}s "
                       f"({received[0] / 1e6 / max(elapsed, 1e-9):.1f} MB/s)")
        except KeyboardInterrupt:
            stop.set()
            for fut in pending:
                fut.cancel()
            raise
    return errors
