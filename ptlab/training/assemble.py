"""Building, in one place: the parts of a run instantiated from its composed config and handed to each
other: the task (with its reward), the algorithm, the Trainer (loggers, callbacks), and the module with
its policy, reference, critic, sampler and evaluator. Called by run.py after the config has been
checked (ptlab/checks/). The model and Lightning are imported by the functions that build them: the
checks build the task's spec, the sampler and the algorithm from here before any of them is needed."""
import sys
from pathlib import Path

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ptlab.errors import ConfigError
from ptlab.models.options import POLICY_OPTIONS
from ptlab.storage import code_digest


def build(spec, **kwargs):
    """hydra.utils.instantiate, letting a ConfigError through as itself (one line, no wrapper)."""
    try:
        return instantiate(spec, **kwargs)
    except InstantiationException as error:
        if isinstance(error.__cause__, ConfigError):
            raise error.__cause__ from None
        raise


def task_spec(cfg) -> dict:
    """The task's config, resolved, as it is instantiated: a top-level `reward=file.py:fn` replaces the
    task's reward, and a `_target_` naming a plain function becomes a reward of it (rewards/plain.py)."""
    from ptlab.rewards.plain import adapt

    spec = OmegaConf.to_container(cfg.task, resolve=True)
    extra_terms = spec.pop("reward_terms", None)
    if cfg.get("reward"):
        if not isinstance(spec.get("reward"), dict):
            raise ConfigError(f"reward={cfg.reward!r} is not allowed with this task: it replaces a text task's reward "
                              f"function, and this task's reward is {spec.get('reward')!r}")
        spec["reward"] = {"_target_": "ptlab.rewards.plain.Plain", "fn": cfg.reward}
    if extra_terms:  # task.reward_terms: terms added to the task's reward, which stays the first (correctness) term
        if not isinstance(spec.get("reward"), dict) or not isinstance(extra_terms, dict):
            raise ConfigError("task.reward_terms adds {name: {weight, fn}} terms to a text task's reward; got "
                              f"{extra_terms!r} for a task whose reward is {spec.get('reward')!r}")
        reward = spec["reward"]
        if reward.get("_target_") == "ptlab.rewards.weighted.WeightedSum":
            reward["terms"] = {**reward["terms"], **extra_terms}
        else:
            spec["reward"] = {"_target_": "ptlab.rewards.weighted.WeightedSum",
                              "terms": {"correct": {"weight": 1.0, "fn": reward}, **extra_terms}}
    if isinstance(spec.get("reward"), dict):
        spec["reward"] = adapt(spec["reward"])
    return spec


def build_task(cfg):
    """The task (its rows drawn) with its reward (a plain function's parameters are checked against the
    rows by checks.check_task)."""
    return build(task_spec(cfg))


def build_algorithm(cfg):
    """The algorithm (its constructor checks beta, group_size and its own settings)."""
    return build(cfg.algorithm)


def build_trainer(cfg, sweep_dir: str | None = None, extra_callbacks: list | None = None):
    """The Lightning Trainer; it checks its own arguments here, before any model is built.
    Gradient accumulation is the module's (manual optimisation), so the Trainer is given 1.
    A job of a multirun that names no `sweep` joins the W&B group of its sweep directory."""
    from ptlab.training.callbacks import step_bar

    specs = dict(cfg.get("logger") or {})
    if "wandb" in specs and specs["wandb"].get("group") is None and sweep_dir:
        specs["wandb"] = OmegaConf.merge(specs["wandb"], {"group": str(sweep_dir)})
    loggers = [instantiate(spec) for spec in specs.values()]
    for logger in loggers:  # Lightning passes wandb.init anonymous=None, which recent wandb warns about on every run
        getattr(logger, "_wandb_init", {}).pop("anonymous", None)
    callbacks = [instantiate(spec) for name, spec in cfg.callbacks.items()
                 if spec is not None and (name != "checkpoint" or cfg.trainer.enable_checkpointing is not False)]
    callbacks += extra_callbacks or []
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    trainer = instantiate(cfg.trainer, _partial_=True)
    if sys.stdout.isatty() and cfg.trainer.enable_progress_bar:
        callbacks.append(step_bar("training"))
    bar = {} if sys.stdout.isatty() else {"enable_progress_bar": False}  # it draws nothing but a last frame in a
    #                                                                   file: the plain progress lines stand in
    try:
        return trainer(logger=loggers or False, callbacks=callbacks, accumulate_grad_batches=1, **bar)
    except (MisconfigurationException, ValueError, TypeError) as error:
        raise ConfigError(f"trainer: {(str(error).strip().splitlines() or [''])[0]}") from None


def policy_options(model_cfg) -> dict:
    options = {key: model_cfg[key] for key in POLICY_OPTIONS if key in model_cfg}
    return OmegaConf.to_container(OmegaConf.create(options), resolve=True)


