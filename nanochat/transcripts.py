"""
Transcripts of your own videos as training text: WebVTT subtitles (YouTube's auto-captions,
fetched with e.g. `yt-dlp --write-auto-subs --sub-format vtt --skip-download URL`) cleaned into
paragraphs and cut into training samples of about a fixed number of words.

    parse_vtt(text, name)      the cues of a .vtt file: Cue(start_s, end_s, text), text still raw
    clean_lines(cues)          the spoken lines, once each, in order: Line(start_s, end_s, text)
    paragraphs(lines, gap)     lines grouped at pauses: Paragraph(start_s, text)
    samples(paragraphs, n)     whole paragraphs packed into samples of <= n words: Sample(start_s, text)
    transcript_paragraphs(path, ...), transcript_samples(path, ...)   all of it for one file

Auto-captions roll: each cue shows the line before it again and then the new line, word by word
(`word<00:00:01.480><c> next</c>`), and a 10 ms cue between two such cues repeats the finished
line once more. So a line that repeats the lines just emitted is dropped, and a line that extends
the last emitted line (the recogniser added words) replaces it. The price: a speaker who really
says the same line twice in a row is kept once. Sound annotations ([Music], [Applause]) are not
speech and are dropped unless asked for; tags, entities and `>>` speaker marks are removed.
"""
import html
import re
from collections import namedtuple

Cue = namedtuple("Cue", "start end text")          # seconds, seconds, payload with tags and entities
Line = namedtuple("Line", "start end text")        # a clean line: start of the cue that brought it, end of its last cue
Paragraph = namedtuple("Paragraph", "start text")  # start: seconds of its first cue
Sample = namedtuple("Sample", "start text")

TIMESTAMP = r"(?:(\d+):)?(\d{1,2}):(\d{1,2})[.,](\d{1,3})"  # [hh:]mm:ss.ttt, also with a comma
TIMING = re.compile(rf"\s*{TIMESTAMP}\s+-->\s+{TIMESTAMP}(?:\s.*)?")
TAG = re.compile(r"<[^>\n]*>")                      # <c>, </c>, <c.colorE5E5E5>, <v Name>, <i>, <00:00:01.480>
ANNOTATION = re.compile(r"\[[^\]\n]*\]")            # [Music], [Applause], YouTube's censored "[ __ ]"
SPEAKER_MARK = re.compile(r"(?:^|\s)>>(?=\s|$)")    # ">> " where the speaker changes
SKIPPED_BLOCKS = ("NOTE", "STYLE", "REGION")
PARAGRAPH_WORDS = 100  # paragraphs stay shorter than a sample, so samples rarely cut one


def _seconds(groups, name, lineno):
    h, m, s, frac = groups
    if int(m) >= 60 or int(s) >= 60:
        raise ValueError(f"{name}:{lineno}: minutes and seconds must be below 60 in a timestamp")
    return int(h or 0) * 3600 + int(m) * 60 + int(s) + int(frac) / 10 ** len(frac)


def _block_keyword(line):
    """NOTE, STYLE or REGION when the (non-blank) line opens such a block, else None."""
    word = line.split(None, 1)[0]
    return word if word in SKIPPED_BLOCKS else None


def parse_vtt(text, name="<vtt>"):
    """
    The cues of a WebVTT file in file order: Cue(start_s, end_s, payload). The payload keeps its
    tags and entities (clean_lines removes them) so no information is lost here. The header
    (WEBVTT, Kind:, Language: ...), NOTE/STYLE/REGION blocks and cue identifiers are skipped.
    Raises ValueError with a one-line "name:line: reason" for a file that is not WebVTT, a broken
    timing line, or a block of text with no timing line (text that would otherwise be lost).
    """
    lines = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if not text.strip():
        raise ValueError(f"{name}: empty file")
    first = lines[0]
    if not (first == "WEBVTT" or first.startswith(("WEBVTT ", "WEBVTT\t"))):
        raise ValueError(f"{name}:1: not a WebVTT file (it should start with 'WEBVTT', not {first[:40]!r})")
    i = 1
    while i < len(lines) and lines[i].strip() and "-->" not in lines[i]:  # Kind:, Language:, ...
        i += 1
    cues = []
    while i < len(lines):
        if not lines[i].strip():
            i += 1
            continue
        start_line = i
        if _block_keyword(lines[i]):  # NOTE, STYLE, REGION: up to the next blank line
            while i < len(lines) and lines[i].strip():
                i += 1
            continue
        arrow = i if "-->" in lines[i] else i + 1  # a cue identifier may come first
        if arrow >= len(lines) or "-->" not in lines[arrow]:
            raise ValueError(f"{name}:{start_line + 1}: expected a cue timing line "
                             f"'00:00:01.000 --> 00:00:02.000', got {lines[start_line][:60]!r}")
        m = TIMING.fullmatch(lines[arrow])
        if not m:
            raise ValueError(f"{name}:{arrow + 1}: broken timing line {lines[arrow][:60]!r}")
        start = _seconds(m.groups()[:4], name, arrow + 1)
        end = _seconds(m.groups()[4:], name, arrow + 1)
        if end < start:
            raise ValueError(f"{name}:{arrow + 1}: the cue ends ({end:.3f}s) before it starts ({start:.3f}s)")
        # the payload runs to an empty line; YouTube's " " lines are payload (the spec agrees),
        # and a timing line also ends it, in case a sloppy file lost a blank line
        i = arrow + 1
        while i < len(lines) and lines[i] != "" and "-->" not in lines[i]:
            i += 1
        cues.append(Cue(start, end, "\n".join(lines[arrow + 1:i])))
    return cues


