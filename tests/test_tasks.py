"""
Conversation data: built-in exercises and chat, mixtures, the user's ChatML/JSONL files, SmolTalk
downloaded from a local HTTP server, and the ARC/MMLU/GSM8K readers.
"""
import json
import os
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nanochat.calculator import calculate
from nanochat.common import UserError
from nanochat.exercises import KINDS
from nanochat.tasks import arc, gsm8k, mmlu, smoltalk
from nanochat.tasks.builtin import ChatBasics, ExerciseChat, exercise_key, exercise_set
from nanochat.tasks.custom import CustomChat, parse_chatml, parse_jsonl
from nanochat.tasks.mixture import TaskMixture, parse_mixture, parse_spec
from nanochat.tokenizer import validate_conversation
from helpers import HubServer, hub_path

# -----------------------------------------------------------------------------
# built-in


def test_exercise_chat_is_deterministic_valid_and_exact():
    task = ExerciseChat(200, "train", seed=3)
    again = ExerciseChat(200, "train", seed=3)
    assert [task[i] for i in range(20)] == [again[i] for i in range(20)]
    assert task[0] != ExerciseChat(200, "train", seed=4)[0]
    kinds = set()
    for conv in task:
        validate_conversation(conv)
        kinds.add(conv["kind"])
        reply = conv["messages"][-1]["content"]
        if conv["kind"] in ("addition", "subtraction", "multiplication"):
            # the calculator call computes exactly the answer the assistant then gives
            assert [p["type"] for p in reply] == ["python", "python_output", "text"]
            assert calculate(reply[0]["text"]) == reply[1]["text"] == reply[2]["text"] == conv["answer"]
        else:
            assert reply == conv["answer"]
    assert kinds == set(KINDS)
    assert any(len(c["messages"]) > 2 for c in task)  # some multi-turn
    with pytest.raises(ValueError):
        ExerciseChat(1, kinds=["telepathy"])


def test_train_and_test_exercises_never_share_a_question():
    test = exercise_set("addition", 2, 200)
    train = ExerciseChat(3000, "train", kinds=["addition"], difficulties=[2], multi_turn=0.0)
    test_keys = {exercise_key("addition", c["messages"][0]["content"]) for c in test}
    train_keys = {exercise_key("addition", c["messages"][0]["content"]) for c in train}
    assert test_keys and not test_keys & train_keys
    # the key ignores the wording and the order of the operands
    assert exercise_key("addition", "What is 47 + 38?") == exercise_key("addition", "Add 38 and 47.")
    assert all(c["difficulty"] == 2 and c["kind"] == "addition" for c in test)
    assert ExerciseChat(1).evaluate({"answer": "85"}, " 85.") and not ExerciseChat(1).evaluate({"answer": "85"}, "58")


def test_chat_basics():
    task = ChatBasics(100, seed=1)
    texts = []
    for conv in task:
        validate_conversation(conv)
        texts += [m["content"] for m in conv["messages"] if m["role"] == "assistant" and isinstance(m["content"], str)]
    assert any("nanochat" in t for t in texts)

# -----------------------------------------------------------------------------
# mixtures


def test_mixture_weights_and_determinism():
    a, b = ExerciseChat(50, seed=1), ChatBasics(10)
    m = TaskMixture([a, b], weights=[3, 1], size=400, seed=5)
    assert len(m) == 400 and m.counts() == [300, 100]
    assert [m[i] for i in range(30)] == [TaskMixture([a, b], [3, 1], 400, seed=5)[i] for i in range(30)]
    assert [m[i] for i in range(30)] != [TaskMixture([a, b], [3, 1], 400, seed=6)[i] for i in range(30)]
    # without weights: every conversation exactly once
    full = TaskMixture([a, b], seed=0)
    assert len(full) == 60 and sorted(zip(full.task_ids.tolist(), full.item_ids.tolist())) == \
        [(0, i) for i in range(50)] + [(1, i) for i in range(10)]
    # a task smaller than its share is gone through more than once, evenly
    m = TaskMixture([b], [1], size=35)
    assert sorted(m.item_ids.tolist().count(i) for i in range(10)) == [3] * 5 + [4] * 5


