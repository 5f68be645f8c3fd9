"""Generated exercises: every answer recomputed independently from the question's text."""
import random
import re
import statistics

import pytest

from nanochat.exercises import (DIFFICULTIES, KINDS, TWO_DIGIT_ADDITION, Exercise, exercise_document, generate,
                                is_correct, random_exercise, render_text)
from nanochat.tasks.builtin import ExerciseChat, exercise_key, exercise_set


def list_after_colon(q):
    body = q.split(": ", 1)[1].rstrip("?.")
    return body.split(", ")


def numbers(q):
    return [int(x) for x in re.findall(r"\d+", q)]


def balanced(s):
    # a different algorithm from the module's stack: delete matched pairs until none are left
    prev = None
    while prev != s:
        prev = s
        for pair in ("()", "[]", "{}", "<>"):
            s = s.replace(pair, "")
    return s == ""


def listops_value(expr):
    """
    Evaluate a ListOps expression without recursion (the generator recurses): a stack of open
    operations; a closing bracket applies the innermost one and hands its value to the one outside.
    """
    ops = {"MAX": max, "MIN": min, "SM": lambda xs: sum(xs) % 10, "MED": statistics.median}
    tokens = re.findall(r"\[[A-Z]+|\d+|\]|\S", expr)
    stack = [("", [])]
    for tok in tokens:
        if tok.startswith("["):
            assert tok[1:] in ops, tok
            stack.append((tok[1:], []))
        elif tok == "]":
            op, args = stack.pop()
            assert len(args) >= 2, expr
            if op == "MED":
                assert len(args) % 2 == 1, expr  # a median of an odd count is one of the arguments
            stack[-1][1].append(ops[op](args))
        else:
            assert tok.isdigit() and len(tok) == 1, (tok, expr)  # operands are single digits
            stack[-1][1].append(int(tok))
    assert len(stack) == 1 and len(stack[0][1]) == 1, expr
    return stack[0][1][0]


def listops_expression(q):
    return re.search(r"\[.*\]", q).group(0)


def listops_shape(expr):
    """(nesting depth, most arguments of any one operation) of a ListOps expression."""
    depth = deepest = widest = 0
    counts = [0]
    for tok in re.findall(r"\[[A-Z]+|\d|\]", expr):
        if tok == "]":
            widest = max(widest, counts.pop())
            depth -= 1
        else:
            counts[-1] += 1
            if tok.startswith("["):
                counts.append(0)
                depth += 1
                deepest = max(deepest, depth)
    return deepest, widest


def solve(kind, q):
    """Recompute the answer from the question alone."""
    if kind == "addition":
        a, b = numbers(q)
        return str(a + b)
    if kind == "subtraction":
        a, b = numbers(q)
        return str(b - a if q.startswith("Subtract") else a - b)
    if kind == "multiplication":
        a, b = numbers(q)
        return str(a * b)
    if kind == "count_letters":
        letter, word = re.findall(r'"([^"]*)"', q)
        return str(sum(1 for c in word if c == letter))
    if kind == "count_items":
        target = re.findall(r'"([^"]*)"', q)[0]
        return str(sum(1 for x in list_after_colon(q) if x == target))
    if kind == "brackets":
        s = re.search(r"[()\[\]{}<>]+", q).group(0)
        return "yes" if balanced(s) else "no"
    if kind == "listops":
        return str(listops_value(listops_expression(q)))
    if kind == "copy":
        if q.startswith("Copy exactly: "):
            return q.removeprefix("Copy exactly: ")
        word, n = re.match(r'Repeat the word "(\w+)" (\d+) times\.', q).groups()
        return " ".join([word] * int(n))
    items = list_after_colon(q)
    if kind == "reverse":
        return ", ".join(reversed(items))
    if kind == "first_last":
        return items[0] if "first" in q else items[-1]
    if kind == "max_min":
        values = [int(x) for x in items]
        return str(max(values) if "largest" in q else min(values))
    if kind == "length":
        return str(len(items))
    if kind == "sort":
        if "words" in q:
            return ", ".join(sorted(items))
        return ", ".join(str(v) for v in sorted((int(x) for x in items), reverse="largest to smallest" in q))
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", KINDS)
def test_answers_are_exact(kind):
    rng = random.Random(1234)
    for difficulty in DIFFICULTIES:
        for _ in range(200):
            q, a = generate(kind, difficulty, rng)
            assert isinstance(q, str) and isinstance(a, str) and a
            assert solve(kind, q) == a, (kind, difficulty, q, a)


def test_two_digit_addition():
    kind, difficulty = TWO_DIGIT_ADDITION
    assert (kind, difficulty) == ("addition", 2)
    rng = random.Random(0)
    for _ in range(200):
        q, a = generate(kind, difficulty, rng)
        x, y = numbers(q)
        assert 10 <= x <= 99 and 10 <= y <= 99 and a == str(x + y)


def test_arithmetic_difficulty_is_digits():
    rng = random.Random(0)
    for d in DIFFICULTIES:
        for _ in range(50):
            for kind in ("addition", "subtraction"):
                assert all(len(str(n)) == d for n in numbers(generate(kind, d, rng)[0]))


def test_difficulty_changes_size():
    def mean_size(kind, d):
        rng = random.Random(7)
        return sum(len(generate(kind, d, rng)[0]) for _ in range(200)) / 200
    for kind in KINDS:
        sizes = [mean_size(kind, d) for d in DIFFICULTIES]
        assert sizes[-1] > sizes[0], (kind, sizes)
    for kind in ("addition", "multiplication", "length", "reverse", "sort", "brackets"):
        sizes = [mean_size(kind, d) for d in DIFFICULTIES]
        assert sizes == sorted(sizes), (kind, sizes)


