"""
The built-in corpus: pretraining text every Python install carries, plus generated exercises,
built offline in seconds into $NANOCHAT_BASE_DIR/builtin_data/ (`python -m nanochat.dataset --builtin`).

    documentation  the docstrings of the standard library (parsed with ast, never imported) and
                   the pydoc help topics (the language reference), in a seeded random order
    exercises      arithmetic, counting, brackets, lists, sorting, copying, ListOps (nanochat.exercises)

Deterministic for a given Python install. Library API: build_builtin(out_dir, total_chars, ...).
"""
import ast
import os
import random
import sysconfig
import warnings

from nanochat.common import get_base_dir
from nanochat.shard_writer import write_shards

SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__", "encodings"}
DOC_CHARS = 8000  # cut long module docs into documents of about this size


def _stdlib_files():
    stdlib = sysconfig.get_paths()["stdlib"]
    files = []
    for root, dirs, names in os.walk(stdlib):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
        files += [os.path.join(root, n) for n in sorted(names) if n.endswith(".py")]
    return stdlib, files


def _docstrings(tree):
    """(qualified name, docstring) of the classes, functions and methods of a module, in source order."""
    def visit(body, prefix):
        for node in body:
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                name = prefix + node.name + ("()" if not isinstance(node, ast.ClassDef) else "")
                doc = ast.get_docstring(node)
                if doc:
                    yield name, doc
                if isinstance(node, ast.ClassDef):
                    yield from visit(node.body, prefix + node.name + ".")
    yield from visit(tree.body, "")


def _chunk_sections(title, sections, doc_chars=DOC_CHARS):
    """Join "## heading\\n\\ntext" sections under a "# title" header, cut into documents of ~doc_chars."""
    docs, current = [], []
    for section in sections:
        current.append(section)
        if sum(len(s) for s in current) >= doc_chars:
            docs.append(f"# {title}\n\n" + "\n\n".join(current))
            current = []
    if current:
        docs.append(f"# {title}\n\n" + "\n\n".join(current))
    return docs


def stdlib_module_docs(path, stdlib, seen):
    """The docstrings of one stdlib file as documents, parsed with ast (never imported)."""
    module = os.path.relpath(path, stdlib)[:-3].replace(os.sep, ".").removesuffix(".__init__")
    try:
        with open(path, "rb") as f:
            source = f.read()
        with warnings.catch_warnings():  # invalid escape sequences in old files warn on 3.12+
            warnings.simplefilter("ignore")
            tree = ast.parse(source)
    except (SyntaxError, ValueError, OSError):
        return []
    sections = []
    module_doc = ast.get_docstring(tree)
    if module_doc and module_doc not in seen:
        seen.add(module_doc)
        sections.append(module_doc)
    for name, doc in _docstrings(tree):
        # skip one-word stubs and docstrings copied between classes ("Return self.")
        if len(doc) >= 12 and doc not in seen:
            seen.add(doc)
            sections.append(f"## {name}\n\n{doc}")
    return _chunk_sections(module, sections) if sections else []


def topic_docs(key, text):
    """One pydoc help topic (the language reference) as documents, cut on paragraphs."""
    return _chunk_sections(f"Python help: {key}", [p for p in text.split("\n\n") if p.strip()])


def build_builtin(out_dir=None, total_chars=4_000_000, doc_fraction=0.6, seed=42, shard_chars=1_000_000):
    """
    Build the offline corpus. Documentation (stdlib docstrings and pydoc topics, taken in a
    seeded random order) fills up to doc_fraction of total_chars (all of it is only ~2.3 MB);
    generated exercises fill the rest. Deterministic for a given Python install.
    Returns (written shards as write_shards gives them, documentation chars, exercise chars).
    """
    from pydoc_data.topics import topics  # a dict of strings: data, safe to import
    from nanochat.exercises import exercise_document
    out_dir = out_dir or os.path.join(get_base_dir(), "builtin_data")
    rng = random.Random(seed)
    stdlib, files = _stdlib_files()
    units = [("file", f) for f in files] + [("topic", k) for k in sorted(topics)]
    rng.shuffle(units)
    docs, n_chars, seen = [], 0, set()
    doc_budget = doc_fraction * total_chars
    for kind, item in units:
        if n_chars >= doc_budget:
            break
        new = stdlib_module_docs(item, stdlib, seen) if kind == "file" else topic_docs(item, topics[item])
        docs += new
        n_chars += sum(len(d) for d in new)
    n_doc_chars = n_chars
    while n_chars < total_chars:
        doc = exercise_document(rng, rng.randint(8, 32))
        docs.append(doc)
        n_chars += len(doc)
    rng.shuffle(docs)
    written = write_shards(docs, out_dir, shard_chars=shard_chars)
    return written, n_doc_chars, n_chars - n_doc_chars
