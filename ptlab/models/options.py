"""The policy options of a model config (conf/model/_policy.yaml) and the export modes (checked before
any model is built by ptlab/checks/values.py)."""
import torch


POLICY_OPTIONS = ("dtype", "gradient_checkpointing", "lora", "onednn")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
EXPORTS = ("merged", "adapter", "none")
