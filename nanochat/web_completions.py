"""
Text in, text out, for base and chat models alike: OpenAI's (legacy) text completions and the
tokenizer's routes, on web_server's handler.

    POST /v1/completions   {"prompt", "max_tokens", "temperature", "top_p", "top_k", "stop", "seed",
                            "echo", "logprobs", "stream"} -> {"choices": [{"text", "logprobs", ...}], "usage"}
    POST /tokenize         {"text"} -> {"tokens": [{"id", "text", "bytes"}], "count"} (the tokenizer page);
                           {"prompt", "add_special_tokens"} -> {"tokens": [ids], "count"} (vLLM's form)
    POST /detokenize       {"tokens": [ids]} -> {"prompt"}
    GET  /tokenizer_info   the vocabulary's size and special tokens

A prompt is a string, a list of token ids, or a list of several of either (one choice each, in
order). A string is a document to the model, so it gets the <|bos|> that every training document
began with (listed in echo's tokens with a null logprob, but not in the text); token ids are used
as given. No chat template: a chat model continues the text as it is. Generation ends at
<|assistant_end|> or <|bos|> (finish_reason "stop"; that token is in logprobs, not in the text),
at a stop string (the text cut before it), or after max_tokens ("length"). No calculator.

logprobs=k gives, per token, its log-probability under the model (before temperature, top-k and
top-p) and the k likeliest tokens there, as OpenAI does: tokens (strings; bytes that are no whole
UTF-8 character as "bytes:\\xNN"), token_logprobs, top_logprobs, text_offset (each token's place in
the prompt's text followed by the completion's, echo or not). echo=true puts the prompt first,
its tokens scored in one forward pass (the first has nothing before it: null). That is what
loglikelihood evaluation sends (lm-evaluation-harness's local-completions: a list of token id
lists, echo, logprobs=1, max_tokens 1 or 0); its "remote" tokenizer backend uses /tokenize,
/detokenize and /tokenizer_info, which report no bos/eos string (a special token's spelling is
ordinary text here): pass custom_prefix_token_id=<bos_token_id> for tasks with empty contexts.

Special-token spellings in text ("<|bos|>" typed) are encoded as ordinary text everywhere.
"""
import codecs
import os
import threading
import time
import uuid
from dataclasses import dataclass

from nanochat.common import UserError
from nanochat.tokenizer import Tokenizer, get_tokenizer_dir
from nanochat.web_models import resolve_model
from nanochat.web_reply import Reply
from nanochat.web_request import ApiError, _text, parse_sampling

TOKENIZER_PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tokenizer.html")
MAX_LOGPROBS = 20  # alternatives per token (OpenAI's chat API allows 20, its legacy one 5)
ENDS = ("<|assistant_end|>", "<|bos|>")  # the tokens that end a completion (as they end a chat reply)


@dataclass
class CompletionRequest:
    prompts: list       # each a string or a list of token ids
    model: str
    stream: bool
    include_usage: bool
    temperature: float
    top_k: int
    top_p: float
    max_tokens: int     # 0: nothing generated (with echo: only score the prompt)
    stop: list
    seed: int
    echo: bool
    logprobs: int       # None: no logprobs; k: the k likeliest alternatives too


def _is_id(x):
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2**31


def _prompts(body, limits):
    p = body.get("prompt")
    if isinstance(p, str):
        prompts = [p]
    elif isinstance(p, list) and p and all(_is_id(x) for x in p):
        prompts = [p]
    elif isinstance(p, list) and p and (all(isinstance(x, str) for x in p) or
                                        all(isinstance(x, list) and x and all(_is_id(t) for t in x) for x in p)):
        prompts = p
    else:
        raise ApiError(400, "prompt must be a string, a non-empty list of token ids (0 or more), or a list of "
                            "strings or of token id lists", "prompt")
    if len(prompts) > limits.max_prompts:
        raise ApiError(400, f"too many prompts: {len(prompts)} > {limits.max_prompts}", "prompt")
    chars = sum(len(x) for x in prompts if isinstance(x, str))
    if chars > limits.max_total_chars:
        raise ApiError(400, f"the prompt has {chars} characters, more than the limit of {limits.max_total_chars}", "prompt")
    return [_text(x, "prompt") if isinstance(x, str) else x for x in prompts]


