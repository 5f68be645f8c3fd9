"""
Download a tokenizer and checkpoints from the Hugging Face hub into $NANOCHAT_BASE_DIR, laid out so
that load_model (chat_cli, chat_web, chat_eval, base_loss, ...) uses them with no other step:

    python -m scripts.download_assets                  # tokenizer.pkl, token_bytes.pt of karpathy/nanochat-d32 -> tokenizer/
    python -m scripts.download_assets --extra "karpathy/nanochat-d32::chatsft_checkpoints/d32::model_*.pt,meta_*.json"
    python -m scripts.download_assets --skip-tokenizer --extra "me/my-model::base_checkpoints/d20::*_000800.*"

--extra REPO::SUBDIR::PATTERNS (repeatable): the files of REPO whose path matches one of the comma-separated
glob patterns (matched against the whole path, as huggingface_hub's allow_patterns are) go into
$NANOCHAT_BASE_DIR/SUBDIR/ under their own names; checkpoints keep nanochat's model_<step>.pt / meta_<step>.json.
The file list and sizes come from the hub API ({hub}/api/models/{repo}/revision/{rev}?blobs=true), each file
from {hub}/{repo}/resolve/{rev}/{path} through nanochat.download: a .part resumed with Range, retried, and
renamed into place only when its size is the hub's. Files already there with the hub's size are skipped, so
the same command again resumes or does nothing. A private or gated repo needs a token: HF_TOKEN or --token,
sent as a bearer header. NANOCHAT_HF_URL (or --hub_url) replaces https://huggingface.co (a mirror, or tests).
tokenizer.pkl and the .pt files are pickles, which can run code when loaded: take them only from repos you trust.
"""
import fnmatch
import json
import os
import re
import tempfile
import time
from urllib.parse import quote

import torch

from nanochat.checkpoint_manager import PHASE_DIRS, checkpoint_steps
from nanochat.common import ArgumentParser, UserError, die, get_base_dir, print0
from nanochat.download import DownloadError, download_file

TOKENIZER_FILES = ("tokenizer.pkl", "token_bytes.pt")
PROGRESS_EVERY = 5.0  # seconds between progress lines of one file

# -----------------------------------------------------------------------------
# settings
parser = ArgumentParser(prog="python -m scripts.download_assets",
                        description="Download a tokenizer and checkpoint bundles from the Hugging Face hub into $NANOCHAT_BASE_DIR.")
parser.add_argument("--repo", type=str, default="karpathy/nanochat-d32",
                    help="model repo whose tokenizer.pkl and token_bytes.pt go to tokenizer/ (default karpathy/nanochat-d32)")
parser.add_argument("--extra", action="append", default=[], metavar="REPO::SUBDIR::PATTERNS",
                    help="also download the files of REPO matching the comma-separated glob PATTERNS into $NANOCHAT_BASE_DIR/SUBDIR "
                         "(repeatable), e.g. karpathy/nanochat-d32::base_checkpoints/d32::model_*.pt,meta_*.json")
parser.add_argument("--skip_tokenizer", action="store_true", help="do not download the tokenizer (only the --extra bundles)")
parser.add_argument("--token", type=str, default=None,
                    help="Hugging Face read token for private or gated repos (default $HF_TOKEN; the variable keeps it out of `ps`)")
parser.add_argument("--revision", type=str, default="main", help="branch, tag or commit of every repo (default main)")
parser.add_argument("--hub_url", type=str, default=os.environ.get("NANOCHAT_HF_URL") or "https://huggingface.co",
                    help="the hub's address (default $NANOCHAT_HF_URL, else https://huggingface.co)")
args = parser.parse_args()

hub = args.hub_url.rstrip("/")
token = args.token or os.environ.get("HF_TOKEN")
headers = {"Authorization": f"Bearer {token}"} if token else {}
base = get_base_dir()


def parse_extra(spec):
    """'repo::subdir::pat1,pat2' -> (repo, subdir, [patterns])."""
    example = "e.g. karpathy/nanochat-d32::base_checkpoints/d32::model_*.pt,meta_*.json"
    parts = [p.strip() for p in spec.split("::")]
    if len(parts) != 3 or not all(parts):
        raise UserError(f"--extra {spec!r}: expected REPO::SUBDIR::PATTERNS, {example}")
    repo, subdir, patterns = parts
    if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", repo):
        raise UserError(f"--extra {spec!r}: {repo!r} is not a hub repo id (owner/name), {example}")
    subdir = os.path.normpath(subdir)
    if os.path.isabs(subdir) or subdir == "." or subdir.split(os.sep)[0] == "..":
        raise UserError(f"--extra {spec!r}: SUBDIR must be a folder inside $NANOCHAT_BASE_DIR, {example}")
    patterns = [p.strip() for p in patterns.split(",") if p.strip()]
    if not patterns:
        raise UserError(f"--extra {spec!r}: no patterns, {example}")
    return repo, subdir, patterns


