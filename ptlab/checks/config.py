"""check_config: one composed config, checked in one order before anything is built.

    1. keys and values   schema.py (each key's type and range), values.py (the rules between keys)
    2. imports, targets  targets.py (every _target_ imports, your reward loads, the packages a setting
                         needs are installed, the chosen classes fit together)
    3. built objects     built.py (the Trainer, optimizer and sampler built and thrown away;
                         the algorithm built and returned: a weight rule, no tensors)
The first failure raises errors.ConfigError, one line naming the key, the value and what is allowed.
"""
from ptlab.checks import built, schema, targets, values


def check_config(cfg, choices: dict, defaults=None):
    """Check a composed config; return the algorithm stage 3 built (the run uses it). `choices` maps each config group to the option chosen; `defaults`, the
    config of the same choices without value overrides, gives every unlisted key its type (None: the
    job's own check, after the command line's has run with them)."""
    schema.check(cfg, defaults)
    values.check(cfg)
    targets.check(cfg, choices, defaults)
    return built.check(cfg, choices, defaults)
