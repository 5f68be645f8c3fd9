"""
Pretraining data: folders of parquet shards `shard_{i:05d}.parquet` with one `text` column, one
document per row. The last shard of a folder is the validation split, the others are train.
Four sources write that same layout, so one code path (this module) reads all of them:

    python -m nanochat.dataset -n 8        FineWeb-Edu shards 0..7 plus the validation shard
                                           -> $NANOCHAT_BASE_DIR/base_data/ (nanochat.fineweb)
    python -m nanochat.dataset -n 8 --source climbmix
                                           ClimbMix shards (nanochat's data since March 2026)
                                           -> $NANOCHAT_BASE_DIR/base_data_climbmix/
    python -m nanochat.dataset --builtin   offline corpus: stdlib docstrings, pydoc topics and
                                           generated exercises (arithmetic, counting, brackets,
                                           lists, sorting, copying, ListOps; nanochat.exercises)
                                           -> $NANOCHAT_BASE_DIR/builtin_data/ (nanochat.builtin_corpus)
    python -m nanochat.dataset --tinystories
                                           TinyStories (downloaded from the hub, see nanochat.tinystories)
                                           -> $NANOCHAT_BASE_DIR/tinystories_data/
    python -m nanochat.dataset --text notes/ diary.md --name me
                                           your own .txt/.md files -> $NANOCHAT_BASE_DIR/text_data/me/
                                           (nanochat.user_text)

Where the rest lives: writing shards in nanochat.shard_writer; resumable downloads (.part files,
Range, retries with backoff) in nanochat.download. HF_TOKEN (if set) is sent as a bearer token,
NANOCHAT_DATA_URL replaces the FineWeb-Edu address and NANOCHAT_HF_URL the hub's host for
TinyStories and ClimbMix (a mirror, or a test server).

Library API (reading): get_data_dir(source), list_parquet_files(data_dir), split_files(split, data_dir),
parquets_iter_batched(split, data_dir, start, step), text_iterator(data_dir, max_chars, doc_cap),
shard_name(index); main(argv), the command line above.
"""
import os
import sys
import time

import pyarrow.parquet as pq

from nanochat.common import ArgumentParser, UserError, die, get_base_dir, print0


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
    "fineweb" (base_data/), "climbmix" (base_data_climbmix/), "builtin" (builtin_data/), "tinystories"
    (tinystories_data/), "auto" (FineWeb when any shards were downloaded, else ClimbMix, else the
    built-in corpus when built), the NAME given
    to `--text ... --name NAME`, or a path to a folder of shards. Raises UserError with a one-line
    fix when there is no data.
    """
    base = get_base_dir()
    fineweb_dir = os.path.join(base, "base_data")
    builtin_dir = os.path.join(base, "builtin_data")
    climbmix_dir = os.path.join(base, "base_data_climbmix")
    if source == "auto":
        if list_parquet_files(fineweb_dir):
            source = "fineweb"
        elif list_parquet_files(climbmix_dir):
            source = "climbmix"
        elif list_parquet_files(builtin_dir):
            source = "builtin"
        else:
            raise UserError("no pretraining data yet: run `python -m nanochat.dataset --builtin` (offline, seconds) "
                            "or `python -m nanochat.dataset -n 8` (downloads FineWeb-Edu)")
    if source == "fineweb":
        return _check_shards(fineweb_dir, "download them with `python -m nanochat.dataset -n 8`")
    if source == "climbmix":
        return _check_shards(climbmix_dir, "download them with `python -m nanochat.dataset -n 8 --source climbmix`")
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
    raise UserError(f"unknown data source {source!r}: use auto, fineweb, climbmix, builtin, tinystories, a --text name, or a folder of parquet shards")


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
# command line (the sources' modules import this one, so they are imported when used)

def _parser():
    from nanochat.fineweb import SOURCES
    parser = ArgumentParser(prog="python -m nanochat.dataset", description="Get pretraining data: download FineWeb-Edu or ClimbMix "
                                        "shards, build the offline built-in corpus, or turn your own text files into shards.")
    parser.add_argument("-n", "--num_shards", type=int, default=None,
                        help=f"download train shards 0..N-1 (-1: all {SOURCES['fineweb'][1]} of FineWeb-Edu, "
                             f"{SOURCES['climbmix'][1]} of ClimbMix) plus the validation shard")
    parser.add_argument("--source", type=str, default="fineweb", choices=list(SOURCES),
                        help="with -n: fineweb (FineWeb-Edu, into base_data/, default) or climbmix (ClimbMix-400B, "
                             "nanochat's data since March 2026, into base_data_climbmix/; train with --data climbmix)")
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
    return parser


def _run(args, t0):
    """The one source the flags chose; raises UserError."""
    from nanochat.shard_writer import print_written
    if args.builtin:
        from nanochat.builtin_corpus import build_builtin
        if args.builtin_chars < 10_000:
            raise UserError(f"--builtin_chars {args.builtin_chars:g} is too small: use at least 1e4")
        out_dir = os.path.join(get_base_dir(), "builtin_data")
        written, doc_chars, ex_chars = build_builtin(out_dir, total_chars=int(args.builtin_chars))
        print0(f"built-in corpus: {doc_chars:,d} chars of Python documentation, {ex_chars:,d} chars of exercises")
        print_written(written, out_dir, time.time() - t0)
    elif args.tinystories:
        from nanochat.tinystories import build_tinystories
        build_tinystories(args.tinystories_version, int(args.tinystories_shard_chars), args.tinystories_max_stories,
                          force=args.force)
    elif args.text is not None:
        from nanochat.user_text import build_text
        if not args.name:
            raise UserError("--text needs --name NAME (the data set is then used with --data NAME)")
        if args.doc_chars < 1:
            raise UserError("--doc_chars must be positive")
        written, out_dir = build_text(args.text, args.name, args.split_by, args.doc_chars)
        print_written(written, out_dir, time.time() - t0)
    else:
        from nanochat.fineweb import download_fineweb
        if args.num_workers < 1:
            raise UserError("--num_workers must be at least 1")
        errors = download_fineweb(args.num_shards, args.num_workers, source=args.source)
        if errors:
            die(f"{len(errors)} shard(s) failed (first: {errors[0]}); run the same command again to resume")
        print0(f"done in {time.time() - t0:.0f}s")


def main(argv=None):
    parser = _parser()
    args = parser.parse_args(argv)
    modes = [args.num_shards is not None, args.builtin, args.tinystories, args.text is not None]
    if sum(modes) != 1:
        parser.print_usage(sys.stderr)
        die("choose one of -n N (download FineWeb-Edu), --builtin (offline corpus), --tinystories (download TinyStories), "
            "--text PATH --name NAME")
    try:
        _run(args, time.time())
    except UserError as e:
        die(str(e))
    except KeyboardInterrupt:
        die("interrupted; partial downloads are kept as .part files and resume when you run the command again", 130)


if __name__ == "__main__":
    main()
