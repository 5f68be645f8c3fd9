"""
A reply being generated: the model's tokens turned into text pieces as they come, cut at stop
strings, ended when the client goes away, and described afterwards (finish_reason, tokens, timings).
How the pieces reach the client (one JSON, or server-sent events) is web_server's business.
"""
import time

from nanochat.engine import TextStreamer, tool_markers
from nanochat.web_request import ClientGone


class StopStrings:
    """Cuts the text at the first stop string; holds back a tail that might be the start of one."""
    def __init__(self, stops):
        self.stops = stops
        self.hold = max((len(s) for s in stops), default=1) - 1
        self.buf = ""

    def push(self, text):
        """-> (text safe to emit, whether a stop string was found)"""
        self.buf += text
        hits = [i for i in (self.buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.buf = self.buf[:min(hits)], ""
            return out, True
        cut = max(0, len(self.buf) - self.hold)
        out, self.buf = self.buf[:cut], self.buf[cut:]
        return out, False

    def flush(self):
        out, self.buf = self.buf, ""
        return out


class Reply:
    """
    Iterating yields the assistant's text piece by piece; afterwards finish_reason ('stop' or
    'length'), completion_tokens, tokens and timings() describe it. cancelled() is asked between
    tokens. tools=False: no calculator (a text completion); logprobs=k: each token's log-probability
    and the k likeliest alternatives are kept in tokens (see Engine.generate).
    """
    def __init__(self, engine, tokenizer, prompt, req, max_tokens, cancelled, tools=True, logprobs=None):
        self.engine, self.tokenizer, self.prompt, self.req = engine, tokenizer, prompt, req
        self.max_tokens, self.cancelled = max_tokens, cancelled
        self.tools, self.logprobs = tools, logprobs
        self.finish_reason = None
        self.completion_tokens = 0
        self.tokens = []  # (id, logprob, top) of every token generated, an ending one included; (id, None, None) without logprobs
        self.text = ""
        self.t_start = self.t_first = self.t_last = None

    def __iter__(self):
        tok, req = self.tokenizer, self.req
        ends = {tok.encode_special("<|assistant_end|>"), tok.get_bos_token_id()}
        streamer, stops = TextStreamer(tok), StopStrings(req.stop)
        markers = tool_markers(tok) if self.tools else {}
        self.t_start = time.perf_counter()
        steps = self.engine.generate(self.prompt, num_samples=1, max_tokens=self.max_tokens, temperature=req.temperature,
                                     top_k=req.top_k or None, top_p=req.top_p, seed=req.seed, tools=self.tools,
                                     logprobs=self.logprobs)
        self.finish_reason = "length"
        try:
            for step in steps:
                token = step[0][0] if self.logprobs is not None else step[0]
                self.tokens.append((token, *step[1][0]) if self.logprobs is not None else (token, None, None))
                self.t_last = time.perf_counter()
                self.t_first = self.t_first or self.t_last
                self.completion_tokens += 1
                if token in ends:
                    self.finish_reason = "stop"
                    break
                # the calculator runs (a chat model answers arithmetic through it); its tokens show as text
                text = streamer.flush() + markers[token] if token in markers else streamer.feed(token)
                piece, stopped = stops.push(text)
                if piece:
                    self.text += piece
                    yield piece
                if stopped:
                    self.finish_reason = "stop"
                    return
                if self.cancelled():
                    raise ClientGone()
        finally:
            steps.close()  # frees the KV cache now, not at garbage collection
        piece, stopped = stops.push(streamer.flush())
        piece += "" if stopped else stops.flush()
        if piece:
            self.text += piece
            yield piece

    def timings(self):
        """Seconds to the first token, decode speed (tokens after the first / their time), total seconds."""
        if self.t_first is None:
            return {"time_to_first_token_s": None, "tokens_per_second": None, "total_s": None}
        n, decode_s = self.completion_tokens, self.t_last - self.t_first
        return {"time_to_first_token_s": round(self.t_first - self.t_start, 4),
                "tokens_per_second": round((n - 1) / decode_s, 2) if n > 1 and decode_s > 0 else None,
                "total_s": round(self.t_last - self.t_start, 4)}
