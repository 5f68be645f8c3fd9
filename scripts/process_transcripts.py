"""
Clean WebVTT subtitles (e.g. your videos' YouTube auto-captions) into training text: the .vtt
files under the given folders (recursively, in sorted order) and the files given by name.

    python -m scripts.process_transcripts captions/ [more/ talk.vtt ...] [--out OUT.jsonl]
        [--sample_words 200] [--gap 2.0] [--keep_annotations]

Writes OUT.jsonl, one training sample per line: {"text": ..., "source": <file name>, "start":
<seconds of its first cue>}, and OUT.txt beside it: the clean paragraphs of each file under a
"# <file name>" line, to read through before training on them. Default OUT:
$NANOCHAT_BASE_DIR/personal/transcripts.jsonl. A file that cannot be used (not WebVTT, not UTF-8,
broken timings, no speech) is named with the reason and skipped.
"""
import json
import os

from nanochat.common import ArgumentParser, die, get_base_dir, print0
from nanochat.transcripts import PARAGRAPH_WORDS, samples, transcript_paragraphs

# -----------------------------------------------------------------------------
# settings

parser = ArgumentParser(prog="python -m scripts.process_transcripts",
                        description="Clean WebVTT subtitles into paragraphs and training samples (JSONL).")
parser.add_argument("paths", nargs="+", metavar="PATH", help="folders searched for .vtt files, or .vtt files")
parser.add_argument("--out", type=str, default=None,
                    help="the JSONL to write; the paragraphs go to the same name with .txt "
                         "(default: $NANOCHAT_BASE_DIR/personal/transcripts.jsonl)")
parser.add_argument("--sample_words", type=int, default=200, help="words per training sample, at most (default 200)")
parser.add_argument("--gap", type=float, default=2.0, help="a pause of this many seconds starts a new paragraph (default 2.0)")
parser.add_argument("--keep_annotations", action="store_true", help="keep sound annotations such as [Music] (dropped by default)")
args = parser.parse_args()

if args.sample_words < 1:
    die("--sample_words must be at least 1")
if args.gap <= 0:
    die("--gap must be positive")
out_path = args.out or os.path.join(get_base_dir(), "personal", "transcripts.jsonl")
txt_path = os.path.splitext(out_path)[0] + ".txt"

# (path, name): the name is the path relative to the folder it was found in
files = []
for path in args.paths:
    if os.path.isdir(path):
        for root, dirs, names in os.walk(path):
            dirs.sort()
            for n in sorted(names):
                if n.lower().endswith(".vtt"):
                    files.append((os.path.join(root, n), os.path.relpath(os.path.join(root, n), path)))
    elif os.path.isfile(path):
        files.append((path, os.path.basename(path)))
    else:
        die(f"{path}: no such file or folder")
if not files:
    die(f"no .vtt files in {' '.join(args.paths)}")

# -----------------------------------------------------------------------------
# clean every file

print0(f"{len(files)} .vtt file(s); samples of at most {args.sample_words} words, paragraphs at pauses of {args.gap:g}s")
results, skipped = [], []  # results: (name, paragraphs, samples)
for path, name in files:
    try:
        paras = transcript_paragraphs(path, args.gap, min(PARAGRAPH_WORDS, args.sample_words), args.keep_annotations, name)
        reason = None if paras else f"{name}: no speech in it (only blank or [annotation] cues)"
    except ValueError as e:  # its message starts with the file's name
        reason = str(e)
    except OSError as e:
        reason = f"{name}: cannot read it ({e.strerror or e})"
    if reason:
        skipped.append(name)
        print0(f"  skipped {reason}")
        continue
    cut = samples(paras, args.sample_words)
    results.append((name, paras, cut))
    n_words = sum(len(p.text.split()) for p in paras)
    print0(f"  {name}: {len(paras)} paragraphs, {n_words:,d} words, {len(cut)} samples")
if not results:
    die(f"no usable .vtt file ({len(skipped)} skipped)")

# -----------------------------------------------------------------------------
# write, atomically: a crash never leaves half a file where a whole one was

def write_atomic(path, text):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(path + ".tmp", path)

write_atomic(out_path, "".join(json.dumps({"text": s.text, "source": name, "start": round(s.start, 3)}, ensure_ascii=False) + "\n"
                               for name, _, cut in results for s in cut))
write_atomic(txt_path, "\n\n".join(f"# {name}\n\n" + "\n\n".join(p.text for p in paras) for name, paras, _ in results) + "\n")

# -----------------------------------------------------------------------------
# report

n_paras = sum(len(paras) for _, paras, _ in results)
n_words = sum(len(p.text.split()) for _, paras, _ in results for p in paras)
n_samples = sum(len(cut) for _, _, cut in results)
print0(f"files: {len(results)} read, {len(skipped)} skipped | {n_paras:,d} paragraphs, {n_words:,d} words, {n_samples:,d} samples")
print0(f"wrote {out_path} (samples) and {txt_path} (paragraphs)")
