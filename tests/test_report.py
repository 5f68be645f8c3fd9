"""The report card: sections written by the stages, report.md put together from them, reset, a real stage end to end."""
import json
import os
import re
import shutil

import pytest

from nanochat import report
from helpers import run_script

TINY = ["--n_layer", "2", "--model_dim", "64", "--head_dim", "32", "--max_seq_len", "64", "--device_batch_size", "4",
        "--total_batch_size", "512", "--eval_tokens", "512", "--sample_every", "0", "--device_type", "cpu", "--data", "builtin"]


@pytest.fixture
def base(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path))
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(report, "_warned", False)
    return tmp_path


def summary_cells(text):
    """{row: {column: cell}} of the summary table of a report.md."""
    part = text.split("## Summary", 1)[1]
    lines = [l for l in part.splitlines() if l.startswith("|")]
    columns = [c.strip() for c in lines[0].strip("|").split("|")]
    return {cells[0]: dict(zip(columns[1:], cells[1:]))
            for cells in ([c.strip() for c in l.strip("|").split("|")] for l in lines[2:])}


def write_pipeline():
    """A made-up pipeline's sections, written out of order (the report puts them in pipeline order)."""
    report.append_section("chat_eval", phase="sft", summary={"ARC-Easy": 0.4, "MMLU": 0.3, "built-in exercises": 0.9},
                          tables=[("sets", ["set", "accuracy"], [["ARC-Easy", 0.4], ["MMLU", 0.3]])], wall_s=120)
    report.append_section("base_train", settings={"n_layer": 4, "lr": 3e-4}, metrics={"steps": 1000, "val_bpb": 1.5},
                          summary={"val bpb": 1.5}, wall_s=3600, peak_mem=3 * 2**30)
    report.append_section("tok_train", metrics={"vocab size": 4096}, wall_s=60)
    report.append_section("base_loss", phase="base", summary={"val bpb": 1.25, "train bpb": 1.2}, wall_s=30)
    report.append_section("base_eval", phase="base", summary={"CORE": 0.2}, wall_s=300)
    report.append_section("chat_sft", summary={"val loss": 1.1}, wall_s=600)
    report.append_section("chat_eval", phase="mid", summary={"ARC-Easy": 0.35}, wall_s=90)
    report.append_section("mid_train", summary={"val loss": 1.3}, wall_s=1800)


def test_report_orders_sections_and_summarises(base):
    report.reset(started="2025-01-01T10:00:00")
    write_pipeline()
    text = open(report.generate(gpu_hourly_cost=2.0)).read()
    assert "run started 2025-01-01T10:00:00" in text and "- accelerator: " in text and "- git: " in text
    headings = re.findall(r"^## .*\((\S+)\)$", text, re.M)
    assert headings == ["tok_train", "base_train", "base_loss-base", "base_eval-base", "mid_train", "chat_eval-mid",
                        "chat_sft", "chat_eval-sft"]
    cells = summary_cells(text)
    assert list(cells) == ["val bpb", "train bpb", "val loss", "CORE", "ARC-Easy", "MMLU", "built-in exercises"]
    assert cells["val bpb"] == {"BASE": "1.2500", "MID": "-", "SFT": "-"}  # base_loss comes after base_train: it wins
    assert cells["val loss"] == {"BASE": "-", "MID": "1.3000", "SFT": "1.1000"}
    assert cells["CORE"]["BASE"] == "0.2000"
    assert cells["ARC-Easy"] == {"BASE": "-", "MID": "0.3500", "SFT": "0.4000"}
    assert cells["built-in exercises"]["SFT"] == "0.9000"
    total = 120 + 3600 + 60 + 30 + 300 + 600 + 90 + 1800  # 6600 s = 1.8333 h
    assert f"- total wall time: 1h 50m 00s (the sum of 8 stage wall times)" in text
    assert "- cost: 1.83 h x $2.00/h = $3.67" in text and total == 6600
    # a section shows its timing, memory, metrics, tables and settings
    base_train = text.split("## Base model training (base_train)")[1].split("\n## ")[0]
    assert "wall time 60m 00s" not in base_train and "wall time 1h 00m 00s" in base_train and "peak memory 3.00 GiB" in base_train
    assert "| steps | 1,000 |" in base_train and "`lr=0.0003`" in base_train
    assert "| ARC-Easy | 0.4000 |" in text.split("(chat_eval-sft)")[1]