def clean_text(raw, keep_annotations=False):
    """One payload line as plain text: no tags, entities decoded, spaces collapsed."""
    text = html.unescape(TAG.sub("", raw))  # tags first: an escaped "&lt;b&gt;" is text, not a tag
    if not keep_annotations:
        text = ANNOTATION.sub(" ", text)
    text = SPEAKER_MARK.sub(" ", text)
    return " ".join(text.split())  # also turns &nbsp; (U+00A0) into a plain space


def _extends(new, old):
    """new is old, or old with words added at the end (a growing auto-caption line)."""
    new_words, old_words = new.split(), old.split()
    return new_words[:len(old_words)] == old_words


def _overlap(texts, emitted):
    """How many leading lines of a cue repeat the last lines emitted (the last one may have grown)."""
    for k in range(min(len(texts), len(emitted)), 0, -1):
        if texts[:k - 1] == emitted[len(emitted) - k:-1] and _extends(texts[k - 1], emitted[-1]):
            return k
    return 0


def clean_lines(cues, keep_annotations=False):
    """
    The spoken lines of the cues, each once, in order: Line(start_s, end_s, text). start is the
    start of the cue that first showed the line, end the end of the last cue that added to it,
    so `next.start - prev.end` is the pause between them: cues that only repeat text, or hold
    nothing but [Music] or blanks, count as silence.
    """
    lines = []  # [start, end, text], mutable while a line may still grow
    for cue in cues:
        texts = [t for t in (clean_text(raw, keep_annotations) for raw in cue.text.split("\n")) if t]
        if not texts:
            continue
        k = _overlap(texts, [line[2] for line in lines[-len(texts):]])
        if k and texts[k - 1] != lines[-1][2]:  # the last line grew: the longer text replaces it
            lines[-1][1:] = [cue.end, texts[k - 1]]
        lines += [[cue.start, cue.end, t] for t in texts[k:]]
    return [Line(*line) for line in lines]


def paragraphs(lines, gap=2.0, max_words=PARAGRAPH_WORDS):
    """
    Lines joined into paragraphs. A pause of at least gap seconds starts a new one (a speaker's
    pause is where a new thought begins; auto-captions have no punctuation to go by), and so
    does a line that would take a paragraph past max_words, so that samples can be cut from
    whole paragraphs.
    """
    out, current, n_words, prev_end = [], [], 0, None
    for line in lines:
        words = len(line.text.split())
        if current and (line.start - prev_end >= gap or n_words + words > max_words):
            out.append(Paragraph(start, " ".join(current)))
            current, n_words = [], 0
        if not current:
            start = line.start
        current.append(line.text)
        n_words += words
        prev_end = line.end if prev_end is None else max(prev_end, line.end)
    if current:
        out.append(Paragraph(start, " ".join(current)))
    return out


def samples(paragraphs, sample_words=200):
    """
    Training samples of at most sample_words words, each made of whole consecutive paragraphs
    (separated by blank lines) so that a sample never starts or stops mid-thought; a paragraph
    longer than sample_words is cut on word boundaries into samples of its own.
    """
    if sample_words < 1:
        raise ValueError(f"sample_words must be at least 1, got {sample_words}")
    out, current, n_words = [], [], 0
    def flush():
        if current:
            out.append(Sample(current[0].start, "\n\n".join(p.text for p in current)))
            current.clear()
    for para in paragraphs:
        words = para.text.split()
        if n_words + len(words) > sample_words:
            flush()
            n_words = 0
        if len(words) > sample_words:
            out += [Sample(para.start, " ".join(words[i:i + sample_words])) for i in range(0, len(words), sample_words)]
            continue
        current.append(para)
        n_words += len(words)
    flush()
    return out


def read_vtt(path, name=None):
    """The cues of a .vtt file; ValueError (one line, naming it) when it is not UTF-8 or not WebVTT."""
    name = name or str(path)
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{name}: not UTF-8 text (byte {e.start} is {data[e.start:e.start + 1]!r})") from None
    return parse_vtt(text, name)


def transcript_paragraphs(path, gap=2.0, max_words=PARAGRAPH_WORDS, keep_annotations=False, name=None):
    """The clean paragraphs of one .vtt file (see paragraphs()); name (default: path) is used in errors."""
    return paragraphs(clean_lines(read_vtt(path, name), keep_annotations), gap, max_words)


def transcript_samples(path, sample_words=200, gap=2.0, max_words=None, keep_annotations=False, name=None):
    """The training samples of one .vtt file (see samples()); paragraphs of at most min(100, sample_words) words."""
    max_words = max_words or min(PARAGRAPH_WORDS, sample_words)
    return samples(transcript_paragraphs(path, gap, max_words, keep_annotations, name), sample_words)
