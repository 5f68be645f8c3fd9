"""
Inference with a KV cache: prefill the prompt once, then decode one token at a time.
Several samples from one prompt share the prefilled cache (prefill at batch 1, copy to batch N).
"""
import torch
import torch.nn.functional as F

from nanochat.common import get_compute_dtype, autocast_ctx


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


class Engine:
    def __init__(self, model, tokenizer):
        self.model = model
        self.tokenizer = tokenizer
        self.device = model.get_device()
        self.dtype = get_compute_dtype(self.device.type)

    @torch.inference_mode()
    def generate(self, tokens, num_samples=1, max_tokens=256, temperature=1.0, top_k=None, top_p=None, seed=42,
                 stop_tokens=None):
        """
        Yields, for each step, a list of num_samples next token ids (one per sample). A sample that
        has emitted a stop token (default <|assistant_end|> and <|bos|>) is finished; generation
        ends when all are finished or after max_tokens.
        """
        model, device = self.model, self.device
        if stop_tokens is None:
            stop_tokens = {self.tokenizer.encode_special("<|assistant_end|>"), self.tokenizer.get_bos_token_id()}
        rng = torch.Generator(device=device).manual_seed(seed)
        max_len = len(tokens) + max_tokens
        autocast = autocast_ctx(device.type, self.dtype)
        with autocast:
            # prefill once at batch 1
            prefill_cache = model.make_kv_cache(1, len(tokens), dtype=self.dtype if device.type == "cuda" else None)
            ids = torch.tensor([tokens], dtype=torch.long, device=device)
            logits = model(ids, kv_cache=prefill_cache)[:, -1, :]
            cache = model.make_kv_cache(num_samples, max_len, dtype=prefill_cache.k.dtype)
            cache.prefill_from(prefill_cache)
            del prefill_cache
            logits = logits.expand(num_samples, -1)
            done = [False] * num_samples
            for _ in range(max_tokens):
                next_ids = sample_next_token(logits, rng, temperature, top_k, top_p)
                column = next_ids.view(-1).tolist()
                for i, tok in enumerate(column):
                    if tok in stop_tokens:
                        done[i] = True
                yield column
                if all(done):
                    break
                logits = model(next_ids, kv_cache=cache)[:, -1, :]

    def generate_batch(self, tokens, num_samples=1, **kwargs):
        """Non-streaming: returns num_samples token lists (prompt not included, stop token excluded)."""
        stop_tokens = kwargs.get("stop_tokens") or {self.tokenizer.encode_special("<|assistant_end|>"),
                                                    self.tokenizer.get_bos_token_id()}
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


class TextStreamer:
    """
    Turns a stream of token ids into text pieces without ever splitting a multi-byte UTF-8
    character: bytes of an unfinished character wait for the tokens that complete it.
    """
    def __init__(self, tokenizer):
        import codecs
        self.tokenizer = tokenizer
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token_id):
        return self.decoder.decode(self.tokenizer.decode_bytes([token_id]))

    def flush(self):
        return self.decoder.decode(b"", final=True)
