"""
Generated exercises with exact short answers: arithmetic, counting, bracket matching, list
operations, sorting, copying and ListOps (nested list expressions). They go into the offline
built-in pretraining corpus (as plain text, see render_text) and, later, into built-in chat
conversations and small benchmarks.

Every generator has the signature gen(rng, difficulty) -> (question, answer):
- rng is a random.Random, so the same seed always gives the same exercises;
- difficulty is 1..5 and sets the size of the problem (digits, list length, word length, ...);
- answer is a short string that is exactly right (a number, "yes"/"no", a word, or a list
  written as "a, b, c").

Public API:
    KINDS                          the kinds, in a fixed order
    generate(kind, difficulty, rng) -> (question, answer)
    random_exercise(rng, kinds=KINDS, difficulties=DIFFICULTIES) -> Exercise(kind, difficulty, question, answer)
    render_text(question, answer=None)  "Question: ...\\nAnswer: ..." (a prompt when answer is None)
    exercise_document(rng, n)      n random exercises rendered as one corpus document
    is_correct(prediction, answer) lenient string comparison for scoring model outputs
    TWO_DIGIT_ADDITION             ("addition", 2): the case benchmarks single out

Arithmetic difficulty is the number of digits of the operands, so ("addition", 2) is two-digit
addition (e.g. "What is 47 + 38?" -> "85").

ListOps (Nangia & Bowman 2018) nests the operators MAX, MIN, MED (median) and SM (sum modulo 10)
over single digits: "What is the value of [MAX 3 [MIN 7 2] 5]?" -> "5". Difficulty sets the
nesting depth (1, 2, 3, 3, 4) and the most arguments per operator (3, 3, 3, 4, 4); MED always has
an odd number of arguments, so its median is one of them.
"""
from typing import NamedTuple

DIFFICULTIES = (1, 2, 3, 4, 5)

# Common English words by length, for the letter-counting, list and copy exercises.
WORDS = """
cat dog sun map cup red box hat pen egg bee ant owl fox car bus sky sea ice jam
tree fish bird frog milk rain snow book door lamp ship star moon cake rose leaf
apple house water chair table bread grape lemon tiger zebra horse piano river cloud
banana orange garden pencil rabbit window yellow purple spring summer winter bottle
kitchen blanket monster chicken teacher morning rainbow penguin pumpkin library
elephant mountain sandwich computer umbrella dinosaur calendar triangle hospital
strawberry blueberry butterfly chocolate crocodile pineapple telephone adventure
basketball helicopter watermelon friendship playground everything grasshopper
photographer refrigerator encyclopedia kaleidoscope independence mississippi
""".split()

# Short items for lists where repeats should be likely (counting occurrences).
ITEMS = "apple pear plum fig kiwi lime cat dog cow pig hen red blue green pink gray".split()

BRACKETS = ["()", "()[]", "()[]{}", "()[]{}", "()[]{}<>"]  # pair types available per difficulty


class Exercise(NamedTuple):
    kind: str
    difficulty: int
    question: str
    answer: str


def _fmt(items):
    return ", ".join(str(x) for x in items)


def _number(rng, digits):
    """A random number with exactly `digits` digits (0..9 for one digit)."""
    if digits == 1:
        return rng.randint(0, 9)
    return rng.randint(10 ** (digits - 1), 10 ** digits - 1)


def _word(rng, difficulty):
    # difficulty picks the word length band: 3-4, 5-6, 7-8, 9-10, 11+ letters
    lo, hi = [(3, 4), (5, 6), (7, 8), (9, 10), (11, 99)][difficulty - 1]
    return rng.choice([w for w in WORDS if lo <= len(w) <= hi])


def _list_len(rng, difficulty):
    # 3-4 items at difficulty 1 up to 11-14 at difficulty 5
    return rng.randint(2 * difficulty + 1, 3 * difficulty + 2)

# -----------------------------------------------------------------------------
# arithmetic: difficulty = number of digits

def addition(rng, difficulty):
    a, b = _number(rng, difficulty), _number(rng, difficulty)
    q = rng.choice(["What is {a} + {b}?", "Compute {a} + {b}.", "Add {a} and {b}."]).format(a=a, b=b)
    return q, str(a + b)


def subtraction(rng, difficulty):
    a, b = _number(rng, difficulty), _number(rng, difficulty)
    a, b = max(a, b), min(a, b)  # keep answers non-negative
    q = rng.choice(["What is {a} - {b}?", "Compute {a} - {b}.", "Subtract {b} from {a}."]).format(a=a, b=b)
    return q, str(a - b)


