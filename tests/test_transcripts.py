"""WebVTT transcripts: parsing, cleaning YouTube's rolling auto-captions, paragraphs, samples, and the script."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nanochat.transcripts import (Cue, Line, Paragraph, clean_lines, clean_text, paragraphs, parse_vtt, read_vtt,
                                  samples, transcript_paragraphs, transcript_samples)

REPO = Path(__file__).resolve().parents[1]

# What yt-dlp --write-auto-subs gets from YouTube: each cue shows the previous line again and then
# the new one word by word; a 10 ms cue repeats the finished line; one line grows ("we're" ->
# "we're planting tomatoes"); [Music] before the talk; a 3.5 s pause before "first dig a hole".
YOUTUBE = """WEBVTT
Kind: captions
Language: en

00:00:00.000 --> 00:00:02.110 align:start position:0%
 
[Music]

00:00:02.110 --> 00:00:02.120 align:start position:0%
[Music]
 

00:00:02.120 --> 00:00:04.390 align:start position:0%
[Music]
hey<00:00:02.480><c> everyone</c><00:00:02.800><c> welcome</c><00:00:03.120><c> back</c>

00:00:04.390 --> 00:00:04.400 align:start position:0%
hey everyone welcome back
 

00:00:04.400 --> 00:00:06.950 align:start position:0%
hey everyone welcome back
to<00:00:04.640><c.colorE5E5E5> the</c><00:00:04.800><c> garden</c><00:00:05.200><c> so</c><00:00:05.500><c> today</c>

00:00:06.950 --> 00:00:06.960 align:start position:0%
to the garden so today
 

00:00:06.960 --> 00:00:07.500 align:start position:0%
to the garden so today
we're

00:00:07.500 --> 00:00:09.000 align:start position:0%
to the garden so today
we're<00:00:07.700><c> planting</c><00:00:08.100><c> tomatoes</c>

00:00:09.000 --> 00:00:09.010 align:start position:0%
we're planting tomatoes
 

00:00:12.500 --> 00:00:14.000 align:start position:0%
 
first<00:00:12.900><c> dig</c><00:00:13.200><c> a</c><00:00:13.400><c> hole</c>

00:00:14.000 --> 00:00:14.010 align:start position:0%
first dig a hole
 

