"""What every text task shares: train and held-out datasets of rows (`prompt`, `answer`, ...), a
reward, a greedy evaluator, and how prompts reach the model.

Prompts are plain text by default. With `chat: true` each prompt is rendered through the
tokenizer's chat template as one user message (after an optional system message), ending with the
assistant's turn, the way an instruct model was trained to see a question. The raw text stays in
the `question` column.
"""
import hashlib
import json

from datasets import Dataset

from ptlab.errors import ConfigError


def fingerprint(task, splits: tuple[str, ...] = ("val",)) -> str:
    """A hash of the data a task drew (its rows' prompts and answers, and a reward table where it has
    one), recorded in summary.json as `task_data`: the report says a claim's interval covers the
    task draw only when its seeds' data differ, not because their task.seed does."""
    digest = hashlib.sha256()
    for split in splits:
        rows = getattr(task, f"{split}_dataset")()
        columns = [list(rows[name]) if name in rows.column_names else [] for name in ("prompt", "answer")]
        digest.update(json.dumps([columns[0], [str(answer) for answer in columns[1]]]).encode())
    table = getattr(task, "table", None)
    if table is not None:
        digest.update(json.dumps([[float(x) for x in row] for row in table]).encode())
    return digest.hexdigest()[:16]


def render_chat(tokenizer, question: str, system_prompt: str | None = None) -> str:
    """The chat-template text of one question. Encoding this text the usual way (tokenizer(text))
    gives exactly the template's tokens: a BOS that the tokenizer adds by itself is not written twice."""
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
        {"role": "user", "content": question}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    bos = tokenizer.bos_token
    adds_bos = bos is not None and tokenizer("x").input_ids[:1] == [tokenizer.bos_token_id]
    return text[len(bos):] if adds_bos and text.startswith(bos) else text


class TextTask:
    step_rewards = False  # whether the reward gives per-step rewards (process supervision)
    evaluation = "held_out"  # greedy and sampled answers to held-out prompts (training/evaluation.py)
    response_tokens = None  # open vocabulary

    def __init__(self, reward, max_new_tokens: int = 8, chat: bool = False, system_prompt: str | None = None,
                 eval_samples: int = 0, eval_seed: int = 0):
        self.reward, self.max_new_tokens = reward, max_new_tokens
        self.chat, self.system_prompt = chat, system_prompt
        self.eval_samples, self.eval_seed = eval_samples, eval_seed  # sampled answers per held-out prompt
        self._train, self._val = Dataset.from_list([]), Dataset.from_list([])

    def train_dataset(self) -> Dataset:
        return self._train

    def val_dataset(self) -> Dataset:
        return self._val

    def check_context(self, tokenizer, context: int | None, max_new_tokens: int, key: str) -> None:
        """Every prompt plus `max_new_tokens` must fit in the model's context (`context` positions,
        None: unbounded); raised before the warm start, naming the key that sets the context."""
        if context is None:
            return
        rows = [row for split in (self._train, self._val) if "prompt" in split.column_names for row in split["prompt"]]
        longest = max((len(tokenizer(text).input_ids) for text in rows), default=0)
        if longest + max_new_tokens > context:
            raise ConfigError(f"{key}={context} is not allowed: the longest prompt is {longest} tokens and responses up to "
                              f"{max_new_tokens} more (generation.max_new_tokens), so the model needs a context of at "
                              f"least {longest + max_new_tokens}")

    def format_prompts(self, tokenizer, model_name: str = "this model") -> None:
        """Render every prompt for this tokenizer (chat: true), once, before training."""
        if not self.chat:
            return
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError(f"task.chat=true needs a tokenizer with a chat template, and {model_name}'s has none; "
                              "set task.chat=false or use an instruct model")
        render = lambda row: {"question": row["prompt"], "prompt": render_chat(tokenizer, row["prompt"], self.system_prompt)}
        self._train, self._val = self._train.map(render), self._val.map(render)
