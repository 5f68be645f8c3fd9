"""
Built-in conversations, made on the spot with nothing downloaded:

- ExerciseChat: the exercises of nanochat.exercises (arithmetic, counting, brackets, list
  operations, sorting, copying, ListOps; difficulty 1..5) asked by the user and answered exactly
  by the assistant. Arithmetic is answered through the calculator tool: the assistant writes the
  expression between <|python_start|> and <|python_end|>, the tool's output follows, and the
  assistant repeats the result; a small model copies far more reliably than it adds.
- ChatBasics: greetings, thanks, goodbyes and who-are-you questions, answered as nanochat.

Both are deterministic functions of (seed, split, index), so any size costs nothing up front.
The train and test splits of ExerciseChat never share a question: each exercise has a key (its
numbers and quoted words, so "What is 47 + 38?", "Add 38 and 47." share one; for ListOps the
expression with each operator's arguments sorted) and about one key in ten belongs to the test split.
"""
import hashlib
import random
import re

from nanochat import exercises
from nanochat.tasks import Task

TEST_FRACTION = 10  # one key in this many is held out for the test split
ARITHMETIC = {"addition": "+", "subtraction": "-", "multiplication": "*"}


def exercise_key(kind, question):
    """
    What makes two exercises 'the same question', whatever the template's wording: the numbers
    (sorted, so 47 + 38 and 38 + 47 are one), quoted words, bracket strings and the list after a
    colon. Questions with one key always land in the same split.
    """
    if kind == "listops":
        return f"{kind}|{_listops_key(question)}"
    numbers = sorted(re.findall(r"\d+", question), key=int)
    quoted = re.findall(r'"[^"]*"', question)
    brackets = re.findall(r"[()\[\]{}<>]+", question)
    listed = question.split(":", 1)[1].strip().rstrip(".?") if ":" in question else ""
    return "|".join([kind, ",".join(numbers), ",".join(quoted), ",".join(brackets), listed])


def _listops_key(question):
    """A ListOps expression with each operator's arguments sorted: all its operators ignore their
    arguments' order, so [MAX 3 [MIN 7 2]] and [MAX [MIN 2 7] 3] are one question."""
    stack = [[]]
    for token in re.findall(r"\[[A-Z]+|\d|\]", question):
        if token.startswith("["):
            stack.append([token])
        elif token == "]":
            op, *args = stack.pop()
            stack[-1].append(f"{op} {' '.join(sorted(args))}]")
        else:
            stack[-1].append(token)
    return " ".join(stack[0])


def split_of(kind, question):
    h = int(hashlib.md5(exercise_key(kind, question).encode()).hexdigest()[:8], 16)
    return "test" if h % TEST_FRACTION == 0 else "train"


def calculator_expression(kind, question):
    """The expression the assistant hands to the calculator for an arithmetic exercise."""
    a, b = [int(n) for n in re.findall(r"\d+", question)[:2]]
    if kind == "subtraction":  # "Subtract b from a" names them the other way round
        a, b = max(a, b), min(a, b)
    return f"{a} {ARITHMETIC[kind]} {b}"


def exercise_conversation(kind, difficulty, question, answer, tool=True):
    if tool and kind in ARITHMETIC:
        content = [{"type": "python", "text": calculator_expression(kind, question)},
                   {"type": "python_output", "text": answer},
                   {"type": "text", "text": answer}]
    else:
        content = answer
    return [{"role": "user", "content": question}, {"role": "assistant", "content": content}]


class ExerciseChat(Task):
    """
    size conversations of exercises. kinds: which kinds (default all); difficulties: which
    difficulties (default 1..5); tool: answer arithmetic through the calculator; multi_turn: the
    fraction of conversations that ask 2-3 exercises in a row (teaches the model to answer the
    last question, not an earlier one). Items carry "kind", "difficulty" and "answer" for scoring.
    """
    eval_type = "generative"

    def __init__(self, size=10000, split="train", kinds=None, difficulties=None, seed=0, tool=True, multi_turn=0.2):
        assert split in ("train", "test"), split
        self.kinds = tuple(kinds or exercises.KINDS)
        self.difficulties = tuple(difficulties or exercises.DIFFICULTIES)
        for k in self.kinds:
            if k not in exercises.KINDS:
                raise ValueError(f"unknown exercise kind {k!r}; known: {', '.join(exercises.KINDS)}")
        for d in self.difficulties:
            if d not in exercises.DIFFICULTIES:
                raise ValueError(f"difficulty must be 1..5, got {d!r}")
        self.size, self.split, self.seed, self.tool, self.multi_turn = size, split, seed, tool, multi_turn

    def __len__(self):
        return self.size

    def _exercise(self, rng, kind=None, difficulty=None):
        kind = kind or rng.choice(self.kinds)
        difficulty = difficulty or rng.choice(self.difficulties)
        for _ in range(1000):
            question, answer = exercises.generate(kind, difficulty, rng)
            if split_of(kind, question) == self.split:
                return kind, difficulty, question, answer
        raise RuntimeError(f"no {self.split} exercise of {kind} at difficulty {difficulty}")  # cannot happen

    def __getitem__(self, index):
        if not 0 <= index < self.size:
            raise IndexError(index)
        rng = random.Random(f"exercise-{self.seed}-{self.split}-{index}")
        n = rng.choice([2, 3]) if rng.random() < self.multi_turn else 1
        messages = []
        for _ in range(n):
            kind, difficulty, question, answer = self._exercise(rng)
            messages += exercise_conversation(kind, difficulty, question, answer, self.tool)
        return {"messages": messages, "kind": kind, "difficulty": difficulty, "answer": answer}

    def evaluate(self, conversation, completion):
        """completion: the assistant's text (without tool calls)."""
        return exercises.is_correct(completion, conversation["answer"])


