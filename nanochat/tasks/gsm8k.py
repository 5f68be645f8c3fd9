"""
GSM8K (openai/gsm8k, "main"): grade-school math word problems whose worked answers mark each
computation as <<48/2=24>> and end with "#### 72". The marks become calculator calls, so the model
learns to use the tool; scoring compares the number after "####". Read from
$NANOCHAT_BASE_DIR/eval_data/gsm8k/main/{train,test}-00000-of-00001.parquet; download() fetches
them (python -m scripts.chat_eval --download).
"""
import re

from nanochat.tasks import Task, download, eval_data_path, read_parquet_rows

REPO = "openai/gsm8k"
CALC = re.compile(r"<<([^=<>]*)=([^<>]*)>>")


def remote(split):
    return f"main/{split}-00000-of-00001.parquet"


def download_split(split="test"):
    return download(REPO, remote(split), eval_data_path("gsm8k", remote(split)))


def answer_parts(answer):
    """'... 48/2 = <<48/2=24>>24 clips ...' -> text, python, python_output, text parts."""
    parts, pos = [], 0
    for m in CALC.finditer(answer):
        if m.start() > pos:
            parts.append({"type": "text", "text": answer[pos:m.start()]})
        parts.append({"type": "python", "text": m.group(1)})
        parts.append({"type": "python_output", "text": m.group(2)})
        pos = m.end()
    if pos < len(answer):
        parts.append({"type": "text", "text": answer[pos:]})
    return parts


def extract_answer(text):
    """The number after '####' (commas dropped), or None."""
    m = re.search(r"####\s*(-?[\d,]*\.?\d+)", text)
    return m.group(1).replace(",", "") if m else None


class GSM8K(Task):
    eval_type = "generative"

    def __init__(self, split="test"):
        if split not in ("train", "test"):
            raise ValueError(f"GSM8K split must be train or test, got {split!r}")
        self.rows = read_parquet_rows(eval_data_path("gsm8k", remote(split)), f"GSM8K {split}")

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, index):
        row = self.rows[index]
        return {"messages": [{"role": "user", "content": row["question"]},
                             {"role": "assistant", "content": answer_parts(row["answer"])}],
                "answer": extract_answer(row["answer"])}

    def evaluate(self, conversation, completion):
        predicted = extract_answer(completion)
        return predicted is not None and float(predicted) == float(conversation["answer"])
