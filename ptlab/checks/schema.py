"""The first check (keys and values): the schema of a composed config.

The schema of a composed config is RULES (a type and range, or allowed values, per key) plus, for
every other key, the type of the value the shipped configs give it: `check(cfg, defaults)` walks
every leaf of `cfg` and compares it with its rule or with the same leaf of `defaults`, the config
composed from the same config-group choices without the user's value overrides.
"""
import math
from dataclasses import dataclass

from omegaconf import DictConfig, ListConfig, OmegaConf

from ptlab.algorithms.advantages import BASELINES, NORMALISATIONS
from ptlab.algorithms.policy_losses import POLICY_LOSSES
from ptlab.errors import ConfigError


@dataclass(frozen=True)
class Rule:
    """What a key allows: a kind (integer, number, boolean, string, choice), optional bounds
    (`low`/`high`, open ends when `low_open`/`high_open`), null or not, and what it means."""
    kind: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple = ()
    nullable: bool = False
    meaning: str = ""

    def allows(self, value) -> bool:
        if value is None:
            return self.nullable
        if self.kind == "choice":
            return value in self.choices
        if self.kind == "boolean":
            return isinstance(value, bool)
        if self.kind in ("string", "list", "mapping"):
            return isinstance(value, {"string": str, "list": ListConfig, "mapping": DictConfig}[self.kind])
        if isinstance(value, (ListConfig, DictConfig)):
            return False
        if isinstance(value, bool) or not isinstance(value, int if self.kind == "integer" else (int, float)):
            return False
        if not math.isfinite(value):
            return False
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def describe(self) -> str:
        if self.kind == "choice":
            allowed = "one of " + ", ".join(dict.fromkeys(str(choice) for choice in self.choices if choice is not None))
        elif self.kind in ("boolean", "string", "list", "mapping"):
            allowed = {"boolean": "true or false", "string": "a string", "list": "a list", "mapping": "a mapping"}[self.kind]
        else:
            allowed = "an integer" if self.kind == "integer" else "a number"
            if self.low is not None and self.high is not None:
                allowed += f" in {'(' if self.low_open else '['}{_fmt(self.low)}, {_fmt(self.high)}{')' if self.high_open else ']'}"
            elif self.low is not None:
                allowed += f" {'>' if self.low_open else '>='} {_fmt(self.low)}"
            elif self.high is not None:
                allowed += f" {'<' if self.high_open else '<='} {_fmt(self.high)}"
        allowed += " or null" if self.nullable else ""
        return allowed + (f" ({self.meaning})" if self.meaning else "")


