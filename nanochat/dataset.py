"""
Pretraining data: folders of parquet shards `shard_{i:05d}.parquet` with one `text` column, one
document per row. The last shard of a folder is the validation split, the others are train.
Four sources write that same layout, so one code path reads all of them:

    python -m nanochat.dataset -n 8        FineWeb-Edu shards 0..7 plus the validation shard
                                           -> $NANOCHAT_BASE_DIR/base_data/
    python -m nanochat.dataset --builtin   offline corpus: stdlib docstrings, pydoc topics and
                                           generated exercises (arithmetic, counting, brackets,
                                           lists, sorting, copying, ListOps; nanochat.exercises)
                                           -> $NANOCHAT_BASE_DIR/builtin_data/
    python -m nanochat.dataset --tinystories
                                           TinyStories (downloaded from the hub, see nanochat.tinystories)
                                           -> $NANOCHAT_BASE_DIR/tinystories_data/
    python -m nanochat.dataset --text notes/ diary.md --name me
                                           your own .txt/.md files -> $NANOCHAT_BASE_DIR/text_data/me/

Downloads resume from .part files and retry with backoff; HF_TOKEN (if set) is sent as a bearer
token, NANOCHAT_DATA_URL replaces the FineWeb-Edu address and NANOCHAT_HF_URL the hub's host for
TinyStories (a mirror, or a test server).

Library API: get_data_dir(source), list_parquet_files(data_dir), split_files(split, data_dir),
parquets_iter_batched(split, data_dir, start, step), text_iterator(data_dir, max_chars, doc_cap),
write_shards(docs, out_dir, ...), build_builtin(...), build_text(...), download_shard(...),
download_fineweb(...).
"""
import ast
import concurrent.futures
import os
import random
import re
import sys
import sysconfig
import threading
import time
import warnings

import pyarrow as pa
import pyarrow.parquet as pq

from nanochat.common import ArgumentParser, UserError, die, get_base_dir, print0

FINEWEB_URL = "https://huggingface.co/datasets/karpathy/fineweb-edu-100b-shuffle/resolve/main"
MAX_SHARD = 1822  # shard_01822.parquet is the last one; nanochat always uses it for validation
ROW_GROUP_SIZE = 1024  # documents per row group in the FineWeb shards
# The built-in corpus and the user's text are small, so their row groups are smaller: the data
# loader hands out whole row groups to ranks (r, r + world, ...) and each rank needs some.
SMALL_ROW_GROUP_SIZE = 64


def shard_name(index):
    return f"shard_{index:05d}.parquet"

# -----------------------------------------------------------------------------
# finding and reading shards

def list_parquet_files(data_dir):
    """Full paths of the .parquet files in data_dir, sorted by name (the last one is val)."""
    if not os.path.isdir(data_dir):
        return []
    return [os.path.join(data_dir, f) for f in sorted(os.listdir(data_dir)) if f.endswith(".parquet")]


def _check_shards(data_dir, hint):
    n = len(list_parquet_files(data_dir))
    if n == 0:
        raise UserError(f"no parquet shards in {data_dir}: {hint}")
    if n < 2:
        raise UserError(f"only one shard in {data_dir}, need at least 2 (the last one is validation): {hint}")
    return data_dir


def get_data_dir(source="auto"):
    """
    The folder of shards for a data source:
    "fineweb" (base_data/), "builtin" (builtin_data/), "tinystories" (tinystories_data/), "auto"
    (FineWeb when any shards were downloaded, else the built-in corpus when built), the NAME given
    to `--text ... --name NAME`, or a path to a folder of shards. Raises UserError with a one-line
    fix when there is no data.
    """
    base = get_base_dir()
    fineweb_dir = os.path.join(base, "base_data")
    builtin_dir = os.path.join(base, "builtin_data")
    if source == "auto":
        if list_parquet_files(fineweb_dir):
            source = "fineweb"
        elif list_parquet_files(builtin_dir):
            source = "builtin"
        else:
            raise UserError("no pretraining data yet: run `python -m nanochat.dataset --builtin` (offline, seconds) "
                            "or `python -m nanochat.dataset -n 8` (downloads FineWeb-Edu)")
    if source == "fineweb":
        return _check_shards(fineweb_dir, "download them with `python -m nanochat.dataset -n 8`")
    if source == "builtin":
        return _check_shards(builtin_dir, "build it with `python -m nanochat.dataset --builtin`")
    if source == "tinystories":
        return _check_shards(os.path.join(base, "tinystories_data"),
                             "build it with `python -m nanochat.dataset --tinystories` (downloads ~2 GB)")
    text_dir = os.path.join(base, "text_data", source)
    if os.sep not in source and os.path.isdir(text_dir):
        return _check_shards(text_dir, f"rebuild it with `python -m nanochat.dataset --text PATH --name {source}`")
    if os.path.isdir(source):
        return _check_shards(source, "a data folder holds shard_00000.parquet, shard_00001.parquet, ...")
    raise UserError(f"unknown data source {source!r}: use auto, fineweb, builtin, tinystories, a --text name, or a folder of parquet shards")


