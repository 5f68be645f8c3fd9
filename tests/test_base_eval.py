"""
CORE evaluation (nanochat/core_eval.py, scripts/base_eval.py): the YAML reader, prompts and
continuation spans of the three task types, batched scoring against one example at a time, what
the scores decide, the bundle's download and safe unpacking, and the script alone and under
torchrun, on a small bundle in the real one's layout served from 127.0.0.1.
"""
import csv
import functools
import http.server
import json
import os
import random
import shutil
import threading
import zipfile

import pytest
import torch
import torch.nn.functional as F

from helpers import run_script
from nanochat import core_eval as ce
from nanochat.common import UserError

# -----------------------------------------------------------------------------
# a small bundle in the layout of nanochat's eval_bundle.zip

CORE_YAML = """\
# like the bundle's: both styles of list item, quoted delimiters, comments
icl_tasks:
-
  label: mc_fewshot
  dataset_uri: world_knowledge/mc.jsonl
  num_fewshot: [3]
  icl_task_type: multiple_choice
  continuation_delimiter: "\\nAnswer: " # this separates questions from answers
- label: mc_zeroshot
  dataset_uri: world_knowledge/mc.jsonl
  num_fewshot: [0]
  icl_task_type: multiple_choice
-
  label: schema_task
  dataset_uri: language_understanding/schema.jsonl
  num_fewshot: [1]
  icl_task_type: schema
-
  label: lm_task
  dataset_uri: symbolic_problem_solving/lm.jsonl
  num_fewshot: [2]
  icl_task_type: language_modeling
  continuation_delimiter: ' -> '
  has_categories: false
"""
BASELINES = {"mc_fewshot": 25, "mc_zeroshot": 25, "schema_task": 50, "lm_task": 0}
WORDS = "cat dog sun moon tree river stone bird fish apple bread house road rain wind fire".split()


def make_examples(kind, n, seed=0):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        w = rng.sample(WORDS, 4)
        if kind == "mc":
            out.append({"query": f"Question {i}: which one is {w[i % 4]}?", "choices": [f"{x}" for x in w], "gold": i % 4})
        elif kind == "schema":
            out.append({"context_options": [f"The {w[0]} saw the {w[1]} so the {x}" for x in w[:2]],
                        "continuation": f"ran to the {w[2]}.", "gold": i % 2})
        else:
            out.append({"context": f"  Copy {i}: {w[0]} {w[1]}  ", "continuation": f"{w[0]} {w[1]}"})
    return out


def write_bundle(root, n=12):
    """root/eval_bundle/{core.yaml, eval_meta_data.csv, eval_data/...}; returns the bundle folder."""
    b = os.path.join(root, "eval_bundle")
    for kind, rel in (("mc", "world_knowledge/mc.jsonl"), ("schema", "language_understanding/schema.jsonl"),
                      ("lm", "symbolic_problem_solving/lm.jsonl")):
        path = os.path.join(b, "eval_data", rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.writelines(json.dumps(e) + "\n" for e in make_examples(kind, n))
    with open(os.path.join(b, "core.yaml"), "w") as f:
        f.write(CORE_YAML)
    with open(os.path.join(b, "eval_meta_data.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Eval Task", "Task Category", "Task Type", "#shots", "#datapoints", "Random baseline", "Centered Metric?", "Description"])
        for label, base in BASELINES.items():
            w.writerow([label, "test", "x", 0, n, base, "", f"a test task, with a comma, {label}"])
    return b


def zip_folder(folder, zip_path):
    with zipfile.ZipFile(zip_path, "w") as zf:
        for dirpath, _, files in os.walk(folder):
            for name in files:
                full = os.path.join(dirpath, name)
                zf.write(full, os.path.relpath(full, os.path.dirname(folder)))


@pytest.fixture
def server(tmp_path):
    """Serves tmp_path/www on 127.0.0.1; .requests counts the GETs."""
    root = tmp_path / "www"
    root.mkdir()
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *a):
            pass
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    httpd.root, httpd.requests, httpd.url = root, requests, f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def random_model(tokenizer, sequence_len=256, seed=0):
    """A tiny model whose every weight is random, so its answers depend on the whole context."""
    from nanochat.gpt import GPTConfig, build_model
    torch.manual_seed(seed)
    model = build_model(GPTConfig(sequence_len=sequence_len, vocab_size=tokenizer.get_vocab_size(), n_layer=2, n_head=2,
                                  n_kv_head=2, n_embd=64), "cpu")
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0.0, 0.3)
    return model.eval()


