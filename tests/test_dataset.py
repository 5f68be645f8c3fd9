"""Data sources: the built-in corpus, the user's text, data folder lookup, and downloads from a local HTTP server."""
import io
import os
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nanochat import dataset, fineweb
from nanochat.builtin_corpus import build_builtin
from nanochat.common import UserError
from nanochat.dataset import get_data_dir, list_parquet_files, parquets_iter_batched, shard_name, text_iterator
from nanochat.download import DownloadError
from nanochat.fineweb import download_shard
from nanochat.shard_writer import write_shards
from nanochat.user_text import build_text

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def base_dir(tmp_path, monkeypatch):
    base = tmp_path / "base"
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(base))
    monkeypatch.delenv("NANOCHAT_DATA_URL", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return base


def run_cli(args, base, **env):
    env = {**os.environ, "NANOCHAT_BASE_DIR": str(base), **env}
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def read_texts(path):
    return pq.read_table(path).column("text").to_pylist()

# -----------------------------------------------------------------------------
# built-in corpus

def test_builtin_corpus(tmp_path):
    out = tmp_path / "builtin"
    written, doc_chars, ex_chars = build_builtin(str(out), total_chars=200_000)
    paths = list_parquet_files(str(out))
    assert len(paths) >= 2 and [p for p, _, _ in written] == paths
    assert [os.path.basename(p) for p in paths] == [shard_name(i) for i in range(len(paths))]
    for path in paths:
        table = pq.read_table(path)
        assert table.schema.names == ["text"] and table.schema.field("text").type == pa.string()
        assert all(isinstance(t, str) and t for t in table.column("text").to_pylist())
    # about the size asked for, both kinds of text, and the val shard is a small last shard
    assert 200_000 <= doc_chars + ex_chars < 230_000 and doc_chars > 0 and ex_chars > 0
    docs = [t for p in paths for t in read_texts(p)]
    assert any(d.startswith("# ") for d in docs) and any(d.startswith("Question: ") for d in docs)
    val = read_texts(paths[-1])
    assert 0 < len(val) < len(docs) / 5
    # deterministic: a second build writes the same documents
    again = tmp_path / "again"
    build_builtin(str(again), total_chars=200_000)
    assert [read_texts(p) for p in list_parquet_files(str(again))] == [read_texts(p) for p in paths]


def test_rebuild_removes_stale_shards(tmp_path):
    out = str(tmp_path / "b")
    build_builtin(out, total_chars=300_000, shard_chars=50_000)
    n_big = len(list_parquet_files(out))
    build_builtin(out, total_chars=60_000, shard_chars=50_000)
    assert len(list_parquet_files(out)) < n_big


def test_builtin_cli(base_dir):
    r = run_cli(["nanochat.dataset", "--builtin", "--builtin_chars", "1e5"], base_dir)
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout and "val" in r.stdout
    assert len(list_parquet_files(str(base_dir / "builtin_data"))) >= 2


def main_error(capsys, argv):
    """Run the CLI in-process (a subprocess pays for importing torch each time); return its stderr."""
    with pytest.raises(SystemExit) as exit_info:
        dataset.main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and "Traceback" not in err
    return err.strip().splitlines()[-1]


def test_cli_errors_are_one_line(base_dir, capsys):
    assert main_error(capsys, []).startswith("error: choose one of")
    assert main_error(capsys, ["--text", str(base_dir / "missing"), "--name", "x"]).startswith("error: ")
    assert main_error(capsys, ["--text", str(base_dir)]).startswith("error: --text needs --name")
    assert "too small" in main_error(capsys, ["--builtin", "--builtin_chars", "5"])
    with pytest.raises(SystemExit) as exit_info:
        dataset.main(["--help"])
    assert exit_info.value.code == 0 and "--builtin" in capsys.readouterr().out


# -----------------------------------------------------------------------------
# finding and reading data

def test_get_data_dir(base_dir):
    with pytest.raises(UserError, match=r"python -m nanochat.dataset --builtin"):
        get_data_dir("auto")
    with pytest.raises(UserError, match="unknown data source"):
        get_data_dir("no-such-source")
    build_builtin(str(base_dir / "builtin_data"), total_chars=50_000)
    assert get_data_dir("auto") == str(base_dir / "builtin_data")
    assert get_data_dir("builtin") == str(base_dir / "builtin_data")
    with pytest.raises(UserError, match="-n 8"):
        get_data_dir("fineweb")
    # FineWeb shards win over the built-in corpus once there are any
    write_shards(["a", "b", "c"], str(base_dir / "base_data"))
    assert get_data_dir("auto") == str(base_dir / "base_data")
    # a folder given by path
    folder = base_dir / "elsewhere"
    write_shards(["x", "y"], str(folder))
    assert get_data_dir(str(folder)) == str(folder)


def test_single_shard_is_not_enough(tmp_path):
    (tmp_path / "d").mkdir()
    pq.write_table(pa.table({"text": ["only"]}), tmp_path / "d" / shard_name(0))
    with pytest.raises(UserError, match="at least 2"):
        get_data_dir(str(tmp_path / "d"))


def test_iteration_splits(tmp_path):
    docs = [f"doc {i}" for i in range(100)]
    write_shards(docs, str(tmp_path), shard_chars=150, val_fraction=0.1, row_group_size=4)
    train = [t for batch in parquets_iter_batched("train", str(tmp_path)) for t in batch]
    val = [t for batch in parquets_iter_batched("val", str(tmp_path)) for t in batch]
    assert train == docs[:90] and val == docs[90:]
    batches = list(parquets_iter_batched("train", str(tmp_path)))
    assert all(len(b) <= 4 for b in batches)
    # start/step (DDP ranks) split the row groups without overlap
    r0 = [t for b in parquets_iter_batched("train", str(tmp_path), start=0, step=2) for t in b]
    r1 = [t for b in parquets_iter_batched("train", str(tmp_path), start=1, step=2) for t in b]
    assert not set(r0) & set(r1) and sorted(r0 + r1) == sorted(train)
    # text_iterator: train split only, documents capped, stops after max_chars
    capped = list(text_iterator(str(tmp_path), max_chars=10**9, doc_cap=3))
    assert capped == [d[:3] for d in docs[:90]]
    assert len(list(text_iterator(str(tmp_path), max_chars=20, doc_cap=100))) == 4


def test_user_text(base_dir, tmp_path):
    src = tmp_path / "notes"
    (src / "sub").mkdir(parents=True)
    for i in range(12):
        paras = [f"File {i} paragraph {j}. " + "words " * 30 for j in range(6)]
        (src / "sub" / f"n{i}.md").write_text("\n\n".join(paras))
    (src / "skip.bin").write_bytes(b"\x00\x01")  # not a text file: ignored inside a folder
    written, out_dir = build_text([str(src)], "me", doc_chars=500)
    assert out_dir == str(base_dir / "text_data" / "me")
    docs = [t for p, _, _ in written for t in read_texts(p)]
    assert len(written) >= 2 and all(len(d) < 500 + 250 for d in docs)
    assert sorted(p for d in docs for p in d.split("\n\n")) == sorted(
        f"File {i} paragraph {j}. " + ("words " * 30).strip() for i in range(12) for j in range(6))
    assert get_data_dir("me") == out_dir
    written, _ = build_text([str(src)], "files", split_by="file")
    assert sum(n for _, n, _ in written) == 12
    with pytest.raises(UserError, match="--name"):
        build_text([str(src)], "../bad")
    with pytest.raises(UserError, match="at least 2 documents"):
        build_text([str(src / "sub" / "n0.md")], "tiny", split_by="file")
    with pytest.raises(UserError, match=".txt and .md"):
        build_text([str(src / "skip.bin")], "bin")

# -----------------------------------------------------------------------------
# downloads, against a local HTTP server

def parquet_bytes(seed, n_docs=400):
    import random
    rng = random.Random(seed)
    docs = [rng.randbytes(rng.randint(50, 300)).hex() for _ in range(n_docs)]  # incompressible
    buf = io.BytesIO()
    pq.write_table(pa.table({"text": docs}), buf, compression="none")
    return buf.getvalue()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        srv = self.server
        name = self.path.removeprefix("/")
        srv.log.append((name, self.headers.get("Range"), self.headers.get("Authorization")))
        if srv.fail_next > 0:
            srv.fail_next -= 1
            self.send_error(500)
            return
        if name not in srv.files:
            self.send_error(404)
            return
        data = srv.files[name]
        start, rng = 0, self.headers.get("Range")
        if rng and not srv.ignore_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.truncate_next > 0:  # announce the whole body, send half, hang up
            srv.truncate_next -= 1
            self.wfile.write(body[:len(body) // 2])
            self.close_connection = True
            return
        srv.served += len(body)
        self.wfile.write(body)


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.files, srv.log, srv.fail_next, srv.truncate_next, srv.ignore_range, srv.served = {}, [], 0, 0, False, 0
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()


FAST = dict(backoff=0.01, timeout=10)


def test_full_download(server, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "secret")
    server.files[shard_name(0)] = data = parquet_bytes(0)
    path = download_shard(0, str(tmp_path), base_url=server.url, **FAST)
    assert Path(path).read_bytes() == data and not os.path.exists(path + ".part")
    assert server.log == [(shard_name(0), None, "Bearer secret")]
    # already there: no request at all
    download_shard(0, str(tmp_path), base_url=server.url, **FAST)
    assert len(server.log) == 1


def test_resume_with_range(server, tmp_path):
    server.files[shard_name(3)] = data = parquet_bytes(3)
    part = tmp_path / (shard_name(3) + ".part")
    part.write_bytes(data[:1000])
    path = download_shard(3, str(tmp_path), base_url=server.url, **FAST)
    assert Path(path).read_bytes() == data
    assert server.log[0][1] == "bytes=1000-" and server.served == len(data) - 1000


def test_server_ignoring_range_restarts(server, tmp_path):
    server.files[shard_name(1)] = data = parquet_bytes(1)
    server.ignore_range = True
    (tmp_path / (shard_name(1) + ".part")).write_bytes(b"garbage that must not stay in front")
    path = download_shard(1, str(tmp_path), base_url=server.url, **FAST)
    assert Path(path).read_bytes() == data


def test_complete_part_file_is_finished(server, tmp_path):
    server.files[shard_name(2)] = data = parquet_bytes(2)
    (tmp_path / (shard_name(2) + ".part")).write_bytes(data)
    path = download_shard(2, str(tmp_path), base_url=server.url, **FAST)  # server answers 416
    assert Path(path).read_bytes() == data


def test_retry_after_transient_errors(server, tmp_path):
    server.files[shard_name(0)] = data = parquet_bytes(0)
    server.fail_next = 2  # two 500s, then the file
    path = download_shard(0, str(tmp_path), base_url=server.url, **FAST)
    assert Path(path).read_bytes() == data and len(server.log) == 3


def test_dropped_connection_resumes(server, tmp_path):
    # big enough that some of it reaches the .part before the connection drops
    server.files[shard_name(0)] = data = parquet_bytes(0, n_docs=8000)
    server.truncate_next = 1
    path = download_shard(0, str(tmp_path), base_url=server.url, **FAST)
    assert Path(path).read_bytes() == data
    assert server.log[0][1] is None
    resumed_from = int(re.fullmatch(r"bytes=(\d+)-", server.log[1][1]).group(1))
    assert 0 < resumed_from <= len(data) // 2


def test_failed_download_leaves_no_file(server, tmp_path):
    server.files[shard_name(0)] = parquet_bytes(0)
    server.fail_next = 100
    with pytest.raises(DownloadError, match="gave up after 3 attempts"):
        download_shard(0, str(tmp_path), base_url=server.url, max_attempts=3, **FAST)
    assert not (tmp_path / shard_name(0)).exists() and len(server.log) == 3
    # missing on the server: not retried, nothing left behind
    server.fail_next = 0
    with pytest.raises(DownloadError, match="404"):
        download_shard(7, str(tmp_path), base_url=server.url, **FAST)
    assert not any(p.name.startswith(shard_name(7)) for p in tmp_path.iterdir())
    # a 200 answer that is not a parquet file (an error page)
    for index, body in [(8, b"<html>rate limited</html>"), (9, b"no")]:
        server.files[shard_name(index)] = body
        with pytest.raises(DownloadError, match="not a parquet file"):
            download_shard(index, str(tmp_path), base_url=server.url, **FAST)
        assert not any(p.name.startswith(shard_name(index)) for p in tmp_path.iterdir())


def test_download_cli(server, base_dir):
    for i in (0, 1, fineweb.MAX_SHARD):
        server.files[shard_name(i)] = parquet_bytes(i, n_docs=50)
    r = run_cli(["nanochat.dataset", "-n", "2", "-w", "2"], base_dir, NANOCHAT_DATA_URL=server.url)
    assert r.returncode == 0, r.stderr
    data_dir = base_dir / "base_data"
    assert sorted(p.name for p in data_dir.iterdir()) == [shard_name(0), shard_name(1), shard_name(fineweb.MAX_SHARD)]
    for i in (0, 1, fineweb.MAX_SHARD):
        assert (data_dir / shard_name(i)).read_bytes() == server.files[shard_name(i)]
    assert get_data_dir("auto") == str(data_dir)
    # the validation shard is the last one, as nanochat has it
    assert list_parquet_files(str(data_dir))[-1].endswith(shard_name(fineweb.MAX_SHARD))


def test_download_cli_without_network(base_dir, capsys, monkeypatch):
    # nothing listens on port 1: like having no network
    monkeypatch.setenv("NANOCHAT_DATA_URL", "http://127.0.0.1:1")
    err = main_error(capsys, ["-n", "1"])
    assert "cannot reach" in err and "python -m nanochat.dataset --builtin" in err
    assert not (base_dir / "base_data" / shard_name(0)).exists()


def test_shards_to_download():
    assert fineweb.shards_to_download(3) == [0, 1, 2, fineweb.MAX_SHARD]
    assert fineweb.shards_to_download(0) == [fineweb.MAX_SHARD]
    assert len(fineweb.shards_to_download(-1)) == fineweb.MAX_SHARD + 1

# -----------------------------------------------------------------------------
# TinyStories, downloaded from the local HTTP server standing in for the hub

def ts_story(rng, i):
    words = "cat dog sun tree ball happy sad big little ran jumped played said friend mom".split()
    paras = [" ".join(rng.choice(words) for _ in range(rng.randint(5, 40))).capitalize() + "." for _ in range(rng.randint(1, 3))]
    return f"Once upon a time {i}, Lily ☀ " + "\n\n".join(paras)


def ts_stories(seed, n):
    import random
    rng = random.Random(seed)
    return [ts_story(rng, i) for i in range(n)]


def ts_text(stories):
    # the hub's layout: a story, then a line <|endoftext|>; with stray spaces and blank lines around
    lead, blank = ["  ", "", ""], ["\n", "", "", ""]
    return "".join(f"{lead[i % 3]}{s}  \n{blank[i % 4]}<|endoftext|>\n" for i, s in enumerate(stories))


TS_PATH = "datasets/roneneldan/TinyStories/resolve/main/"


@pytest.fixture
def tinystories_server(server, base_dir, monkeypatch):
    """The server holding both versions' files; NANOCHAT_HF_URL points at it."""
    from nanochat import tinystories
    server.train, server.valid = ts_stories(0, 600), ts_stories(1, 40)
    for train_name, valid_name in tinystories.FILES.values():
        server.files[TS_PATH + train_name] = ts_text(server.train).encode()
        server.files[TS_PATH + valid_name] = ts_text(server.valid).encode()
    monkeypatch.setenv("NANOCHAT_HF_URL", server.url)
    return server


def ts_shard_texts(base):
    paths = list_parquet_files(str(base / "tinystories_data"))
    return [read_texts(p) for p in paths]


def test_iter_stories(tmp_path):
    from nanochat.tinystories import iter_stories
    path = tmp_path / "t.txt"
    path.write_text("  one\nstill one \n<|endoftext|>\n\n<|endoftext|>\ntwo<|endoftext|>three\n\n four \n")
    assert list(iter_stories(str(path))) == ["one\nstill one", "two", "three\n\n four"]
    assert list(iter_stories(str(path), max_stories=2)) == ["one\nstill one", "two"]
    assert list(iter_stories(str(path), max_stories=0)) == []


def test_tinystories_download_and_convert(tinystories_server, base_dir, monkeypatch, capsys):
    from nanochat.tinystories import FILES, build_tinystories
    srv = tinystories_server
    monkeypatch.setenv("HF_TOKEN", "secret")
    with pytest.raises(UserError, match=r"python -m nanochat.dataset --tinystories") as e:
        get_data_dir("tinystories")
    assert "\n" not in str(e.value)
    written, out_dir = build_tinystories(shard_chars=20_000, **FAST)
    assert out_dir == str(base_dir / "tinystories_data") and get_data_dir("tinystories") == out_dir
    shards = ts_shard_texts(base_dir)
    assert len(shards) >= 3 and [p for p, _, _ in written] == list_parquet_files(out_dir)
    # the stories exactly (stripped), in order; the validation stories in the last shard
    assert [t for s in shards[:-1] for t in s] == [s.strip() for s in srv.train]
    assert shards[-1] == srv.valid
    assert [n for _, n, _ in written] == [len(s) for s in shards]
    assert sum(c for _, _, c in written[:-1]) == sum(len(s) for s in srv.train)
    assert all(c >= 20_000 for _, _, c in written[:-2])  # about shard_chars per train shard
    assert [(n, auth) for n, _, auth in srv.log] == [(TS_PATH + f, "Bearer secret") for f in FILES[2]]
    # the raw files are kept; the conversion's temporary folder is gone
    assert sorted(os.listdir(base_dir / "tinystories_raw")) == sorted(FILES[2])
    assert sorted(os.listdir(base_dir)) == ["tinystories_data", "tinystories_raw"]
    out = capsys.readouterr().out
    assert "train stories" in out and f"{len(srv.valid):,d} val stories" in out
    # a rerun: says so, does nothing
    assert build_tinystories(**FAST) == (None, out_dir)
    assert "nothing to do" in capsys.readouterr().out and len(srv.log) == 2
    # --force converts again from the kept files (no download), here only the first 7 stories
    written, _ = build_tinystories(max_stories=7, force=True, **FAST)
    assert len(srv.log) == 2 and len(written) == 2
    assert ts_shard_texts(base_dir) == [srv.train[:7], srv.valid]


def test_tinystories_resume_and_version_1(tinystories_server, base_dir):
    from nanochat.tinystories import FILES, build_tinystories
    srv = tinystories_server
    raw = base_dir / "tinystories_raw"
    raw.mkdir(parents=True)
    train_name, valid_name = FILES[1]
    data = srv.files[TS_PATH + train_name]
    (raw / (train_name + ".part")).write_bytes(data[:5000])
    written, _ = build_tinystories(version=1, max_stories=100, **FAST)
    assert (raw / train_name).read_bytes() == data and not (raw / (train_name + ".part")).exists()
    assert srv.log[0] == (TS_PATH + train_name, "bytes=5000-", None)
    assert srv.log[1][0] == TS_PATH + valid_name
    shards = ts_shard_texts(base_dir)
    assert [t for s in shards[:-1] for t in s] == srv.train[:100] and shards[-1] == srv.valid


def test_tinystories_download_errors(tinystories_server, base_dir, capsys, monkeypatch):
    from nanochat.tinystories import FILES
    srv = tinystories_server
    del srv.files[TS_PATH + FILES[2][1]]  # no validation file: a 404, not retried
    err = main_error(capsys, ["--tinystories"])
    assert "404" in err and FILES[2][1] in err
    assert (base_dir / "tinystories_raw" / FILES[2][0]).exists()  # the train file stays for the next run
    srv.files[TS_PATH + FILES[2][1]] = b"<html>rate limited</html>"  # an error page sent with 200
    assert "not a TinyStories text file" in main_error(capsys, ["--tinystories"])
    assert not any(p.name.startswith(FILES[2][1]) for p in (base_dir / "tinystories_raw").iterdir())
    assert not (base_dir / "tinystories_data").exists()
    monkeypatch.setenv("NANOCHAT_HF_URL", "http://127.0.0.1:1")  # nothing listens: like having no network
    assert "cannot reach" in main_error(capsys, ["--tinystories"])
    assert main_error(capsys, ["--tinystories", "--builtin"]).startswith("error: choose one of")
    assert "must be at least 1" in main_error(capsys, ["--tinystories", "--tinystories_max_stories", "0"])


def test_tinystories_cli(tinystories_server, base_dir, capsys):
    srv = tinystories_server
    r = run_cli(["nanochat.dataset", "--tinystories", "--tinystories_max_stories", "250",
                 "--tinystories_shard_chars", "1e4"], base_dir, NANOCHAT_HF_URL=srv.url)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "TinyStoriesV2-GPT4-train.txt" in out and "MB in" in out  # download progress
    assert "converting" in out and "shard_00000.parquet  train" in out and "val" in out
    assert f"250 train stories, {len(srv.valid)} val stories" in out
    shards = ts_shard_texts(base_dir)
    assert len(shards) >= 3 and [t for s in shards[:-1] for t in s] == srv.train[:250] and shards[-1] == srv.valid
    # in-process rerun: nothing to do, nothing downloaded
    n_requests = len(srv.log)
    dataset.main(["--tinystories"])
    assert "nothing to do" in capsys.readouterr().out and len(srv.log) == n_requests
    with pytest.raises(SystemExit):
        dataset.main(["--help"])
    assert "--tinystories_version" in capsys.readouterr().out
