"""
ClimbMix (karpathy/climbmix-400b-shuffle), nanochat's pretraining data since March 2026, as a
source beside FineWeb-Edu: `python -m nanochat.dataset -n N --source climbmix` downloads its
shards (named and addressed as nanochat names them) into base_data_climbmix/, from a local stand-in
for the hub here; --data climbmix (and auto, without FineWeb shards) reads them.
"""
import io
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nanochat import dataset, fineweb
from nanochat.dataset import get_data_dir, list_parquet_files, parquets_iter_batched, shard_name
from helpers import HubServer, hub_path

REPO = "karpathy/climbmix-400b-shuffle"
LAST = 6542  # shard_06542.parquet: validation, as in nanochat's dataset.py (MAX_SHARD)


def shard(i, n_docs=30):
    buf = io.BytesIO()
    pq.write_table(pa.table({"text": [f"climbmix shard {i} document {d}" for d in range(n_docs)]}), buf)
    return buf.getvalue()


@pytest.fixture
def hub(tmp_path, monkeypatch):
    for i in (0, 1, 2, LAST):
        path = hub_path(tmp_path / "hub", REPO, shard_name(i))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(shard(i))
    server = HubServer(tmp_path / "hub")
    monkeypatch.setenv("NANOCHAT_HF_URL", server.url)
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path / "base"))
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    yield server
    server.close()


def test_climbmix_download_cli_and_reading(hub, tmp_path, capsys):
    assert fineweb.shards_to_download(2, "climbmix") == [0, 1, LAST]
    assert len(fineweb.shards_to_download(-1, "climbmix")) == LAST + 1
    dataset.main(["-n", "2", "--source", "climbmix", "-w", "2"])
    data_dir = tmp_path / "base" / "base_data_climbmix"
    assert sorted(os.listdir(data_dir)) == [shard_name(0), shard_name(1), shard_name(LAST)]
    assert (data_dir / shard_name(LAST)).read_bytes() == shard(LAST)
    # nanochat's address of a shard, with the token; the validation shard is the last one
    assert sorted(hub.paths(REPO)) == sorted(f"/datasets/{REPO}/resolve/main/{shard_name(i)}" for i in (0, 1, LAST))
    assert {auth for _, auth in hub.requests} == {"Bearer hf_secret"}
    assert get_data_dir("climbmix") == get_data_dir("auto") == str(data_dir)  # auto: no FineWeb shards here
    assert list_parquet_files(str(data_dir))[-1].endswith(shard_name(LAST))
    assert next(parquets_iter_batched("val", str(data_dir)))[0] == f"climbmix shard {LAST} document 0"
    # again: nothing to fetch
    n = len(hub.requests)
    dataset.main(["-n", "2", "--source", "climbmix"])
    assert len(hub.requests) == n and "0 to download" in capsys.readouterr().out


def test_missing_climbmix_data_is_a_one_line_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path))
    with pytest.raises(dataset.UserError, match="--source climbmix"):
        get_data_dir("climbmix")
