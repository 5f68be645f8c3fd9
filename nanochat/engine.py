"""
Inference with a KV cache: prefill the prompt once, then decode one token at a time.
Several samples from one prompt share the prefilled cache (prefill at batch 1, copy to batch N).

On top of plain sampling, each sample runs a small state machine for the calculator tool: when it
emits <|python_start|>, the tokens up to <|python_end|> are collected and evaluated by
nanochat.calculator (arithmetic only), and <|output_start|> result <|output_end|> is forced into
that sample's stream, one token per step, before it goes on sampling.

Context: the model can attend to at most `model.cos.size(1)` positions (its rotary table), or
fewer when a max_context is given. A prompt that leaves no room is cut to its most recent tokens
(keeping the leading <|bos|>), and when a reply fills the window the cache is rebuilt from the
most recent half, so generation never fails for length.

    engine = Engine(model, tokenizer)
    for column in engine.generate(prompt_ids, num_samples=2, max_tokens=64, temperature=0.8):
        ...  # column: one next token id per sample

Log-probabilities (for scoring, and the API's logprobs) are computed only when asked: generate(...,
logprobs=k) adds each emitted token's and the k likeliest alternatives', and prompt_logprobs()
scores a prompt's own tokens in one forward pass. Both are of the model's distribution itself
(before temperature, top-k or top-p).
"""
import codecs
from collections import deque

import torch
import torch.nn.functional as F

from nanochat.common import get_compute_dtype, autocast_ctx
from nanochat.calculator import use_calculator
from nanochat.fast_decode import fast_decode_mode, make_decoder, supports as fast_decode_supports


def sample_next_token(logits, rng, temperature=1.0, top_k=None, top_p=None):
    """logits (B, V) -> next ids (B, 1). temperature 0 is greedy."""
    if temperature == 0.0:
        return torch.argmax(logits, dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None and top_k > 0:
        k = min(top_k, logits.size(-1))
        vals, _ = torch.topk(logits, k, dim=-1)
        logits = logits.masked_fill(logits < vals[:, [-1]], float("-inf"))
    if top_p is not None and 0.0 < top_p < 1.0:
        sorted_logits, sorted_idx = torch.sort(logits, descending=True, dim=-1)
        cum = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        # drop tokens once the mass before them already reaches top_p (the first always stays)
        drop = (cum - torch.softmax(sorted_logits, dim=-1)) >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, sorted_idx, sorted_logits)
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=rng)


def token_logprobs(logits, chosen, k=0):
    """
    logits (N, V), chosen ids (N,) -> per row (log-probability of the chosen token, [(id, logprob)] of
    the k likeliest tokens, most likely first). Both come from one log_softmax, so the chosen token,
    when it is the likeliest, has exactly the value at the top.
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    picked = logp.gather(-1, chosen.view(-1, 1).to(logp.device)).view(-1).tolist()
    if k <= 0:
        return [(p, []) for p in picked]
    values, ids = logp.topk(min(k, logp.size(-1)), dim=-1)
    return [(p, list(zip(i, v))) for p, i, v in zip(picked, ids.tolist(), values.tolist())]


class EagerDecoder:
    """
    The plain decode path through gpt.KVCache, with the interface of fast_decode.StaticKVDecoder:
    prefill(ids) and step(next_ids) both return the next logits (B, vocab).
    """
    def __init__(self, model, batch_size, max_len, dtype):
        self.model, self.batch_size, self.max_len = model, batch_size, max_len
        device = model.get_device()
        self.autocast = autocast_ctx(device.type, dtype)
        self.cache = model.make_kv_cache(batch_size, max_len, dtype=dtype if device.type == "cuda" else None)

    @property
    def pos(self):
        return self.cache.pos

    @torch.inference_mode()
    def prefill(self, ids):
        """ids: (1, T), run once and copied to every row, or (B, T), one prompt per row."""
        self.cache.reset()
        with self.autocast:
            if ids.size(0) == 1 and self.batch_size > 1:
                one = self.model.make_kv_cache(1, ids.size(1), dtype=self.cache.k.dtype)
                logits = self.model(ids, kv_cache=one)[:, -1, :]
                self.cache.prefill_from(one)
                return logits.expand(self.batch_size, -1)
            return self.model(ids, kv_cache=self.cache)[:, -1, :]

    @torch.inference_mode()
    def step(self, next_ids):
        with self.autocast:
            return self.model(next_ids.view(self.batch_size, 1), kv_cache=self.cache)[:, -1, :]


class _Row:
    """The state of one sample: its tokens so far, and the calculator tool's state machine."""
    def __init__(self, tokens):
        self.tokens = list(tokens)
        self.forced = deque()    # tokens to emit instead of sampling (the tool's output)
        self.in_python = False
        self.expr = []           # tokens between <|python_start|> and <|python_end|>
        self.done = False


