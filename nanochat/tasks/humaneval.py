"""
HumanEval (openai/openai_humaneval): 164 Python functions to write, each given as a signature with a
docstring (the prompt) and checked by hidden unit tests. The user's message is the prompt; the
model's reply is taken as code (the first ```python block if it writes one, else the whole reply;
a reply that never defines the function is read as the body that follows the prompt). The program
(the prompt with its imports and helpers, the code, the tests, check(entry_point)) runs in nanochat.sandbox: it
passes only if every test passes and the program then reaches its last line, so a reply that
exits early (sys.exit(0), a __main__ block that exits) is not a pass.

Read from $NANOCHAT_BASE_DIR/eval_data/humaneval/openai_humaneval/test-00000-of-00001.parquet (the
hub's path, FILES below); `python -m scripts.chat_eval --download --task_name HumanEval` fetches it.
"""
import re

from nanochat.tasks import Task, download, eval_data_path, read_parquet_rows

REPO = "openai/openai_humaneval"
# the one file of the set, as the hub lays it out (assumed: the parquet file on main)
FILES = {"test": "openai_humaneval/test-00000-of-00001.parquet"}
COMMAND = "python -m scripts.chat_eval --download --task_name HumanEval"
PASSED = 77  # the exit status the program ends with once check() has returned; anything else fails
CODE_BLOCK = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)(?:\n```|$)", re.DOTALL)


def local_path(split="test"):
    return eval_data_path("humaneval", FILES[split])


def download_all(**kwargs):
    return [download(REPO, FILES["test"], local_path(), **kwargs)]


def extract_code(completion):
    """The first fenced code block of a reply, else the reply itself."""
    m = CODE_BLOCK.search(completion)
    return (m.group(1) if m else completion).strip("\n")


def build_program(prompt, completion, test, entry_point):
    """
    The prompt (its imports and helper functions; its own stub of the function, a docstring alone, is
    valid Python) then the reply's code, which redefines the function or, when it never defines it,
    continues the prompt as its body; then the tests, check() and the exit status that marks a pass.
    """
    code = extract_code(completion)
    defines = re.search(rf"^\s*def\s+{re.escape(entry_point)}\s*\(", code, re.M)
    program = prompt + ("\n\n" if defines else "") + code
    return "\n\n".join([program, test, f"check({entry_point})", f"raise SystemExit({PASSED})"]) + "\n"


class HumanEval(Task):
    eval_type = "generative"

    def __init__(self, split="test", timeout=5.0, memory_mb=256):
        if split != "test":
            raise ValueError(f"HumanEval has only a test split, got {split!r}")
        self.rows = read_parquet_rows(local_path(), "HumanEval", COMMAND)
        self.timeout, self.memory_mb = timeout, memory_mb

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, index):
        row = self.rows[index]
        return {"messages": [{"role": "user", "content": row["prompt"]},
                             {"role": "assistant", "content": row["prompt"] + row["canonical_solution"]}],
                "task_id": row["task_id"], "entry_point": row["entry_point"], "test": row["test"]}

    def run(self, conversation, completion):
        """The sandbox's Result for a completion (see nanochat.sandbox)."""
        from nanochat.sandbox import run_python
        program = build_program(conversation["messages"][0]["content"], completion, conversation["test"],
                                conversation["entry_point"])
        return run_python(program, timeout=self.timeout, memory_mb=self.memory_mb)

    def evaluate(self, conversation, completion):
        result = self.run(conversation, completion)
        return result.returncode == PASSED and not result.timed_out
