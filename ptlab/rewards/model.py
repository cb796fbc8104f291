"""A reward model as a reward: a sequence-classification model from a local directory scores each
(prompt, completion) in batches, as TRL takes `AutoModelForSequenceClassification` models.

    task:
      reward:
        _target_: ptlab.rewards.model.RewardModel
        path: /models/my_reward_model      # a local Hugging Face directory (no download)

The text scored is the reward model's chat template applied to the question as a user turn and the
completion as the assistant's, when its tokenizer has one (as TRL does for conversational data);
otherwise the prompt followed by the completion. The score is the logit of `label` (0: the single
output of a one-label head). Alone or as a term of `ptlab.rewards.weighted.WeightedSum` beside a
correctness check.
"""
import torch


class RewardModel:
    def __init__(self, path: str, batch_size: int = 16, label: int = 0, max_length: int | None = None,
                 device: str = "cpu"):
        from pathlib import Path

        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from ptlab.errors import ConfigError

        if not Path(str(path)).expanduser().is_dir():
            raise ConfigError(f"task.reward.path={path!r} is not a directory: a reward model is a local Hugging Face "
                              "directory (AutoModelForSequenceClassification)")
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "right"
        self.model = AutoModelForSequenceClassification.from_pretrained(path, local_files_only=True).to(device).eval()
        if self.model.config.pad_token_id is None:  # where each sequence ends, for a decoder's last-token score
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.batch_size, self.label, self.max_length, self.device = batch_size, label, max_length, device
        self.__qualname__ = f"RewardModel({Path(str(path)).name})"

    def text(self, completion: str, row: dict) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            question = row.get("question", row.get("prompt", ""))
            return self.tokenizer.apply_chat_template([{"role": "user", "content": question},
                                                       {"role": "assistant", "content": completion}], tokenize=False)
        return f"{row.get('prompt', '')}{completion}"

    @torch.no_grad()
    def __call__(self, completions: list[str], rows: list[dict]) -> list[float]:
        texts = [self.text(completion, row) for completion, row in zip(completions, rows)]
        scores = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(texts[start : start + self.batch_size], return_tensors="pt", padding=True,
                                   truncation=self.max_length is not None, max_length=self.max_length,
                                   add_special_tokens=True).to(self.device)
            logits = self.model(**batch).logits.float()
            scores += logits[:, self.label].tolist()
        return scores