def parse_completion_request(body, limits, defaults):
    """Check a /v1/completions body against the limits; raises ApiError naming the bad field."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    prompts = _prompts(body, limits)
    sampling = parse_sampling(body, limits, defaults, min_tokens=0)
    echo = body.get("echo")
    echo = False if echo is None else echo
    if not isinstance(echo, bool):
        raise ApiError(400, "echo must be true or false", "echo")
    logprobs = body.get("logprobs")
    if logprobs is not None and not (_is_id(logprobs) and logprobs <= MAX_LOGPROBS):
        raise ApiError(400, f"logprobs must be an integer from 0 to {MAX_LOGPROBS} (the alternatives listed per token)", "logprobs")
    if body.get("best_of") not in (None, 1):
        raise ApiError(400, "best_of: only best_of=1 is supported", "best_of")
    if body.get("suffix") not in (None, ""):
        raise ApiError(400, "suffix: inserting text is not supported", "suffix")
    if sampling["stream"] and logprobs is not None:
        raise ApiError(400, "logprobs are not streamed: ask without stream", "logprobs")
    return CompletionRequest(prompts=prompts, echo=echo, logprobs=logprobs, **sampling)

# -----------------------------------------------------------------------------
# tokens as text

def token_string(tokenizer, token_id):
    """A token as OpenAI's logprobs spell it: its text, or "bytes:\\xNN..." when its bytes are no whole UTF-8 text."""
    b = tokenizer.decode_bytes([token_id])
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{c:02x}" for c in b)


def describe_tokens(tokenizer, ids):
    """[{"id", "text", "bytes"}]: a character split over tokens shows in the token that completes it, so the texts join up."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    out = []
    for t in ids:
        b = tokenizer.decode_bytes([t])
        out.append({"id": t, "text": decoder.decode(b), "bytes": list(b)})
    if out:
        out[-1]["text"] += decoder.decode(b"", final=True)
    return out


@dataclass
class Prompt:
    ids: list     # as the model sees them
    text: str     # what echo shows
    hidden: int   # leading tokens the server added (a string's <|bos|>): in logprobs' tokens, not in the text


def _encode(tokenizer, p, where, context, max_tokens):
    if isinstance(p, str):
        prompt = Prompt([tokenizer.get_bos_token_id()] + tokenizer.encode(p), p, 1)
    else:
        vocab = tokenizer.get_vocab_size()
        bad = next((t for t in p if t >= vocab), None)
        if bad is not None:
            raise ApiError(400, f"{where}: token id {bad} is not in this model's vocabulary (0 to {vocab - 1})", "prompt")
        prompt = Prompt(list(p), tokenizer.decode(list(p)), 0)
    if len(prompt.ids) + (max_tokens > 0) > context:
        raise ApiError(400, f"{where} is {len(prompt.ids)} tokens; with room for a reply that is more than fit in this "
                            f"model's context of {context}", "prompt", "context_length_exceeded")
    return prompt


def _logprobs(engine, tokenizer, prompt, reply, text, req):
    """OpenAI's logprobs block for one choice; text is the completion's (cut at a stop string)."""
    ends = {tokenizer.encode_special(s) for s in ENDS}
    cut = reply.finish_reason == "stop" and not (reply.tokens and reply.tokens[-1][0] in ends)  # by a stop string
    out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def add(t, lp, top, pos, shown):
        out["tokens"].append(token_string(tokenizer, t))
        out["token_logprobs"].append(lp)
        out["top_logprobs"].append(None if top is None else {token_string(tokenizer, i): v for i, v in top})
        out["text_offset"].append(pos)
        return pos + len(decoder.decode(tokenizer.decode_bytes([t]))) if shown else pos

    if req.echo:
        pos = 0
        for i, (t, (lp, top)) in enumerate(zip(prompt.ids, engine.prompt_logprobs(prompt.ids, req.logprobs))):
            pos = add(t, lp, top, pos, i >= prompt.hidden)
    start = pos = len(prompt.text)  # offsets count from the prompt's start, echoed or not
    decoder.reset()
    for t, lp, top in reply.tokens:
        shown = t not in ends
        if cut and shown and pos - start >= len(text):
            break  # this token and the rest came after the stop string
        pos = add(t, lp, top, pos, shown)
    return out

# -----------------------------------------------------------------------------
# the route

def completions(handler):
    server = handler.server
    req = parse_completion_request(handler.read_json(), server.limits, server.defaults)
    key = resolve_model(req.model, server.default_model)
    model_id = "/".join(map(str, key))
    head = {"id": "cmpl-" + uuid.uuid4().hex[:24], "object": "text_completion", "created": int(time.time()),
            "model": model_id, "system_fingerprint": None}
    choices, prompt_tokens, completion_tokens = [], 0, 0
    with server.pool.acquire(server.limits.queue_timeout, handler.client_gone, handler.client_address[0],
                             server.limits.max_per_client) as worker:
        try:
            engine, tokenizer, _, _ = worker.get(key)
        except UserError as e:
            raise ApiError(500, f"cannot load model {model_id}: {e}", "model", "model_load_failed") from None
        context = engine.model.config.sequence_len
        where = (lambda i: "prompt") if len(req.prompts) == 1 else (lambda i: f"prompt[{i}]")
        prompts = [_encode(tokenizer, p, where(i), context, req.max_tokens) for i, p in enumerate(req.prompts)]
        if req.stream:
            handler.start_stream()
        for i, prompt in enumerate(prompts):
            reply = Reply(engine, tokenizer, prompt.ids, req, min(req.max_tokens, context - len(prompt.ids)),
                          handler.client_gone, tools=False, logprobs=req.logprobs)
            chunk = lambda text, finish=None: dict(head, choices=[{"text": text, "index": i, "logprobs": None,
                                                                    "finish_reason": finish}])
            if req.stream:
                if req.echo:
                    handler.send_event(chunk(prompt.text))
                for piece in reply:
                    handler.send_event(chunk(piece))
                handler.send_event(chunk("", reply.finish_reason))
            else:
                text = "".join(reply)
                logprobs = _logprobs(engine, tokenizer, prompt, reply, text, req) if req.logprobs is not None else None
                choices.append({"text": prompt.text + text if req.echo else text, "index": i, "logprobs": logprobs,
                                "finish_reason": reply.finish_reason})
            prompt_tokens += len(prompt.ids)
            completion_tokens += reply.completion_tokens
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
             "total_tokens": prompt_tokens + completion_tokens}
    server.count("completed")
    if req.stream:
        if req.include_usage:
            handler.send_event(dict(head, choices=[], usage=usage))
        handler.end_stream()
    else:
        handler.send_json(200, dict(head, choices=choices, usage=usage))

# -----------------------------------------------------------------------------
# the tokenizer's routes: no worker needed (tokenizing never waits for a generation)

class TokenizerCache:
    """The base dir's tokenizer (every model there shares it), loaded once, and again when its file changes."""
    def __init__(self):
        self.lock, self.key, self.tokenizer = threading.Lock(), None, None

    def get(self):
        d = get_tokenizer_dir()
        try:
            st = os.stat(os.path.join(d, "tokenizer.pkl"))
        except OSError:
            raise ApiError(500, f"no tokenizer at {d}", code="no_tokenizer") from None
        with self.lock:
            if self.key != (d, st.st_mtime_ns, st.st_size):
                self.tokenizer, self.key = Tokenizer.from_directory(d), (d, st.st_mtime_ns, st.st_size)
            return self.tokenizer


