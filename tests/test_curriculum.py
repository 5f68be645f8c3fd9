"""
Curriculum training and mixed batches: the JSON format, phases switching at the right steps with
the right mixtures and difficulties, the LR schedule, the exact per-batch shares (the personal
share in every batch), exact resume of the data, and curriculum_train end to end (warm start
without the optimizer, --phase, resume, per-layer rates, a TinyStories-style shard source).
"""
import json
import os
import shutil

import pytest
import torch

from nanochat.common import UserError
from nanochat.curriculum import load_curriculum, phase_at, difficulty_at, lr_at, with_personal_frac, sources_of
from nanochat.streams import MixedBatches, ExerciseTokens, DocumentTokens, split_tokens, shares
from nanochat.tokenizer import Tokenizer
from helpers import run_script, step_losses, smooth_losses

PHASES = {"warmup_steps": 2, "final_lr_frac": 0.2, "phases": [
    {"name": "structure", "steps": 3, "mixture": {"synthetic": 60, "pretrain": 35, "personal": 5}, "difficulty": [1, 3], "lr_mult": 1.0},
    {"name": "stories", "steps": 2, "mixture": {"exercises": 2, "pretrain": 7, "personal": 1}, "difficulty": [3, 4], "lr_mult": 0.5},
    {"name": "voice", "steps": 3, "mixture": {"exercises": 1, "tinystories": 1, "personal": 2}, "difficulty": 5, "lr_mult": 0.25,
     "exercise_kinds": ["addition", "listops"]},
]}


def write(tmp_path, obj, name="c.json"):
    path = tmp_path / name
    path.write_text(json.dumps(obj))
    return str(path)


@pytest.fixture(scope="module")
def tok():
    text = "the cat sat on the mat. Question: What is 2 + 3?\nAnswer: 5\n" * 50 + "".join(chr(c) for c in range(32, 127))
    return Tokenizer.train_from_iterator(iter([text]), vocab_size=300)


def test_load_curriculum_and_its_errors(tmp_path):
    phases, settings = load_curriculum(write(tmp_path, PHASES))
    assert [(p.name, p.start, p.end) for p in phases] == [("structure", 0, 3), ("stories", 3, 5), ("voice", 5, 8)]
    assert phases[0].mixture == pytest.approx({"exercises": 0.6, "pretrain": 0.35, "personal": 0.05})  # synthetic = exercises
    assert phases[2].difficulty == (5.0, 5.0) and phases[2].exercise_kinds == ("addition", "listops")
    assert settings["warmup_steps"] == 2 and settings["final_lr_frac"] == 0.2
    assert sources_of(phases) == ["exercises", "pretrain", "personal", "tinystories"]
    bad = [({"phases": []}, "non-empty"),
           ({"phases": [{"steps": 0, "mixture": {"exercises": 1}}]}, "steps must be"),
           ({"phases": [{"steps": 2, "mixture": {"exercises": -1}}]}, "non-negative"),
           ({"phases": [{"steps": 2, "mixture": {"exercises": 1}, "difficulty": [0, 9]}]}, "difficulty"),
           ({"phases": [{"steps": 2, "mixture": {"exercises": 1}, "lr": 3}]}, "unknown field"),
           ({"phases": [{"steps": 2, "mixture": {"exercises": 1}, "exercise_kinds": ["juggling"]}]}, "exercise_kinds"),
           ({"phases": [{"name": "a", "steps": 1, "mixture": {"x": 1}}, {"name": "a", "steps": 1, "mixture": {"x": 1}}]}, "differ")]
    for obj, message in bad:
        with pytest.raises(UserError, match=message):
            load_curriculum(write(tmp_path, obj))
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(UserError, match="not valid JSON"):
        load_curriculum(str(tmp_path / "broken.json"))