@pytest.fixture(scope="module")
def tokenizer(tiny_base_dir_session):
    from nanochat.tokenizer import Tokenizer
    return Tokenizer.from_directory(str(tiny_base_dir_session / "tokenizer"))

# -----------------------------------------------------------------------------
# core.yaml


def test_yaml_reader_reads_the_bundle_subset():
    doc = ce.parse_yaml(CORE_YAML + "other:\n  a: 1.5\n  b: 'it''s # no comment'\n  c: ~\n  d: [x, \"y, z\", 3]\n  e:\n    - true\n    - -2\n"
                        "  f: \"a # b \\u00e9\"  # comment\n  g: a#b\n")
    assert [t["label"] for t in doc["icl_tasks"]] == ["mc_fewshot", "mc_zeroshot", "schema_task", "lm_task"]
    assert doc["icl_tasks"][0] == {"label": "mc_fewshot", "dataset_uri": "world_knowledge/mc.jsonl", "num_fewshot": [3],
                                   "icl_task_type": "multiple_choice", "continuation_delimiter": "\nAnswer: "}
    assert doc["icl_tasks"][3]["continuation_delimiter"] == " -> " and doc["icl_tasks"][3]["has_categories"] is False
    assert doc["other"] == {"a": 1.5, "b": "it's # no comment", "c": None, "d": ["x", "y, z", 3], "e": [True, -2],
                            "f": "a # b \u00e9", "g": "a#b"}
    try:
        import yaml
    except ImportError:
        return
    assert yaml.safe_load(CORE_YAML) == ce.parse_yaml(CORE_YAML)  # where PyYAML happens to be installed


@pytest.mark.parametrize("text, message", [
    ("a: |\n  text\n", "unsupported YAML"),
    ("a: &x 1\n", "unsupported YAML"),
    ("a: \"open\n", "must close"),
    ("a: 1\n    b: 2\n", "unexpected indentation"),
    ("a: 1\na: 2\n", "duplicate key"),
    ("a:\n\t- 1\n", "tabs"),
    ("a: [1, [2]]\n", "nested flow"),
    ("a: \"\\x41\"\n", "unsupported escape"),
])
def test_yaml_reader_refuses_what_it_does_not_read(text, message):
    with pytest.raises(UserError, match=message):
        ce.parse_yaml(text, "core.yaml")

# -----------------------------------------------------------------------------
# prompts and spans


def test_prompts_of_each_task_type():
    mc = [{"query": "Q1", "choices": ["a", "b"], "gold": 1}, {"query": "Q2", "choices": ["c", "d"], "gold": 0}]
    assert ce.render_prompts("multiple_choice", {"query": "Q?", "choices": ["x", "y z"], "gold": 0}, "\nAnswer: ", mc) == [
        "Q1\nAnswer: b\n\nQ2\nAnswer: c\n\nQ?\nAnswer: x", "Q1\nAnswer: b\n\nQ2\nAnswer: c\n\nQ?\nAnswer: y z"]
    sc = [{"context_options": ["c0", "c1"], "continuation": "end.", "gold": 1}]
    assert ce.render_prompts("schema", {"context_options": ["A", "B"], "continuation": "goes.", "gold": 0}, " ", sc) == [
        "c1 end.\n\nA goes.", "c1 end.\n\nB goes."]
    lm = [{"context": " x = 1 ", "continuation": "1"}]
    # contexts trimmed; the prompt without the continuation stripped (the delimiter's space too), the other not
    assert ce.render_prompts("language_modeling", {"context": "y =\n", "continuation": "2 "}, " ", lm) == [
        "x = 1 1\n\ny =", "x = 1 1\n\ny = 2 "]
    assert ce.render_prompts("multiple_choice", {"query": "Q", "choices": ["a"], "gold": 0}, " ", []) == ["Q a"]


