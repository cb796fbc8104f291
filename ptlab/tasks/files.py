"""Bring your own prompts: a task read from a JSONL or Parquet file, or a directory saved with
`datasets.Dataset.save_to_disk`.

Each record needs a prompt field and an answer field (named by `prompt_field`, `answer_field`); a
`rejected_field` adds the rejected responses that offline DPO (sampler=pairs) trains on. Every other
field rides along in the row, so a reward can read it. The held-out split is `val_size` records
chosen by the task's own seed (not the run's): every run sees the same validation set.
"""
import json
from pathlib import Path

from datasets import Dataset, load_dataset, load_from_disk

from ptlab.errors import ConfigError
from ptlab.tasks.base import TextTask

FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def read_records(path: Path) -> Dataset:
    """The file's records; a file that does not parse, or holds none, is refused in one line naming
    the file (and, for JSON, the line and column)."""
    if path.is_dir():
        return load_from_disk(str(path))
    if path.suffix not in FORMATS:
        raise ConfigError(f"task.path={str(path)!r} is not a .jsonl, .json or .parquet file, nor a saved datasets directory")
    if FORMATS[path.suffix] == "json":
        check_json(path)
    try:
        records = load_dataset(FORMATS[path.suffix], data_files=str(path), split="train")
    except Exception as error:  # noqa: BLE001 - a truncated Parquet file, an encoding error: one line, naming the file
        cause = error.__cause__ or error
        raise ConfigError(f"task.path={str(path)!r} cannot be read as {FORMATS[path.suffix]}: {type(cause).__name__}: "
                          f"{(str(cause).strip().splitlines() or [''])[0]}") from None
    if len(records) == 0:
        raise ConfigError(f"task.path={str(path)!r} holds no records")
    return records


def check_json(path: Path) -> None:
    """A .jsonl file: one JSON object per non-empty line; a .json file: an array of objects, or JSON
    lines. Refused naming the line and column of the first error, or for holding no records."""
    text = path.read_text(errors="replace")
    if not text.strip():
        raise ConfigError(f"task.path={str(path)!r} holds no records (the file is empty)")
    if path.suffix == ".json" and text.lstrip().startswith("["):  # one JSON array of records
        try:
            records = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError(f"task.path={str(path)!r} is not valid JSON: {error.msg} at line {error.lineno}, "
                              f"column {error.colno}") from None
        if not records:
            raise ConfigError(f"task.path={str(path)!r} holds no records (an empty array)")
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ConfigError(f"task.path={str(path)!r}: line {number} is not valid JSON ({error.msg} at column "
                              f"{error.colno})") from None
        if not isinstance(record, dict):
            raise ConfigError(f"task.path={str(path)!r}: line {number} is {type(record).__name__}, not a JSON object "
                              "with the prompt and answer fields")


class FileTask(TextTask):
    def __init__(self, path: str, reward, prompt_field: str = "prompt", answer_field: str = "answer",
                 rejected_field: str | None = None, val_size: int = 100, seed: int = 0, max_new_tokens: int = 64,
                 chat: bool = False, system_prompt: str | None = None, eval_samples: int = 0, eval_seed: int = 0):
        super().__init__(reward, max_new_tokens, chat, system_prompt, eval_samples, eval_seed)
        source = Path(path).expanduser()
        if not source.exists():
            raise ConfigError(f"task.path={path!r} does not exist; give a .jsonl, .json or .parquet file or a saved datasets directory")
        records = read_records(source)
        fields = {"prompt_field": prompt_field, "answer_field": answer_field, "rejected_field": rejected_field}
        for key, field in fields.items():
            if field is not None and field not in records.column_names:
                raise ConfigError(f"task.{key}={field!r} is not a field of {path}; its fields are: {', '.join(records.column_names)}")
        for key in ("prompt_field", "answer_field"):
            missing = next((i for i, value in enumerate(records[fields[key]]) if value is None), None)
            if missing is not None:  # it would be trained on as the text "None"
                raise ConfigError(f"task.path={str(path)!r}: record {missing + 1} has no {fields[key]!r} "
                                  f"(task.{key}): missing or null")
        if not 0 < val_size < len(records):
            raise ConfigError(f"task.val_size={val_size} is not allowed for {path} ({len(records)} records): 0 < val_size < {len(records)}")

        def row(record: dict) -> dict:
            return {**record, "prompt": str(record[prompt_field]), "answer": str(record[answer_field]),
                    "rejected": str(record[rejected_field]) if rejected_field else "",
                    "entry": json.dumps(record, default=str)}

        rows = records.map(row)
        split = rows.train_test_split(test_size=val_size, seed=seed)
        self._train, self._val = split["train"], split["test"]
