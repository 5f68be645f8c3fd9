"""
The pretraining shards on the Hugging Face hub, downloaded several at once, each through
nanochat.download.download_file (a .part resumed with Range, retried with backoff). Two sources
of the same format (parquet, one `text` column, shard_{i:05d}.parquet, the last one validation):

    python -m nanochat.dataset -n 8 [-w 4]                    FineWeb-Edu (karpathy/fineweb-edu-100b-shuffle,
                                                              shards 0..1822) -> $NANOCHAT_BASE_DIR/base_data/
    python -m nanochat.dataset -n 8 --source climbmix         ClimbMix (karpathy/climbmix-400b-shuffle, shards
                                                              0..6542, nanochat's data since March 2026)
                                                              -> $NANOCHAT_BASE_DIR/base_data_climbmix/ (nanochat's folder)

-n N takes train shards 0..N-1 plus the validation shard. HF_TOKEN (if set) is sent as a bearer
token; NANOCHAT_DATA_URL replaces FineWeb-Edu's address and NANOCHAT_HF_URL the hub's host for
ClimbMix (a mirror, or a test server).

Library API: download_shard(index, data_dir, ..., source), download_fineweb(num_shards, num_workers, ...,
source), shards_to_download(num_shards, source), SOURCES, MAX_SHARD (FineWeb-Edu's).
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
# source -> (hub repo, last shard = validation, folder under $NANOCHAT_BASE_DIR), as nanochat names them
SOURCES = {
    "fineweb": ("karpathy/fineweb-edu-100b-shuffle", MAX_SHARD, "base_data"),
    "climbmix": ("karpathy/climbmix-400b-shuffle", 6542, "base_data_climbmix"),
}


def _resolve_url(base_url, source="fineweb"):
    if base_url:
        return base_url.rstrip("/")
    if source == "fineweb":
        return (os.environ.get("NANOCHAT_DATA_URL") or FINEWEB_URL).rstrip("/")
    from nanochat.tasks import hf_url
    return hf_url(SOURCES[source][0], "").rstrip("/")


def data_dir_for(source):
    return os.path.join(get_base_dir(), SOURCES[source][2])


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


def download_shard(index, data_dir, base_url=None, source="fineweb", **kwargs):
    """Download one shard of a source into data_dir (skipped when already there); returns its path."""
    base_url = _resolve_url(base_url, source)
    path = os.path.join(data_dir, shard_name(index))
    if os.path.exists(path):
        return path
    os.makedirs(data_dir, exist_ok=True)
    return download_file(f"{base_url}/{shard_name(index)}", path, headers=_auth_headers(), validate=_not_parquet, **kwargs)


def shards_to_download(num_shards, source="fineweb"):
    """Train shards 0..num_shards-1 (-1: all) plus the validation shard, which is always the last one."""
    last = SOURCES[source][1]
    n = last if num_shards < 0 else min(num_shards, last)
    return list(range(n)) + [last]


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


def download_fineweb(num_shards, num_workers=4, data_dir=None, base_url=None, progress_every=10.0, source="fineweb", **kwargs):
    """
    Download shards 0..num_shards-1 of a source (FineWeb-Edu, or ClimbMix) and its validation
    shard, num_workers at a time. Returns the list of error messages (empty when every shard is there).
    """
    data_dir = data_dir or data_dir_for(source)
    base_url = _resolve_url(base_url, source)
    indices = shards_to_download(num_shards, source)
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
