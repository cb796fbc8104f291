"""Answer extraction: the part of a free-text completion that is scored.

Instruct models answer in sentences ("17 + 25 = 42, so the answer is 42."); a reward compares the
extracted answer, never the whole completion. `extract` options of every scoring reward:
  none         the completion, stripped
  last_number  the last number written (commas inside a number and a trailing full stop dropped)
  answer_tag   the text inside the last <answer>...</answer>
An extractor returns "" when there is nothing to extract, which scores as a wrong answer.
"""
import re

from ptlab.errors import ConfigError

NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def last_number(text: str) -> str:
    numbers = NUMBER.findall(text)
    return numbers[-1].replace(",", "") if numbers else ""


def answer_tag(text: str) -> str:
    tags = ANSWER_TAG.findall(text)
    return tags[-1].strip() if tags else ""


def whole(text: str) -> str:
    return text.strip()


EXTRACTORS = {"none": whole, "last_number": last_number, "answer_tag": answer_tag}


def extractor(name: str):
    if name not in EXTRACTORS:
        raise ConfigError(f"extract={name!r} is not one of {', '.join(EXTRACTORS)}")
    return EXTRACTORS[name]