def test_schedule_and_difficulty_follow_the_phases(tmp_path):
    phases, _ = load_curriculum(write(tmp_path, PHASES))
    assert [phase_at(phases, s).name for s in range(9)] == ["structure"] * 3 + ["stories"] * 2 + ["voice"] * 4
    assert [difficulty_at(phases[0], s) for s in range(3)] == [1.0, 2.0, 3.0]  # ramped from first to last step
    assert [difficulty_at(phases[1], s) for s in (3, 4)] == [3.0, 4.0]
    lr = [lr_at(phases, s, 0, warmup_steps=2, final_lr_frac=0.2) for s in range(8)]
    assert lr[0] == pytest.approx(0.5)  # warmup: half way at the first of 2 steps
    assert lr[1] == pytest.approx(0.2 + 0.8 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi / 3)).item()))
    assert lr[3] == pytest.approx(0.5) and lr[5] == pytest.approx(0.25)  # each phase starts at its multiplier
    assert lr[4] < lr[3] and lr[7] < lr[6] < lr[5]  # and decays within it
    # warmup counts from the run's first step (a run started at phase 2 warms up there)
    assert lr_at(phases, 3, first_step=3, warmup_steps=2, final_lr_frac=0.2) == pytest.approx(0.25)
    # --personal_frac replaces each phase's personal weight, the others keep their proportions
    p = with_personal_frac(phases, 0.1)
    assert p[0].mixture == pytest.approx({"exercises": 0.6 / 0.95 * 0.9, "pretrain": 0.35 / 0.95 * 0.9, "personal": 0.1})


def test_split_tokens_is_exact():
    assert split_tokens(4096, {"a": 0.95, "b": 0.05}) == {"a": 3891, "b": 205}
    assert split_tokens(10, {"a": 1, "b": 1, "c": 1}) == {"a": 4, "b": 3, "c": 3}
    for n in (1, 7, 513, 4096):
        assert sum(split_tokens(n, {"a": 0.6, "b": 0.35, "c": 0.05}).values()) == n


def recorded(source):
    """The source, remembering what it hands out (to check each batch's segments)."""
    source.taken, take = [], source.take
    def recording_take(n):
        out = take(n)
        source.taken.append(out)
        return out
    source.take = recording_take
    return source


def test_every_batch_has_each_source_share_and_phases_switch_on_time(tmp_path, tok):
    phases, _ = load_curriculum(write(tmp_path, PHASES))
    B, T, accum = 2, 64, 2
    personal_docs = [f"my own words number {i}, said my way." for i in range(7)]
    def sources():
        return {"exercises": recorded(ExerciseTokens(tok, seed=1)), "pretrain": recorded(DocumentTokens(tok, ["the cat sat."] * 3, seed=2)),
                "personal": recorded(DocumentTokens(tok, personal_docs, seed=3)),
                "tinystories": recorded(DocumentTokens(tok, ["once upon a time"], seed=4))}
    def plan(step):
        p = phase_at(phases, step)
        return p.mixture, {"difficulty": difficulty_at(p, step), "kinds": p.exercise_kinds}, p.name
    src = sources()
    mb = MixedBatches(src, plan, B, T, first_step=0, grad_accum_steps=accum)
    for i in range(16):  # 8 steps x 2 micro-steps
        step = i // accum
        phase = phase_at(phases, step)
        for r in src.values():
            r.taken.clear()
        batch = mb.next_host()
        assert batch.numel() == B * T + 1
        want = split_tokens(B * T, phase.mixture)
        got = {name: sum(len(t) for t in r.taken) for name, r in src.items()}
        first = next(name for name in phase.mixture if want[name])
        assert got == {name: want.get(name, 0) + (1 if name == first else 0) for name in src}, (step, got)
        # the batch is those segments, in order: the personal text is really in it, every batch
        assert batch.tolist() == [t for name in phase.mixture for r in [src[name]] for seg in r.taken for t in seg]
        assert src["exercises"].difficulty == pytest.approx(difficulty_at(phase, step))
        assert src["exercises"].kinds == phase.exercise_kinds
    state = mb.state_dict()
    assert shares(state, "structure") == pytest.approx(
        {k: v / (3 * accum * B * T) for k, v in {n: 3 * accum * split_tokens(B * T, phases[0].mixture)[n] for n in phases[0].mixture}.items()})
    assert set(shares(state, "voice")) == {"exercises", "tinystories", "personal"}