def _fmt(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else str(bound)


def integer(low=None, high=None, **kwargs) -> Rule:
    return Rule("integer", low, high, **kwargs)


def number(low=None, high=None, **kwargs) -> Rule:
    return Rule("number", low, high, **kwargs)


def one_of(*choices, **kwargs) -> Rule:
    return Rule("choice", choices=choices, **kwargs)


COUNT, SEED, PROBABILITY = integer(1), integer(0, 2**32 - 1), number(0, 1)
POSITIVE = number(0, low_open=True)
REFERENCES = one_of("initial", "rollout", meaning="the policy the KL and ratios are taken to")

# Keys whose rule is more than "the type of the shipped value". A key absent from the composed
# config (another option of its group) is not checked.
RULES = {
    "seed": SEED,
    "beta": number(0, meaning="KL strength; each algorithm says if it needs > 0"),
    "lr": POSITIVE,
    "group_size": COUNT,
    "prompts_per_step": COUNT,
    "sweep": Rule("string", nullable=True),
    "resume": Rule("string", nullable=True, meaning="a checkpoint file, e.g. <output_dir>/checkpoints/last.ckpt"),
    "reward": Rule("string", nullable=True, meaning="a plain function: path/to/file.py:function or module.function"),
    "reward_on_failure": number(nullable=True, meaning="null: stop the run; a number: the score of a failed response"),
    "export": one_of("merged", "adapter", "none"),
    "trainer.precision": one_of("32-true", "32", 32, "bf16-mixed", "16-mixed", nullable=True,
                                meaning="the precisions ptlab runs: null or 32-true (float32), bf16-mixed, 16-mixed (GPU)"),
    "generation.max_new_tokens": COUNT,
    "generation.temperature": POSITIVE,
    "generation.top_p": number(0, 1, low_open=True),
    "generation.sync_every": integer(1, meaning="optimiser steps between weight pushes into the engine"),
    "module.update_epochs": integer(1, meaning="passes over each rollout"),
    "module.minibatches": integer(1, meaning="optimiser steps per pass, at most prompts_per_step"),
    "module.max_grad_norm": number(0, low_open=True, nullable=True),
    "module.max_nonfinite_steps": COUNT,
    "module.entropy_coef": number(),
    "module.norm_length": COUNT,
    "module.length_buckets": COUNT,
    "algorithm.clip_eps": number(0, low_open=True, nullable=True),
    "algorithm.clip_eps_high": number(0, low_open=True, nullable=True),
    "algorithm.gamma": PROBABILITY,
    "algorithm.lam": PROBABILITY,
    "algorithm.vf_coef": number(0),
    "algorithm.value_clip": number(0, low_open=True, nullable=True),
    "algorithm.std_eps": POSITIVE,
    "algorithm.kl_estimator": one_of("k1", "k2", "k3"),
    "algorithm.policy_loss": one_of(*POLICY_LOSSES, meaning="a loss of ptlab/algorithms/policy_losses/"),
    "algorithm.tau_pos": POSITIVE,
    "algorithm.tau_neg": POSITIVE,
    "algorithm.cov_fraction": number(0, 1, low_open=True, meaning="fraction of the batch's tokens Clip-Cov/KL-Cov select"),
    "algorithm.kl_coef": number(0),
    "algorithm.kl_credit": one_of("sequence", "to_go"),
    "algorithm.kl_placement": one_of("loss", "reward"),
    "algorithm.reference": REFERENCES,
    "algorithm.advantage_norm": one_of(*NORMALISATIONS),
    "algorithm.baseline": one_of(*BASELINES),
    "algorithm.supervision": one_of("outcome", "process"),
    "algorithm.loss": one_of("sigmoid", "ipo"),
    "sampler.replay_ratio": number(0, 1, high_open=True),
    "sampler.capacity": COUNT,
    "sampler.refresh_every": COUNT,
    "sampler.max_extra_batches": integer(0, meaning="extra batches of prompts dynamic sampling may draw per step"),
    "sampler.num_groups": COUNT,
    "sampler.seed": SEED,
    "sampler.draw_seed": SEED,
    "sampler.policy": one_of("reference", "uniform"),
    "task.train_size": COUNT,
    "task.val_size": COUNT,
    "task.val_fraction": number(0, 1, low_open=True, high_open=True),
    "task.seed": SEED,
    "task.eval_samples": integer(0),
    "task.eval_seed": SEED,
    "task.max_new_tokens": COUNT,
    "task.num_prompts": COUNT,
    "task.path": Rule("string", meaning="a .jsonl, .json or .parquet file or a saved datasets directory"),
    "model.path": Rule("string", meaning="a local Hugging Face model directory"),
    "model.dtype": one_of("float32", "bfloat16", "float16"),
    "model.lora.r": integer(0, meaning="0: full fine-tuning"),
    "model.lora.alpha": POSITIVE,
    "model.lora.dropout": number(0, 1, high_open=True),
    "model.seed": SEED,
    "model.hidden_size": COUNT,
    "model.num_layers": COUNT,
    "model.num_heads": COUNT,
    "model.intermediate_size": COUNT,
    "model.max_length": COUNT,
    "model.capacity": COUNT,
    "warmstart.steps": integer(0),
    "warmstart.batch_size": COUNT,
    "warmstart.lr": POSITIVE,
    "warmstart.seed": SEED,
    "warmstart.target_accuracy": number(0, 1, low_open=True, high_open=True, nullable=True,
                                        meaning="expected accuracy on calibration prompts to stop at; null: all steps"),
    "warmstart.check_every": COUNT,
    "warmstart.calibration_rows": COUNT,
    "trainer.max_steps": integer(1, meaning="optimiser steps"),
    "trainer.max_epochs": integer(-1),
    "trainer.val_check_interval": integer(1, meaning="rollouts between validations"),
    "trainer.log_every_n_steps": COUNT,
    "trainer.num_sanity_val_steps": integer(0),
    "optimizer.weight_decay": number(0),
    "scheduler.num_warmup_steps": integer(0),
    "callbacks.checkpoint.every_n_train_steps": COUNT,
    "callbacks.progress.every_n_steps": COUNT,
    "callbacks.progress.when": one_of("no_terminal", "always", "never"),
    "callbacks.samples.every_n_steps": COUNT,
    "callbacks.samples.num_samples": integer(0),
}
# Keys that are code, not settings.
SKIPPED = ("_target_", "_partial_", "_args_", "_recursive_", "_convert_")
# Nodes whose other keys their library checks itself (Lightning's Trainer takes "auto", lists, ...).
NOT_INFERRED = ("trainer.",)


def check(cfg: DictConfig, defaults: DictConfig | None = None) -> None:
    """Raise ConfigError for the first leaf of `cfg` that its rule, or the type of the same leaf in
    `defaults`, does not allow; or that is missing (`???`), or deleted (`~key`) when ptlab reads it
    (a top-level node or a key with a rule)."""
    if defaults is not None:
        for key in [name for name in defaults if name != "hydra"] + list(RULES):
            if _present(defaults, key) and not _present(cfg, key) and not _left_out(cfg, key):
                raise ConfigError(f"~{key} is not allowed: ptlab reads {key}; set a value instead ({key}=...)")
    for key, value in sorted(leaves(cfg), key=lambda leaf: leaf[0].count(".")):  # `lr` before `optimizer.lr: ${lr}`
        if isinstance(value, Unresolved):
            raise ConfigError(f"{key}={value.text!r} is not allowed: it cannot be resolved ({value.reason})")
        rule = RULES.get(key)
        if rule is None and defaults is not None and not key.startswith(NOT_INFERRED):
            rule = inferred(defaults, key)
        if value is MISSING:
            raise ConfigError(f"{key} is required" + (f": {rule.meaning or rule.describe()}" if rule else ""))
        if rule is not None and not rule.allows(value):
            if isinstance(value, (ListConfig, DictConfig)):
                value = OmegaConf.to_container(value)
            given = interpolation(cfg, key)
            shown = f"{given!r} (= {value!r})" if given is not None else repr(value)
            raise ConfigError(f"{key}={shown} is not allowed: {rule.describe()}")


MISSING = object()


def _present(cfg, key: str) -> bool:
    parent, _, name = key.rpartition(".")
    node = OmegaConf.select(cfg, parent, throw_on_resolution_failure=False) if parent else cfg
    return isinstance(node, DictConfig) and name in node


def _left_out(cfg, key: str) -> bool:
    """A key under a node set to null: a part left out (`callbacks.samples=null`), not a key deleted."""
    parts = key.split(".")
    for end in range(1, len(parts)):
        parent, _, name = ".".join(parts[:end]).rpartition(".")
        node = OmegaConf.select(cfg, parent, throw_on_resolution_failure=False) if parent else cfg
        if isinstance(node, DictConfig) and name in node and node._get_node(name)._is_none():
            return True
    return False


@dataclass(frozen=True)
class Unresolved:
    """An interpolation that does not resolve (an unset environment variable, a missing key)."""

    text: str
    reason: str


def leaves(node, prefix: str = ""):
    """(dotted key, value) for every value under `node`, containers before what they hold: not
    Hydra's node, not a `_target_`; MISSING for `???`. An interpolation is resolved and its value
    checked like any other (`lr='${oc.env:X}'`, `lr='${seed}'`); one that cannot be resolved is
    refused, naming the key. Interpolations of Hydra's own node (`${hydra:...}`) resolve only in a
    running job and are left to it."""
    from omegaconf.errors import OmegaConfBaseException

    keys = node.keys() if isinstance(node, DictConfig) else range(len(node))
    for key in keys:
        path = f"{prefix}{key}" if isinstance(node, DictConfig) else f"{prefix[:-1]}[{key}]"
        if path == "hydra" or key in SKIPPED:
            continue
        if OmegaConf.is_missing(node, key):
            yield path, MISSING
            continue
        if OmegaConf.is_interpolation(node, key):
            text = str(node._get_node(key)._value())
            if "${hydra:" in text:
                continue
            try:
                value = node[key]
            except OmegaConfBaseException as error:
                yield path, Unresolved(text, " ".join(str(error).split()).split(" full_key:")[0])
                continue
        else:
            value = node[key]
        yield path, value
        if isinstance(value, (DictConfig, ListConfig)):
            yield from leaves(value, path + ".")


def interpolation(cfg, key: str) -> str | None:
    """The interpolation `key` holds as written (e.g. '${oc.env:HOME}'), or None for a plain value."""
    parent, _, name = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if isinstance(node, DictConfig) and name in node and OmegaConf.is_interpolation(node, name):
        return str(node._get_node(name)._value())
    return None


def inferred(defaults: DictConfig, key: str) -> Rule | None:
    """The rule a shipped value implies: its type (an integer stays an integer, a number a number, a
    flag a flag, a list a list, a mapping a mapping or null); none for null, strings (paths, names,
    prompt templates: a list may replace one) and keys not shipped."""
    try:
        value = OmegaConf.select(defaults, key, throw_on_missing=False)
    except Exception:  # noqa: BLE001 - unresolvable in the defaults: no type to infer
        return None
    if isinstance(value, bool):
        return Rule("boolean")
    if isinstance(value, int):
        return integer()
    if isinstance(value, float):
        return number()
    if isinstance(value, ListConfig):
        return Rule("list")
    if isinstance(value, DictConfig):
        return Rule("mapping", nullable=True)  # null: leave a part out (e.g. callbacks.samples=null)
    return None
