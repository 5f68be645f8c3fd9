"""
MMLU (cais/mmlu, subset "all"): 4-choice questions on 57 subjects. Read from
$NANOCHAT_BASE_DIR/eval_data/mmlu/all/{split}-00000-of-00001.parquet (split: test, validation,
dev, or auxiliary_train for training); download() fetches them (python -m scripts.chat_eval --download).
"""
from nanochat.tasks import MultipleChoiceTask, download, eval_data_path, multiple_choice, read_parquet_rows

REPO = "cais/mmlu"
SPLITS = ("auxiliary_train", "dev", "validation", "test")


def remote(split):
    return f"all/{split}-00000-of-00001.parquet"


def download_split(split="test"):
    return download(REPO, remote(split), eval_data_path("mmlu", remote(split)))


class MMLU(MultipleChoiceTask):
    def __init__(self, split="test"):
        if split not in SPLITS:
            raise ValueError(f"MMLU split must be one of {SPLITS}, got {split!r}")
        rows = read_parquet_rows(eval_data_path("mmlu", remote(split)), f"MMLU {split}")
        self.items = []
        for row in rows:
            subject = row.get("subject") or "misc"
            question = f"A question about {subject.replace('_', ' ')}:\n{row['question']}"
            self.items.append(multiple_choice(question, list(row["choices"]), int(row["answer"]), subject=subject))