class Engine:
    def __init__(self, model, tokenizer, max_context=None):
        self.model = model
        self.tokenizer = tokenizer
        self.device = model.get_device()
        self.dtype = get_compute_dtype(self.device.type)
        self.max_context = max_context  # None: the model's rotary table
        # a fast_decode decoder kept between calls (its CUDA graphs are costly to capture); it holds
        # cast copies of the weights, so make a new Engine after the weights change
        self._fast = None
        sp = tokenizer.encode_special
        self.python_start, self.python_end = sp("<|python_start|>"), sp("<|python_end|>")
        self.output_start, self.output_end = sp("<|output_start|>"), sp("<|output_end|>")
        self.default_stops = {sp("<|assistant_end|>"), tokenizer.get_bos_token_id()}

    def context_limit(self, max_context=None):
        limit = self.model.cos.size(1)
        for m in (self.max_context, max_context):
            if m is not None and m > 0:
                limit = min(limit, m)
        return limit

    def _decoder(self, batch_size, max_len):
        if fast_decode_mode(self.device) is not None and fast_decode_supports(self.model.config):
            if self._fast is None or not self._fast.fits(batch_size, max_len):
                self._fast = None  # free the old cache first
                self._fast = make_decoder(self.model, batch_size, max_len, dtype=self.dtype)
            return self._fast
        return EagerDecoder(self.model, batch_size, max_len, self.dtype)

    def _clip(self, tokens, n):
        """The most recent n tokens, keeping a leading <|bos|> (the model always saw one at the start)."""
        if len(tokens) <= n:
            return list(tokens)
        bos = self.tokenizer.get_bos_token_id()
        if tokens[0] == bos and n > 1:
            return [bos] + list(tokens[len(tokens) - (n - 1):])
        return list(tokens[len(tokens) - n:])

    def _advance_tool(self, row, tok):
        """Feed one emitted token to a sample's calculator state machine."""
        if tok == self.python_start:
            row.in_python, row.expr = True, []
        elif tok == self.python_end and row.in_python:
            row.in_python = False
            result = use_calculator(self.tokenizer.decode(row.expr))
            if result is not None:  # a refused expression gets no output; the model goes on
                row.forced.extend([self.output_start, *self.tokenizer.encode(result), self.output_end])
        elif row.in_python:
            row.expr.append(tok)

    @torch.inference_mode()
    def prompt_logprobs(self, tokens, k=0, chunk=256):
        """
        Score a prompt's own tokens in one forward pass (no cache): for each token, (its
        log-probability given the tokens before it, the k likeliest there as [(id, logprob)]);
        the first token has nothing before it: (None, None).
        """
        if len(tokens) == 0:
            raise ValueError("prompt_logprobs() needs at least one token")
        ids = torch.tensor([list(tokens)], dtype=torch.long, device=self.device)
        with autocast_ctx(self.device.type, self.dtype):
            logits = self.model(ids)[0]
        out = [(None, None)]
        for s in range(0, len(tokens) - 1, chunk):  # (chunk, V) at a time in float32, not (T, V)
            e = min(s + chunk, len(tokens) - 1)
            out += token_logprobs(logits[s:e], ids[0, s + 1:e + 1], k)
        return out

    @torch.inference_mode()
    def generate(self, tokens, num_samples=1, max_tokens=256, temperature=1.0, top_k=None, top_p=None, seed=42,
                 stop_tokens=None, tools=True, max_context=None, return_forced=False, logprobs=None):
        """
        Yields, for each step, a list of num_samples next token ids (one per sample); with
        return_forced=True, (ids, forced) where forced[i] says the tool put that token there. A
        sample that has emitted a stop token (default <|assistant_end|> and <|bos|>) is finished:
        what it yields afterwards is to be ignored. Generation ends when all are finished or after
        max_tokens steps (forced tool output counts). tools=False turns the calculator off.
        logprobs=k (0 or more; None: not computed) adds, last in the tuple, one (logprob, top) per
        sample: the log-probability of the token emitted (sampled or forced) and the k likeliest
        tokens there as [(id, logprob)] (see token_logprobs).
        """
        if len(tokens) == 0:
            raise ValueError("generate() needs at least one prompt token")
        if num_samples < 1 or max_tokens < 0:
            raise ValueError(f"num_samples must be >= 1 and max_tokens >= 0, got {num_samples} and {max_tokens}")
        if max_tokens == 0:
            return
        stop_tokens = self.default_stops if stop_tokens is None else set(stop_tokens)
        limit = self.context_limit(max_context)
        if limit < 2:
            raise ValueError(f"a context of {limit} tokens is too short to generate in")
        # the prompt gives way (oldest tokens first) so that at least some reply fits
        room = min(max_tokens, limit // 2)
        prompt = self._clip(tokens, limit - room) if len(tokens) + max_tokens > limit else list(tokens)
        cache_len = min(limit, len(prompt) + max_tokens)
        device = self.device
        rng = torch.Generator(device=device).manual_seed(seed)
        rows = [_Row(prompt) for _ in range(num_samples)]

        decoder = self._decoder(num_samples, cache_len)
        logits = decoder.prefill(torch.tensor([prompt], dtype=torch.long, device=device))
        pos = len(prompt)
        for _ in range(max_tokens):
            sampled = sample_next_token(logits, rng, temperature, top_k, top_p).view(-1).tolist()
            column, forced = [], []
            for row, tok in zip(rows, sampled):
                is_forced = bool(row.forced) and not row.done
                if is_forced:
                    tok = row.forced.popleft()
                elif not row.done:
                    if tok in stop_tokens:
                        row.done = True
                    elif tools:
                        self._advance_tool(row, tok)
                row.tokens.append(tok)
                column.append(tok)
                forced.append(is_forced)
            extra = (forced,) if return_forced else ()
            if logprobs is not None:
                extra += (token_logprobs(logits, torch.tensor(column, device=logits.device), logprobs),)
            yield (column, *extra) if extra else column
            if all(row.done for row in rows):
                break
            ids = torch.tensor(column, dtype=torch.long, device=device)
            if pos < cache_len:
                logits = decoder.step(ids)
                pos += 1
            else:
                # the window is full: start again from the most recent half of every sample
                keep = [self._clip(row.tokens, limit // 2) for row in rows]
                logits = decoder.prefill(torch.tensor(keep, dtype=torch.long, device=device))
                pos = len(keep[0])

    def generate_batch(self, tokens, num_samples=1, **kwargs):
        """Non-streaming: returns num_samples token lists (prompt not included, stop token excluded)."""
        stop_tokens = kwargs.get("stop_tokens")
        stop_tokens = self.default_stops if stop_tokens is None else set(stop_tokens)
        kwargs.pop("return_forced", None)
        kwargs.pop("logprobs", None)
        results = [[] for _ in range(num_samples)]
        done = [False] * num_samples
        for column in self.generate(tokens, num_samples, **kwargs):
            for i, tok in enumerate(column):
                if done[i]:
                    continue
                if tok in stop_tokens:
                    done[i] = True
                else:
                    results[i].append(tok)
        return results


# -----------------------------------------------------------------------------
# reading a reply

def reply_parts(tokenizer, ids):
    """
    Split an assistant reply's token ids into render_conversation's parts: {"type": "text" |
    "python" | "python_output", "text": ...}, so a reply can go back into the history as the model
    produced it. Stops at <|assistant_end|> or <|bos|>.
    """
    sp = tokenizer.encode_special
    kinds = {sp("<|python_start|>"): "python", sp("<|output_start|>"): "python_output"}
    closers = {sp("<|python_end|>"), sp("<|output_end|>")}
    stops = {sp("<|assistant_end|>"), tokenizer.get_bos_token_id()}
    parts, kind, buf = [], "text", []
    def flush():
        text = tokenizer.decode(buf)
        if text or kind != "text":
            parts.append({"type": kind, "text": text})
    for tok in ids:
        if tok in stops:
            break
        if tok in kinds or tok in closers:
            flush()
            kind, buf = kinds.get(tok, "text"), []
        else:
            buf.append(tok)
    flush()
    return parts


def tool_markers(tokenizer):
    """How a reader sees the calculator's tokens in a streamed reply: [calculator: 23 + 45 = 68]."""
    sp = tokenizer.encode_special
    return {sp("<|python_start|>"): "[calculator: ", sp("<|python_end|>"): "", sp("<|output_start|>"): " = ",
            sp("<|output_end|>"): "] "}


def reply_text(parts):
    """What the assistant said, without its calculator calls and their outputs."""
    return "".join(p["text"] for p in parts if p["type"] == "text")


class TextStreamer:
    """
    Turns a stream of token ids into text pieces without ever splitting a multi-byte UTF-8
    character: bytes of an unfinished character wait for the tokens that complete it.
    """
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token_id):
        return self.decoder.decode(self.tokenizer.decode_bytes([token_id]))

    def flush(self):
        return self.decoder.decode(b"", final=True)