def test_fewshot_draws_are_nanochats():
    data = [{"i": i} for i in range(30)]
    for idx in (0, 7, 29):
        available = [i for i in range(len(data)) if i != idx]  # nanochat builds this list for every example
        expected = [data[i] for i in random.Random(1234 + idx).sample(available, 5)]
        assert ce.fewshot_examples(data, idx, 5) == expected and data[idx] not in expected
    with pytest.raises(UserError, match="at least 4 examples"):
        ce.fewshot_examples(data[:3], 0, 3)


def test_continuation_spans():
    mc = ce.continuation_spans("multiple_choice", [[1, 5, 6, 7], [1, 5, 6, 8, 9], [1, 5, 4]])
    assert mc == [([1, 5, 6, 7], 2, 4), ([1, 5, 6, 8, 9], 2, 5), ([1, 5, 4], 2, 3)]  # after the shared prefix
    sc = ce.continuation_spans("schema", [[1, 2, 3, 8, 9], [1, 4, 8, 9]])
    assert sc == [([1, 2, 3, 8, 9], 3, 5), ([1, 4, 8, 9], 2, 4)]  # the shared suffix
    assert ce.continuation_spans("language_modeling", [[1, 2, 3], [1, 2, 3, 4, 5]]) == [([1, 2, 3, 4, 5], 3, 5)]
    with pytest.raises(ValueError, match="empty"):
        ce.continuation_spans("language_modeling", [[1, 2, 3], [1, 2, 3]])
    # too long for the model: the last tokens kept, the span moved with them
    assert ce.crop([([1, 2, 3, 4, 5, 6], 4, 6), ([1, 2], 1, 2)], 4) == [([3, 4, 5, 6], 2, 4), ([1, 2], 1, 2)]

# -----------------------------------------------------------------------------
# scoring


def unbatched_scores(model, rows):
    """Each row alone through the model, full logits: (mean loss, all argmax) over its span."""
    out = []
    for tokens, s, e in rows:
        with torch.no_grad():
            logits = model(torch.tensor([tokens]))[0].float()
        target = torch.tensor(tokens[s:e])
        out.append((F.cross_entropy(logits[s - 1:e - 1], target).item(), bool((logits[s - 1:e - 1].argmax(-1) == target).all())))
    return out


def test_batched_scores_equal_one_row_at_a_time(tokenizer):
    model = random_model(tokenizer)
    task = dict(label="mc", type="multiple_choice", shots=2, delimiter=" ")
    data = make_examples("mc", 10)
    rows, slices = ce.example_rows(tokenizer, task, data, list(range(10)), max_len=2560)
    assert len(rows) == 40 and all(s < e <= len(t) for t, s, e in rows)
    reference = unbatched_scores(model, rows)
    for budget in (1, 300, 100000):  # one row per pass ... all rows in one pass
        got = [None] * len(rows)
        batches = ce.pack(rows, budget)
        assert sorted(i for b in batches for i in b) == list(range(len(rows)))
        assert all(len(b) * max(len(rows[i][0]) for i in b) <= budget or len(b) == 1 for b in batches)
        for b in batches:
            for i, r in zip(b, ce.score_rows(model, [rows[i] for i in b], tokenizer.get_bos_token_id(), "cpu")):
                got[i] = r
        for (loss, hit), (ref_loss, ref_hit) in zip(got, reference):
            assert loss == pytest.approx(ref_loss, abs=1e-5) and hit == ref_hit


