"""
More conversation data from the Hugging Face hub for mid-training and SFT, by name in --mixture:

    persona-chat   google/Synthetic-Persona-Chat  ~9K train / ~1K test chats between two personas (the hub's
                                                  parquet conversion of its CSV files)
    dailydialog    ConvLab/dailydialog            ~11K train / 1K test everyday dialogues written by people
                                                  (ConvLab's data.zip: JSON, not parquet)
    lmsys-chat     lmsys/lmsys-chat-1m            1M real conversations with 25 chat models; gated (accept its terms,
                                                  set HF_TOKEN); English ones that moderation did not flag are kept,
                                                  every 100th held out as the test split
    magpie-ultra   argilla/magpie-ultra-v1.0      synthetic multi-turn chats by Llama-3.1-405B (its
                                                  top_500k_shorter_conversations config)

    python -m nanochat.tasks.conversation_sets dailydialog persona-chat   # download once (both splits)
    python -m nanochat.tasks.conversation_sets all --split test          # the test files of every set
    python -m nanochat.tasks.conversation_sets --list                    # what is downloaded

Files go to $NANOCHAT_BASE_DIR/datasets/<repo name>/<path on the hub>, through nanochat.tasks.download
(.part files renamed when complete and resumed after an interruption; HF_TOKEN sent when set;
NANOCHAT_HF_URL replaces https://huggingface.co). Where the hub's layout changes, fix the file lists in
SETS below: they are the only place that names them.

Every row becomes our conversation format (nanochat.tokenizer): an optional system message (a persona or a
system prompt, which the tokenizer puts in front of the first user message), then user and assistant
alternating, starting with user; a last user message with no reply is dropped. A row that cannot be mapped
(empty text, wrong role order, non-string content, ...) is skipped and counted by reason, and the counts are
printed when the set loads.
"""
import bisect
import json
import os
import re
import time
from collections import Counter

import numpy as np

from nanochat.common import ArgumentParser, UserError, die, get_base_dir, print0
from nanochat.tasks import Task, download

# -----------------------------------------------------------------------------
# mapping rows to conversations


class Skip(Exception):
    """A row that cannot be mapped to a conversation; the message is the reason it is counted under."""


def conversation(turns, system=None):
    """[(role, text), ...] -> our messages: text stripped, user/assistant alternating from user, a last user
    turn with no reply dropped, a non-empty system text first. Raises Skip."""
    messages = []
    for role, text in turns:
        if role not in ("user", "assistant"):
            raise Skip("unknown role")
        if role != ("user" if len(messages) % 2 == 0 else "assistant"):
            raise Skip("wrong role order")
        if not isinstance(text, str):
            raise Skip("non-string content")
        if not text.strip():
            raise Skip("empty text")
        messages.append({"role": role, "content": text.strip()})
    if messages and messages[-1]["role"] == "user":
        messages.pop()
    if not messages:
        raise Skip("no reply")
    if system is not None and not isinstance(system, str):
        raise Skip("non-string content")
    if system and system.strip():
        messages.insert(0, {"role": "system", "content": system.strip()})
    return messages


def from_messages(messages):
    """A list of {role, content} (an optional system message first), as most hub chat sets store it."""
    if not isinstance(messages, list) or not messages:
        raise Skip("no conversation")
    if not all(isinstance(m, dict) for m in messages):
        raise Skip("malformed message")
    system = None
    if messages[0].get("role") == "system":
        system, messages = messages[0].get("content"), messages[1:]
    return conversation([(m.get("role"), m.get("content")) for m in messages], system)


SPEAKER = re.compile(r"^\s*User ([12])\s*:\s?(.*)$")


def persona_chat(row):
    """'Best Generated Conversation': lines 'User 1: ...' / 'User 2: ...' (a line without a speaker continues
    the turn before it). The first speaker is the user; the other's persona is the system text."""
    text = row.get("Best Generated Conversation")
    if text is None:
        raise Skip("no conversation")
    if not isinstance(text, str):
        raise Skip("non-string content")
    turns = []  # [speaker, text]
    for line in text.splitlines():
        m = SPEAKER.match(line)
        if m:
            turns.append([m.group(1), m.group(2)])
        elif line.strip() and turns:
            turns[-1][1] += "\n" + line.strip()
    if not turns:
        raise Skip("empty text" if not text.strip() else "no 'User 1:'/'User 2:' lines")
    first = turns[0][0]
    persona = row.get(f"user {'2' if first == '1' else '1'} personas")
    system = f"Your persona:\n{persona.strip()}" if isinstance(persona, str) and persona.strip() else None
    return conversation([("user" if speaker == first else "assistant", t) for speaker, t in turns], system)


