"""Checking, in one place: bad input is refused in one line naming the key, the value given and what
is allowed (errors.ConfigError, exit code 2), before any work starts.

    check_command_line(args)    the command line (commands.py), then every job it would launch, composed
                                as Hydra will compose it, with the directories it will write (jobs.py)
    check_config(cfg, choices)  one composed config (config.py), in one order: keys and values
                                (schema.py, values.py), then imports and targets (targets.py), then
                                what needs a built object (built.py); returns the algorithm
    check_task(task)            the run's task once built: your plain reward against its rows

Nothing here builds the run's parts; training/assemble.py does, after the checks. Parts also refuse
bad arguments themselves when built (an algorithm's beta, a prompt longer than the model's context,
LoRA target modules the model lacks): the checks build throwaway ones where they can, so those
errors too come before any training.
"""
from ptlab.checks.built import check_task
from ptlab.checks.config import check_config
from ptlab.checks.jobs import check_command_line

__all__ = ["check_command_line", "check_config", "check_task"]
