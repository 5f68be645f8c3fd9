"""
Your own conversations, from a JSONL file or a ChatML text file.

JSONL (.jsonl or .json): one conversation per line, {"messages": [{"role": "user", "content": ...},
{"role": "assistant", "content": ...}, ...]} (or just the list); an optional system message first,
then user and assistant alternating. A malformed line is an error that names the line.

ChatML (any other file): messages written as
    <|im_start|>user
    hi, how was the trip?<|im_end|>
    <|im_start|>assistant
    great! tell you all about it tomorrow<|im_end|>
Conversations are cut apart
- at a blank line between two messages, and
- before every system message (a system message always opens a conversation).
Text messages are messy, so inside a conversation: consecutive messages of the same role are
joined with newlines, messages before the first user message are dropped, as is a last user
message that got no reply, and a conversation longer than max_turns exchanges is split into
pieces of max_turns (each piece keeps the system message). Roles other than system, user and
assistant, and text outside the blocks, are errors that name the line.
"""
import json
import os
import re

from nanochat.common import UserError
from nanochat.tasks import Task
from nanochat.tokenizer import validate_conversation

ROLES = ("system", "user", "assistant")
BLOCK = re.compile(r"<\|im_start\|>(.*?)\n(.*?)<\|im_end\|>", re.S)


def _line(text, pos):
    return text.count("\n", 0, pos) + 1


def parse_chatml(text, max_turns=8, name="<text>"):
    """ChatML text -> list of conversations (see the module docstring for the rules)."""
    raw, current, pos = [], [], 0
    for m in BLOCK.finditer(text):
        between = text[pos:m.start()]
        if between.strip():
            raise UserError(f"{name}:{_line(text, pos + len(between) - len(between.lstrip()))}: text outside "
                            f"<|im_start|>...<|im_end|>: {between.strip()[:40]!r}")
        role = m.group(1).strip().lower()
        if role not in ROLES:
            raise UserError(f"{name}:{_line(text, m.start())}: unknown role {role!r} (use system, user or assistant)")
        blank_line = "\n\n" in re.sub(r"[ \t\r]", "", between)
        if current and (blank_line or role == "system"):
            raw.append(current)
            current = []
        current.append((role, m.group(2).strip()))
        pos = m.end()
    tail = text[pos:]
    if tail.strip():
        raise UserError(f"{name}:{_line(text, pos + len(tail) - len(tail.lstrip()))}: text outside "
                        f"<|im_start|>...<|im_end|>: {tail.strip()[:40]!r}")
    if current:
        raw.append(current)
    conversations = []
    for messages in raw:
        conversations.extend(_normalise(messages, max_turns))
    return conversations


def _normalise(messages, max_turns):
    system = messages[0][1] if messages[0][0] == "system" else None
    merged = []
    for role, content in messages:
        if role == "system":
            continue
        if merged and merged[-1]["role"] == role:
            merged[-1]["content"] += "\n" + content
        else:
            merged.append({"role": role, "content": content})
    while merged and merged[0]["role"] != "user":
        merged.pop(0)
    if merged and merged[-1]["role"] == "user":
        merged.pop()
    pieces = []
    for i in range(0, len(merged), 2 * max_turns):
        piece = merged[i:i + 2 * max_turns]
        if system:
            piece = [{"role": "system", "content": system}] + piece
        pieces.append({"messages": piece})
    return pieces


def parse_jsonl(text, name="<text>"):
    conversations = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{name}:{i}: not valid JSON: {e.msg}") from None
        conversation = {"messages": obj} if isinstance(obj, list) else obj
        try:
            validate_conversation(conversation)
        except (ValueError, AttributeError) as e:
            raise UserError(f"{name}:{i}: {e}") from None
        conversations.append({"messages": conversation["messages"]})
    return conversations


class CustomChat(Task):
    """
    The conversations of a JSONL or ChatML file, all in memory. split "train" / "test" holds out
    every 20th conversation for "test" (when there are at least 20); None: all of them.
    """
    def __init__(self, path, split=None, max_turns=8):
        if not os.path.isfile(path):
            raise UserError(f"no such file: {path}")
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
        name = os.path.basename(path)
        if path.endswith((".jsonl", ".json")):
            self.conversations = parse_jsonl(text, name)
        elif "<|im_start|>" in text:
            self.conversations = parse_chatml(text, max_turns, name)
        else:
            raise UserError(f"{path}: neither JSONL (.jsonl) nor ChatML (<|im_start|>role ... <|im_end|>)")
        if not self.conversations:
            raise UserError(f"{path}: no conversation with an assistant reply in it")
        if split is not None and len(self.conversations) >= 20:
            held_out = [i % 20 == 19 for i in range(len(self.conversations))]
            self.conversations = [c for c, h in zip(self.conversations, held_out) if h == (split == "test")]
        self.path = path

    def __len__(self):
        return len(self.conversations)

    def __getitem__(self, index):
        return self.conversations[index]