def dailydialog(row):
    """ConvLab's unified format: turns of {speaker: user | system, utterance}; the system speaker answers."""
    turns = row.get("turns")
    if not isinstance(turns, list) or not turns:
        raise Skip("no conversation")
    if not all(isinstance(t, dict) for t in turns):
        raise Skip("malformed message")
    speaker = {"user": "user", "system": "assistant"}
    return conversation([(speaker.get(t.get("speaker"), t.get("speaker")), t.get("utterance")) for t in turns])


LMSYS_LANGUAGES = ("English",)  # the tokenizer and the models here are English


def lmsys_filter(table):
    """Per row of an lmsys table, why it is left out before mapping (None: kept). Computed on the arrow
    columns: a million rows of moderation records are too slow to turn into Python objects."""
    import pyarrow as pa
    import pyarrow.compute as pc
    n, names = len(table), table.column_names
    english = np.ones(n, dtype=bool)
    if "language" in names:
        english = pc.fill_null(pc.is_in(table.column("language"), value_set=pa.array(LMSYS_LANGUAGES)), False)
        english = english.combine_chunks().to_numpy(zero_copy_only=False)
    flagged = np.zeros(n, dtype=bool)
    if "openai_moderation" in names:
        moderation = table.column("openai_moderation").combine_chunks()  # per row, a record per message
        by_message = pc.fill_null(pc.struct_field(pc.list_flatten(moderation), "flagged"), False)
        rows = pc.list_parent_indices(moderation).to_numpy()
        flagged = np.bincount(rows[by_message.to_numpy(zero_copy_only=False)], minlength=n) > 0
    return np.where(~english, "not English", np.where(flagged, "flagged by moderation", None))


def lmsys(row):
    return from_messages(row.get("conversation"))


def magpie(row):
    """A messages/conversation list where the config has one, else the first turn's instruction and response."""
    for column in ("messages", "conversation"):
        if row.get(column) is not None:
            return from_messages(row[column])
    return conversation([("user", row.get("instruction")), ("assistant", row.get("response"))])

# -----------------------------------------------------------------------------
# the sets: where their files are on the hub, and how their rows map

LMSYS_FILES = [f"data/train-{i:05d}-of-00006-{h}.parquet" for i, h in enumerate([
    "4feeb3f83346a0e9", "4030672591c2f478", "1779b7cec9462180", "2fa862bfed56af1f", "18f4bdd50c103e71", "fe1acc5d10a9f0e2"])]
MAGPIE_DIR = "top_500k_shorter_conversations"

SETS = {
    "persona-chat": dict(
        repo="google/Synthetic-Persona-Chat", revision="refs/convert/parquet", format="parquet",
        files={"train": ["default/train/0000.parquet"], "test": ["default/test/0000.parquet"]},
        columns=["user 1 personas", "user 2 personas", "Best Generated Conversation"], to_messages=persona_chat),
    "dailydialog": dict(
        repo="ConvLab/dailydialog", format="convlab-zip", files={"train": ["data.zip"], "test": ["data.zip"]},
        to_messages=dailydialog),
    "lmsys-chat": dict(
        repo="lmsys/lmsys-chat-1m", format="parquet", gated=True, holdout_every=100,
        files={"train": LMSYS_FILES, "test": LMSYS_FILES}, columns=["conversation"],
        filter_columns=["language", "openai_moderation"], filter=lmsys_filter, to_messages=lmsys),
    "magpie-ultra": dict(
        repo="argilla/magpie-ultra-v1.0", format="parquet",
        files={"train": [f"{MAGPIE_DIR}/train-{i:05d}-of-00006.parquet" for i in range(6)],
               "test": [f"{MAGPIE_DIR}/test-00000-of-00001.parquet"]},
        columns=["messages", "conversation", "instruction", "response"], to_messages=magpie),
}
BY_REPO = {spec["repo"]: name for name, spec in SETS.items()}  # the hub name works in a mixture too


def resolve(name):
    """A set's short name (or its hub repo id) -> its short name; ValueError for anything else."""
    if name in SETS or name in BY_REPO:
        return BY_REPO.get(name, name)
    raise ValueError(f"unknown conversation set {name!r}: use one of {', '.join(SETS)}")


def data_dir(name):
    return os.path.join(get_base_dir(), "datasets", SETS[name]["repo"].split("/")[1])


