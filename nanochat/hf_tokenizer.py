"""
Our tokenizer in Hugging Face's format and back: tokenizer.json (a byte-level BPE that the
`tokenizers` library runs, loaded by AutoTokenizer as a fast tokenizer), tokenizer_config.json
(special tokens and a chat template that renders render_conversation's format), and the reverse,
tokenizer.json -> a tiktoken Encoding for our Tokenizer.

The BPE is tiktoken's, restated: vocab = the mergeable ranks (bytes shown through GPT-2's
byte-to-unicode table), split regex = our pattern, and a merge for every way a token splits into two
tokens, ordered by the token's rank. tiktoken merges whichever adjacent pair forms the lowest-ranked
token, so listing every split (not only the one training made) is what makes the two agree;
`ignore_merges` takes a whole pre-token that is itself a token directly, as tiktoken does.

Special tokens: ours only come from encode_special(); text that spells one is ordinary text. HF
tokenizers match added tokens in text unless asked not to (split_special_tokens=True), and a chat
template can only hand them over as text, so the exported tokenizer keeps HF's default
(split_special_tokens False: apply_chat_template gives render_conversation's ids) and our plain-text
behaviour is `tokenizer(text, split_special_tokens=True)`; apply_chat_template(...,
sanitize_control_tokens=True) keeps a message's own special-token spellings as text.
Nothing here imports transformers or tokenizers: the files are plain JSON.
"""
import json
import os

from nanochat.tokenizer import SPECIAL_TOKENS


def bytes_to_unicode():
    """GPT-2's table: each byte -> a printable unicode character (printable latin-1 stays itself)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _token_str(token_bytes, table):
    return "".join(table[b] for b in token_bytes)


def bpe_vocab_and_merges(mergeable_ranks):
    """tiktoken's {bytes: rank} -> ({token string: id}, [[left, right], ...]) for a BPE model."""
    table = bytes_to_unicode()
    vocab = {_token_str(tok, table): rank for tok, rank in mergeable_ranks.items()}
    merges = []
    for tok, rank in sorted(mergeable_ranks.items(), key=lambda kv: kv[1]):
        splits = [(tok[:i], tok[i:]) for i in range(1, len(tok)) if tok[:i] in mergeable_ranks and tok[i:] in mergeable_ranks]
        # within one token, the split of the older (lower-ranked) pieces first
        splits.sort(key=lambda lr: (mergeable_ranks[lr[0]], mergeable_ranks[lr[1]]))
        merges += [[_token_str(left, table), _token_str(right, table)] for left, right in splits]
    return vocab, merges


def tokenizer_json(tokenizer):
    """The tokenizer.json document (a dict) of our Tokenizer."""
    enc = tokenizer.enc
    vocab, merges = bpe_vocab_and_merges(enc._mergeable_ranks)
    added = [{"id": tokenizer.encode_special(name), "content": name, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for name in SPECIAL_TOKENS]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": enc._pat_str}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        ]},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
                  "vocab": vocab, "merges": merges},
    }


# The chat template: render_conversation's tokens as text. An optional system message goes in
# front of the first user message (system + "\n\n" + user); an assistant message is a string or a
# list of parts {"type": "text" | "python" | "python_output", "text": ...}.
CHAT_TEMPLATE = (
    "{{- '<|bos|>' -}}"
    "{%- set ns = namespace(system='') -%}"
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] == 'system' -%}"
    "{%- set ns.system = message['content'] + '\\n\\n' -%}"
    "{%- elif message['role'] == 'user' -%}"
    "{{- '<|user_start|>' + ns.system + message['content'] + '<|user_end|>' -}}"
    "{%- set ns.system = '' -%}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{- '<|assistant_start|>' -}}"
    "{%- if message['content'] is string -%}"
    "{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'python' -%}"
    "{{- '<|python_start|>' + part['text'] + '<|python_end|>' -}}"
    "{%- elif part['type'] == 'python_output' -%}"
    "{{- '<|output_start|>' + part['text'] + '<|output_end|>' -}}"
    "{%- else -%}"
    "{{- part['text'] -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|assistant_end|>' -}}"
    "{%- else -%}"
    "{{- raise_exception('roles must be system (first only), user, assistant; got ' + message['role']) -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|assistant_start|>' -}}"
    "{%- endif -%}"
)


def tokenizer_config(model_max_length):
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|bos|>",
        "eos_token": "<|assistant_end|>",
        # not <|assistant_end|>: collators that mask the pad id in labels would stop the model learning to stop
        "pad_token": "<|bos|>",
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
        "model_max_length": model_max_length,
        "chat_template": CHAT_TEMPLATE,
    }


def write_hf_tokenizer(tokenizer, out_dir, model_max_length):
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json into out_dir."""
    missing = [s for s in SPECIAL_TOKENS if s not in tokenizer.get_special_tokens()]
    if missing:
        raise ValueError(f"the tokenizer lacks the special token {missing[0]}")
    docs = {"tokenizer.json": tokenizer_json(tokenizer), "tokenizer_config.json": tokenizer_config(model_max_length),
            "special_tokens_map.json": {"bos_token": "<|bos|>", "eos_token": "<|assistant_end|>", "pad_token": "<|bos|>",
                                        "additional_special_tokens": SPECIAL_TOKENS[1:]}}
    for name, doc in docs.items():
        with open(os.path.join(out_dir, name), "w", encoding="utf-8") as f:
            json.dump(doc, f, ensure_ascii=False, indent=None if name == "tokenizer.json" else 2)


def read_hf_tokenizer(path):
    """
    tokenizer.json (ours, or another byte-level BPE with a Split regex, e.g. a nanochat model on the
    hub) -> our Tokenizer. Raises ValueError for a tokenizer of another kind or without our special tokens.
    """
    import tiktoken
    from nanochat.tokenizer import Tokenizer
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    model = doc.get("model") or {}
    if model.get("type") != "BPE":
        raise ValueError(f"{path}: a {model.get('type')} tokenizer, not a byte-level BPE")
    pre = doc.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    if kinds != ["Split", "ByteLevel"] or "Regex" not in steps[0].get("pattern", {}) or steps[1].get("add_prefix_space"):
        raise ValueError(f"{path}: pre-tokenizer {kinds} is not a split regex followed by byte-level (as tiktoken does)")
    if doc.get("normalizer"):
        raise ValueError(f"{path}: has a normalizer, which tiktoken cannot express")
    inverse = {c: b for b, c in bytes_to_unicode().items()}
    try:
        ranks = {bytes(inverse[c] for c in tok): i for tok, i in model["vocab"].items()}
    except KeyError:
        raise ValueError(f"{path}: a vocabulary entry is not byte-level text") from None
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ValueError(f"{path}: the BPE ids are not 0..{len(ranks) - 1}")
    merges = [m.split(" ") if isinstance(m, str) else list(m) for m in model.get("merges", [])]
    if merges != bpe_vocab_and_merges(ranks)[1]:
        raise ValueError(f"{path}: its merges are not the ones its vocabulary implies, so tiktoken would encode differently")
    special = {t["content"]: t["id"] for t in doc.get("added_tokens", [])}
    missing = [s for s in SPECIAL_TOKENS if s not in special]
    if missing:
        raise ValueError(f"{path}: no {missing[0]} token: not a nanochat tokenizer")
    enc = tiktoken.Encoding(name="nanochat_bpe", pat_str=steps[0]["pattern"]["Regex"], mergeable_ranks=ranks,
                            special_tokens={s: special[s] for s in SPECIAL_TOKENS})
    return Tokenizer(enc)
