"""
MMLU (cais/mmlu, subset "all"): 4-choice questions on 57 subjects. Read from
$NANOCHAT_BASE_DIR/eval_data/mmlu/all/{split}-00000-of-00001.parquet (the hub's paths, FILES
below; split: test, validation, dev, or auxiliary_train for training);
`python -m scripts.chat_eval --download --task_name MMLU` fetches all four.
"""
from nanochat.tasks import MultipleChoiceTask, download, eval_data_path, multiple_choice, read_parquet_rows

REPO = "cais/mmlu"
SPLITS = ("auxiliary_train", "dev", "validation", "test")
# every file of the set, as the hub lays it out (assumed: the "all" config's parquet files on main)
FILES = {split: f"all/{split}-00000-of-00001.parquet" for split in SPLITS}
COMMAND = "python -m scripts.chat_eval --download --task_name MMLU"


def remote(split):
    return FILES[split]


def local_path(split):
    return eval_data_path("mmlu", remote(split))


def download_split(split="test", **kwargs):
    return download(REPO, remote(split), local_path(split), **kwargs)


def download_all(**kwargs):
    """All four splits (auxiliary_train, ~100K questions, is what the 'mmlu' training mixture reads)."""
    return [download_split(split, **kwargs) for split in SPLITS]


class MMLU(MultipleChoiceTask):
    def __init__(self, split="test"):
        if split not in SPLITS:
            raise ValueError(f"MMLU split must be one of {SPLITS}, got {split!r}")
        rows = read_parquet_rows(local_path(split), f"MMLU {split}", COMMAND)
        self.items = []
        for row in rows:
            row = row.get("train") or row  # the separate auxiliary_train config wraps each row in "train"
            subject = row.get("subject") or "misc"
            question = f"A question about {subject.replace('_', ' ')}:\n{row['question']}"
            self.items.append(multiple_choice(question, list(row["choices"]), int(row["answer"]), subject=subject))