def _body(handler):
    body = handler.read_json()
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return body


def _string(body, name, limit):
    s = body.get(name)
    if not isinstance(s, str):
        raise ApiError(400, f"{name} must be a string", name)
    if len(s) > limit:
        raise ApiError(400, f"{name} is {len(s)} characters, more than the limit of {limit}", name)
    return _text(s, name)


def tokenize(handler):
    body, limit = _body(handler), handler.server.limits.max_total_chars
    if ("text" in body) == ("prompt" in body):
        raise ApiError(400, 'send {"text": ...} (tokens described, for the tokenizer page) or {"prompt": ...} '
                            '(token ids, as vLLM answers)', "text")
    tok = handler.server.tokenizers.get()
    if "text" in body:
        ids = tok.encode(_string(body, "text", limit))
        return handler.send_json(200, {"tokens": describe_tokens(tok, ids), "count": len(ids)})
    add = body.get("add_special_tokens", True)
    if not isinstance(add, bool):
        raise ApiError(400, "add_special_tokens must be true or false", "add_special_tokens")
    # as /v1/completions encodes a string prompt: <|bos|> first (unless add_special_tokens is false)
    ids = [tok.get_bos_token_id()] * add + tok.encode(_string(body, "prompt", limit))
    handler.send_json(200, {"tokens": ids, "count": len(ids)})


def detokenize(handler):
    body, tok = _body(handler), handler.server.tokenizers.get()
    ids, vocab = body.get("tokens"), tok.get_vocab_size()
    if not isinstance(ids, list) or not all(_is_id(t) and t < vocab for t in ids):
        raise ApiError(400, f"tokens must be a list of token ids from 0 to {vocab - 1}", "tokens")
    handler.send_json(200, {"prompt": tok.decode(ids)})


def tokenizer_info(server):
    tok = server.tokenizers.get()
    special = sorted((tok.encode_special(s), s) for s in tok.get_special_tokens())
    # no bos/eos *string*: a client would encode it as text (lm-eval's remote tokenizer does), which here gives
    # ordinary tokens, not the special one; the id is given instead
    return {"tokenizer_class": "nanochat", "vocab_size": tok.get_vocab_size(), "bos_token": None, "eos_token": None,
            "pad_token": None, "bos_token_id": tok.get_bos_token_id(), "chat_template": None,
            "special_tokens": {s: i for i, s in special}}