def test_brackets_have_both_answers():
    rng = random.Random(3)
    answers = [generate("brackets", d, rng)[1] for d in DIFFICULTIES for _ in range(100)]
    assert 0.25 < answers.count("yes") / len(answers) < 0.85


def test_deterministic_and_random_exercise():
    a = [random_exercise(random.Random(5)) for _ in range(3)]
    b = [random_exercise(random.Random(5)) for _ in range(3)]
    assert a == b
    rng = random.Random(9)
    seen = set()
    for _ in range(500):
        ex = random_exercise(rng)
        assert isinstance(ex, Exercise) and ex.kind in KINDS and ex.difficulty in DIFFICULTIES
        assert solve(ex.kind, ex.question) == ex.answer
        seen.add(ex.kind)
    assert seen == set(KINDS)
    only = {random_exercise(rng, kinds=["sort"], difficulties=[3]).kind for _ in range(20)}
    assert only == {"sort"}


def test_bad_arguments():
    rng = random.Random(0)
    with pytest.raises(ValueError, match="unknown exercise kind"):
        generate("division", 1, rng)
    with pytest.raises(ValueError, match="difficulty"):
        generate("addition", 6, rng)


def test_render_and_document():
    assert render_text("What is 2 + 2?", "4") == "Question: What is 2 + 2?\nAnswer: 4"
    assert render_text("What is 2 + 2?") == "Question: What is 2 + 2?\nAnswer:"
    doc = exercise_document(random.Random(0), 5)
    blocks = doc.split("\n\n")
    assert len(blocks) == 5 and all(b.startswith("Question: ") and "\nAnswer: " in b for b in blocks)


def test_is_correct():
    assert is_correct(" 68. ", "68")
    assert is_correct("Yes", "yes")
    assert is_correct("1,  2, 3", "1, 2, 3")
    assert not is_correct("67", "68")


def test_listops_evaluator():
    assert listops_value("[MAX 3 [MIN 7 2] 5]") == 5
    assert listops_value("[SM 9 8 [MED 1 7 4]]") == 1
    assert listops_value("[MIN [MAX 0 1] [SM 5 5]]") == 0


def test_listops_answers_over_many_seeds():
    for seed in range(100):
        rng = random.Random(seed)
        for d in DIFFICULTIES:
            for _ in range(10):
                q, a = generate("listops", d, rng)
                assert re.fullmatch(r"\d", a), (q, a)
                assert str(listops_value(listops_expression(q))) == a, (d, q, a)


def test_listops_depth_and_width_grow_with_difficulty():
    rng = random.Random(11)
    shapes = [{listops_shape(listops_expression(generate("listops", d, rng)[0])) for _ in range(300)}
              for d in DIFFICULTIES]
    depths = [{depth for depth, _ in cell} for cell in shapes]
    widths = [max(width for _, width in cell) for cell in shapes]
    assert all(len(ds) == 1 for ds in depths), depths  # each difficulty nests exactly so deep
    depths = [ds.pop() for ds in depths]
    assert depths == sorted(depths) and depths[0] == 1 and depths[-1] >= 4, depths
    assert widths == sorted(widths) and widths[0] == 3 and widths[-1] > 3, widths
    assert {width for _, width in shapes[0]} == {2, 3}  # difficulty 1: one flat operation of 2-3 digits
    # every operator and every digit answer turns up
    rng = random.Random(13)
    qa = [generate("listops", d, rng) for d in DIFFICULTIES for _ in range(200)]
    assert {op for q, _ in qa for op in re.findall(r"\[([A-Z]+)", q)} == {"MAX", "MIN", "MED", "SM"}
    assert {a for _, a in qa} == set("0123456789")


def test_listops_deterministic():
    def run(seed):
        rng = random.Random(seed)
        return [generate("listops", d, rng) for d in DIFFICULTIES for _ in range(20)]
    assert run(21) == run(21) and run(21) != run(22)
    assert len({q for q, _ in run(21)}) > 90  # not the same few questions over and over


def test_listops_held_out_cells():
    # the key tells different expressions apart, and ignores the wording and the order of arguments
    assert exercise_key("listops", "What is the value of [MAX 3 [MIN 7 2] 5]?") == \
        exercise_key("listops", "Compute [MAX [MIN 2 7] 5 3].")
    assert exercise_key("listops", "Compute [MAX 3 [MIN 7 2] 5].") != exercise_key("listops", "Compute [MIN 3 [MAX 7 2] 5].")
    assert exercise_key("listops", "Compute [MAX 3 [MIN 7 2] 5].") != exercise_key("listops", "Compute [MAX 3 [MIN 7 5] 2].")
    for d in DIFFICULTIES:
        test = exercise_set("listops", d, 30)
        train = ExerciseChat(300, "train", kinds=["listops"], difficulties=[d], multi_turn=0.0)
        test_keys = {exercise_key("listops", c["messages"][0]["content"]) for c in test}
        train_keys = {exercise_key("listops", c["messages"][0]["content"]) for c in train}
        assert len(test_keys) > 10 and not test_keys & train_keys, d
        assert all(c["kind"] == "listops" and c["difficulty"] == d for c in test)
        assert all(solve("listops", c["messages"][0]["content"]) == c["answer"] for c in test)
