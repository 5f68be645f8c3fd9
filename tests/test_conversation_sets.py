"""
The hub conversation sets (nanochat.tasks.conversation_sets): downloaded from a local server shaped like
huggingface.co's resolve/<revision>/ URLs, serving small files this test writes with malformed rows among
good ones; the mapping to our format, the skip counts, the gated set's token message, and --mixture with
the new names feeding a short chat_sft run.
"""
import io
import json
import os
import re
import zipfile
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nanochat.common import UserError
from nanochat.tasks import conversation_sets as cs
from nanochat.tokenizer import validate_conversation
from helpers import HubServer, hub_path


def put(root, name, remote, rows=None, data=None):
    """Write a set's file where the hub serves it: parquet from rows, or raw bytes."""
    spec = cs.SETS[name]
    path = hub_path(root, spec["repo"], remote, spec.get("revision", "main"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if rows is not None:
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        open(path, "wb").write(data)

# -----------------------------------------------------------------------------
# the remote files: good rows and malformed ones, with the reasons the loader must count


P1, P2 = "I love cats.\nI live in Ohio.", "I am a chef.\nI like hiking."
PERSONA_TRAIN = [  # (Best Generated Conversation, expected messages or the skip reason)
    ("User 1: Hi! Do you cook?\nUser 2: Yes, I am a chef.\nI cook every day.\nUser 1: Nice.\nUser 2: Thanks!",
     [("system", "Your persona:\n" + P2), ("user", "Hi! Do you cook?"), ("assistant", "Yes, I am a chef.\nI cook every day."),
      ("user", "Nice."), ("assistant", "Thanks!")]),
    ("Conversation:\nUser 2: Hello.\nUser 1: Hi.\nUser 2: Bye.",  # User 2 opens: they are the user, User 1 answers
     [("system", "Your persona:\n" + P1), ("user", "Hello."), ("assistant", "Hi.")]),
    ("", "empty text"),
    (None, "no conversation"),
    ("User 1: a\nUser 1: b\nUser 2: c", "wrong role order"),
    ("User 1: hi\nUser 2:   ", "empty text"),
    ("User 1: anyone there?", "no reply"),
    ("just some text", "no 'User 1:'/'User 2:' lines"),
]


def persona_rows(cases):
    return [{"user 1 personas": P1, "user 2 personas": P2, "Best Generated Conversation": text} for text, _ in cases]


def dialogue(split, *utterances, speakers=None):
    speakers = speakers or ["user", "system"] * len(utterances)
    return {"dataset": "dailydialog", "data_split": split, "dialogue_id": f"dailydialog-{split}-x", "domains": ["ordinary"],
            "turns": [{"speaker": s, "utterance": u, "utt_idx": i, "emotion": "no emotion"}
                      for i, (s, u) in enumerate(zip(speakers, utterances))]}


DAILY = [  # (dialogue, expected messages or the skip reason)
    (dialogue("train", "Hi, how are you?", "Fine, thanks."), [("user", "Hi, how are you?"), ("assistant", "Fine, thanks.")]),
    (dialogue("train", "Lunch?", "Sure.", "Noon?"), [("user", "Lunch?"), ("assistant", "Sure.")]),
    (dialogue("train", "Hello.", "Hi.", speakers=["system", "user"]), "wrong role order"),
    (dialogue("train", "Hello.", 123), "non-string content"),
    (dialogue("train", "Hello.", "  "), "empty text"),
    ({"data_split": "train", "dialogue_id": "no-turns"}, "no conversation"),
    (dialogue("validation", "Not in train.", "Nor in test."), None),
    (dialogue("test", "Where is the bank?", "On Main Street."), [("user", "Where is the bank?"), ("assistant", "On Main Street.")]),
]


def convlab_zip(dialogues):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("data/dialogues.json", json.dumps(dialogues))
        z.writestr("data/ontology.json", "{}")
    return buf.getvalue()


LMSYS_ODD = {3: "not English", 100: "not English", 57: "not English", 5: "flagged by moderation",
             8: "non-string content", 9: "wrong role order", 150: "unknown role", 201: "empty text"}


def lmsys_row(i):
    reason = LMSYS_ODD.get(i)
    conv = [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}]
    if reason == "non-string content":
        conv[1]["content"] = None
    if reason == "wrong role order":
        conv = conv[::-1]
    if reason == "unknown role":
        conv[1]["role"] = "gpt"
    if reason == "empty text":
        conv[0]["content"] = " \n"
    return {"conversation_id": f"c{i}", "model": "vicuna-13b", "conversation": conv, "turn": 1,
            "language": "Spanish" if reason == "not English" else "English", "redacted": False,
            "openai_moderation": [{"categories": {"sexual": False}, "category_scores": {"sexual": 0.01},
                                   "flagged": reason == "flagged by moderation"}] * 2}


MAGPIE_TRAIN = [  # (row, expected messages or the skip reason); an embedding column the loader must not hold
    ({"messages": [{"role": "system", "content": "You are a math tutor."}, {"role": "user", "content": "2+2?"},
                   {"role": "assistant", "content": "4."}, {"role": "user", "content": "And 3+3?"},
                   {"role": "assistant", "content": "6."}], "instruction": "2+2?", "response": "4."},
     [("system", "You are a math tutor."), ("user", "2+2?"), ("assistant", "4."), ("user", "And 3+3?"), ("assistant", "6.")]),
    ({"messages": None, "instruction": "Name a color.", "response": "Blue."}, [("user", "Name a color."), ("assistant", "Blue.")]),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "tool", "content": "x"}], "instruction": "hi", "response": ""},
     "unknown role"),
    ({"messages": [], "instruction": "q", "response": "a"}, "no conversation"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}], "instruction": "q", "response": ""},
     "empty text"),
]


