"""
scripts.chat_eval on the standard sets: --download from a local server shaped like the hub
(tiny parquet files written here), the one-line error for a set that is missing, a run over every
set with a tiny model ending in a table, and each set's scoring on hand-made answers
(multiple choice by the letter's logit, GSM8K's final answer, HumanEval's code run in the sandbox).
"""
import json
import os
import re
import shutil
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from nanochat.common import UserError
from nanochat.tasks import arc, gsm8k, humaneval, mmlu
from helpers import HubServer, hub_path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

HE_PROMPT = ('from typing import List\n\n\ndef has_close_elements(numbers: List[float], threshold: float) -> bool:\n'
             '    """ Check if in given list of numbers, are any two numbers closer to each other than the threshold.\n'
             '    >>> has_close_elements([1.0, 2.0, 3.0], 0.5)\n    False\n    """\n')
HE_SOLUTION = ('    for i, a in enumerate(numbers):\n        for j, b in enumerate(numbers):\n'
               '            if i != j and abs(a - b) < threshold:\n                return True\n    return False\n')
HE_TEST = ('METADATA = {}\n\n\ndef check(candidate):\n    assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3) == True\n'
           '    assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.05) == False\n    assert candidate([1.0, 2.0, 3.0], 0.5) == False\n')
HUMANEVAL = [
    {"task_id": "HumanEval/0", "prompt": HE_PROMPT, "canonical_solution": HE_SOLUTION, "test": HE_TEST,
     "entry_point": "has_close_elements"},
    {"task_id": "HumanEval/1", "prompt": 'def add(x: int, y: int) -> int:\n    """Add two numbers.\n    >>> add(2, 3)\n    5\n    """\n',
     "canonical_solution": "    return x + y\n", "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n",
     "entry_point": "add"},
]


def arc_rows(answers, labels="ABCD"):
    return [{"id": str(i), "question": f"Question {i}?", "choices": {"text": [f"c{j}" for j in range(len(labels))], "label": list(labels)},
             "answerKey": a} for i, a in enumerate(answers)]


def mmlu_rows(n, answer):
    return [{"question": f"Q{i}?", "subject": "anatomy", "choices": ["w", "x", "y", "z"], "answer": answer} for i in range(n)]


def gsm8k_rows(n):
    return [{"question": f"Tom has {i} apples and buys 2 more. How many?", "answer": f"{i} + 2 = <<{i}+2={i + 2}>>{i + 2}\n#### {i + 2}"}
            for i in range(n)]


def hub_files():
    """{(repo, path in the repo): rows} for every file chat_eval --download fetches, taken from the sets' own FILES lists."""
    files = {}
    for (subset, split), path in arc.FILES.items():
        # test splits the tests count on; the other splits are there for --download to fetch
        rows = {("Easy", "test"): arc_rows("CAC"),  # 3 questions, 2 answered C
                ("Challenge", "test"): arc_rows("312", labels="1234")}.get((subset, split), arc_rows("AB"))
        files[(arc.REPO, path)] = rows
    for split, path in mmlu.FILES.items():
        files[(mmlu.REPO, path)] = mmlu_rows(5, 2) if split == "test" else mmlu_rows(2, 0)  # test: 5 questions, all C
    for split, path in gsm8k.FILES.items():
        files[(gsm8k.REPO, path)] = gsm8k_rows(3)
    files[(humaneval.REPO, humaneval.FILES["test"])] = HUMANEVAL
    return files