def local_path(name, remote):
    return os.path.join(data_dir(name), *remote.split("/"))


def is_downloaded(name, split="train"):
    return all(os.path.exists(local_path(name, f)) for f in SETS[name]["files"][split])


def gated_message(name):
    repo = SETS[name]["repo"]
    return (f"{repo} is gated: log in at https://huggingface.co/datasets/{repo} and accept its terms, make a read "
            f"token at https://huggingface.co/settings/tokens, then set HF_TOKEN=<token> and run "
            f"`python -m nanochat.tasks.conversation_sets {name}` again")


def _check_file(path):
    """A complaint when a download is not the file it should be (an error page saved as data, say), else None."""
    import zipfile
    if path.endswith(".zip.part"):
        return None if zipfile.is_zipfile(path) else "not a zip file"
    if os.path.getsize(path) < 8:
        return "not a parquet file"
    with open(path, "rb") as f:
        head = f.read(4)
        f.seek(-4, os.SEEK_END)
        tail = f.read(4)
    return None if head == tail == b"PAR1" else "not a parquet file"


def download_set(name, split="train", progress_every=10.0, **kwargs):
    """Download the split's files (those already there are kept); returns their paths. Raises UserError."""
    from nanochat.download import DownloadError
    name, spec = resolve(name), SETS[resolve(name)]
    todo = [f for f in dict.fromkeys(spec["files"][split]) if not os.path.exists(local_path(name, f))]
    if todo and spec.get("gated") and not os.environ.get("HF_TOKEN"):
        raise UserError(gated_message(name))
    for remote in todo:
        t0 = last = time.time()
        received = 0

        def on_bytes(n):
            nonlocal last, received
            received += n
            if time.time() - last >= progress_every:
                last = time.time()
                print0(f"  {remote}: {received / 1e6:,.1f} MB received ({received / 1e6 / (last - t0):.1f} MB/s)")

        print0(f"downloading {spec['repo']}/{remote}")
        try:
            download(spec["repo"], remote, local_path(name, remote), revision=spec.get("revision", "main"),
                     on_bytes=on_bytes, validate=_check_file, **kwargs)
        except DownloadError as e:
            if spec.get("gated") and re.search(r"HTTP 40[13]\b", str(e)):
                raise UserError(gated_message(name)) from None
            raise UserError(f"{spec['repo']}: {e}; run the same command again to resume") from None
    return [local_path(name, f) for f in spec["files"][split]]

# -----------------------------------------------------------------------------
# reading


def _read_files(spec, paths, split):
    """Per file: (its rows, as an arrow table of the mapped columns or a list of dicts; for each row, why it is
    left out before mapping, or None when the set has no such filter)."""
    if spec["format"] == "convlab-zip":
        yield _convlab_rows(paths[0], split), None
        return
    import pyarrow.parquet as pq
    for path in paths:
        names = pq.read_schema(path).names
        columns = [c for c in spec["columns"] if c in names]
        table = pq.read_table(path, columns=columns + [c for c in spec.get("filter_columns", []) if c in names])
        yield table.select(columns), spec["filter"](table) if "filter" in spec else None


def _convlab_rows(path, split):
    """ConvLab's data.zip: data/dialogues.json, every dialogue of every split, each with its data_split."""
    import zipfile
    try:
        with zipfile.ZipFile(path) as z:
            dialogues = json.loads(z.read("data/dialogues.json"))
    except (zipfile.BadZipFile, KeyError, ValueError) as e:
        raise UserError(f"{path} is not a ConvLab data.zip ({e}): delete it and download again") from None
    return [d for d in dialogues if isinstance(d, dict) and d.get("data_split") == split]


def _take(rows, indices):
    return [rows[j] for j in indices] if isinstance(rows, list) else rows.take(np.array(indices, dtype=np.int64))


def _keep(rows, indices):
    """The rows at the (sorted) indices; a boolean filter, as arrow's take copies nested columns ~10x slower."""
    if isinstance(rows, list):
        return [rows[j] for j in indices]
    import pyarrow as pa
    mask = np.zeros(len(rows), dtype=bool)
    mask[np.array(indices, dtype=np.int64)] = True
    return rows.filter(pa.array(mask))