def split_files(split, data_dir):
    """The shards of a split: "train" = all but the last, "val" = the last."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    paths = list_parquet_files(data_dir)
    return paths[:-1] if split == "train" else paths[-1:]


def parquets_iter_batched(split, data_dir=None, start=0, step=1):
    """
    Yield the texts of the split one row group at a time (a list of strings each).
    start/step pick row groups counted across all shards of the split, e.g. start=rank,
    step=world_size under DDP (the DataLoader's order).
    """
    data_dir = data_dir or get_data_dir("auto")
    k = 0  # row group number across shards
    for path in split_files(split, data_dir):
        pf = pq.ParquetFile(path)
        for rg in range(pf.num_row_groups):
            if k >= start and (k - start) % step == 0:
                yield pf.read_row_group(rg, columns=["text"]).column("text").to_pylist()
            k += 1


def text_iterator(data_dir=None, max_chars=2_000_000_000, doc_cap=10_000):
    """Train-split documents for tokenizer training, each cut to doc_cap chars, max_chars in all."""
    n_chars = 0
    for texts in parquets_iter_batched("train", data_dir):
        for text in texts:
            text = text[:doc_cap]
            n_chars += len(text)
            yield text
            if n_chars >= max_chars:
                return

# -----------------------------------------------------------------------------
# writing shards

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


def _print_written(written, out_dir, seconds):
    total_docs = sum(n for _, n, _ in written)
    total_chars = sum(c for _, _, c in written)
    total_bytes = sum(os.path.getsize(p) for p, _, _ in written)
    for i, (path, n, c) in enumerate(written):
        role = "val" if i == len(written) - 1 else "train"
        print0(f"  {os.path.basename(path)}  {role:5s}  {n:7,d} docs  {c:13,d} chars  {os.path.getsize(path) / 1e6:7.2f} MB")
    print0(f"wrote {len(written)} shards, {total_docs:,d} docs, {total_chars:,d} chars ({total_bytes / 1e6:.2f} MB on disk) "
           f"to {out_dir} in {seconds:.1f}s")

# -----------------------------------------------------------------------------
# the built-in corpus: text every Python install carries, plus generated exercises

SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__", "encodings"}
DOC_CHARS = 8000  # cut long module docs into documents of about this size


def _stdlib_files():
    stdlib = sysconfig.get_paths()["stdlib"]
    files = []
    for root, dirs, names in os.walk(stdlib):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
        files += [os.path.join(root, n) for n in sorted(names) if n.endswith(".py")]
    return stdlib, files


def _docstrings(tree):
    """(qualified name, docstring) of the classes, functions and methods of a module, in source order."""
    def visit(body, prefix):
        for node in body:
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                name = prefix + node.name + ("()" if not isinstance(node, ast.ClassDef) else "")
                doc = ast.get_docstring(node)
                if doc:
                    yield name, doc
                if isinstance(node, ast.ClassDef):
                    yield from visit(node.body, prefix + node.name + ".")
    yield from visit(tree.body, "")


def _chunk_sections(title, sections, doc_chars=DOC_CHARS):
    """Join "## heading\\n\\ntext" sections under a "# title" header, cut into documents of ~doc_chars."""
    docs, current = [], []
    for section in sections:
        current.append(section)
        if sum(len(s) for s in current) >= doc_chars:
            docs.append(f"# {title}\n\n" + "\n\n".join(current))
            current = []
    if current:
        docs.append(f"# {title}\n\n" + "\n\n".join(current))
    return docs


def stdlib_module_docs(path, stdlib, seen):
    """The docstrings of one stdlib file as documents, parsed with ast (never imported)."""
    module = os.path.relpath(path, stdlib)[:-3].replace(os.sep, ".").removesuffix(".__init__")
    try:
        with open(path, "rb") as f:
            source = f.read()
        with warnings.catch_warnings():  # invalid escape sequences in old files warn on 3.12+
            warnings.simplefilter("ignore")
            tree = ast.parse(source)
    except (SyntaxError, ValueError, OSError):
        return []
    sections = []
    module_doc = ast.get_docstring(tree)
    if module_doc and module_doc not in seen:
        seen.add(module_doc)
        sections.append(module_doc)
    for name, doc in _docstrings(tree):
        # skip one-word stubs and docstrings copied between classes ("Return self.")
        if len(doc) >= 12 and doc not in seen:
            seen.add(doc)
            sections.append(f"## {name}\n\n{doc}")
    return _chunk_sections(module, sections) if sections else []


def topic_docs(key, text):
    """One pydoc help topic (the language reference) as documents, cut on paragraphs."""
    return _chunk_sections(f"Python help: {key}", [p for p in text.split("\n\n") if p.strip()])


def build_builtin(out_dir=None, total_chars=4_000_000, doc_fraction=0.6, seed=42, shard_chars=1_000_000):
    """
    Build the offline corpus. Documentation (stdlib docstrings and pydoc topics, taken in a
    seeded random order) fills up to doc_fraction of total_chars (all of it is only ~2.3 MB);
    generated exercises fill the rest. Deterministic for a given Python install.
    """
    from pydoc_data.topics import topics  # a dict of strings: data, safe to import
    from nanochat.exercises import exercise_document
    out_dir = out_dir or os.path.join(get_base_dir(), "builtin_data")
    rng = random.Random(seed)
    stdlib, files = _stdlib_files()
    units = [("file", f) for f in files] + [("topic", k) for k in sorted(topics)]
    rng.shuffle(units)
    docs, n_chars, seen = [], 0, set()
    doc_budget = doc_fraction * total_chars
    for kind, item in units:
        if n_chars >= doc_budget:
            break
        new = stdlib_module_docs(item, stdlib, seen) if kind == "file" else topic_docs(item, topics[item])
        docs += new
        n_chars += sum(len(d) for d in new)
    n_doc_chars = n_chars
    while n_chars < total_chars:
        doc = exercise_document(rng, rng.randint(8, 32))
        docs.append(doc)
        n_chars += len(doc)
    rng.shuffle(docs)
    written = write_shards(docs, out_dir, shard_chars=shard_chars)
    return written, n_doc_chars, n_chars - n_doc_chars

# -----------------------------------------------------------------------------
# the user's own text

TEXT_EXTENSIONS = (".txt", ".md", ".markdown", ".text")


def _text_files(paths):
    files = []
    for path in paths:
        if os.path.isdir(path):
            for root, dirs, names in os.walk(path):
                dirs.sort()
                files += [os.path.join(root, n) for n in sorted(names) if n.lower().endswith(TEXT_EXTENSIONS)]
        elif os.path.isfile(path):
            if not path.lower().endswith(TEXT_EXTENSIONS):
                raise UserError(f"{path}: --text takes .txt and .md files (or folders of them)")
            files.append(path)
        else:
            raise UserError(f"{path}: no such file or folder")
    if not files:
        raise UserError(f"no .txt or .md files found in {' '.join(paths)}")
    return files


def text_documents(paths, split_by="paragraphs", doc_chars=2000):
    """
    Documents from .txt/.md files or folders: split_by="file" makes one document per file;
    "paragraphs" splits on blank lines and groups consecutive paragraphs into documents of
    about doc_chars characters (a paragraph longer than that stays whole).
    """
    docs = []
    for path in _text_files(paths):
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read().replace("\r\n", "\n").strip()
        if not text:
            continue
        if split_by == "file":
            docs.append(text)
            continue
        current = ""
        for para in re.split(r"\n\s*\n", text):
            para = para.strip()
            if current and len(current) + len(para) > doc_chars:
                docs.append(current)
                current = ""
            current = f"{current}\n\n{para}" if current else para
        if current:
            docs.append(current)
    return docs


def build_text(paths, name, split_by="paragraphs", doc_chars=2000, seed=42):
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name.startswith("."):
        raise UserError(f"--name {name!r}: use letters, digits, '_', '-' and '.' only")
    docs = text_documents(paths, split_by, doc_chars)
    # shuffle so that validation is a fair sample, not the end of the last file
    random.Random(seed).shuffle(docs)
    out_dir = os.path.join(get_base_dir(), "text_data", name)
    return write_shards(docs, out_dir), out_dir

# -----------------------------------------------------------------------------
# downloading FineWeb-Edu

class DownloadError(Exception):
    pass


class _Permanent(Exception):
    """An answer that retrying will not change (404, 403, ...)."""


class _Retry(Exception):
    """A transfer that ended badly but may work the next time (short read, bad range)."""


def _total_from_content_range(value):
    # "bytes 100-199/5000" or "bytes */5000"
    m = re.fullmatch(r"bytes (\*|(\d+)-\d+)/(\d+|\*)", (value or "").strip())
    if not m:
        return None, None
    start = int(m.group(2)) if m.group(2) is not None else None
    total = int(m.group(3)) if m.group(3) != "*" else None
    return start, total


def _download_attempt(url, part, headers, timeout, on_bytes, stop):
    import requests
    have = os.path.getsize(part) if os.path.exists(part) else 0
    headers = dict(headers)
    if have:
        headers["Range"] = f"bytes={have}-"
    with requests.get(url, headers=headers, stream=True, timeout=timeout) as r:
        if r.status_code == 416 and have:
            # nothing left to send: either the .part is already complete, or it is bad
            _, total = _total_from_content_range(r.headers.get("Content-Range"))
            if total == have:
                return
            os.remove(part)
            raise _Retry(f"server refused the range of a {have}-byte .part file; starting over")
        if r.status_code in (400, 401, 403, 404, 410):
            hint = " (set HF_TOKEN?)" if r.status_code in (401, 403) else ""
            raise _Permanent(f"HTTP {r.status_code} {r.reason}{hint}")
        r.raise_for_status()  # 5xx, 429, ...: retried
        if r.status_code == 206:
            start, total = _total_from_content_range(r.headers.get("Content-Range"))
            if start != have:
                os.remove(part)
                raise _Retry(f"server sent bytes from {start}, asked from {have}; starting over")
            mode = "ab"
        else:
            # 200: the server ignored Range (or there was no .part): the body is the whole file
            total = int(r.headers["Content-Length"]) if "Content-Length" in r.headers else None
            mode = "wb"
        with open(part, mode) as f:
            for chunk in r.iter_content(1 << 20):
                if stop is not None and stop.is_set():
                    raise DownloadError(f"{os.path.basename(url)}: interrupted")  # keeps the .part
                f.write(chunk)
                if on_bytes:
                    on_bytes(len(chunk))
    size = os.path.getsize(part)
    if total is not None and size != total:
        if size > total:
            os.remove(part)
        raise _Retry(f"connection ended at {size:,d} of {total:,d} bytes")


def download_file(url, path, max_attempts=5, backoff=2.0, timeout=30, headers=None, on_bytes=None, stop=None,
                  validate=None, log=print0):
    """
    Download url to path through path + ".part": resumed with a Range header when a .part is
    there, retried with exponential backoff (backoff * 2^k seconds), and renamed to path only
    once its size matches what the server announced and validate(part) (if given) returns no
    complaint. On failure raises DownloadError, leaves no file at path and keeps the .part
    (unless the server said the file does not exist, or sent a bad file), so the next call resumes.
    """
    import requests
    # identity: no compressed transfer, so byte counts and ranges are the file's own
    headers = {"Accept-Encoding": "identity", **(headers or {})}
    part = path + ".part"
    name = os.path.basename(path)
    for attempt in range(1, max_attempts + 1):
        if stop is not None and stop.is_set():
            raise DownloadError(f"{name}: interrupted")
        try:
            _download_attempt(url, part, headers, timeout, on_bytes, stop)
            complaint = validate(part) if validate else None
            if complaint:
                raise _Permanent(complaint)
            os.replace(part, path)
            return path
        except _Permanent as e:
            if os.path.exists(part):
                os.remove(part)
            raise DownloadError(f"{name}: {e}") from None
        except (requests.RequestException, _Retry) as e:
            if attempt == max_attempts:
                raise DownloadError(f"{name}: {e} (gave up after {max_attempts} attempts)") from None
            wait = backoff * 2 ** (attempt - 1)
            log(f"{name}: attempt {attempt}/{max_attempts} failed ({e}); retrying in {wait:.0f}s")
            if stop is not None:
                stop.wait(wait)
            else:
                time.sleep(wait)


def _resolve_url(base_url):
    return (base_url or os.environ.get("NANOCHAT_DATA_URL") or FINEWEB_URL).rstrip("/")


def _auth_headers():
    token = os.environ.get("HF_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


def download_shard(index, data_dir, base_url=None, **kwargs):
    """Download one FineWeb-Edu shard into data_dir (skipped when already there); returns its path."""
    base_url = _resolve_url(base_url)
    path = os.path.join(data_dir, shard_name(index))
    if os.path.exists(path):
        return path
    os.makedirs(data_dir, exist_ok=True)
    return download_file(f"{base_url}/{shard_name(index)}", path, headers=_auth_headers(), validate=_not_parquet, **kwargs)


def _not_parquet(path):
    """A complaint when the file lacks parquet's magic bytes at both ends (e.g. an HTML error page sent with 200)."""
    with open(path, "rb") as f:
        head = f.read(4)
        f.seek(max(0, os.path.getsize(path) - 4))
        tail = f.read(4)
    if os.path.getsize(path) < 8 or head != b"PAR1" or tail != b"PAR1":
        return "the server's answer is not a parquet file"
    return None


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

# -----------------------------------------------------------------------------
# command line

def main(argv=None):
    parser = ArgumentParser(prog="python -m nanochat.dataset", description="Get pretraining data: download FineWeb-Edu shards, build the offline "
                                        "built-in corpus, or turn your own text files into shards.")
    parser.add_argument("-n", "--num_shards", type=int, default=None,
                        help=f"download FineWeb-Edu train shards 0..N-1 (-1: all {MAX_SHARD}) plus the validation shard")
    parser.add_argument("-w", "--num_workers", type=int, default=4, help="shards downloaded at once (default 4)")
    parser.add_argument("--builtin", action="store_true", help="build the offline built-in corpus (no network needed)")
    parser.add_argument("--builtin_chars", type=float, default=4e6, help="size of the built-in corpus in characters (default 4e6)")
    parser.add_argument("--tinystories", action="store_true", help="download TinyStories and convert it into shards")
    parser.add_argument("--tinystories_version", type=int, choices=[1, 2], default=2,
                        help="with --tinystories: 2 = TinyStoriesV2-GPT4 (GPT-4 stories only, default), 1 = the original files")
    parser.add_argument("--tinystories_max_stories", type=int, default=None, help="with --tinystories: convert only the first N train stories")
    parser.add_argument("--tinystories_shard_chars", type=float, default=5e7, help="with --tinystories: characters per train shard (default 5e7)")
    parser.add_argument("--force", action="store_true", help="with --tinystories: convert again although the shards are there")
    parser.add_argument("--text", nargs="+", metavar="PATH", help=".txt/.md files or folders of them to turn into shards")
    parser.add_argument("--name", type=str, default=None, help="with --text: the data set's name (text_data/NAME, then --data NAME)")
    parser.add_argument("--split_by", choices=["paragraphs", "file"], default="paragraphs",
                        help="with --text: documents are groups of paragraphs (default) or whole files")
    parser.add_argument("--doc_chars", type=int, default=2000, help="with --text --split_by paragraphs: document size in characters")
    args = parser.parse_args(argv)

    modes = [args.num_shards is not None, args.builtin, args.tinystories, args.text is not None]
    if sum(modes) != 1:
        parser.print_usage(sys.stderr)
        die("choose one of -n N (download FineWeb-Edu), --builtin (offline corpus), --tinystories (download TinyStories), "
            "--text PATH --name NAME")
    try:
        t0 = time.time()
        if args.builtin:
            if args.builtin_chars < 10_000:
                raise UserError(f"--builtin_chars {args.builtin_chars:g} is too small: use at least 1e4")
            out_dir = os.path.join(get_base_dir(), "builtin_data")
            written, doc_chars, ex_chars = build_builtin(out_dir, total_chars=int(args.builtin_chars))
            print0(f"built-in corpus: {doc_chars:,d} chars of Python documentation, {ex_chars:,d} chars of exercises")
            _print_written(written, out_dir, time.time() - t0)
        elif args.tinystories:
            from nanochat.tinystories import build_tinystories  # it imports this module
            build_tinystories(args.tinystories_version, int(args.tinystories_shard_chars), args.tinystories_max_stories,
                              force=args.force)
        elif args.text is not None:
            if not args.name:
                raise UserError("--text needs --name NAME (the data set is then used with --data NAME)")
            if args.doc_chars < 1:
                raise UserError("--doc_chars must be positive")
            written, out_dir = build_text(args.text, args.name, args.split_by, args.doc_chars)
            _print_written(written, out_dir, time.time() - t0)
        else:
            if args.num_workers < 1:
                raise UserError("--num_workers must be at least 1")
            errors = download_fineweb(args.num_shards, args.num_workers)
            if errors:
                die(f"{len(errors)} shard(s) failed (first: {errors[0]}); run the same command again to resume")
            print0(f"done in {time.time() - t0:.0f}s")
    except UserError as e:
        die(str(e))
    except KeyboardInterrupt:
        die("interrupted; partial downloads are kept as .part files and resume when you run the command again", 130)


if __name__ == "__main__":
    main()
