"""The schema: every key's rule, hand-checked cases, and a fuzz of random bad command lines."""
import random
import time

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from ptlab.checks import schema
from ptlab.checks.schema import ConfigError, Rule, integer, number, one_of
from tests.conftest import CONF_DIR
from ptlab.checks import check_command_line


@pytest.mark.parametrize("rule,good,bad,described", [
    (integer(1), [1, 7], [0, 1.5, "3", True, None], "an integer >= 1"),
    (number(0, 1, low_open=True), [1, 0.5, 1e-9], [0, 1.01, "x", float("nan"), False], "a number in (0, 1]"),
    (number(0, 1, high_open=True, nullable=True), [0, 0.99, None], [1, -0.1], "a number in [0, 1) or null"),
    (one_of("k1", "k2"), ["k1"], ["k3", 1, None], "one of k1, k2"),
    (Rule("boolean"), [True, False], [1, "true", None], "true or false"),
])
def test_rules_allow_exactly_their_values(rule, good, bad, described):
    assert all(rule.allows(value) for value in good)
    assert not any(rule.allows(value) for value in bad)
    assert rule.describe() == described


@pytest.fixture(scope="module")
def composed():
    """Compose configs from conf/ for the whole module (the fuzz composes hundreds)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        yield lambda overrides: compose("config", overrides=overrides)


def test_shipped_configs_pass_and_an_interpolated_value_is_checked_where_it_is_set(composed):
    for overrides in ([], ["algorithm=ppo"], ["algorithm=grpo", "sampler=replay"], ["task=exact"], ["algorithm=sft"]):
        schema.check(composed(overrides), composed(overrides))
    with pytest.raises(ConfigError, match=r"^group_size=2.5 is not allowed: an integer >= 1$"):
        schema.check(composed(["group_size=2.5"]), composed([]))  # not sampler.group_size, which points to it
    with pytest.raises(ConfigError, match=r"^model.hidden_size='big' is not allowed: an integer >= 1$"):
        schema.check(composed(["model.hidden_size=big"]), composed([]))
    with pytest.raises(ConfigError, match=r"^task.config.min_terms='two' is not allowed: an integer$"):  # inferred
        schema.check(composed(["task.config.min_terms=two"]), composed([]))


# Groups whose options bring keys of their own, so the fuzz reaches algorithm.clip_eps, sampler.capacity, ...
SETTINGS = [[], ["algorithm=ppo"], ["algorithm=grpo"], ["algorithm=dpo"], ["sampler=replay"], ["sampler=stale"],
            ["sampler=offline"], ["task=exact"], ["model=tiny", "model.lora.r=4"]]


def bad_values(rule: Rule) -> list:
    """Values `rule` refuses, as override strings: wrong types, out of range, not a choice."""
    values = {"string": ["[1,2]", "{a: 1}"], "list": ["abc", "{a: 1}"], "mapping": ["abc", "[1,2]"]}.get(rule.kind, ["abc", "[1,2]"])
    if rule.kind == "integer":
        values.append("1.5")
    if rule.kind in ("integer", "number"):
        if rule.low is not None:
            values.append(str(rule.low if rule.low_open else rule.low - 1))
        if rule.high is not None:
            values.append(str(rule.high if rule.high_open else rule.high + 1))
    if rule.kind == "choice":
        values = ["nope", "1"]
    if rule.kind == "boolean":
        values.append("2")
    return values


def fuzz_cases(composed, count: int, seed: int = 0) -> list[tuple[list[str], str]]:
    """(command line, key its error must name): `count` random bad overrides of keys the composed
    config has, unknown `+keys`, unknown group options and sweeps holding a bad value."""
    rng, cases = random.Random(seed), []
    keyed = []
    for setting in SETTINGS:
        cfg = composed(setting)
        for key, value in schema.leaves(cfg):
            rule = schema.RULES.get(key) or (None if key.startswith(schema.NOT_INFERRED) else schema.inferred(cfg, key))
            if rule is not None and value is not schema.MISSING and not isinstance(value, schema.Unresolved):
                keyed.append((setting, key, rule))
    while len(cases) < count:
        kind = rng.random()
        if kind < 0.1:
            typo = rng.choice(["typo", "module.typo", "lrr", "ckpt_path", "trainer.max_step", "algorithm.betaa"])
            cases.append(([f"+{typo}={rng.choice(['1', 'x'])}"], typo))
        elif kind < 0.15:
            group = rng.choice(["algorithm", "sampler", "model", "task", "generation", "scheduler"])
            cases.append(([f"{group}={group[:3]}0"], group))
        else:
            setting, key, rule = rng.choice(keyed)
            value = rng.choice(bad_values(rule))
            if kind < 0.3:  # inside a sweep: the bad value is one of several jobs
                cases.append((["-m", *setting, "seed=0,1", f"{key}={value}"], key))
            else:
                cases.append(([*setting, f"{key}={value}"], key))
    return cases


@pytest.mark.parametrize("count", [60, pytest.param(200, marks=pytest.mark.slow)])
def test_fuzz_every_bad_command_line_is_refused_in_one_line_naming_its_key(count, composed, tmp_path):
    """Random bad command lines (60 in CI, 200 with -m slow): each ends, in seconds, in one ConfigError
    line that names the key."""
    cases = fuzz_cases(composed, count)
    GlobalHydra.instance().clear()  # check_command_line composes on its own, as run.py does
    outcomes = {"refused": 0}
    for args, key in cases:
        start = time.perf_counter()
        with pytest.raises(ConfigError) as refused:
            check_command_line([*args, f"hydra.run.dir={tmp_path}", f"hydra.sweep.dir={tmp_path}"])
        message = str(refused.value)
        assert key in message and "\n" not in message, (args, message)
        assert time.perf_counter() - start < 5, args
        outcomes["refused"] += 1
    assert outcomes == {"refused": count}


@pytest.mark.parametrize("count", [40, pytest.param(400, marks=pytest.mark.slow)])
def test_a_fuzz_of_another_design_every_group_option_and_hostile_values_is_refused_naming_the_key(count, tmp_path):
    """tests/fuzz_commands.py's generator (interpolations, huge and odd values, containers, deletions,
    long names, over every key of every group option), in-process here; `python -m tests.fuzz_commands`
    runs 500 through run.py's own process."""
    from tests.fuzz_commands import cases, keys_of, options

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        drawn = cases(count, seed=7, composed=lambda overrides: compose("config", overrides=overrides))
        pool = count if count <= 100 else len({key for _, key, _ in keys_of(options(), lambda o: compose("config", overrides=o))})
    # many keys, not one key many times: half the draws, or half the keys when there are more draws than keys (~190)
    assert len({key for _, key in drawn}) > min(count, pool) // 2
    GlobalHydra.instance().clear()
    for args, key in drawn:
        with pytest.raises(ConfigError) as refused:
            check_command_line([*args, f"hydra.run.dir={tmp_path}/run", f"hydra.sweep.dir={tmp_path}/sweep"])
        assert key in str(refused.value) and "\n" not in str(refused.value), (args, str(refused.value)[:300])


