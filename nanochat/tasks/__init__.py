"""
Conversation data sets. A task is a plain class: len(task), task[i] -> a conversation
{"messages": [{"role": ..., "content": ...}, ...]} (see nanochat.tokenizer for the format).
Evaluation tasks also have `eval_type` ("generative": the model writes an answer that
evaluate(conversation, completion) -> bool checks; "categorical": multiple choice, the answer is
the letter the model's logits favour among conversation["letters"]).

    builtin.ExerciseChat, builtin.ChatBasics   offline: exercises with exact answers, greetings, identity
    smoltalk.SmolTalk                          HuggingFaceTB/smol-smoltalk (downloaded once)
    conversation_sets.ConversationSet          Synthetic-Persona-Chat, DailyDialog, LMSYS-Chat-1M, Magpie-Ultra (downloaded once)
    custom.CustomChat                          your own ChatML text or JSONL conversations
    arc.ARC, mmlu.MMLU, gsm8k.GSM8K            evaluation sets, from $NANOCHAT_BASE_DIR/eval_data/
    humaneval.HumanEval                        code: completions run against tests in nanochat.sandbox
    mixture.TaskMixture, mixture.parse_mixture weighted mixtures, e.g. "exercises:8,chat:1,smoltalk:3"
"""
import os


class Task:
    """Base class: only iteration on top of __len__ and __getitem__."""
    eval_type = None

    def __len__(self):
        raise NotImplementedError

    def __getitem__(self, index):
        raise NotImplementedError

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]


def hf_url(repo, path, revision="main"):
    """The download URL of a file in a Hugging Face dataset repo; NANOCHAT_HF_URL replaces the host (mirrors, tests).
    revision: a branch, e.g. "refs/convert/parquet" (the hub's own parquet conversion of a repo)."""
    from urllib.parse import quote
    base = (os.environ.get("NANOCHAT_HF_URL") or "https://huggingface.co").rstrip("/")
    return f"{base}/datasets/{repo}/resolve/{quote(revision, safe='')}/{path}"


def hf_headers():
    token = os.environ.get("HF_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


def download(repo, path, dest, revision="main", **kwargs):
    """Download one file of a Hugging Face dataset to dest (streamed to dest.part, renamed when complete)."""
    from nanochat.download import download_file
    if os.path.exists(dest):
        return dest
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    return download_file(hf_url(repo, path, revision), dest, headers=hf_headers(), **kwargs)


def eval_data_path(*parts):
    """Where the evaluation sets live: $NANOCHAT_BASE_DIR/eval_data/..."""
    from nanochat.common import get_base_dir
    return os.path.join(get_base_dir(), "eval_data", *parts)


def read_parquet_rows(path, what, command="python -m scripts.chat_eval --download"):
    """All rows of a local parquet file as dicts; a one-line UserError naming the command that fetches it when it is missing."""
    from nanochat.common import UserError
    if not os.path.exists(path):
        raise UserError(f"{what} is not downloaded ({path} missing): run `{command}` (needs internet)")
    import pyarrow.parquet as pq
    return pq.read_table(path).to_pylist()


LETTERS = "ABCDEFGHIJ"


def multiple_choice(question, choices, answer_index, **extra):
    """A multiple-choice conversation: the choices lettered A, B, ...; the assistant answers with one letter."""
    letters = LETTERS[:len(choices)]
    text = "\n".join([question.strip(), ""] + [f"{l}) {c}" for l, c in zip(letters, choices)] +
                     ["", "Answer with the letter of the correct choice."])
    return {"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": letters[answer_index]}],
            "letters": list(letters), "answer": letters[answer_index], **extra}


class MultipleChoiceTask(Task):
    """Shared by ARC and MMLU: items are prepared conversations; scored by the letter."""
    eval_type = "categorical"

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]

    def evaluate(self, conversation, completion):
        return completion.strip().rstrip(".").upper() == conversation["answer"]