00:00:14.010 --> 00:00:16.000 align:start position:0%
first dig a hole
&gt;&gt; about<00:00:14.300><c> this</c><00:00:14.600><c> deep</c>
"""


def write(tmp_path, name, text):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def vtt(*cues):
    """A WebVTT file from (start, end, payload) with timestamps written as mm:ss.ttt."""
    def ts(t):
        return f"{int(t // 60):02d}:{t % 60:06.3f}"
    return "WEBVTT\n\n" + "\n\n".join(f"{ts(a)} --> {ts(b)}\n{text}" for a, b, text in cues) + "\n"

# -----------------------------------------------------------------------------
# parsing


def test_parse_vtt_header_blocks_identifiers_and_timestamp_forms():
    text = ("\ufeffWEBVTT - a title\r\nKind: captions\r\nLanguage: en\r\n\r\n"
            "NOTE this is a comment\r\n00:00:01.000 --> 00:00:02.000 is not a cue\r\n\r\n"
            "STYLE\r\n::cue { color: yellow }\r\n\r\n"
            "REGION\r\nid:fred width:40%\r\n\r\n"
            "intro-1\r\n00:01.500 --> 00:03.250 align:start position:0%\r\nhello there\r\nsecond line\r\n\r\n"
            "01:02:03,004 --> 01:02:05,000\r\n<v Ann>bye</v>\r\n")
    assert parse_vtt(text) == [Cue(1.5, 3.25, "hello there\nsecond line"), Cue(3723.004, 3725.0, "<v Ann>bye</v>")]


def test_parse_vtt_keeps_youtube_space_lines_as_payload():
    cues = parse_vtt(YOUTUBE)
    assert cues[0] == Cue(0.0, 2.11, " \n[Music]")
    assert cues[1] == Cue(2.11, 2.12, "[Music]\n ")
    assert len(cues) == 12


@pytest.mark.parametrize("text, message", [
    ("", "talk.vtt: empty file"),
    ("1\n00:00:01.000 --> 00:00:02.000\nhi\n", "talk.vtt:1: not a WebVTT file"),
    ("WEBVTTX\n\n", "talk.vtt:1: not a WebVTT file"),
    ("WEBVTT\n\n00:00:01.000 --> 00:00:02.000\nhi\n\n00:00:03.000 -> 00:00:04.000\nthere\n", "talk.vtt:6: expected a cue timing line"),
    ("WEBVTT\n\n00:00:01.000 --> 00:00:02.000\nhi\n\n00:00:03.000 --> 00:00:xx.000\nthere\n", "talk.vtt:6: broken timing line"),
    ("WEBVTT\n\nid\n00:00:01.000 --> 00:00:02\nhi\n", "talk.vtt:4: broken timing line"),
    ("WEBVTT\n\n00:00:01.000 --> 00:00:75.000\nhi\n", "talk.vtt:3: minutes and seconds must be below 60"),
    ("WEBVTT\n\n00:00:05.000 --> 00:00:02.000\nhi\n", "talk.vtt:3: the cue ends (2.000s) before it starts (5.000s)"),
])
def test_parse_vtt_errors_name_file_and_line(text, message):
    with pytest.raises(ValueError) as e:
        parse_vtt(text, "talk.vtt")
    assert str(e.value).startswith(message)
    assert "\n" not in str(e.value)


def test_read_vtt_rejects_bytes_that_are_not_utf8(tmp_path):
    path = tmp_path / "latin1.vtt"
    path.write_bytes("WEBVTT\n\n00:00:01.000 --> 00:00:02.000\ncafé\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"^latin1.vtt: not UTF-8 text \(byte 41"):
        read_vtt(path, "latin1.vtt")

# -----------------------------------------------------------------------------
# cleaning


def test_rolling_auto_captions_are_deduplicated_in_order():
    lines = clean_lines(parse_vtt(YOUTUBE))
    assert [line.text for line in lines] == [
        "hey everyone welcome back",
        "to the garden so today",
        "we're planting tomatoes",  # grew from "we're": replaced, not emitted twice
        "first dig a hole",
        "about this deep",  # the >> speaker mark is gone
    ]
    # start: the cue that brought the line; end: the last cue that added to it (not the repeats)
    assert lines[0] == Line(2.12, 4.39, "hey everyone welcome back")
    assert lines[2] == Line(6.96, 9.0, "we're planting tomatoes")
    assert paragraphs(lines) == [
        Paragraph(2.12, "hey everyone welcome back to the garden so today we're planting tomatoes"),
        Paragraph(12.5, "first dig a hole about this deep"),
    ]


def test_repeated_whole_cue_and_plain_subtitles():
    # a cue repeated entirely adds nothing; ordinary subtitles (no rolling) are all kept,
    # multi-line cues included
    cues = [Cue(0, 1, "one two\nthree four"), Cue(1, 2, "one two\nthree four"), Cue(2, 3, "five\nsix seven"),
            Cue(3, 4, "eight")]
    assert [line.text for line in clean_lines(cues)] == ["one two", "three four", "five", "six seven", "eight"]


def test_tags_and_entities_are_stripped():
    assert clean_text("<v Roger Bingham><i>We</i> <b>are</b> <u>in</u></v> <c.colorE5E5E5>New&nbsp;York</c>") == "We are in New York"
    assert clean_text("fish &amp; chips &gt; salad &quot;yes&quot; &#39;no&#39;") == "fish & chips > salad \"yes\" 'no'"
    assert clean_text("x &lt;b&gt; y<00:00:01.000><c> z</c>") == "x <b> y z"  # escaped tags are text
    assert clean_text("  lots   of\tspace ") == "lots of space"
    assert clean_text("&gt;&gt; next speaker") == "next speaker"


def test_annotations_dropped_by_default_and_kept_on_request():
    cues = [Cue(0, 2, "[Music]"), Cue(2, 4, "so [Applause] thank you"), Cue(4, 6, "[ __ ] it")]
    assert [line.text for line in clean_lines(cues)] == ["so thank you", "it"]
    assert [line.text for line in clean_lines(cues, keep_annotations=True)] == ["[Music]", "so [Applause] thank you", "[ __ ] it"]
    assert clean_lines([Cue(0, 2, "[Music]"), Cue(2, 4, " ")]) == []

# -----------------------------------------------------------------------------
# paragraphs and samples


def test_paragraphs_split_on_pauses_and_word_limit():
    lines = [Line(0.0, 1.0, "a b"), Line(1.0, 2.0, "c d"), Line(3.9, 5.0, "e f"),  # 1.9 s: same paragraph
             Line(7.0, 8.0, "g h"), Line(8.0, 9.0, "i j"), Line(9.0, 10.0, "k")]  # 2.0 s: a new one
    assert paragraphs(lines) == [Paragraph(0.0, "a b c d e f"), Paragraph(7.0, "g h i j k")]
    assert paragraphs(lines, gap=1.5) == [Paragraph(0.0, "a b c d"), Paragraph(3.9, "e f"), Paragraph(7.0, "g h i j k")]
    assert paragraphs(lines, max_words=4) == [Paragraph(0.0, "a b c d"), Paragraph(3.9, "e f"), Paragraph(7.0, "g h i j"),
                                              Paragraph(9.0, "k")]
    # a [Music] cue between two lines is silence: the pause counts
    cues = [Cue(0, 2, "hello there"), Cue(2, 6, "hello there\n[Music]"), Cue(6, 8, "[Music]\nwelcome")]
    assert paragraphs(clean_lines(cues)) == [Paragraph(0, "hello there"), Paragraph(6, "welcome")]


def test_samples_hold_whole_paragraphs_within_the_word_budget():
    paras = [Paragraph(float(i), " ".join(f"p{i}w{j}" for j in range(n))) for i, n in enumerate([4, 5, 3, 9, 2, 2])]
    out = samples(paras, sample_words=8)
    assert out[0].text == "p0w0 p0w1 p0w2 p0w3"  # 4 + 5 > 8: the second paragraph waits
    assert [s.start for s in out] == [0.0, 1.0, 3.0, 3.0, 4.0]
    assert out[1].text == paras[1].text + "\n\n" + paras[2].text
    assert out[2].text == " ".join(f"p3w{j}" for j in range(8)) and out[3].text == "p3w8"  # too long: cut on words
    assert out[4].text == "p4w0 p4w1\n\np5w0 p5w1"
    assert all(len(s.text.split()) <= 8 for s in out)
    # nothing lost, nothing reordered
    assert " ".join(s.text for s in out).split() == " ".join(p.text for p in paras).split()
    with pytest.raises(ValueError):
        samples(paras, 0)


def test_transcript_samples_of_a_file(tmp_path):
    # 30 lines of 5 words, a 3 s pause after every 10th: 3 paragraphs of 50 words
    cues, t = [], 0.0
    for i in range(30):
        cues.append((t, t + 1.0, " ".join(f"w{i}_{j}" for j in range(5))))
        t += 1.0 + (3.0 if i % 10 == 9 else 0.0)
    path = write(tmp_path, "talk.vtt", vtt(*cues))
    assert [len(p.text.split()) for p in transcript_paragraphs(path)] == [50, 50, 50]
    out = transcript_samples(path, sample_words=120)
    assert [len(s.text.split()) for s in out] == [100, 50]
    assert [s.start for s in out] == [0.0, 26.0]
    assert out[0].text.count("\n\n") == 1
    # sample_words below the paragraph size: paragraphs shrink to fit, so none is cut
    assert [len(s.text.split()) for s in transcript_samples(path, sample_words=20)] == [20, 20, 10] * 3


def test_demo_transcripts_are_clean():
    demo = REPO / "dev" / "demo_personal"
    files = sorted(demo.glob("*.vtt"))
    assert 2 <= len(files) <= 3
    words = 0
    for path in files:
        for s in transcript_samples(path):
            assert "[" not in s.text and "<" not in s.text and len(s.text.split()) <= 200
            words += len(s.text.split())
    assert 1500 <= words <= 2500

# -----------------------------------------------------------------------------
# the script


def run_script(args, base):
    env = {**os.environ, "NANOCHAT_BASE_DIR": str(base), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "scripts.process_transcripts", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_script_skips_bad_files_and_writes_samples(tmp_path):
    captions = tmp_path / "captions"
    write(captions, "a/garden.vtt", YOUTUBE)
    write(captions, "b_broken.vtt", "WEBVTT\n\n00:00:01.000 --> 00:00:02.000\nhi\n\n00:00:03.000 --> 00:00:0x.000\nthere\n")
    write(captions, "c_not.vtt", "just some text\n")
    write(captions, "d_music.vtt", "WEBVTT\n\n00:00:01.000 --> 00:00:02.000\n[Music]\n")
    write(captions, "notes.txt", "not a caption file")
    (captions / "e_latin1.vtt").write_bytes(b"WEBVTT\n\n00:00:01.000 --> 00:00:02.000\ncaf\xe9\n")
    base = tmp_path / "base"
    r = run_script([str(captions), "--sample_words", "8"], base)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "5 .vtt file(s)" in out
    assert "skipped b_broken.vtt:6: broken timing line" in out
    assert "skipped c_not.vtt:1: not a WebVTT file" in out
    assert "skipped d_music.vtt: no speech" in out
    assert "skipped e_latin1.vtt: not UTF-8" in out
    # paragraphs shrink to the 8-word samples: "hey everyone welcome back" + "to the garden so today" is 9
    assert f"a{os.sep}garden.vtt: 3 paragraphs, 19 words, 3 samples" in out
    assert "files: 1 read, 4 skipped | 3 paragraphs, 19 words, 3 samples" in out
    jsonl = base / "personal" / "transcripts.jsonl"
    assert str(jsonl) in out
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert rows == [
        {"text": "hey everyone welcome back", "source": f"a{os.sep}garden.vtt", "start": 2.12},
        {"text": "to the garden so today we're planting tomatoes", "source": f"a{os.sep}garden.vtt", "start": 4.4},
        {"text": "first dig a hole about this deep", "source": f"a{os.sep}garden.vtt", "start": 12.5},
    ]
    assert (base / "personal" / "transcripts.txt").read_text() == (
        f"# a{os.sep}garden.vtt\n\nhey everyone welcome back\n\nto the garden so today we're planting tomatoes\n\n"
        "first dig a hole about this deep\n")
    assert not list((base / "personal").glob("*.tmp"))


def test_script_keep_annotations_and_out(tmp_path):
    path = write(tmp_path, "talk.vtt", YOUTUBE)
    out = tmp_path / "out" / "mine.jsonl"
    r = run_script([str(path), "--out", str(out), "--keep-annotations"], tmp_path / "base")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    # no pause between [Music] and the first words: one paragraph
    assert rows[0]["text"].startswith("[Music] hey everyone welcome back") and rows[0]["start"] == 0.0
    assert (tmp_path / "out" / "mine.txt").read_text().startswith("# talk.vtt\n\n[Music] hey everyone")


def test_script_fails_when_no_file_is_usable(tmp_path):
    write(tmp_path, "caps/bad.vtt", "hello\n")
    r = run_script([str(tmp_path / "caps")], tmp_path / "base")
    assert r.returncode == 1
    assert "skipped bad.vtt:1: not a WebVTT file" in r.stdout
    assert r.stderr.strip().splitlines() == ["error: no usable .vtt file (1 skipped)"]
    r = run_script([str(tmp_path / "nowhere")], tmp_path / "base")
    assert r.returncode == 1 and r.stderr.strip().startswith("error: ") and "no such file or folder" in r.stderr
    r = run_script(["--help"], tmp_path / "base")
    assert r.returncode == 0 and "--sample_words" in r.stdout