def test_task_accuracy_equals_a_reference_evaluation(tokenizer):
    """Every example of each type decided as nanochat decides it, from one-example-at-a-time scores."""
    model = random_model(tokenizer)
    for kind, ttype, shots, delim in (("mc", "multiple_choice", 3, "\nAnswer: "), ("schema", "schema", 1, " "),
                                      ("lm", "language_modeling", 2, " -> ")):
        task = dict(label=kind, type=ttype, shots=shots, delimiter=delim)
        data = ce.prepare_examples(make_examples(kind, 16))
        got = ce.evaluate_task(model, tokenizer, task, data, "cpu", batch_tokens=200)
        assert ttype == "language_modeling" or 0 < sum(got) < len(got)  # neither all right nor all wrong
        expected = []
        for idx, item in enumerate(data):
            prompts = ce.render_prompts(ttype, item, delim, ce.fewshot_examples(data, idx, shots))
            spans = ce.continuation_spans(ttype, tokenizer.encode(prompts, prepend=tokenizer.get_bos_token_id()))
            scores = unbatched_scores(model, spans)
            if ttype == "language_modeling":
                expected.append(float(scores[0][1]))
            else:
                losses = [s[0] for s in scores]
                expected.append(float(losses.index(min(losses)) == item["gold"]))
        assert got == expected, kind


def test_scores_decide_by_mean_loss_and_greedy_match(tmp_path, tokenizer):
    """With a model whose logits favour letters, a long letter answer beats a short symbol one only by
    mean loss (its summed loss is larger), and a continuation is right only if every token is the argmax."""
    from conftest import make_tiny_model
    from nanochat.checkpoint_manager import load_checkpoint, model_from_state
    make_tiny_model(str(tmp_path), tokenizer, "base", "chatty", 1, "chatty")
    state, _, meta = load_checkpoint(str(tmp_path / "base_checkpoints" / "chatty"), 1, "cpu")
    model = model_from_state(state, meta["model_config"], "cpu").eval()
    mc = dict(label="mc", type="multiple_choice", shots=0, delimiter=" ")
    long_letters, short_symbols = "the cat sat on the mat and the dog ran", "7!"
    data = [{"query": "Pick", "choices": [short_symbols, long_letters], "gold": 1},
            {"query": "Pick", "choices": [long_letters, short_symbols], "gold": 0}]
    rows, _ = ce.example_rows(tokenizer, mc, data, [0], 10 ** 6)
    (short_loss, _), (long_loss, _) = ce.score_rows(model, rows, tokenizer.get_bos_token_id(), "cpu")
    n_short, n_long = (e - s for _, s, e in rows)
    assert long_loss < short_loss and long_loss * n_long > short_loss * n_short  # mean and sum disagree
    assert ce.evaluate_task(model, tokenizer, mc, data, "cpu") == [1.0, 1.0]
    # greedy: every position's argmax is the lowest-id letter token
    letter = min(i for i in range(tokenizer.get_vocab_size()) if tokenizer.id_to_token(i).isalpha())
    text = tokenizer.decode([letter])
    lm = dict(label="lm", type="language_modeling", shots=0, delimiter=":")
    data = [{"context": "say", "continuation": text * 3}, {"context": "say", "continuation": text * 2 + "zq"}]
    assert tokenizer.encode("say:" + text * 3)[-3:] == [letter] * 3
    assert ce.evaluate_task(model, tokenizer, lm, data, "cpu") == [1.0, 0.0]


def test_long_prompts_are_cropped_to_the_rotary_table(tokenizer):
    model = random_model(tokenizer, sequence_len=8)  # rotary table: 80 positions
    task = dict(label="lm", type="language_modeling", shots=6, delimiter=" -> ")
    data = make_examples("lm", 10)
    rows, _ = ce.example_rows(tokenizer, task, data, list(range(10)), model.rotary_len)
    assert max(len(t) for t, _, _ in rows) == 80
    assert len(ce.evaluate_task(model, tokenizer, task, data, "cpu")) == 10  # no error past the table