def test_mixed_batches_resume_exactly(tok):
    docs = [f"document {i} " * (i + 1) for i in range(9)]
    def make(state=None):
        st = (state or {}).get("sources", {})
        sources = {"exercises": ExerciseTokens(tok, seed=5, state=st.get("exercises")),
                   "personal": DocumentTokens(tok, docs, seed=6, state=st.get("personal"))}
        plan = lambda step: ({"exercises": 0.7, "personal": 0.3}, {"difficulty": 1 + (step % 5) * 0.9}, "p")
        return MixedBatches(sources, plan, 2, 48, grad_accum_steps=1, state=state)
    straight = make()
    batches = [straight.next_host() for _ in range(12)]
    first = make()
    for _ in range(5):
        first.next_host()
    resumed = make(json.loads(json.dumps(first.state_dict())))  # through JSON, as in a checkpoint
    for b in batches[5:]:
        assert torch.equal(resumed.next_host(), b)

# -----------------------------------------------------------------------------
# curriculum_train end to end

TINY = ["--device_type", "cpu", "--device_batch_size", "2", "--max_seq_len", "64", "--eval_tokens", "256", "--eval_every", "3"]


@pytest.fixture(scope="module")
def cur_dir(corpus_dir, tmp_path_factory):
    """The corpus base dir with a tiny base model (a few steps, so it has optimizer state) and a TinyStories-like source."""
    from nanochat.shard_writer import write_shards
    run_script(corpus_dir, "scripts.base_train", "--n_layer", "2", "--model_dim", "64", "--head_dim", "32", "--max_seq_len", "64",
               "--device_batch_size", "4", "--total_batch_size", "256", "--num_iterations", "3", "--eval_every", "0",
               "--sample_every", "0", "--device_type", "cpu", "--data", "builtin", "--model_tag", "cur")
    stories = [f"Once upon a time there was a little {w} who liked to play." for w in ("cat", "dog", "bird", "fox")] * 20
    write_shards(stories, os.path.join(corpus_dir, "tinystories_data"))
    personal = tmp_path_factory.mktemp("personal")
    (personal / "me.txt").write_text("\n\n".join(f"I like my garden, day {i}. The beans grow tall." for i in range(20)))
    cfg = tmp_path_factory.mktemp("cfg") / "c.json"
    cfg.write_text(json.dumps(PHASES))
    return corpus_dir, str(personal), str(cfg)


def test_warm_start_takes_the_weights_not_the_optimizer(cur_dir):
    base, personal, cfg = cur_dir
    one = {"phases": [{"name": "only", "steps": 1, "mixture": {"exercises": 1, "pretrain": 1}}]}
    path = os.path.join(os.path.dirname(cfg), "one.json")
    with open(path, "w") as f:
        json.dump(one, f)
    p = run_script(base, "scripts.curriculum_train", "--config", path, "--model_tag", "cur", "--output_tag", "warm",
                   "--init_lr_frac", "0", *TINY)
    assert "fresh optimizer" in p.stdout
    src = torch.load(os.path.join(base, "base_checkpoints", "cur", "model_000003.pt"))
    out = torch.load(os.path.join(base, "curriculum_checkpoints", "warm", "model_000001.pt"))
    assert all(torch.equal(src[k], out[k]) for k in src)  # lr 0: the weights are the source's
    src_optim = torch.load(os.path.join(base, "base_checkpoints", "cur", "optim_000003.pt"))
    optim = torch.load(os.path.join(base, "curriculum_checkpoints", "warm", "optim_000001.pt"))
    assert {float(s["step"]) for s in src_optim[0]["state"].values()} == {3.0}
    assert {float(s["step"]) for s in optim[0]["state"].values()} == {1.0}  # one step from a fresh AdamW


