"""
SmolTalk (HuggingFaceTB/smol-smoltalk): ~460K train and ~24K test general conversations written
for small models, as parquet files with a `messages` column (a list of {role, content}).

    python -m nanochat.tasks.smoltalk            # download both splits (~1 GB) once
    python -m nanochat.tasks.smoltalk --split test

Files go to $NANOCHAT_BASE_DIR/datasets/smol-smoltalk/. Downloads stream to .part files that are
renamed when complete (and resumed after an interruption); HF_TOKEN is sent when set, and
NANOCHAT_HF_URL replaces https://huggingface.co (a mirror, or a local server in tests).
"""
import os

from nanochat.common import ArgumentParser, UserError, die, get_base_dir, print0
from nanochat.tasks import Task, download

REPO = "HuggingFaceTB/smol-smoltalk"
FILES = {
    "train": [f"data/train-{i:05d}-of-00004.parquet" for i in range(4)],
    "test": ["data/test-00000-of-00001.parquet"],
}


def data_dir():
    return os.path.join(get_base_dir(), "datasets", "smol-smoltalk")


def local_path(remote):
    return os.path.join(data_dir(), os.path.basename(remote))


def is_downloaded(split="train"):
    return all(os.path.exists(local_path(f)) for f in FILES[split])


def download_split(split="train", **kwargs):
    """Download the split's parquet files (those already there are skipped); returns their paths."""
    paths = []
    for remote in FILES[split]:
        path = local_path(remote)
        if not os.path.exists(path):
            print0(f"downloading {REPO}/{remote}")
        paths.append(download(REPO, remote, path, **kwargs))
    return paths


class SmolTalk(Task):
    """The conversations of one split, read from the downloaded parquet files (converted lazily, one at a time)."""
    def __init__(self, split="train"):
        import pyarrow.parquet as pq
        if split not in FILES:
            raise ValueError(f"SmolTalk split must be train or test, got {split!r}")
        if not is_downloaded(split):
            raise UserError(f"SmolTalk {split} is not downloaded: run `python -m nanochat.tasks.smoltalk --split {split}` "
                            f"(needs internet) or leave smoltalk out of the mixture")
        columns = [pq.read_table(local_path(f), columns=["messages"]).column("messages") for f in FILES[split]]
        self.chunks = [chunk for col in columns for chunk in col.chunks]
        self.starts, n = [], 0
        for chunk in self.chunks:
            self.starts.append(n)
            n += len(chunk)
        self.size = n

    def __len__(self):
        return self.size

    def __getitem__(self, index):
        if not 0 <= index < self.size:
            raise IndexError(index)
        import bisect
        c = bisect.bisect_right(self.starts, index) - 1
        messages = self.chunks[c][index - self.starts[c]].as_py()
        return {"messages": [{"role": m["role"], "content": m["content"]} for m in messages]}


def main(argv=None):
    parser = ArgumentParser(prog="python -m nanochat.tasks.smoltalk", description=f"Download {REPO} (parquet) for mid-training and SFT.")
    parser.add_argument("--split", type=str, default="all", choices=["all", "train", "test"], help="which split (default: both)")
    args = parser.parse_args(argv)
    from nanochat.download import DownloadError
    try:
        for split in (["train", "test"] if args.split == "all" else [args.split]):
            download_split(split)
            print0(f"SmolTalk {split}: {len(SmolTalk(split)):,d} conversations in {data_dir()}")
    except (DownloadError, UserError) as e:
        die(str(e))


if __name__ == "__main__":
    main()