def refusal(what, e):
    """A DownloadError as one line that says what to do about it."""
    where = f"{what} (revision {args.revision}) on {hub}"
    if e.status in (401, 403) and token:
        return (f"{where}: the token was refused (HTTP {e.status}): it is invalid or expired, or has no access to this repo "
                f"(a gated repo's terms must be accepted on its page first)")
    if e.status in (401, 403):
        return (f"{where} needs a token (HTTP {e.status}: private or gated, or no such repo): set HF_TOKEN or pass --token "
                f"with a read token from https://huggingface.co/settings/tokens")
    if e.status == 404:
        return f"{where}: not found (HTTP 404): check the repo id, the file and --revision"
    return f"{e}; run the same command again to resume"


def list_repo(repo):
    """{path: size in bytes, or None where the hub gives none} of a model repo at --revision, from the hub API."""
    url = f"{hub}/api/models/{repo}/revision/{quote(args.revision, safe='')}?blobs=true"
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, repo.replace("/", "--") + ".json")
        try:
            download_file(url, path, headers=headers, log=print0)
        except DownloadError as e:
            raise UserError(refusal(repo, e)) from None
        try:
            with open(path, encoding="utf-8") as f:
                siblings = json.load(f)["siblings"]
            # an LFS file's size is in "size" and again in "lfs"; older answers had only the latter
            return {s["rfilename"]: s.get("size", (s.get("lfs") or {}).get("size")) for s in siblings}
        except (ValueError, KeyError, TypeError, AttributeError):
            raise UserError(f"{url}: not a file list in the hub's shape (no siblings with rfilename)") from None


def some_files(files):
    names = sorted(files)
    return ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "") if names else "no files"


def matching(repo, files, patterns):
    """The files of the repo that match the patterns: {path: size}; a pattern matching nothing is an error."""
    chosen = {}
    for pattern in patterns:
        hits = [p for p in files if fnmatch.fnmatchcase(p, pattern)]
        if not hits:
            raise UserError(f"no file of {repo} matches {pattern!r}; it has {some_files(files)}")
        chosen.update((p, files[p]) for p in hits)
    return dict(sorted(chosen.items()))


def tokenizer_files(repo, files):
    """tokenizer.pkl (required) and token_bytes.pt (if there) of the repo: at its top level, else the one anywhere."""
    chosen = {}
    for name in TOKENIZER_FILES:
        hits = [p for p in files if p == name] or [p for p in files if p.rsplit("/", 1)[-1] == name]
        if len(hits) > 1:
            raise UserError(f"{repo} has several {name} ({', '.join(hits)}): choose one with "
                            f"--skip_tokenizer --extra \"{repo}::tokenizer::{hits[0]},...\"")
        chosen.update((p, files[p]) for p in hits)
    if not any(p.rsplit("/", 1)[-1] == "tokenizer.pkl" for p in chosen):
        raise UserError(f"{repo} has no tokenizer.pkl (it has {some_files(files)}): name another repo with --repo, "
                        f"or use --skip_tokenizer")
    return chosen


def fetch(repo, remote, size, dest):
    """Download one file to dest unless it is there with the hub's size; returns whether it was downloaded."""
    rel = os.path.relpath(dest, base)
    if os.path.exists(dest):
        have = os.path.getsize(dest)
        if size is None or have == size:
            print0(f"{rel}: already there ({have:,d} bytes{', the hub gives no size' if size is None else ''}), skipped")
            return False
        print0(f"{rel}: {have:,d} bytes here but {size:,d} on the hub: downloading it again")
    part = dest + ".part"
    got = os.path.getsize(part) if os.path.exists(part) else 0
    total = f"{size:,d} bytes" if size is not None else "size unknown"
    print0(f"{rel}: {repo}/{remote} ({total})" + (f", resuming after {got:,d} bytes" if got else ""))
    t0 = last = time.time()
    start = got

    def on_bytes(n):
        nonlocal got, last
        got += n
        if time.time() - last >= PROGRESS_EVERY:
            last = time.time()
            share = f" ({100 * got / size:.0f}%)" if size else ""
            print0(f"  {rel}: {got / 1e6:,.1f} MB{share}, {(got - start) / 1e6 / (last - t0):.1f} MB/s")

    def size_complaint(path):
        n = os.path.getsize(path)
        if size is not None and n != size:
            # a file changing on the hub, or a bad mirror: never put a wrong-sized checkpoint in place
            return f"{n:,d} bytes arrived but the hub lists {size:,d}: not put in place"
        return None

    os.makedirs(os.path.dirname(dest), exist_ok=True)
    url = f"{hub}/{repo}/resolve/{quote(args.revision, safe='')}/{quote(remote)}"
    try:
        download_file(url, dest, headers=headers, on_bytes=on_bytes, validate=size_complaint, log=print0)
    except DownloadError as e:
        raise UserError(refusal(f"{repo}/{remote}", e)) from None
    print0(f"  {rel}: {os.path.getsize(dest):,d} bytes in {time.time() - t0:.1f}s")
    return True