def build_policy(cfg, task, model_name: str = "this model"):
    """(policy, tokenizer, warm-start path or None): the model built, the task's prompts rendered for
    its tokenizer, warm-started if configured, then made trainable with its options."""
    from ptlab.models.build import build_base, check_lora_targets, prepare_policy
    from ptlab.models.lm import restrict_vocabulary
    from ptlab.training.warmstart import warm_start

    base, tokenizer = build_base(cfg.model)
    options = policy_options(cfg.model)
    check_lora_targets(base, options.get("lora"))  # before the warm start, which may take minutes
    task.format_prompts(tokenizer, model_name)
    if hasattr(task, "check_context"):  # the exact task has no text prompts
        context = getattr(getattr(base, "config", None), "max_position_embeddings", None)
        key = "model.max_length" if "max_length" in cfg.model else "the model's max_position_embeddings"
        task.check_context(tokenizer, context, cfg.generation.max_new_tokens, key)
    warm = warm_start(cfg, task, base, tokenizer) if cfg.warmstart.steps > 0 else None
    if warm:
        base, tokenizer = build_base(cfg.model, str(warm))
    if task.response_tokens:
        restrict_vocabulary(base, tokenizer, task.response_tokens)
    return prepare_policy(base, **options), tokenizer, warm


def build_module(cfg, algorithm, task, model_name: str = "this model"):
    """The policy, its reference, critic, sampler and evaluator, in the module.
    Returns (module, warm-start path or None)."""
    from ptlab.models.reference import reference_for
    from ptlab.models.value import critic_for
    from ptlab.training.evaluation import CachedFirstEvaluation, HeldOutEvaluation, evaluator_for

    policy, tokenizer, warm = build_policy(cfg, task, model_name)
    generator = instantiate(cfg.generation)
    sampler = build(cfg.sampler, _partial_=True)(tokenizer=tokenizer, reward_fn=task.reward, generator=generator)
    sampler.on_reward_failure = cfg.reward_on_failure
    if getattr(algorithm, "baseline", None) == "greedy":  # ReMax: a greedy response per prompt, in the budget
        sampler.greedy_baseline = True
    held_out = getattr(task, "evaluation", "held_out") == "held_out"  # its val/kl_ref needs pi_ref (the exact task keeps its own)
    wants_reference = algorithm.needs_reference or sampler.needs_reference or cfg.module.kl_diagnostic or held_out
    reference = reference_for(policy) if wants_reference else None
    sampler.setup(policy, reference, task)
    evaluator = evaluator_for(task, policy, tokenizer, generator, cfg.beta)
    if isinstance(evaluator, HeldOutEvaluation):
        evaluator.on_reward_failure, evaluator.reference = cfg.reward_on_failure, reference
        if cfg.cache_evaluation:  # the evaluation before training, shared by the runs that would repeat it
            evaluator = CachedFirstEvaluation(evaluator, Path(cfg.cache_dir).expanduser() / "evaluations",
                                              evaluation_context(cfg))
    module = instantiate(cfg.module)(
        policy=policy, tokenizer=tokenizer, algorithm=algorithm, sampler=sampler, reference=reference,
        critic=critic_for(policy, buckets=cfg.module.length_buckets) if algorithm.needs_critic else None,
        optimizer=instantiate(cfg.optimizer), scheduler=instantiate(cfg.scheduler), evaluator=evaluator,
        accumulate_grad_batches=cfg.trainer.accumulate_grad_batches)
    return module, warm


def evaluation_context(cfg) -> dict:
    """What a held-out evaluation's numbers depend on besides the policy and the rows: the task's
    settings (reward, sampled answers and their seed, generation length), the generator, the model's
    options, the precision, the thread count (it orders floating-point sums) and library versions.
    Paths are left out: the same settings from another cache directory give the same numbers."""
    import torch
    import transformers

    node = {key: OmegaConf.to_container(cfg[key], resolve=True) for key in ("task", "generation", "model")}
    node["model"].pop("cache_dir", None)
    return {**node, "precision": str(cfg.trainer.precision), "threads": torch.get_num_threads(),
            "reward_on_failure": cfg.reward_on_failure, "code": code_digest(), "reward_code": reward_code(cfg),
            "torch": torch.__version__, "transformers": transformers.__version__}


def reward_code(cfg) -> str | None:
    """The digest of the files defining the reward outside ptlab (a user's own reward function, at any
    depth of the reward's config: an edit to it must not read back the numbers of the old one); None
    when every part of the reward is ptlab's."""
    import inspect

    from hydra._internal.utils import _locate

    from ptlab.rewards.plain import load_function

    def targets(node):
        if isinstance(node, dict):
            yield from [node["_target_"]] if isinstance(node.get("_target_"), str) else []
            for value in node.values():
                yield from targets(value)
        elif isinstance(node, list):
            for value in node:
                yield from targets(value)

    reward = cfg.task.get("reward")
    spec = OmegaConf.to_container(reward, resolve=True) if isinstance(reward, DictConfig) else None
    functions = [load_function(cfg.reward)] if cfg.get("reward") else []
    for target in targets(spec):
        try:
            functions.append(_locate(target))
        except Exception:  # noqa: BLE001 - not importable here: nothing to digest
            pass
    root, files = Path(__file__).resolve().parents[1], set()  # ptlab/
    for function in functions:
        try:
            files.add(Path(inspect.getsourcefile(function)).resolve())
        except TypeError:
            continue
    outside = sorted(path for path in files if not path.is_relative_to(root))
    return code_digest(*outside) if outside else None