@pytest.mark.nightly
def test_five_hundred_fuzzed_command_lines_through_run_py_exit_2_in_one_line_leaving_nothing():
    from tests.fuzz_commands import main

    assert main(["--count", "500"]) == 0


@pytest.mark.parametrize("args,message", [
    # odd inputs that once ended in tracebacks (Hydra's own parser and file lookups, a deleted node)
    (["lr=" + "1" * 5000], "'lr=" + "1" * 5000 + "' is not a valid override (Exceeds the limit (4300 digits)"),
    (["a" * 3000 + "=1"], "a" * 3000 + " is not a key of any config (a name of 3000 characters)"),
    (["~module"], "~module is not allowed: ptlab reads module; set a value instead (module=...)"),
    (["algorithm=ppo", "~algorithm.clip_eps"], "~algorithm.clip_eps is not allowed: ptlab reads algorithm.clip_eps"),
    (["hydra.run.dir=/tmp/" + "d" * 300], "hydra.run.dir='/tmp/" + "d" * 300 + "' is not allowed: File name too long"),
    (["model.max_length=6"], "model.max_length=6 is not allowed: it is the model's context, which must hold a prompt and "
                             "up to generation.max_new_tokens=6 response tokens"),
    (["-m", "experiment=algorithms", "trainer.max_steps=0"], "trainer.max_steps=0 is not allowed"),
    (["-m", "algorithm=grpo,gvpo", "lr=1e-3,-1"], "lr=-1 is not allowed: a number > 0"),
    (["module.minibatches=3", "prompts_per_step=2"], "module.minibatches=3 is not allowed with prompts_per_step=2"),
    (["seed=0,1"], "seed=0,1 is a sweep; run it with -m"),
    (["cache_dir=/etc/hostname/cache"], "cache_dir='/etc/hostname/cache' is not allowed: it must be a writable directory"),
])
def test_a_bad_job_anywhere_in_a_sweep_or_a_cross_key_rule_is_refused_before_launch(args, message, tmp_path):
    GlobalHydra.instance().clear()
    directories = [] if any(arg.startswith("hydra.run.dir") for arg in args) else [f"hydra.run.dir={tmp_path}"]
    with pytest.raises(ConfigError) as refused:
        check_command_line([*args, f"hydra.sweep.dir={tmp_path}", *directories])
    assert str(refused.value).startswith(message), str(refused.value)[:400]


def test_shipped_sweeps_pass_the_prelaunch_check(tmp_path):
    GlobalHydra.instance().clear()
    # every algorithm of the algorithms sweep (one seed: the seeds only change the seed) and exact_beta's grid,
    # each job composed and checked
    for experiment, narrow in (("algorithms", ["seed=0"]), ("exact_beta", [])):
        check_command_line(["-m", f"experiment={experiment}", *narrow, f"hydra.sweep.dir={tmp_path}"])