def test_parse_mixture():
    assert parse_spec("exercises:6, chat:1,exercises.addition.2") == [("exercises", 6.0), ("chat", 1.0), ("exercises.addition.2", 1.0)]
    m = parse_mixture("exercises.addition.2:3,chat:1", 100)
    assert m.counts() == [75, 25]
    assert all(m[i]["kind"] == "addition" for i in range(100) if m.task_ids[i] == 0)
    direct = parse_mixture("exercises.addition@direct", 5)
    assert all(isinstance(direct[i]["messages"][-1]["content"], str) for i in range(5))  # no calculator call
    for bad in ["nonsense:1", "exercises.addition.x", "exercises:-1", ""]:
        with pytest.raises(ValueError):
            parse_mixture(bad, 10)

# -----------------------------------------------------------------------------
# the user's own data

CHATML = """<|im_start|>system
You are Ann.<|im_end|>
<|im_start|>user
hi<|im_end|>
<|im_start|>user
how was the trip?<|im_end|>
<|im_start|>assistant
great!<|im_end|>
<|im_start|>user
photos?<|im_end|>
<|im_start|>assistant
tomorrow<|im_end|>

<|im_start|>assistant
(a message nobody asked for)<|im_end|>
<|im_start|>user
lunch?<|im_end|>
<|im_start|>assistant
yes, noon<|im_end|>
<|im_start|>user
(never answered)<|im_end|>
<|im_start|>system
New chat.<|im_end|>
<|im_start|>user
ping<|im_end|>
<|im_start|>assistant
pong<|im_end|>
"""


def test_chatml_rules():
    convs = parse_chatml(CHATML)
    assert [[(m["role"], m["content"]) for m in c["messages"]] for c in convs] == [
        [("system", "You are Ann."), ("user", "hi\nhow was the trip?"), ("assistant", "great!"), ("user", "photos?"), ("assistant", "tomorrow")],
        [("user", "lunch?"), ("assistant", "yes, noon")],
        [("system", "New chat."), ("user", "ping"), ("assistant", "pong")],
    ]
    for c in convs:
        validate_conversation(c)
    # long conversations are split into pieces of max_turns exchanges, each with the system message
    long = "<|im_start|>system\nS<|im_end|>\n" + "".join(
        f"<|im_start|>user\nq{i}<|im_end|>\n<|im_start|>assistant\na{i}<|im_end|>\n" for i in range(5))
    pieces = parse_chatml(long, max_turns=2)
    assert [len(p["messages"]) for p in pieces] == [5, 5, 3] and all(p["messages"][0]["content"] == "S" for p in pieces)


def test_chatml_errors_name_the_line():
    with pytest.raises(UserError, match=r"f.txt:3: unknown role 'robot'"):
        parse_chatml("<|im_start|>user\nhi<|im_end|>\n<|im_start|>robot\nbeep<|im_end|>", name="f.txt")
    with pytest.raises(UserError, match=r"f.txt:3: text outside"):
        parse_chatml("<|im_start|>user\nhi<|im_end|>\nstray text\n", name="f.txt")


def test_custom_files(tmp_path):
    jsonl = tmp_path / "c.jsonl"
    good = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    jsonl.write_text(json.dumps(good) + "\n\n" + json.dumps(good["messages"]) + "\n")
    assert len(CustomChat(str(jsonl))) == 2 and CustomChat(str(jsonl))[1] == good
    jsonl.write_text(json.dumps(good) + "\n" + json.dumps({"messages": [{"role": "assistant", "content": "b"}]}) + "\n")
    with pytest.raises(UserError, match=r"c.jsonl:2: message 1: expected role 'user'"):
        CustomChat(str(jsonl))
    jsonl.write_text("{not json\n")
    with pytest.raises(UserError, match=r"c.jsonl:1: not valid JSON"):
        CustomChat(str(jsonl))
    chatml = tmp_path / "chats.txt"
    chatml.write_text(CHATML)
    assert len(CustomChat(str(chatml))) == 3
    # in a mixture, by path; every 20th conversation is held out once there are 20
    many = tmp_path / "many.jsonl"
    many.write_text("\n".join(json.dumps(good) for _ in range(40)))
    assert len(CustomChat(str(many), "train")) == 38 and len(CustomChat(str(many), "test")) == 2
    assert parse_mixture(f"exercises:1,{many}:1", 10).counts() == [5, 5]
    with pytest.raises(UserError):
        CustomChat(str(tmp_path / "missing.jsonl"))
    (tmp_path / "plain.txt").write_text("just some text")
    with pytest.raises(UserError, match="neither JSONL"):
        CustomChat(str(tmp_path / "plain.txt"))