def test_curriculum_run_resumes_exactly_and_records_phases(cur_dir):
    base, personal, cfg = cur_dir
    common = ["--config", cfg, "--model_tag", "cur", "--personal", personal, "--data", "builtin", "--save_every", "4",
              "--layer_lr", "1:0.5", *TINY]
    straight = run_script(base, "scripts.curriculum_train", *common, "--output_tag", "straight").stdout
    assert "matrices x0.5" in straight and "layers 1" in straight  # per-layer rates shown at start-up
    for name in ("structure", "stories", "voice"):
        assert f"phase {name} done" in straight
    assert sorted(step_losses(straight)) == list(range(1, 9))
    d = os.path.join(base, "curriculum_checkpoints", "straight")
    meta = json.load(open(os.path.join(d, "meta_000004.json")))
    assert meta["curriculum"]["phase_name"] == "stories" and meta["curriculum"]["phase_step"] == 1
    rows = [json.loads(line) for line in open(os.path.join(d, "metrics.jsonl"))]
    assert [r["phase"] for r in rows if r["kind"] == "train"] == ["structure"] * 3 + ["stories"] * 2 + ["voice"] * 3
    share_rows = {r["phase"]: r["shares"] for r in rows if r["kind"] == "shares"}
    # the shares trained are the weights, up to rounding each batch's 128 targets to whole tokens
    phases, _ = load_curriculum(cfg)
    for p in phases:
        assert share_rows[p.name] == {k: v / 128 for k, v in split_tokens(128, p.mixture).items()}
        assert share_rows[p.name] == pytest.approx(p.mixture, abs=1 / 128)  # largest remainder: within a token
    assert {r["phase"] for r in map(json.loads, open(os.path.join(d, "samples.jsonl")))} == {"structure", "stories", "voice"}
    # interrupted after step 4: resume gives the same losses and smoothed losses
    r = os.path.join(base, "curriculum_checkpoints", "resumed")
    os.makedirs(r)
    for f in ("model_000004.pt", "optim_000004.pt", "meta_000004.json"):
        shutil.copy(os.path.join(d, f), r)
    resumed = run_script(base, "scripts.curriculum_train", *common, "--output_tag", "resumed", "--resume").stdout
    assert sorted(step_losses(resumed)) == [5, 6, 7, 8]
    assert all(step_losses(resumed)[s] == step_losses(straight)[s] for s in range(5, 9))
    assert all(smooth_losses(resumed)[s] == smooth_losses(straight)[s] for s in range(5, 9))


def test_phase_flag_and_errors(cur_dir):
    base, personal, cfg = cur_dir
    p = run_script(base, "scripts.curriculum_train", "--config", cfg, "--model_tag", "cur", "--personal", personal,
                   "--data", "builtin", "--phase", "3", "--output_tag", "late", *TINY).stdout
    assert sorted(step_losses(p)) == [6, 7, 8] and "phase: voice" in p and "phase: structure" not in p
    for flags, message in [(["--personal", personal, "--phase", "4"], "phases 1..3"), ([], "--personal PATH"), (["--personal", personal, "--num_iterations", "5"],
                           "drop --num_iterations"), (["--personal", "/nope"], "no such file")]:
        e = run_script(base, "scripts.curriculum_train", "--config", cfg, "--model_tag", "cur", "--data", "builtin", *flags, *TINY,
                       check=False)
        assert e.returncode == 1 and "Traceback" not in e.stderr and message in e.stderr, e.stderr


def test_base_train_personal_share(cur_dir):
    base, personal, _ = cur_dir
    p = run_script(base, "scripts.base_train", "--n_layer", "1", "--model_dim", "64", "--head_dim", "32", "--max_seq_len", "64",
                   "--device_batch_size", "4", "--total_batch_size", "256", "--num_iterations", "3", "--eval_every", "0",
                   "--sample_every", "0", "--device_type", "cpu", "--data", "builtin", "--model_tag", "pers",
                   "--personal", personal, "--personal_frac", "0.25").stdout
    assert "25.0% of every batch (64 of 256 tokens)" in p
    assert "personal 25.00%" in p
