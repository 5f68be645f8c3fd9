"""
BPE tokenizer: trained with rustbpe, encoded and decoded with tiktoken.
Saved as tokenizer/tokenizer.pkl (a pickled tiktoken.Encoding, the same file nanochat writes)
and tokenizer/token_bytes.pt (bytes per token id, 0 for special tokens; used for bits per byte).
Special tokens are only ever produced by encode_special(): text that merely contains a special
token's spelling is encoded as ordinary text.
"""
import os
import pickle

import torch

SPECIAL_TOKENS = [
    "<|bos|>",  # every document begins with it
    "<|user_start|>", "<|user_end|>",
    "<|assistant_start|>", "<|assistant_end|>",
    "<|python_start|>", "<|python_end|>",  # the assistant calls the calculator tool
    "<|output_start|>", "<|output_end|>",  # the tool's output, forced into the stream
]

# GPT-4's split pattern, with numbers split into groups of at most two digits (as nanochat does:
# better for small vocabularies)
SPLIT_PATTERN = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""


class Tokenizer:
    def __init__(self, enc):
        self.enc = enc
        self.bos_token_id = self.encode_special("<|bos|>")

    @classmethod
    def train_from_iterator(cls, text_iterator, vocab_size):
        """Train BPE on an iterator of strings; vocab_size counts the special tokens too."""
        import rustbpe
        import tiktoken
        n_merge_vocab = vocab_size - len(SPECIAL_TOKENS)
        if n_merge_vocab < 256:
            raise ValueError(f"vocab_size must be at least {256 + len(SPECIAL_TOKENS)} (256 bytes + special tokens), got {vocab_size}")
        bpe = rustbpe.Tokenizer()
        bpe.train_from_iterator(text_iterator, n_merge_vocab, pattern=SPLIT_PATTERN)
        mergeable_ranks = {bytes(k): v for k, v in bpe.get_mergeable_ranks()}
        offset = len(mergeable_ranks)
        special = {name: offset + i for i, name in enumerate(SPECIAL_TOKENS)}
        enc = tiktoken.Encoding(name="nanochat_bpe", pat_str=bpe.get_pattern(),
                                mergeable_ranks=mergeable_ranks, special_tokens=special)
        return cls(enc)

    @classmethod
    def from_directory(cls, tokenizer_dir):
        path = os.path.join(tokenizer_dir, "tokenizer.pkl")
        if not os.path.exists(path):
            raise FileNotFoundError(f"no tokenizer at {path}: train one with `python -m scripts.tok_train`")
        with open(path, "rb") as f:
            enc = pickle.load(f)
        return cls(enc)

    def save(self, tokenizer_dir):
        os.makedirs(tokenizer_dir, exist_ok=True)
        path = os.path.join(tokenizer_dir, "tokenizer.pkl")
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            pickle.dump(self.enc, f)
        os.replace(tmp, path)
        return path

    # -------------------------------------------------------------------------

    def get_vocab_size(self):
        return self.enc.n_vocab

    def get_special_tokens(self):
        return self.enc.special_tokens_set

    def get_bos_token_id(self):
        return self.bos_token_id

    def encode_special(self, name):
        return self.enc.encode_single_token(name)

    def id_to_token(self, token_id):
        return self.enc.decode_single_token_bytes(token_id).decode("utf-8", errors="replace")

    def encode(self, text, prepend=None, append=None, num_threads=8):
        """
        Encode a string (-> list of ids) or a list of strings (-> list of lists), never producing
        special tokens from the text. prepend/append: a special token name or id to add.
        """
        def as_id(tok):
            return tok if isinstance(tok, int) else self.encode_special(tok)
        pre = [as_id(prepend)] if prepend is not None else []
        post = [as_id(append)] if append is not None else []
        if isinstance(text, str):
            return pre + self.enc.encode_ordinary(text) + post
        if isinstance(text, (list, tuple)):
            batch = self.enc.encode_ordinary_batch(list(text), num_threads=num_threads)
            return [pre + ids + post for ids in batch]
        raise TypeError(f"encode() takes a string or a list of strings, not {type(text).__name__}")

    def __call__(self, *args, **kwargs):
        return self.encode(*args, **kwargs)

    def decode(self, ids):
        return self.enc.decode(ids)

    def decode_bytes(self, ids):
        """Raw bytes of a token sequence (a partial UTF-8 character stays partial)."""
        return self.enc.decode_bytes(ids)


