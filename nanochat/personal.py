"""
The user's own data as plain-text documents for pretraining, to be mixed into every batch so the
model picks up their voice. By file type:

    .txt .md        paragraphs grouped into documents (nanochat.user_text.text_documents); a text
                    file holding <|im_start|> blocks is ChatML conversations instead
    .vtt            transcript samples (nanochat.transcripts)
    .jsonl .json    lines with "text": one document each (scripts.process_transcripts writes these);
                    lines with "messages" (or a bare list): conversations

A conversation becomes one document, its ChatML text (<|im_start|>user\\n...<|im_end|>\\n...), so
pretraining on it teaches the shape of the user's exchanges; the assistant's tool calls are
left out, only its text parts are kept. Folders are walked recursively in sorted order; files
of other types in them are skipped, and so are README files, which describe a folder rather
than being the user's words (name one directly to use it).
"""
import json
import os

from nanochat.common import UserError
from nanochat.user_text import TEXT_EXTENSIONS, text_documents

EXTENSIONS = TEXT_EXTENSIONS + (".vtt", ".jsonl", ".json")


def _files(paths):
    files = []
    for path in paths:
        path = os.fspath(path)
        if os.path.isdir(path):
            for root, dirs, names in os.walk(path):
                dirs.sort()
                files += [os.path.join(root, n) for n in sorted(names)
                          if n.lower().endswith(EXTENSIONS) and not n.lower().startswith("readme")]
        elif os.path.isfile(path):
            if not path.lower().endswith(EXTENSIONS):
                raise UserError(f"{path}: not a personal data file (use {', '.join(EXTENSIONS)})")
            files.append(path)
        else:
            raise UserError(f"{path}: no such file or folder")
    return files


def chatml(conversation):
    """A conversation as one ChatML text; an assistant message made of parts keeps its text parts."""
    blocks = []
    for msg in conversation["messages"]:
        content = msg["content"]
        if isinstance(content, list):
            content = "".join(part["text"] for part in content if part.get("type") == "text")
        blocks.append(f"<|im_start|>{msg['role']}\n{content.strip()}<|im_end|>")
    return "\n".join(blocks)


def _jsonl_documents(text, name):
    from nanochat.tasks.custom import parse_jsonl
    lines = [(i, line) for i, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines:
        return []
    try:
        first = json.loads(lines[0][1])
    except json.JSONDecodeError as e:
        raise UserError(f"{name}:{lines[0][0]}: not valid JSON: {e.msg}") from None
    if not (isinstance(first, dict) and "text" in first):
        return [chatml(c) for c in parse_jsonl(text, name)]
    docs = []  # a file of {"text": ...} lines: every line must be one
    for i, line in lines:
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{name}:{i}: not valid JSON: {e.msg}") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            raise UserError(f"{name}:{i}: expected an object with a \"text\" string, like the lines before it")
        if obj["text"].strip():
            docs.append(obj["text"].strip())
    return docs


def file_documents(path, sample_words=200, max_turns=8):
    """The documents of one file (see the module docstring); UserError naming it when it is broken."""
    from nanochat.tasks.custom import parse_chatml
    from nanochat.transcripts import transcript_samples
    name, lower = os.path.basename(path), path.lower()
    if lower.endswith(".vtt"):
        try:
            return [s.text for s in transcript_samples(path, sample_words, name=name)]
        except ValueError as e:
            raise UserError(str(e)) from None
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    if lower.endswith((".jsonl", ".json")):
        return _jsonl_documents(text, name)
    if "<|im_start|>" in text:
        return [chatml(c) for c in parse_chatml(text, max_turns, name)]
    return text_documents([path])


def personal_documents(paths, sample_words=200, max_turns=8):
    """
    Documents (strings) from files or folders of personal data, in file order. Raises UserError
    (one line naming the file) for a missing path, a broken file, or when nothing usable is found.
    """
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    docs = []
    for path in _files(paths):
        docs += file_documents(path, sample_words, max_turns)
    if not docs:
        shown = " ".join(os.fspath(p) for p in paths)
        raise UserError(f"no personal documents in {shown} (looked for {', '.join(EXTENSIONS)} files with text in them)")
    return docs


def describe(docs):
    """A one-line summary for logs: "123 documents, 45,678 characters"."""
    n_chars = sum(len(d) for d in docs)
    return f"{len(docs):,d} document{'s' if len(docs) != 1 else ''}, {n_chars:,d} characters"