def multiplication(rng, difficulty):
    da, db = [(1, 1), (2, 1), (2, 2), (3, 2), (3, 3)][difficulty - 1]
    a, b = _number(rng, da), _number(rng, db)
    q = rng.choice(["What is {a} * {b}?", "Compute {a} * {b}.", "Multiply {a} by {b}."]).format(a=a, b=b)
    return q, str(a * b)

# -----------------------------------------------------------------------------
# counting

def count_letters(rng, difficulty):
    word = _word(rng, difficulty)
    # mostly a letter that occurs (often several times), sometimes one that does not (answer 0)
    letter = rng.choice(word) if rng.random() < 0.85 else rng.choice("abcdefghijklmnopqrstuvwxyz")
    q = rng.choice(['How many times does the letter "{l}" appear in "{w}"?',
                    'Count the letter "{l}" in the word "{w}".']).format(l=letter, w=word)
    return q, str(word.count(letter))


def count_items(rng, difficulty):
    # a small pool makes repeats likely, so the count is not always 1
    pool = rng.sample(ITEMS, 3 + difficulty // 2)
    items = [rng.choice(pool) for _ in range(_list_len(rng, difficulty))]
    target = rng.choice(pool)
    q = f'How many times does "{target}" appear in the list: {_fmt(items)}?'
    return q, str(items.count(target))

# -----------------------------------------------------------------------------
# brackets

def is_balanced(s):
    """True if every bracket in s is closed by the matching one in the right order."""
    closing = {")": "(", "]": "[", "}": "{", ">": "<"}
    stack = []
    for c in s:
        if c in "([{<":
            stack.append(c)
        elif c in closing:
            if not stack or stack.pop() != closing[c]:
                return False
    return not stack


def _balanced_brackets(rng, n_pairs, kinds):
    # grow a random balanced string: at each step open a new pair or close the innermost one
    out, stack, opened = [], [], 0
    while opened < n_pairs or stack:
        if opened < n_pairs and (not stack or rng.random() < 0.55):
            pair = rng.randrange(0, len(kinds), 2)
            out.append(kinds[pair])
            stack.append(kinds[pair + 1])
            opened += 1
        else:
            out.append(stack.pop())
    return out


def brackets(rng, difficulty):
    kinds = BRACKETS[difficulty - 1]
    s = _balanced_brackets(rng, rng.randint(difficulty, 2 * difficulty + 1), kinds)
    if rng.random() < 0.5:
        # corrupt it; the answer is recomputed below, since a change can leave it balanced
        i = rng.randrange(len(s))
        how = rng.choice(["delete", "insert", "replace", "swap"])
        if how == "delete":
            del s[i]
        elif how == "insert":
            s.insert(i, rng.choice(kinds))
        elif how == "replace":
            s[i] = rng.choice(kinds)
        elif i + 1 < len(s):
            s[i], s[i + 1] = s[i + 1], s[i]
    s = "".join(s)
    q = rng.choice(["Are the brackets in {s} balanced?", "Is {s} a balanced bracket sequence?"]).format(s=s)
    return q, "yes" if is_balanced(s) else "no"

# -----------------------------------------------------------------------------
# list operations

def _random_list(rng, difficulty):
    n = _list_len(rng, difficulty)
    if rng.random() < 0.5:
        return [rng.randint(0, 10 ** min(difficulty, 3) - 1) for _ in range(n)]
    return [rng.choice(WORDS) for _ in range(n)]


def reverse(rng, difficulty):
    items = _random_list(rng, difficulty)
    return f"Reverse the list: {_fmt(items)}.", _fmt(items[::-1])


def first_last(rng, difficulty):
    items = _random_list(rng, difficulty)
    which = rng.choice(["first", "last"])
    return f"What is the {which} item in the list: {_fmt(items)}?", str(items[0] if which == "first" else items[-1])


def max_min(rng, difficulty):
    items = [rng.randint(0, 10 ** min(difficulty + 1, 4) - 1) for _ in range(_list_len(rng, difficulty))]
    which = rng.choice(["largest", "smallest"])
    return f"What is the {which} number in the list: {_fmt(items)}?", str(max(items) if which == "largest" else min(items))


def length(rng, difficulty):
    items = _random_list(rng, difficulty)
    return f"How many items are in the list: {_fmt(items)}?", str(len(items))


def sort(rng, difficulty):
    items = _random_list(rng, difficulty)
    if isinstance(items[0], str):
        return f"Sort these words in alphabetical order: {_fmt(items)}.", _fmt(sorted(items))
    if difficulty >= 3 and rng.random() < 0.5:
        return f"Sort these numbers from largest to smallest: {_fmt(items)}.", _fmt(sorted(items, reverse=True))
    return f"Sort these numbers from smallest to largest: {_fmt(items)}.", _fmt(sorted(items))

# -----------------------------------------------------------------------------
# copy / repeat

def copy(rng, difficulty):
    if rng.random() < 0.5:
        word, n = _word(rng, min(difficulty, 3)), rng.randint(2, difficulty + 2)
        return f'Repeat the word "{word}" {n} times.', " ".join([word] * n)
    # a random string of letters and digits cannot be guessed, only copied
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    s = "".join(rng.choice(alphabet) for _ in range(3 * difficulty + rng.randint(0, 2)))
    return f"Copy exactly: {s}", s

# -----------------------------------------------------------------------------
# ListOps: nested MAX / MIN / MED / SM over single digits

LISTOPS = {
    "MAX": max,
    "MIN": min,
    "MED": lambda args: sorted(args)[len(args) // 2],  # always an odd count of arguments
    "SM": lambda args: sum(args) % 10,
}
LISTOPS_SHAPE = [(1, 3), (2, 3), (3, 3), (3, 4), (4, 4)]  # (nesting depth, most arguments) per difficulty
LISTOPS_NEST = 0.3  # chance that an argument off the deepest path is itself an operation


def _listops_expr(rng, depth, max_args):
    """A random expression nested exactly depth deep, as (text, value)."""
    op = rng.choice(list(LISTOPS))
    if op == "MED":
        n = rng.choice(range(3, max_args + 1, 2))
    else:
        n = rng.randint(2, max_args)
    deepest = rng.randrange(n)  # this argument carries the nesting down to the full depth
    texts, values = [], []
    for i in range(n):
        if depth > 1 and (i == deepest or rng.random() < LISTOPS_NEST):
            text, value = _listops_expr(rng, depth - 1 if i == deepest else rng.randint(1, depth - 1), max_args)
        else:
            value = rng.randint(0, 9)
            text = str(value)
        texts.append(text)
        values.append(value)
    return f"[{op} {' '.join(texts)}]", LISTOPS[op](values)


def listops(rng, difficulty):
    expr, value = _listops_expr(rng, *LISTOPS_SHAPE[difficulty - 1])
    q = rng.choice(["What is the value of {e}?", "Evaluate {e}.", "Compute {e}."]).format(e=expr)
    return q, str(value)

# -----------------------------------------------------------------------------
# public API

GENERATORS = {
    "addition": addition,
    "subtraction": subtraction,
    "multiplication": multiplication,
    "count_letters": count_letters,
    "count_items": count_items,
    "brackets": brackets,
    "reverse": reverse,
    "first_last": first_last,
    "max_min": max_min,
    "length": length,
    "sort": sort,
    "copy": copy,
    "listops": listops,
}
KINDS = tuple(GENERATORS)
TWO_DIGIT_ADDITION = ("addition", 2)


def generate(kind, difficulty, rng):
    """One exercise of the given kind and difficulty (1..5): (question, answer)."""
    if kind not in GENERATORS:
        raise ValueError(f"unknown exercise kind {kind!r}; known: {', '.join(KINDS)}")
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty must be 1..5, got {difficulty!r}")
    return GENERATORS[kind](rng, difficulty)


def random_exercise(rng, kinds=KINDS, difficulties=DIFFICULTIES):
    """An exercise of a random kind and difficulty, as Exercise(kind, difficulty, question, answer)."""
    kind, difficulty = rng.choice(kinds), rng.choice(difficulties)
    return Exercise(kind, difficulty, *generate(kind, difficulty, rng))


def render_text(question, answer=None):
    """
    The plain-text form used in the pretraining corpus. With answer=None it ends in "Answer:",
    which is the prompt to give a base model so that it completes the answer.
    """
    if answer is None:
        return f"Question: {question}\nAnswer:"
    return f"Question: {question}\nAnswer: {answer}"


def exercise_document(rng, n):
    """n random exercises as one corpus document, separated by blank lines."""
    return "\n\n".join(render_text(ex.question, ex.answer) for ex in (random_exercise(rng) for _ in range(n)))


def is_correct(prediction, answer):
    """Compare a model's answer with the exact one, ignoring case, spacing and a final period."""
    def norm(s):
        return " ".join(s.strip().rstrip(".").lower().split())
    return norm(prediction) == norm(answer)