# -----------------------------------------------------------------------------
# SmolTalk over HTTP, eval sets from local files


def _write_parquet(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def test_smoltalk_download_and_read(tmp_path, monkeypatch):
    base, remote = tmp_path / "base", tmp_path / "remote"
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(base))
    conv = lambda i: {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
    _write_parquet(hub_path(remote, smoltalk.REPO, "data/test-00000-of-00001.parquet"), [conv(i) for i in range(7)])
    with pytest.raises(UserError, match="not downloaded"):
        smoltalk.SmolTalk("test")
    server = HubServer(remote)
    try:
        monkeypatch.setenv("NANOCHAT_HF_URL", server.url)
        monkeypatch.setenv("HF_TOKEN", "secret")
        paths = smoltalk.download_split("test")
        assert paths == [str(base / "datasets" / "smol-smoltalk" / "test-00000-of-00001.parquet")]
        assert server.requests[-1][1] == "Bearer secret"
        assert not any(p.endswith(".part") for p in os.listdir(base / "datasets" / "smol-smoltalk"))
        task = smoltalk.SmolTalk("test")
        assert len(task) == 7 and task[3] == conv(3)
        # the train files are not on the server: a clear error, no partial file left behind
        from nanochat.download import DownloadError
        with pytest.raises(DownloadError, match="404"):
            smoltalk.download_split("train", max_attempts=1)
        assert not os.path.exists(smoltalk.local_path(smoltalk.FILES["train"][0]))
    finally:
        server.close()


def test_eval_sets_from_local_files(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path))
    with pytest.raises(UserError, match="chat_eval --download"):
        arc.ARC("Easy", "test")
    ed = tmp_path / "eval_data"
    _write_parquet(str(ed / "arc" / arc.remote("Easy", "test")), [
        {"id": "1", "question": "Which is a metal?", "choices": {"text": ["wood", "iron", "glass"], "label": ["A", "B", "C"]}, "answerKey": "B"},
        {"id": "2", "question": "Pick 3.", "choices": {"text": ["1", "2", "3", "4"], "label": ["1", "2", "3", "4"]}, "answerKey": "3"},
    ])
    _write_parquet(str(ed / "mmlu" / mmlu.remote("test")), [
        {"question": "2+2?", "subject": "elementary_mathematics", "choices": ["3", "4", "5", "6"], "answer": 1}])
    _write_parquet(str(ed / "gsm8k" / gsm8k.remote("test")), [
        {"question": "Half of 48?", "answer": "She sold 48/2 = <<48/2=24>>24 clips.\n#### 24"}])
    a = arc.ARC("Easy", "test")
    assert len(a) == 2 and a[0]["answer"] == "B" and a[1]["answer"] == "C" and a[1]["letters"] == ["A", "B", "C", "D"]
    assert "B) iron" in a[0]["messages"][0]["content"] and a.evaluate(a[0], " b.") and not a.evaluate(a[0], "A")
    m = mmlu.MMLU("test")
    assert m[0]["answer"] == "B" and "elementary mathematics" in m[0]["messages"][0]["content"]
    g = gsm8k.GSM8K("test")
    conv = g[0]
    validate_conversation(conv)
    assert conv["messages"][1]["content"] == [
        {"type": "text", "text": "She sold 48/2 = "}, {"type": "python", "text": "48/2"},
        {"type": "python_output", "text": "24"}, {"type": "text", "text": "24 clips.\n#### 24"}]
    assert g.evaluate(conv, "so #### 24") and g.evaluate(conv, "#### 24.0") and not g.evaluate(conv, "24")
