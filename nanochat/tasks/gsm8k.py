"""
GSM8K (openai/gsm8k, "main"): grade-school math word problems whose worked answers mark each
computation as <<48/2=24>> and end with "#### 72". The marks become calculator calls, so the model
learns to use the tool; scoring compares the number after the first "####" of the model's reply
(commas dropped, compared as numbers: "#### 24.0" is 24) with the reference's. Read from
$NANOCHAT_BASE_DIR/eval_data/gsm8k/main/{train,test}-00000-of-00001.parquet (the hub's paths,
FILES below); `python -m scripts.chat_eval --download --task_name GSM8K` fetches both.
"""
import re

from nanochat.tasks import Task, download, eval_data_path, read_parquet_rows

REPO = "openai/gsm8k"
SPLITS = ("train", "test")
# every file of the set, as the hub lays it out (assumed: the "main" config's parquet files on main)
FILES = {split: f"main/{split}-00000-of-00001.parquet" for split in SPLITS}
COMMAND = "python -m scripts.chat_eval --download --task_name GSM8K"
CALC = re.compile(r"<<([^<>]*)>>")
FINAL = re.compile(r"####\s*(-?[\d,]*\.?\d+)")


def remote(split):
    return FILES[split]


def local_path(split):
    return eval_data_path("gsm8k", remote(split))


def download_split(split="test", **kwargs):
    return download(REPO, remote(split), local_path(split), **kwargs)


def download_all(**kwargs):
    return [download_split(split, **kwargs) for split in SPLITS]


def answer_parts(answer):
    """'... 48/2 = <<48/2=24>>24 clips ...' -> text, python, python_output, text parts (a mark without '=' is dropped)."""
    parts, pos = [], 0
    for m in CALC.finditer(answer):
        if m.start() > pos:
            parts.append({"type": "text", "text": answer[pos:m.start()]})
        if "=" in m.group(1):
            expr, result = m.group(1).rsplit("=", 1)
            parts.append({"type": "python", "text": expr})
            parts.append({"type": "python_output", "text": result})
        pos = m.end()
    if pos < len(answer):
        parts.append({"type": "text", "text": answer[pos:]})
    return parts


def extract_answer(text):
    """The number after the first '####' (commas dropped), or None."""
    m = FINAL.search(text)
    return m.group(1).replace(",", "") if m else None


def same_number(a, b):
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return False


class GSM8K(Task):
    eval_type = "generative"

    def __init__(self, split="test"):
        if split not in SPLITS:
            raise ValueError(f"GSM8K split must be train or test, got {split!r}")
        rows = read_parquet_rows(local_path(split), f"GSM8K {split}", COMMAND)
        self.rows = [r for r in rows if extract_answer(r["answer"]) is not None]  # every real row has one

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, index):
        row = self.rows[index]
        return {"messages": [{"role": "user", "content": row["question"]},
                             {"role": "assistant", "content": answer_parts(row["answer"])}],
                "answer": extract_answer(row["answer"])}

    def evaluate(self, conversation, completion):
        """completion: what the assistant wrote (its text, without the calculator's calls and outputs)."""
        predicted = extract_answer(completion)
        return predicted is not None and same_number(predicted, conversation["answer"])