# -----------------------------------------------------------------------------
# the bundle


def test_bundle_reading_and_its_errors(tmp_path):
    b = write_bundle(str(tmp_path))
    tasks = ce.load_bundle(b)
    assert [(t["label"], t["type"], t["shots"], t["delimiter"], t["baseline"]) for t in tasks] == [
        ("mc_fewshot", "multiple_choice", 3, "\nAnswer: ", 25.0), ("mc_zeroshot", "multiple_choice", 0, " ", 25.0),
        ("schema_task", "schema", 1, " ", 50.0), ("lm_task", "language_modeling", 2, " -> ", 0.0)]
    assert [t["label"] for t in ce.select_tasks(tasks, "lm_task, mc_fewshot")] == ["mc_fewshot", "lm_task"]
    with pytest.raises(UserError, match="unknown task 'nope'"):
        ce.select_tasks(tasks, "nope")
    assert ce.centered(0.625, 25) == pytest.approx(0.5) and ce.centered(0.3, 0) == pytest.approx(0.3)
    path = os.path.join(b, "eval_data", "world_knowledge", "mc.jsonl")
    with open(path, "a") as f:
        f.write('{"query": "q", "choices": ["a"], "gold": 3}\n')
    with pytest.raises(UserError, match=r"mc.jsonl:13: gold must index"):
        ce.load_examples(path, "multiple_choice")
    with pytest.raises(UserError, match="needs context, continuation"):
        ce.load_examples(path, "language_modeling")
    with open(os.path.join(b, "core.yaml"), "a") as f:
        f.write("- label: qa\n  dataset_uri: x.jsonl\n  icl_task_type: question_answering\n")
    with pytest.raises(UserError, match="unsupported icl_task_type 'question_answering'"):
        ce.load_bundle(b)
    with open(os.path.join(b, "core.yaml"), "w") as f:
        f.write("icl_tasks:\n- label: mc_fewshot\n  dataset_uri: ../../escape.jsonl\n  icl_task_type: schema\n")
    with pytest.raises(UserError, match="outside eval_data"):
        ce.load_bundle(b)


def test_download_unpacks_once_and_refuses_unsafe_zips(tmp_path, server):
    zip_folder(write_bundle(str(tmp_path / "src")), str(server.root / "eval_bundle.zip"))
    base = tmp_path / "base"
    base.mkdir()
    logs = []
    bundle = ce.ensure_bundle(str(base), server.url + "/eval_bundle.zip", log=logs.append)
    assert bundle == str(base / "eval_bundle") and len(ce.load_bundle(bundle)) == 4
    assert server.requests == ["/eval_bundle.zip"] and not os.path.exists(bundle + ".tmp")
    assert ce.ensure_bundle(str(base), server.url + "/eval_bundle.zip") == bundle and len(server.requests) == 1
    # a zip whose member climbs out of the folder: refused, nothing written outside
    evil = tmp_path / "evil"
    evil.mkdir()
    with zipfile.ZipFile(evil / "eval_bundle.zip", "w") as zf:
        zf.writestr("eval_bundle/core.yaml", CORE_YAML)
        zf.writestr("../../outside.txt", "gotcha")
    with pytest.raises(UserError, match="outside the bundle folder"):
        ce.ensure_bundle(str(evil))
    assert not os.path.exists(tmp_path / "outside.txt") and sorted(os.listdir(evil)) == ["eval_bundle.lock", "eval_bundle.zip"]
    # not found on the server: one line
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="could not download the eval bundle.*404"):
        ce.ensure_bundle(str(tmp_path / "empty"), server.url + "/missing.zip")
    assert os.listdir(tmp_path / "empty") == ["eval_bundle.lock"]

# -----------------------------------------------------------------------------
# the script