def write_parquet(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    for (repo, path), rows in hub_files().items():
        write_parquet(hub_path(root, repo, path), rows)
    h = HubServer(root)
    yield h
    h.close()


@pytest.fixture(scope="module")
def letter_c_base(tiny_base_dir_session, tmp_path_factory):
    """A base dir of its own (eval_data lands in it) with the tokenizer and a tiny SFT model whose every choice is the
    letter C: the chatty model (all letter tokens tie at logit 0) with C's lm_head row raised."""
    from nanochat.checkpoint_manager import PHASE_DIRS, save_checkpoint
    from nanochat.tokenizer import Tokenizer
    base = tmp_path_factory.mktemp("chat_eval_base")
    shutil.copytree(tiny_base_dir_session / "tokenizer", base / "tokenizer")
    src = tiny_base_dir_session / PHASE_DIRS["sft"] / "tiny"
    state = torch.load(src / "model_000005.pt", map_location="cpu")
    meta = json.loads((src / "meta_000005.json").read_text())
    tokenizer = Tokenizer.from_directory(str(base / "tokenizer"))
    (c,) = tokenizer.encode("C")
    state["lm_head.weight"][c, 0] = 1.0
    save_checkpoint(str(base / PHASE_DIRS["sft"] / "letterc"), 5, state, None, meta)
    return base


def chat_eval(base, hub, *argv):
    env = dict(os.environ, NANOCHAT_BASE_DIR=str(base), NANOCHAT_HF_URL=hub.url, HF_TOKEN="secret",
               NANOCHAT_FAST_DECODE="0", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "scripts.chat_eval", *argv], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def test_download_then_evaluate_every_set(hub, letter_c_base):
    base = letter_c_base
    # not downloaded: one line naming the set and the command that fetches it, before any model is loaded
    r = chat_eval(base, hub, "-a", "MMLU", "--device_type", "cpu")
    assert r.returncode == 1 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "MMLU test is not downloaded" in r.stderr and "`python -m scripts.chat_eval --download --task_name MMLU`" in r.stderr
    # one set
    r = chat_eval(base, hub, "--download", "--task_name", "MMLU")
    assert r.returncode == 0, r.stderr
    asked = [p for p, _ in hub.requests]
    assert sorted(asked) == sorted(f"/datasets/{mmlu.REPO}/resolve/main/{p}" for p in mmlu.FILES.values())
    assert all(auth == "Bearer secret" for _, auth in hub.requests)
    assert os.path.exists(base / "eval_data" / "mmlu" / "all" / "test-00000-of-00001.parquet")
    assert not os.path.exists(base / "eval_data" / "gsm8k")
    # then all of them: only what is missing is asked for, each file at the hub's path
    r = chat_eval(base, hub, "--download")
    assert r.returncode == 0, r.stderr
    expected = {f"/datasets/{repo}/resolve/main/{path}" for repo, path in hub_files()}
    assert sorted(p for p, _ in hub.requests) == sorted(expected) and len(hub.requests) == len(expected) == 13
    assert not [f for _, _, fs in os.walk(base / "eval_data") for f in fs if f.endswith(".part")]

    # every set, names in any case, at most 3 problems each
    r = chat_eval(base, hub, "-g", "letterc", "-a", "builtin,arc-easy|ARC-Challenge,mmlu,gsm8k,HUMANEVAL", "-x", "3",
                  "--kinds", "addition", "--difficulties", "1", "-n", "1", "--max_tokens", "12", "--device_type", "cpu")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])["results"]
    assert list(result) == ["builtin", "ARC-Easy", "ARC-Challenge", "MMLU", "GSM8K", "HumanEval"]
    totals = {name: res["total"] for name, res in result.items()}
    assert totals == {"builtin": 1, "ARC-Easy": 3, "ARC-Challenge": 3, "MMLU": 3, "GSM8K": 3, "HumanEval": 2}
    # the model always picks C: ARC-Easy answers C, A, C; ARC-Challenge's labels 1-4 are lettered by position (3 -> C)
    assert [result[n]["correct"] for n in ("ARC-Easy", "ARC-Challenge", "MMLU")] == [2, 1, 3]
    # it writes 'CCCC...': no '####' answer, no code that runs
    assert result["GSM8K"]["correct"] == 0 and result["HumanEval"]["correct"] == 0
    for name, res in result.items():
        assert res["accuracy"] == pytest.approx(res["correct"] / res["total"])
        assert re.search(rf"^{name}\s+{100 * res['accuracy']:.1f}%\s+{res['correct']}\s+{res['total']}$", r.stdout, re.M), r.stdout
    assert re.search(r"^set\s+accuracy\s+correct\s+total$", r.stdout, re.M)


