"""
ARC (allenai/ai2_arc): grade-school science questions with 3-5 choices, Easy and Challenge sets.
Read from $NANOCHAT_BASE_DIR/eval_data/arc/ARC-{Easy,Challenge}/{split}-00000-of-00001.parquet
(the hub's paths, FILES below); `python -m scripts.chat_eval --download --task_name ARC-Easy`
fetches one set's three splits.
"""
from nanochat.tasks import MultipleChoiceTask, download, eval_data_path, multiple_choice, read_parquet_rows

REPO = "allenai/ai2_arc"
SUBSETS = ("Easy", "Challenge")
SPLITS = ("train", "validation", "test")
# every file of the set, as the hub lays it out (assumed: the parquet conversion of the repo's main branch)
FILES = {(subset, split): f"ARC-{subset}/{split}-00000-of-00001.parquet" for subset in SUBSETS for split in SPLITS}


def remote(subset, split):
    return FILES[(subset, split)]


def local_path(subset, split):
    return eval_data_path("arc", remote(subset, split))


def command(subset):
    return f"python -m scripts.chat_eval --download --task_name ARC-{subset}"


def download_split(subset, split="test", **kwargs):
    return download(REPO, remote(subset, split), local_path(subset, split), **kwargs)


def download_all(subset, **kwargs):
    """All three splits of ARC-{subset} (files already there are skipped); returns their paths."""
    return [download_split(subset, split, **kwargs) for split in SPLITS]


class ARC(MultipleChoiceTask):
    def __init__(self, subset="Easy", split="test"):
        if subset not in SUBSETS or split not in SPLITS:
            raise ValueError(f"ARC subset must be Easy or Challenge and split one of {SPLITS}, got {subset!r}, {split!r}")
        rows = read_parquet_rows(local_path(subset, split), f"ARC-{subset} {split}", command(subset))
        self.items = []
        for row in rows:
            labels, texts = list(row["choices"]["label"]), list(row["choices"]["text"])
            if row["answerKey"] not in labels:
                continue
            # some questions label their choices 1-4: the position is what counts
            self.items.append(multiple_choice(row["question"], texts, labels.index(row["answerKey"]), subject=f"ARC-{subset}"))