def test_rerun_replaces_and_reset_clears(base):
    report.append_section("base_train", summary={"val bpb": 2.0}, wall_s=10)
    report.append_section("base_train", summary={"val bpb": 1.8}, wall_s=20)  # a resumed or rerun stage
    report.append_section("chat_eval", phase="sft", summary={"GSM8K": 0.1}, wall_s=5)
    report.append_section("chat_eval", phase="sft", summary={"GSM8K": 0.2}, wall_s=5)
    folder = base / "report"
    assert sorted(os.listdir(folder)) == ["base_train.json", "chat_eval-sft.json"]
    text = open(report.generate()).read()  # no reset before: still a report, saying so
    assert "no `python -m scripts.report --reset`" in text and "cost:" not in text
    assert text.count("## Base model training") == 1 and text.count("## Chat evaluation") == 1
    assert summary_cells(text)["val bpb"] == {"BASE": "1.8000", "SFT": "-"}
    assert summary_cells(text)["GSM8K"]["SFT"] == "0.2000"
    assert "- total wall time: 0m 25s" in text
    report.reset()
    assert os.listdir(folder) == ["header.json"]
    header = json.load(open(folder / "header.json"))
    assert header["started"] and header["system"]["torch"] and header["system"]["cpu_cores"] >= 1
    assert "(no headline numbers yet)" in open(report.generate()).read()


def test_unwritable_folder_warns_once_and_other_ranks_write_nothing(base, capsys, monkeypatch):
    (base / "report").write_text("a file where the folder should be")
    assert report.append_section("tok_train", wall_s=1) is None
    assert report.append_section("base_train", wall_s=1) is None
    err = capsys.readouterr().err
    assert err.count("warning: report section not written") == 1 and "the run itself is fine" in err
    (base / "report").unlink()
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert report.append_section("tok_train", wall_s=1) is None and not (base / "report").exists()


def test_measurements_and_defaults(base):
    mem, kind = report.peak_memory("cpu")
    assert kind == "max RSS" and mem > 20 * 2**20  # this process holds torch: tens of MB at least
    assert 0 < report.process_wall_s() < 24 * 3600
    path = report.append_section("tok_eval", settings={"data": base})  # a path in the settings: written as text
    section = json.load(open(path))
    assert section["peak_mem"] >= mem and section["wall_s"] > 0 and section["settings"]["data"] == str(base)


def test_cli_errors_in_one_line(base):
    p = run_script(base, "scripts.report", "--gpu_hourly_cost", "-3", check=False)
    assert p.returncode == 1 and p.stderr.strip().count("\n") == 0 and "--gpu_hourly_cost" in p.stderr


def test_a_real_stage_lands_in_the_report(corpus_dir, tmp_path):
    base = tmp_path / "base"
    shutil.copytree(corpus_dir, base, ignore=shutil.ignore_patterns("*_checkpoints", "report"))
    assert "report reset" in run_script(base, "scripts.report", "--reset").stdout
    out = run_script(base, "scripts.base_train", *TINY, "--num_iterations", "2", "--model_tag", "rep").stdout
    val_bpb = re.search(r"^step 00002 \| val bpb: ([\d.]+)", out, re.M).group(1)
    p = run_script(base, "scripts.report", "--gpu_hourly_cost", "1.5")
    path = str(base / "report" / "report.md")
    assert f"report: {path}" in p.stdout
    text = open(path).read()
    section = text.split("## Base model training (base_train)")[1].split("\n## ")[0]
    assert "| steps | 2 |" in section and "| tokens | 1,024 |" in section and f"| val_bpb | {val_bpb} |" in section
    assert "`n_layer=2`" in section and "`num_iterations=2`" in section and "max RSS" in section
    assert summary_cells(text)["val bpb"] == {"BASE": val_bpb}
    wall = json.load(open(base / "report" / "base_train.json"))["wall_s"]
    assert 0.5 < wall < 300 and f"- cost: {wall / 3600:.2f} h x $1.50/h = ${wall / 3600 * 1.5:.2f}" in text
    print(text)  # what it looks like (pytest -s)


def test_qualified_rows_sit_with_their_metric(base):
    report.append_section("chat_eval", phase="sft", summary={"built-in exercises (addition d2)": 0.5, "MyMetric": 1.0})
    report.append_section("base_eval", phase="base", summary={"CORE (partial)": 0.1})
    report.append_section("base_train", summary={"val bpb": 2.0})
    assert list(summary_cells(open(report.generate()).read())) == ["val bpb", "CORE (partial)", "built-in exercises (addition d2)",
                                                                  "MyMetric"]