@pytest.fixture
def eval_base(tmp_path, tiny_base_dir_session, tokenizer, server):
    """A base dir with the tokenizer and a random base model; the bundle zip served at server.url."""
    from nanochat.checkpoint_manager import save_checkpoint
    base = tmp_path / "base"
    shutil.copytree(tiny_base_dir_session / "tokenizer", base / "tokenizer")
    model = random_model(tokenizer)
    save_checkpoint(str(base / "base_checkpoints" / "rnd"), 3, model.state_dict(), None,
                    {"step": 3, "model_config": model.config.to_dict()})
    zip_folder(write_bundle(str(tmp_path / "src"), n=13), str(server.root / "eval_bundle.zip"))  # odd: ranks get 7 and 6
    return base, model


def expected_results(model, tokenizer, bundle, max_per_task=-1):
    return ce.evaluate_core(model, tokenizer, ce.load_bundle(bundle), "cpu", max_per_task, log=lambda *a: None)


def test_script_reports_core_and_writes_results(eval_base, tokenizer, server):
    base, model = eval_base
    url = server.url + "/eval_bundle.zip"
    p = run_script(base, "scripts.base_eval", "--device_type", "cpu", "--bundle_url", url)
    out = json.loads((base / "base_eval" / "base_rnd_000003.json").read_text())
    expected = expected_results(model, tokenizer, str(base / "eval_bundle"))
    assert [(r["label"], r["examples"], r["accuracy"]) for r in out["tasks"]] == \
        [(r["label"], r["examples"], r["accuracy"]) for r in expected]
    for r in out["tasks"]:
        assert r["centered"] == pytest.approx((r["accuracy"] - 0.01 * BASELINES[r["label"]]) / (1 - 0.01 * BASELINES[r["label"]]))
    assert out["core"] == pytest.approx(sum(r["centered"] for r in out["tasks"]) / 4) and out["complete"]
    assert "[3/4] schema_task (1-shot schema, 13 examples)" in p.stdout and f"{out['core']:.4f}" in p.stdout.split("CORE")[-1]
    rows = list(csv.reader(open(base / "base_eval" / "base_rnd_000003.csv")))
    assert rows[0] == ["Task", "Accuracy", "Centered"] and rows[-1][0] == "CORE" and float(rows[-1][2]) == pytest.approx(out["core"], abs=1e-6)
    # a quick look: 5 examples per task, the bundle already there (no second download), its own file
    p = run_script(base, "scripts.base_eval", "--device_type", "cpu", "--bundle_url", url, "--max_per_task", "5",
                   "--tasks", "lm_task,mc_zeroshot")
    assert len(server.requests) == 1
    quick = json.loads((base / "base_eval" / "base_rnd_000003_max5_subset.json").read_text())
    assert [(r["label"], r["examples"]) for r in quick["tasks"]] == [("mc_zeroshot", 5), ("lm_task", 5)] and not quick["complete"]
    assert "CORE (partial)" in p.stdout
    # bad input: one line, no traceback
    p = run_script(base, "scripts.base_eval", "--device_type", "cpu", "--tasks", "nope", check=False)
    assert p.returncode == 1 and p.stderr.startswith("error: unknown task 'nope'") and "Traceback" not in p.stderr


@pytest.mark.slow
def test_script_under_torchrun_matches_one_process(eval_base, tokenizer, server):
    base, model = eval_base
    url = server.url + "/eval_bundle.zip"
    p = run_script(base, "scripts.base_eval", "--device_type", "cpu", "--bundle_url", url, "--out", str(base / "ddp.json"),
                   torchrun=True)
    assert "on 2 x cpu" in p.stdout and len(server.requests) == 1  # one rank downloaded, the other found the folder
    out = json.loads((base / "ddp.json").read_text())
    expected = expected_results(model, tokenizer, str(base / "eval_bundle"))
    assert out["world_size"] == 2
    assert [(r["label"], r["accuracy"]) for r in out["tasks"]] == [(r["label"], r["accuracy"]) for r in expected]