class ConversationSet(Task):
    """
    One split of one set. Loading reads its files, maps every row once (counting those skipped) and keeps
    the rows that map, as read (arrow tables, or dicts for DailyDialog); task[i] maps the row again.
    """
    def __init__(self, name, split="train"):
        name = resolve(name)
        spec = SETS[name]
        if split not in spec["files"]:
            raise ValueError(f"{name} split must be train or test, got {split!r}")
        if not is_downloaded(name, split):
            hint = f"; it is gated, so accept its terms at https://huggingface.co/datasets/{spec['repo']} and set HF_TOKEN first" \
                if spec.get("gated") else ""
            raise UserError(f"{name} {split} is not downloaded: run `python -m nanochat.tasks.conversation_sets {name}` "
                            f"(needs internet) or leave {name} out of the mixture{hint}")
        paths = [local_path(name, f) for f in spec["files"][split]]
        self.name, self.to_messages = name, spec["to_messages"]
        self.blocks, self.starts, self.skipped, self.size = [], [], Counter(), 0
        every, seen = spec.get("holdout_every"), 0
        t0 = last = time.time()
        for k, (rows, reasons) in enumerate(_read_files(spec, paths, split), 1):
            # every `every`-th row (counting across files) is the test split's, the others are train's
            todo = [j for j in range(len(rows)) if not every or ((seen + j) % every == 0) == (split == "test")]
            seen += len(rows)
            if reasons is not None:
                self.skipped.update(reasons[j] for j in todo if reasons[j] is not None)
                todo = [j for j in todo if reasons[j] is None]
            kept = []
            for at in range(0, len(todo), 8192):  # a slice at a time, as Python objects
                chunk = todo[at:at + 8192]
                got = _take(rows, chunk)
                for j, row in zip(chunk, got if isinstance(got, list) else got.to_pylist()):
                    try:
                        self.to_messages(row)
                        kept.append(j)
                    except Skip as e:
                        self.skipped[str(e)] += 1
            self.blocks.append(_keep(rows, kept))
            self.starts.append(self.size)
            self.size += len(kept)
            if time.time() - last >= 10 and k < len(paths):
                last = time.time()
                print0(f"  {name} {split}: {k}/{len(paths)} files read, {self.size:,d} conversations so far")
        skipped = ", ".join(f"{c:,d} {reason}" for reason, c in self.skipped.most_common())
        print0(f"{name} {split}: {self.size:,d} conversations (skipped: {skipped or 'none'}) in {time.time() - t0:.1f}s")
        if not self.size:
            raise UserError(f"{name} {split}: no usable conversations in {data_dir(name)} (the files are not laid out "
                            f"as expected: see SETS in nanochat/tasks/conversation_sets.py)")

    def __len__(self):
        return self.size

    def __getitem__(self, index):
        if not 0 <= index < self.size:
            raise IndexError(index)
        b = bisect.bisect_right(self.starts, index) - 1
        block, j = self.blocks[b], index - self.starts[b]
        row = block[j] if isinstance(block, list) else block.slice(j, 1).to_pylist()[0]
        return {"messages": self.to_messages(row)}


def main(argv=None):
    parser = ArgumentParser(prog="python -m nanochat.tasks.conversation_sets",
                            description="Download conversation sets from the Hugging Face hub for mid-training and SFT "
                                        "(then name them in --mixture, e.g. 'exercises:6,chat:1,dailydialog:2').",
                            epilog="lmsys-chat is gated: accept its terms at https://huggingface.co/datasets/lmsys/lmsys-chat-1m "
                                   "and set HF_TOKEN to a read token from https://huggingface.co/settings/tokens.")
    parser.add_argument("names", nargs="*", help="sets to download: " + ", ".join(f"{n} ({spec['repo']})" for n, spec in SETS.items())
                        + ", or all")
    parser.add_argument("--split", type=str, default="all", choices=["all", "train", "test"], help="which split (default: both)")
    parser.add_argument("--list", action="store_true", help="show each set and whether it is downloaded")
    args = parser.parse_args(argv)
    if args.list or not args.names:
        for name, spec in SETS.items():
            state = ", ".join(f"{s} {'downloaded' if is_downloaded(name, s) else 'missing'}" for s in spec["files"])
            print0(f"{name:13s} {spec['repo']:30s} {state}{' (gated)' if spec.get('gated') else ''}")
        if not args.names:
            if not args.list:
                print0("name the sets to download (or all); --help for more")
            return
    try:
        names = list(SETS) if "all" in args.names else [resolve(n) for n in args.names]
        for name in names:
            for split in (["train", "test"] if args.split == "all" else [args.split]):
                download_set(name, split)
                ConversationSet(name, split)  # prints what it holds
    except (UserError, ValueError) as e:
        die(str(e))


if __name__ == "__main__":
    main()