def magpie_rows(cases):
    return [{**row, "embedding": [0.5] * 16, "category": "math"} for row, _ in cases]


def as_messages(pairs):
    return [{"role": r, "content": c} for r, c in pairs]


def expected_counts(cases):
    return Counter(e for _, e in cases if isinstance(e, str))


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A local hub holding all four sets (lmsys gated by the token 'hf_good'); NANOCHAT_BASE_DIR is tmp_path/base."""
    root = str(tmp_path / "remote")
    put(root, "persona-chat", "default/train/0000.parquet", persona_rows(PERSONA_TRAIN))
    put(root, "persona-chat", "default/test/0000.parquet", persona_rows(PERSONA_TRAIN[:2]))
    put(root, "dailydialog", "data.zip", data=convlab_zip([d for d, _ in DAILY]))
    for k, remote in enumerate(cs.LMSYS_FILES):  # 6 files of 50 rows: global rows 0..299
        put(root, "lmsys-chat", remote, [lmsys_row(i) for i in range(50 * k, 50 * k + 50)])
    for remote in cs.SETS["magpie-ultra"]["files"]["train"]:
        put(root, "magpie-ultra", remote, magpie_rows(MAGPIE_TRAIN))
    put(root, "magpie-ultra", cs.SETS["magpie-ultra"]["files"]["test"][0], magpie_rows(MAGPIE_TRAIN[:1]))
    server = HubServer(root, gated={"lmsys/lmsys-chat-1m": "hf_good"})
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path / "base"))
    monkeypatch.setenv("NANOCHAT_HF_URL", server.url)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    yield server
    server.close()

# -----------------------------------------------------------------------------
# each set: download, mapping, skip counts


def test_persona_chat_from_the_parquet_conversion_branch(hub, tmp_path, capsys):
    with pytest.raises(UserError, match="not downloaded.*conversation_sets persona-chat"):
        cs.ConversationSet("persona-chat", "train")
    paths = cs.download_set("persona-chat", "train")
    assert paths == [str(tmp_path / "base" / "datasets" / "Synthetic-Persona-Chat" / "default" / "train" / "0000.parquet")]
    assert hub.paths("google/Synthetic-Persona-Chat") == [
        "/datasets/google/Synthetic-Persona-Chat/resolve/refs%2Fconvert%2Fparquet/default/train/0000.parquet"]
    task = cs.ConversationSet("persona-chat", "train")
    good = [as_messages(e) for _, e in PERSONA_TRAIN if isinstance(e, list)]
    assert [c["messages"] for c in task] == good
    assert task.skipped == expected_counts(PERSONA_TRAIN)
    out = capsys.readouterr().out
    assert "persona-chat train: 2 conversations (skipped: 2 empty text, 1 no conversation," in out
    # once downloaded, asking again fetches nothing
    cs.download_set("persona-chat", "train")
    assert len(hub.paths("google/Synthetic-Persona-Chat")) == 1


def test_dailydialog_from_convlab_zip_by_split(hub):
    cs.download_set("dailydialog", "train")
    cs.download_set("dailydialog", "test")
    assert len(hub.paths("ConvLab/dailydialog")) == 1  # one data.zip holds every split
    train, test = cs.ConversationSet("dailydialog", "train"), cs.ConversationSet("dailydialog", "test")
    expected = {s: [as_messages(e) for d, e in DAILY if isinstance(e, list) and d["data_split"] == s] for s in ("train", "test")}
    assert [c["messages"] for c in train] == expected["train"] and [c["messages"] for c in test] == expected["test"]
    assert train.skipped == expected_counts([(d, e) for d, e in DAILY if d["data_split"] == "train"])
    assert not test.skipped  # the validation dialogue is in neither split
    for c in train:
        validate_conversation(c)


def test_magpie_ultra_maps_messages_or_instruction_and_response(hub):
    cs.download_set("magpie-ultra", "train")
    cs.download_set("magpie-ultra", "test")
    train = cs.ConversationSet("magpie-ultra", "train")
    good = [as_messages(e) for _, e in MAGPIE_TRAIN if isinstance(e, list)]
    n_files = len(cs.SETS["magpie-ultra"]["files"]["train"])
    assert [c["messages"] for c in train] == good * n_files
    assert train.skipped == Counter({r: c * n_files for r, c in expected_counts(MAGPIE_TRAIN).items()})
    assert all("embedding" not in b.schema.names for b in train.blocks)  # only the columns it maps are held
    assert len(cs.ConversationSet("magpie-ultra", "test")) == 1


def test_lmsys_gated_without_a_token_says_how_to_get_access(hub, monkeypatch, capsys):
    with pytest.raises(UserError, match="not downloaded.*HF_TOKEN"):
        cs.ConversationSet("lmsys-chat", "train")
    with pytest.raises(UserError) as e:
        cs.download_set("lmsys-chat", "train")
    msg = str(e.value)
    assert "gated" in msg and "HF_TOKEN" in msg and "https://huggingface.co/datasets/lmsys/lmsys-chat-1m" in msg
    assert "\n" not in msg and not hub.paths("lmsys/lmsys-chat-1m")  # said before asking the server
    with pytest.raises(SystemExit):
        cs.main(["lmsys-chat"])
    err = capsys.readouterr().err
    assert err.startswith("error: lmsys/lmsys-chat-1m is gated") and err.count("\n") == 1
    # a token the hub refuses (401 or 403) gives the same message and leaves no file behind
    for token in ("hf_expired", "hf_bad"):
        monkeypatch.setenv("HF_TOKEN", token)
        with pytest.raises(UserError, match="is gated: log in at .* set HF_TOKEN"):
            cs.download_set("lmsys-chat", "train", max_attempts=1)
    assert not os.path.exists(cs.data_dir("lmsys-chat")) or not any(
        f for _, _, files in os.walk(cs.data_dir("lmsys-chat")) for f in files)


def test_lmsys_with_a_token_filters_counts_and_holds_out_every_100th(hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_good")
    cs.download_set("lmsys-chat", "train")
    assert {auth for _, auth in hub.requests} == {"Bearer hf_good"}
    assert len(hub.paths("lmsys/lmsys-chat-1m")) == len(cs.LMSYS_FILES)
    monkeypatch.delenv("HF_TOKEN")  # loading needs no token
    train, test = cs.ConversationSet("lmsys-chat", "train"), cs.ConversationSet("lmsys-chat", "test")
    good = lambda rows: [[{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}]
                         for i in rows if i not in LMSYS_ODD]
    assert [c["messages"] for c in train] == good(i for i in range(300) if i % 100)
    assert [c["messages"] for c in test] == good(range(0, 300, 100))
    assert train.skipped == Counter(r for i, r in LMSYS_ODD.items() if i % 100)
    assert test.skipped == Counter(r for i, r in LMSYS_ODD.items() if i % 100 == 0)


def test_a_bad_file_from_the_server_is_not_kept(hub, tmp_path):
    put(hub.root, "persona-chat", "default/test/0000.parquet", data=b"<html>rate limited</html>")
    with pytest.raises(UserError, match="not a parquet file"):
        cs.download_set("persona-chat", "test", max_attempts=1)
    local = cs.local_path("persona-chat", "default/test/0000.parquet")
    assert not os.path.exists(local) and not os.path.exists(local + ".part")


def test_mapping_rules():
    assert cs.conversation([("user", " hi "), ("assistant", "yo")], system="  ") == as_messages([("user", "hi"), ("assistant", "yo")])
    for turns, reason in [([("assistant", "a")], "wrong role order"), ([("user", "a"), ("user", "b")], "wrong role order"),
                          ([("user", ["a"])], "non-string content"), ([], "no reply"), ([("user", "q")], "no reply"),
                          ([("system", "s"), ("user", "q")], "unknown role")]:
        with pytest.raises(cs.Skip, match=re.escape(reason)):
            cs.conversation(turns)
    with pytest.raises(cs.Skip, match="non-string content"):
        cs.from_messages([{"role": "system", "content": 5}, {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}])
    with pytest.raises(cs.Skip, match="malformed message"):
        cs.from_messages(["user: hi"])
    assert cs.resolve("ConvLab/dailydialog") == "dailydialog"
    with pytest.raises(ValueError, match="unknown conversation set"):
        cs.resolve("dailydialogue")

# -----------------------------------------------------------------------------
# --mixture with the new names, and SFT on them


@pytest.mark.slow
def test_mixture_of_the_new_sets_trains_a_chat_sft_step(hub, tmp_path, monkeypatch):
    from conftest import TEXT, make_tiny_model
    from helpers import run_script
    from nanochat.tasks.mixture import parse_mixture
    from nanochat.tokenizer import Tokenizer, render_conversation
    monkeypatch.setenv("HF_TOKEN", "hf_good")
    for name in cs.SETS:
        cs.download_set(name, "train")
        cs.download_set(name, "test")
    spec = "persona-chat:1,ConvLab/dailydialog:1,lmsys-chat:1,magpie-ultra:1"
    mix = parse_mixture(spec, 40)
    assert mix.counts() == [10, 10, 10, 10]
    base = tmp_path / "base"
    tok = Tokenizer.train_from_iterator(iter([TEXT * 5]), vocab_size=300)
    tok.save(str(base / "tokenizer"))
    for conv in mix:
        ids, mask = render_conversation(tok, conv)
        assert any(mask)  # every conversation trains on an assistant reply
    make_tiny_model(str(base), tok, "base", "t1", 0, "chatty", sequence_len=64)
    p = run_script(base, "scripts.chat_sft", "--device_type", "cpu", "--mixture", spec, "--num_iterations", "2",
                   "--num_conversations", "40", "--device_batch_size", "2", "--max_seq_len", "64",
                   "--eval_conversations", "8", "--eval_every", "0", timeout=240)
    out = p.stdout
    for name in cs.SETS:
        assert re.search(rf"^{name} train: [\d,]+ conversations \(skipped: ", out, re.M), out
    assert "10, 10, 10, 10 by task" in out
    losses = [float(x) for x in re.findall(r"^step \d+/\d+ \| loss: ([\d.]+)", out, re.M)]
    assert len(losses) == 2 and all(0 < x < 20 for x in losses), out
    assert (base / "chatsft_checkpoints" / "t1").is_dir()