def exercise_set(kind, difficulty, n, split="test", seed=0):
    """n single-turn exercises of one kind and difficulty, for evaluation."""
    task = ExerciseChat(n, split, kinds=[kind], difficulties=[difficulty], seed=seed, multi_turn=0.0)
    return [task[i] for i in range(n)]

# -----------------------------------------------------------------------------
# greetings and identity

IDENTITY = ("I am nanochat, a small language model trained with nanochat, a minimal open-source recipe for "
            "training chat models on one machine. I can hold a simple conversation and solve small exercises: "
            "arithmetic (with a calculator), counting, brackets, lists, sorting and copying.")

EXCHANGES = [
    (["hi", "hello", "hey", "hi there", "hello there", "hey there", "good morning", "good evening", "howdy", "greetings"],
     ["Hello! How can I help you today?", "Hi! What can I do for you?", "Hello! Ask me anything, or give me an exercise to solve.",
      "Hi there! How can I help?"]),
    (["how are you", "how are you doing", "how's it going", "what's up"],
     ["I'm doing well, thank you! How can I help you?", "All good here. What would you like to talk about?"]),
    (["who are you", "what are you", "what is your name", "what's your name", "introduce yourself", "tell me about yourself",
      "are you a person", "are you human", "are you chatgpt"],
     [IDENTITY, "My name is nanochat. " + IDENTITY.split(". ", 1)[1]]),
    (["who made you", "who created you", "who trained you", "where do you come from"],
     ["I was trained with nanochat, a small open-source project for training chat models from scratch on one machine. "
      "Whoever ran its scripts trained me.",
      "I am nanochat: someone trained me with the nanochat scripts, from pretraining to chat fine-tuning."]),
    (["what can you do", "what are you good at", "how can you help me", "help"],
     ["I can chat a little and solve small exercises: arithmetic (I use a calculator), counting letters or items, "
      "checking brackets, reversing and sorting lists, and copying text. Try: What is 23 + 45?"]),
    (["thanks", "thank you", "thank you very much", "thanks a lot", "great, thanks"],
     ["You're welcome!", "Happy to help!", "You're welcome. Anything else?"]),
    (["bye", "goodbye", "see you", "see you later", "good night"],
     ["Goodbye!", "Bye! Have a nice day.", "See you later!"]),
]


def _vary(rng, text):
    """Users type in many ways: capitalised or not, with or without punctuation."""
    if rng.random() < 0.5:
        text = text[0].upper() + text[1:]
    question = text.startswith(("how", "who", "what", "where", "are", "How", "Who", "What", "Where", "Are"))
    return text + rng.choice(["", "!", "?" if question else ".", "?" if question else "!"])


class ChatBasics(Task):
    """size conversations of greetings, identity, thanks and goodbyes, some of them multi-turn."""
    def __init__(self, size=1000, split="train", seed=0):
        self.size, self.split, self.seed = size, split, seed

    def __len__(self):
        return self.size

    def __getitem__(self, index):
        if not 0 <= index < self.size:
            raise IndexError(index)
        rng = random.Random(f"chat-{self.seed}-{self.split}-{index}")
        messages = []
        for _ in range(rng.choice([1, 1, 2, 3])):
            prompts, replies = rng.choice(EXCHANGES)
            messages += [{"role": "user", "content": _vary(rng, rng.choice(prompts))},
                         {"role": "assistant", "content": rng.choice(replies)}]
        if rng.random() < 0.3:
            # a greeting, then a task: the model must get down to work after small talk
            ex = ExerciseChat(1, self.split, seed=rng.randrange(10 ** 9), multi_turn=0.0)[0]
            messages += ex["messages"]
        return {"messages": messages}
