"""
The user's own text as pretraining data: .txt/.md files, or folders of them, turned into shards
in $NANOCHAT_BASE_DIR/text_data/NAME/, then trained on with `--data NAME`:

    python -m nanochat.dataset --text notes/ diary.md --name me [--split_by paragraphs|file] [--doc_chars 2000]

Library API: text_documents(paths, split_by, doc_chars) (also used by nanochat.personal),
build_text(paths, name, ...).
"""
import os
import random
import re

from nanochat.common import UserError, get_base_dir
from nanochat.shard_writer import write_shards

TEXT_EXTENSIONS = (".txt", ".md", ".markdown", ".text")


def _text_files(paths):
    files = []
    for path in paths:
        if os.path.isdir(path):
            for root, dirs, names in os.walk(path):
                dirs.sort()
                files += [os.path.join(root, n) for n in sorted(names) if n.lower().endswith(TEXT_EXTENSIONS)]
        elif os.path.isfile(path):
            if not path.lower().endswith(TEXT_EXTENSIONS):
                raise UserError(f"{path}: --text takes .txt and .md files (or folders of them)")
            files.append(path)
        else:
            raise UserError(f"{path}: no such file or folder")
    if not files:
        raise UserError(f"no .txt or .md files found in {' '.join(paths)}")
    return files


def text_documents(paths, split_by="paragraphs", doc_chars=2000):
    """
    Documents from .txt/.md files or folders: split_by="file" makes one document per file;
    "paragraphs" splits on blank lines and groups consecutive paragraphs into documents of
    about doc_chars characters (a paragraph longer than that stays whole).
    """
    docs = []
    for path in _text_files(paths):
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read().replace("\r\n", "\n").strip()
        if not text:
            continue
        if split_by == "file":
            docs.append(text)
            continue
        current = ""
        for para in re.split(r"\n\s*\n", text):
            para = para.strip()
            if current and len(current) + len(para) > doc_chars:
                docs.append(current)
                current = ""
            current = f"{current}\n\n{para}" if current else para
        if current:
            docs.append(current)
    return docs


def build_text(paths, name, split_by="paragraphs", doc_chars=2000, seed=42):
    """The documents of `paths` as shards in text_data/NAME/, shuffled. Returns (written, out_dir)."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name.startswith("."):
        raise UserError(f"--name {name!r}: use letters, digits, '_', '-' and '.' only")
    docs = text_documents(paths, split_by, doc_chars)
    # shuffle so that validation is a fair sample, not the end of the last file
    random.Random(seed).shuffle(docs)
    out_dir = os.path.join(get_base_dir(), "text_data", name)
    return write_shards(docs, out_dir), out_dir
