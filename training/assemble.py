"""Instantiate the parts of a run from its composed config and hand them to each other:
the Trainer (loggers, callbacks), and the module with its policy, reference, critic, sampler and
evaluator. Called by run.py after the config has been checked."""
import sys
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from models.build import build_base, check_lora_targets, prepare_policy
from models.lm import restrict_vocabulary
from models.options import POLICY_OPTIONS
from models.reference import reference_for
from models.value import critic_for
from schema import ConfigError
from storage import code_digest
from training.callbacks import step_bar
from training.checks import build
from training.evaluation import CachedFirstEvaluation, HeldOutEvaluation
from training.warmstart import warm_start


def build_trainer(cfg, sweep_dir: str | None = None, extra_callbacks: list | None = None):
    """The Lightning Trainer; it checks its own arguments here, before any model is built.
    Gradient accumulation is the module's (manual optimisation), so the Trainer is given 1.
    A job of a multirun that names no `sweep` joins the W&B group of its sweep directory."""
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
    policy, tokenizer, warm = build_policy(cfg, task, model_name)
    generator = instantiate(cfg.generation)
    sampler = build(cfg.sampler, _partial_=True)(tokenizer=tokenizer, reward_fn=task.reward, generator=generator)
    sampler.on_reward_failure = cfg.reward_on_failure
    if getattr(algorithm, "baseline", None) == "greedy":  # ReMax: a greedy response per prompt, in the budget
        sampler.greedy_baseline = True
    wants_reference = algorithm.needs_reference or sampler.needs_reference or cfg.module.kl_diagnostic
    reference = reference_for(policy) if wants_reference else None
    sampler.setup(policy, reference, task)
    evaluator = task.evaluator(policy, tokenizer, generator, cfg.beta)
    if isinstance(evaluator, HeldOutEvaluation):
        evaluator.on_reward_failure = cfg.reward_on_failure
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

    from rewards.plain import load_function

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
    root, files = Path(__file__).resolve().parent.parent, set()
    for function in functions:
        try:
            files.add(Path(inspect.getsourcefile(function)).resolve())
        except TypeError:
            continue
    outside = sorted(path for path in files if not path.is_relative_to(root))
    return code_digest(*outside) if outside else None
