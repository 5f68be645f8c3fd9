"""
ARC (allenai/ai2_arc): grade-school science questions with 3-5 choices, Easy and Challenge sets.
Read from $NANOCHAT_BASE_DIR/eval_data/arc/ARC-{Easy,Challenge}/{split}-00000-of-00001.parquet;
download() fetches them (python -m scripts.chat_eval --download).
"""
from nanochat.tasks import MultipleChoiceTask, download, eval_data_path, multiple_choice, read_parquet_rows

REPO = "allenai/ai2_arc"
SPLITS = ("train", "validation", "test")


def remote(subset, split):
    return f"ARC-{subset}/{split}-00000-of-00001.parquet"


def download_split(subset, split="test"):
    return download(REPO, remote(subset, split), eval_data_path("arc", remote(subset, split)))


class ARC(MultipleChoiceTask):
    def __init__(self, subset="Easy", split="test"):
        if subset not in ("Easy", "Challenge") or split not in SPLITS:
            raise ValueError(f"ARC subset must be Easy or Challenge and split one of {SPLITS}, got {subset!r}, {split!r}")
        rows = read_parquet_rows(eval_data_path("arc", remote(subset, split)), f"ARC-{subset} {split}")
        self.items = []
        for row in rows:
            labels, texts = list(row["choices"]["label"]), list(row["choices"]["text"])
            if row["answerKey"] not in labels:
                continue
            # some questions label their choices 1-4: the position is what counts
            self.items.append(multiple_choice(row["question"], texts, labels.index(row["answerKey"]), subject=f"ARC-{subset}"))