def test_scoring_on_hand_made_answers(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path))
    with pytest.raises(UserError, match=re.escape(humaneval.COMMAND)):
        humaneval.HumanEval()
    with pytest.raises(UserError, match=re.escape(arc.command("Challenge"))):
        arc.ARC("Challenge", "test")
    write_parquet(humaneval.local_path(), HUMANEVAL)
    write_parquet(gsm8k.local_path("test"), gsm8k_rows(3))
    write_parquet(arc.local_path("Easy", "test"), arc_rows("CAC"))

    # multiple choice: the letter picked against the answer key
    a = arc.ARC("Easy", "test")
    assert a[0]["letters"] == ["A", "B", "C", "D"] and a.evaluate(a[0], "C") and not a.evaluate(a[0], "A")

    # GSM8K: the number after the first '####', commas dropped, compared as a number
    assert gsm8k.extract_answer("so 3 + 4 = 7\n#### 7") == "7"
    assert gsm8k.extract_answer("#### 1,234 dollars") == "1234" and gsm8k.extract_answer("####-5") == "-5"
    assert gsm8k.extract_answer("#### 2.50") == "2.50" and gsm8k.extract_answer("the answer is 7") is None
    assert gsm8k.extract_answer("#### 3\n#### 4") == "3"
    g = gsm8k.GSM8K("test")
    conv = g[2]  # 2 + 2 = 4
    assert conv["answer"] == "4" and conv["messages"][1]["content"][1] == {"type": "python", "text": "2+2"}
    assert g.evaluate(conv, "He has 4.\n#### 4") and g.evaluate(conv, "#### 4.0") and g.evaluate(conv, "#### 0,004")
    assert not g.evaluate(conv, "#### 5") and not g.evaluate(conv, "4") and not g.evaluate(conv, "#### four")

    # HumanEval: code known right passes, code known wrong fails
    h = humaneval.HumanEval(timeout=60)
    first, second = h[0], h[1]
    assert len(h) == 2 and first["entry_point"] == "has_close_elements" and first["messages"][0]["content"] == HE_PROMPT
    right = "Here it is:\n```python\n" + HE_PROMPT.split("from typing import List\n\n\n")[1] + HE_SOLUTION + "```\nDone."
    assert h.evaluate(first, right)  # the prompt's `from typing import List` is added by the harness
    assert h.evaluate(first, HE_SOLUTION)  # only the body: read as the continuation of the prompt
    assert not h.evaluate(first, right.replace("< threshold", "> threshold"))  # wrong answer
    assert not h.evaluate(first, "def has_close_elements(numbers, threshold):\n    return (")  # syntax error
    assert h.evaluate(second, "def add(x, y):\n    return x + y")
    assert not h.evaluate(second, "import sys\ndef add(x, y):\n    return x - y\nsys.exit(0)")  # exits before the tests
    assert not h.evaluate(second, "def add(x, y):\n    return x - y\nif __name__ == '__main__':\n    raise SystemExit(0)")
    # the prompt's helper functions are there for the reply to call
    helper = {"messages": [{"role": "user", "content": 'def double(x):\n    return 2 * x\n\n\ndef quadruple(x):\n    """4 x."""\n'}],
              "test": "def check(f):\n    assert f(3) == 12\n", "entry_point": "quadruple"}
    assert h.evaluate(helper, "```python\ndef quadruple(x):\n    return double(double(x))\n```")
    assert not h.evaluate(helper, "```python\ndef quadruple(x):\n    return double(x)\n```")
    looping = humaneval.HumanEval(timeout=1.0)
    res = looping.run(second, "def add(x, y):\n    while True:\n        pass")
    assert res.timed_out and not looping.evaluate(second, "def add(x, y):\n    while True:\n        pass")