def compute_token_bytes(tokenizer):
    """Length in bytes of each token id; 0 for special tokens so they do not count in bits per byte."""
    special = {tokenizer.encode_special(s) for s in tokenizer.get_special_tokens()}
    sizes = [0 if i in special else len(tokenizer.enc.decode_single_token_bytes(i))
             for i in range(tokenizer.get_vocab_size())]
    return torch.tensor(sizes, dtype=torch.int32)


def get_tokenizer_dir():
    from nanochat.common import get_base_dir
    return os.path.join(get_base_dir(), "tokenizer")


def get_tokenizer():
    return Tokenizer.from_directory(get_tokenizer_dir())


def get_token_bytes(device="cpu"):
    path = os.path.join(get_tokenizer_dir(), "token_bytes.pt")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no {path}: train a tokenizer with `python -m scripts.tok_train`")
    return torch.load(path, map_location=device)


# -----------------------------------------------------------------------------
# conversations
# A conversation is {"messages": [{"role": ..., "content": ...}, ...]}: an optional "system"
# message first, then "user" and "assistant" alternating, starting with user. An assistant's
# content is a string or a list of parts {"type": "text" | "python" | "python_output", "text": ...}
# (a calculator call and the output the tool gave). Only what the assistant writes is trained.

def validate_conversation(conversation):
    messages = conversation.get("messages") if isinstance(conversation, dict) else conversation
    if not isinstance(messages, list) or not messages:
        raise ValueError("a conversation needs a non-empty list of messages")
    if messages[0].get("role") == "system":
        messages = messages[1:]
        if not messages:
            raise ValueError("a conversation needs a user message after the system message")
    for i, msg in enumerate(messages):
        expected = "user" if i % 2 == 0 else "assistant"
        if not isinstance(msg, dict) or msg.get("role") != expected:
            got = msg.get("role") if isinstance(msg, dict) else type(msg).__name__
            raise ValueError(f"message {i + 1}: expected role {expected!r}, got {got!r} (roles must alternate user/assistant)")
        content = msg.get("content")
        if not isinstance(content, (str, list)):
            raise ValueError(f"message {i + 1}: content must be a string or a list of parts")
        if isinstance(content, list):
            if expected != "assistant":
                raise ValueError(f"message {i + 1}: only assistant messages may have parts")
            for part in content:
                if not isinstance(part, dict) or part.get("type") not in ("text", "python", "python_output"):
                    raise ValueError(f"message {i + 1}: a part must be {{'type': 'text'|'python'|'python_output', 'text': ...}}")
    return conversation.get("messages") if isinstance(conversation, dict) else conversation


def render_conversation(tokenizer, conversation, max_tokens=2048):
    """
    Token ids and a loss mask of the same length (1 = train on this token). Assistant text, tool
    calls and <|assistant_end|> are trained; the user's words, tool outputs and markers are not.
    Truncated to max_tokens.
    """
    messages = list(validate_conversation(conversation))
    if messages[0]["role"] == "system":
        # no system token: the system text goes in front of the first user message
        messages = [dict(role="user", content=messages[0]["content"] + "\n\n" + messages[1]["content"])] + messages[2:]
    ids, mask = [], []
    def add(token_ids, m):
        token_ids = [token_ids] if isinstance(token_ids, int) else token_ids
        ids.extend(token_ids)
        mask.extend([m] * len(token_ids))
    sp = tokenizer.encode_special
    add(tokenizer.get_bos_token_id(), 0)
    for msg in messages:
        if msg["role"] == "user":
            add(sp("<|user_start|>"), 0)
            add(tokenizer.encode(msg["content"]), 0)
            add(sp("<|user_end|>"), 0)
        else:
            add(sp("<|assistant_start|>"), 0)
            content = msg["content"]
            parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
            for part in parts:
                text_ids = tokenizer.encode(part["text"])
                if part["type"] == "text":
                    add(text_ids, 1)
                elif part["type"] == "python":
                    add(sp("<|python_start|>"), 1)
                    add(text_ids, 1)
                    add(sp("<|python_end|>"), 1)
                else:  # the tool's output is forced in at inference time: not the model's to learn
                    add(sp("<|output_start|>"), 0)
                    add(text_ids, 0)
                    add(sp("<|output_end|>"), 0)
            add(sp("<|assistant_end|>"), 1)
    return ids[:max_tokens], mask[:max_tokens]


def render_for_completion(tokenizer, conversation):
    """Token ids that prime an assistant reply: the conversation (minus a final assistant message) + <|assistant_start|>."""
    messages = list(validate_conversation(conversation))
    if messages[-1]["role"] == "assistant":
        messages = messages[:-1]
    ids, _ = render_conversation(tokenizer, {"messages": messages}, max_tokens=10**9)
    return ids + [tokenizer.encode_special("<|assistant_start|>")]