def write_token_bytes(tokenizer_dir):
    """token_bytes.pt computed from tokenizer.pkl, for a repo that has only the tokenizer."""
    from nanochat.tokenizer import Tokenizer, compute_token_bytes
    path = os.path.join(tokenizer_dir, "token_bytes.pt")
    try:
        tokenizer = Tokenizer.from_directory(tokenizer_dir)
    except Exception as e:  # a pickle of something else: say so rather than a traceback
        raise UserError(f"{os.path.join(tokenizer_dir, 'tokenizer.pkl')} is not a nanochat tokenizer "
                        f"({type(e).__name__}: {e}): check --repo") from None
    torch.save(compute_token_bytes(tokenizer), path + ".tmp")
    os.replace(path + ".tmp", path)
    print0(f"{os.path.relpath(path, base)}: computed from tokenizer.pkl (the repo has none)")


# -----------------------------------------------------------------------------
# plan: every file, its size on the hub and its place here, before anything is downloaded
try:
    bundles = [parse_extra(spec) for spec in args.extra]
    if args.skip_tokenizer and not bundles:
        raise UserError("nothing to do: --skip_tokenizer and no --extra")
    listings, plan, places = {}, [], {}  # plan: (repo, remote path, size, dest)
    for repo, subdir, patterns in ([] if args.skip_tokenizer else [(args.repo, "tokenizer", None)]) + bundles:
        if repo not in listings:
            listings[repo] = list_repo(repo)
        files = listings[repo]
        chosen = tokenizer_files(repo, files) if patterns is None else matching(repo, files, patterns)
        for remote, size in chosen.items():  # tokenizer.pkl before token_bytes.pt: whether the pair is fresh is known
            dest = os.path.join(base, subdir, remote.rsplit("/", 1)[-1])
            if dest in places and places[dest] != (repo, remote):
                raise UserError(f"{os.path.relpath(dest, base)} would come from both {'/'.join(places[dest])} and "
                                f"{repo}/{remote}: narrow the patterns")
            if dest not in places:
                places[dest] = (repo, remote)
                plan.append((repo, remote, size, dest))
    known = [size for _, _, size, _ in plan if size is not None]
    print0(f"{len(plan)} files from {', '.join(listings)} at revision {args.revision}, {sum(known) / 1e6:,.1f} MB"
           f"{' (some sizes unknown)' if len(known) < len(plan) else ''}, into {base}")

    # -------------------------------------------------------------------------
    # download
    tokenizer_dir = os.path.join(base, "tokenizer")
    fresh_tokenizer = False
    for repo, remote, size, dest in plan:
        if dest == os.path.join(tokenizer_dir, "token_bytes.pt") and fresh_tokenizer and os.path.exists(dest):
            os.remove(dest)  # a pair with tokenizer.pkl: an old one of the same size would pass the size check
        downloaded = fetch(repo, remote, size, dest)
        fresh_tokenizer |= downloaded and dest == os.path.join(tokenizer_dir, "tokenizer.pkl")
    token_bytes = os.path.join(tokenizer_dir, "token_bytes.pt")
    if not args.skip_tokenizer and token_bytes not in places and (fresh_tokenizer or not os.path.exists(token_bytes)):
        write_token_bytes(tokenizer_dir)
except UserError as e:
    die(str(e))

# -----------------------------------------------------------------------------
# what load_model will find
sources = {folder: source for source, folder in PHASE_DIRS.items()}
for repo, subdir, _ in bundles:
    parts = subdir.split(os.sep)
    if len(parts) == 2 and parts[0] in sources:
        steps = checkpoint_steps(os.path.join(base, subdir))
        if steps:
            print0(f"{subdir}: checkpoint step {steps[-1]}: python -m scripts.chat_cli -i {sources[parts[0]]} -g {parts[1]}")
        else:
            print0(f"warning: {subdir} has no complete checkpoint (model_<step>.pt with its meta_<step>.json): "
                   f"load_model will not find one there")
if not os.path.exists(os.path.join(base, "tokenizer", "tokenizer.pkl")):
    print0(f"warning: no tokenizer in {os.path.join(base, 'tokenizer')}: load_model needs one (run without --skip_tokenizer)")
print0("done")
