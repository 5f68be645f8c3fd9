"""
Measures of generated text, for telling a lively model from one that loops (scripts/self_chat.py):
- words(text): the unit of the text measures: lowercased words and single punctuation marks;
- distinct_n: unique n-grams / all n-grams over a set of texts (Li et al., 2016);
- repeated_share: the share of a text's n-grams that repeat one seen earlier in the same text
  (Welleck et al., 2019's seq-rep-n);
- bleu / self_bleu: our own BLEU (clipped n-gram precisions 1-4, geometric mean, brevity penalty;
  smoothing stated at bleu()), and the mean BLEU of each sample against the others (Zhu et al., 2018);
- entropy of a distribution, and the distribution nanochat.engine samples a token from, rebuilt from
  the model's logits (sampling_distribution, reply_logits, rescore).
"""
import math
import re
from collections import Counter

import torch

from nanochat.common import autocast_ctx, get_compute_dtype

_WORD = re.compile(r"\w+|[^\w\s]")


def words(text):
    """'Hello, hello!' -> ['hello', ',', 'hello', '!']"""
    return _WORD.findall(text.lower())


def ngrams(tokens, n):
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]

# -----------------------------------------------------------------------------
# diversity and repetition


def distinct_n(texts, n):
    """Unique n-grams over all n-grams of a list of token lists (pooled); None when there are no n-grams."""
    seen, total = set(), 0
    for tokens in texts:
        grams = ngrams(tokens, n)
        seen.update(grams)
        total += len(grams)
    return len(seen) / total if total else None


def repeated_share(tokens, n):
    """The share of a token list's n-grams that repeat an earlier one in it (0 with no n-grams)."""
    grams = ngrams(tokens, n)
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def normalized(text):
    """A reply as compared for 'repeats an earlier reply': its words, lowercased, spacing ignored."""
    return " ".join(words(text))


def collapse_reason(text, earlier, n=4, threshold=0.5):
    """
    Why a reply ends its conversation, or None: more than `threshold` of its n-grams repeat earlier
    ones, or it says what an earlier reply of the conversation said (`earlier`: their texts, in order).
    """
    share = repeated_share(words(text), n)
    if share > threshold:
        return f"repetition: {share:.0%} of its {n}-grams repeat earlier ones (threshold {threshold:.0%})"
    norm = normalized(text)
    for i, other in enumerate(earlier):
        if normalized(other) == norm:
            return f"repeats turn {i + 1}" + (" (both empty)" if not norm else "")
    return None

# -----------------------------------------------------------------------------
# BLEU


def bleu(hypothesis, references, max_n=4):
    """
    BLEU of one token list against a list of reference token lists (Papineni et al., 2002):
    p_n = clipped n-gram matches / hypothesis n-grams (each n-gram counted at most as often as in
    the reference holding it most often), the geometric mean of p_1..p_max_n, times the brevity
    penalty exp(1 - r/c) when the hypothesis (c tokens) is shorter than the reference closest in
    length (r tokens; ties go to the shorter).
    Smoothing: add-one for n >= 2, p_n = (matches + 1) / (n-grams + 1) (Lin & Och, 2004,
    "BLEU+1"), so that one missing 4-gram in a short reply does not zero the score; p_1 is not
    smoothed (no common word at all gives 0). An empty hypothesis scores 0.
    """
    c = len(hypothesis)
    if c == 0 or not references:
        return 0.0
    log_sum = 0.0
    for n in range(1, max_n + 1):
        counts = Counter(ngrams(hypothesis, n))
        most = Counter()
        for ref in references:
            for gram, k in Counter(ngrams(ref, n)).items():
                most[gram] = max(most[gram], k)
        matches = sum(min(k, most[gram]) for gram, k in counts.items())
        total = sum(counts.values())
        if n == 1:
            if matches == 0:
                return 0.0
            log_sum += math.log(matches / total)
        else:
            log_sum += math.log((matches + 1) / (total + 1))
    r = min((len(ref) for ref in references), key=lambda length: (abs(length - c), length))
    log_bp = 0.0 if c > r else 1.0 - r / c
    return math.exp(log_sum / max_n + log_bp)


def self_bleu(texts, max_n=4):
    """Mean BLEU of each token list against all the others (1 = the samples say the same); None for fewer
    than 2, or when all are empty (nothing to compare)."""
    if len(texts) < 2 or not any(texts):
        return None
    return sum(bleu(t, texts[:i] + texts[i + 1:], max_n) for i, t in enumerate(texts)) / len(texts)

# -----------------------------------------------------------------------------
# entropy of the sampling distribution


def entropy(probs):
    """-sum p log p in nats over the last dimension of a tensor (or a list) of probabilities; 0 log 0 = 0."""
    p = torch.as_tensor(probs, dtype=torch.float64)
    return -torch.where(p > 0, p * torch.log(p.clamp_min(1e-300)), torch.zeros_like(p)).sum(-1)


def sampling_distribution(logits, temperature, top_k=None):
    """
    The probabilities nanochat.engine.sample_next_token draws from, for logits (..., V): the
    logits in float divided by the temperature, all but the top_k set to -inf (ties with the k-th
    kept, as the engine does), softmax. Temperature 0 (greedy) is a point mass on the argmax.
    """
    logits = logits.float()
    if temperature == 0.0:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.size(-1)).float()
    logits = logits / temperature
    if top_k is not None and top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.softmax(logits, dim=-1)


@torch.inference_mode()
def reply_logits(model, prompt, reply):
    """
    One teacher-forced forward pass over prompt + reply: the logits (len(reply), V) from which each
    reply token was drawn (row i: the model's output after prompt + reply[:i]). These are the logits
    the engine's KV-cache decode computed, as long as the engine neither cut the prompt nor rebuilt
    its cache (the conversation stays inside the context window): the same function of the same
    tokens, equal up to float rounding (in fp32 on a CPU, to ~1e-5; under bf16 autocast on a GPU
    the decode kernels and a full forward round differently, so a little more).
    """
    if not reply:
        return torch.empty(0, model.config.vocab_size)
    device = model.get_device()
    ids = torch.tensor([list(prompt) + list(reply[:-1])], dtype=torch.long, device=device)
    with autocast_ctx(device.type, get_compute_dtype(device.type)):
        logits = model(ids)
    return logits[0, len(prompt) - 1:].float().cpu()


def rescore(model, prompt, reply, temperature, top_k=None):
    """
    Per reply token: (entropy in nats of the distribution it was sampled from, its log-probability
    under that distribution). The logits at each reply position, divided by the temperature, with
    top-k applied if it was used, are exactly the distribution the engine drew the token from.
    """
    probs = sampling_distribution(reply_logits(model, prompt, reply), temperature, top_k)
    if not reply:
        return [], []
    drawn = probs.gather(-1, torch.tensor(reply, dtype=torch.long).view(-1, 1)).squeeze(-1)
    return entropy(probs).tolist(), torch.log(drawn.double()).tolist()
