"""Personal data as pretraining documents: text, transcripts, JSONL texts and conversations, ChatML, folders."""
import json

import pytest

from nanochat.common import UserError
from nanochat.personal import chatml, describe, personal_documents

VTT = ("WEBVTT\nKind: captions\n\n00:00:00.000 --> 00:00:01.000\n[Music]\n\n"
       "00:00:01.000 --> 00:00:02.000\n \nso<00:00:01.300><c> today</c>\n\n"
       "00:00:02.000 --> 00:00:02.010\nso today\n \n\n"
       "00:00:02.010 --> 00:00:03.000\nso today\nwe<00:00:02.300><c> bake</c>\n\n"
       "00:00:06.000 --> 00:00:07.000\n \nthen we eat\n")
CHATML = ("<|im_start|>user\nhi, how was the trip?<|im_end|>\n<|im_start|>assistant\ngreat! tell you tomorrow<|im_end|>\n\n"
          "<|im_start|>user\nlunch?<|im_end|>\n<|im_start|>assistant\nsure<|im_end|>\n")
CONVERSATION = {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "2+2?"},
                             {"role": "assistant", "content": [{"type": "text", "text": "Let me add. "},
                                                               {"type": "python", "text": "2+2"},
                                                               {"type": "python_output", "text": "4"},
                                                               {"type": "text", "text": "It is 4."}]}]}


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_text_files_become_paragraph_documents(tmp_path):
    path = write(tmp_path / "notes.md", "first paragraph\n\nsecond one\n\n\n")
    assert personal_documents(path) == ["first paragraph\n\nsecond one"]


def test_vtt_becomes_transcript_samples(tmp_path):
    path = write(tmp_path / "talk.vtt", VTT)
    assert personal_documents(str(path)) == ["so today we bake\n\nthen we eat"]
    assert personal_documents(str(path), sample_words=4) == ["so today we bake", "then we eat"]


def test_jsonl_texts_one_document_each(tmp_path):
    rows = [{"text": "one sample", "source": "a.vtt", "start": 0.0}, {"text": "  "}, {"text": "two\n\nparas"}]
    path = write(tmp_path / "transcripts.jsonl", "".join(json.dumps(r) + "\n" for r in rows) + "\n")
    assert personal_documents(path) == ["one sample", "two\n\nparas"]


def test_jsonl_conversations_become_chatml(tmp_path):
    path = write(tmp_path / "chats.jsonl", json.dumps(CONVERSATION) + "\n" +
                 json.dumps([{"role": "user", "content": "yo"}, {"role": "assistant", "content": "hey"}]) + "\n")
    assert personal_documents(path) == [
        "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n"
        "<|im_start|>assistant\nLet me add. It is 4.<|im_end|>",
        "<|im_start|>user\nyo<|im_end|>\n<|im_start|>assistant\nhey<|im_end|>",
    ]


def test_chatml_text_file(tmp_path):
    path = write(tmp_path / "texts.txt", CHATML)
    assert personal_documents(path) == [
        "<|im_start|>user\nhi, how was the trip?<|im_end|>\n<|im_start|>assistant\ngreat! tell you tomorrow<|im_end|>",
        "<|im_start|>user\nlunch?<|im_end|>\n<|im_start|>assistant\nsure<|im_end|>",
    ]
    assert chatml({"messages": [{"role": "user", "content": " a \n"}, {"role": "assistant", "content": "b"}]}) == \
        "<|im_start|>user\na<|im_end|>\n<|im_start|>assistant\nb<|im_end|>"


def test_folder_mixing_formats_in_sorted_order(tmp_path):
    root = tmp_path / "me"
    write(root / "b_talk.vtt", VTT)
    write(root / "a_notes.txt", "a note")
    write(root / "c" / "chats.txt", CHATML)
    write(root / "c" / "samples.jsonl", json.dumps({"text": "from jsonl"}) + "\n")
    write(root / "photo.jpg", "not text")
    write(root / "empty.md", "\n\n")
    write(root / "README.md", "what this folder is")  # describes the folder: skipped in a walk
    docs = personal_documents([root])
    assert docs == ["a note", "so today we bake\n\nthen we eat",
                    "<|im_start|>user\nhi, how was the trip?<|im_end|>\n<|im_start|>assistant\ngreat! tell you tomorrow<|im_end|>",
                    "<|im_start|>user\nlunch?<|im_end|>\n<|im_start|>assistant\nsure<|im_end|>",
                    "from jsonl"]
    # a list of paths: in the order given
    assert personal_documents([root / "c" / "samples.jsonl", root / "a_notes.txt"]) == ["from jsonl", "a note"]
    assert personal_documents(root / "README.md") == ["what this folder is"]
    assert describe(docs) == f"5 documents, {sum(len(d) for d in docs):,d} characters"
    assert describe(["x" * 1234]) == "1 document, 1,234 characters"


@pytest.mark.parametrize("name, text, message", [
    ("bad.vtt", "not captions", r"^bad.vtt:1: not a WebVTT file"),
    ("bad.jsonl", '{"text": "ok"}\n{"messages": []}\n', r"^bad.jsonl:2: expected an object with a \"text\" string"),
    ("bad.json", '{"text": "ok"\n', r"^bad.json:1: not valid JSON"),
    ("chats.jsonl", '[{"role": "assistant", "content": "hi"}]\n', r"^chats.jsonl:1: message 1: expected role 'user'"),
    ("chats.txt", "<|im_start|>friend\nhi<|im_end|>\n", r"^chats.txt:1: unknown role 'friend'"),
])
def test_broken_files_are_named(tmp_path, name, text, message):
    write(tmp_path / "data" / name, text)
    with pytest.raises(UserError, match=message):
        personal_documents(tmp_path / "data")


def test_missing_path_unknown_type_and_nothing_usable(tmp_path):
    with pytest.raises(UserError, match=r"nowhere: no such file or folder"):
        personal_documents(tmp_path / "nowhere")
    with pytest.raises(UserError, match=r"photo.jpg: not a personal data file"):
        personal_documents(write(tmp_path / "photo.jpg", "x"))
    write(tmp_path / "empty" / "blank.txt", "  \n")
    write(tmp_path / "empty" / "music.vtt", "WEBVTT\n\n00:00:00.000 --> 00:00:01.000\n[Music]\n")
    with pytest.raises(UserError, match=r"^no personal documents in .*empty"):
        personal_documents(tmp_path / "empty")
