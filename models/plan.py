"""Resolving a strategy into its plan: the list of stages, the groups each adds and trains, epochs and rate."""

from typing import Any

from models.errors import invalid
from models.spec import Strategy


def resolve_plan(strategy: Strategy, groups: list[str]) -> list[dict[str, Any]]:
    """Stages as `{"stage", "unfreeze", "train", "epochs", "lr"}`; `groups` run from input to output, head last.

    `unfreeze` lists the groups a stage adds; `train` the groups it trains (all unfrozen so far, except in
    chain_thaw, where a group can train alone). An `auto` stage has its groups chosen while the job runs
    (`unfreeze` empty, `train` null, `auto` true). Raises a 422 error naming the stage and group when an
    explicit plan is invalid.
    """
    head, below = groups[-1], list(reversed(groups[:-1]))
    epochs, lr, n = strategy.epochs_per_stage, strategy.lr, strategy.groups_per_stage
    finetune_lr = strategy.finetune_lr or lr / 10
    # (unfreeze, train or None for "everything unfrozen so far", epochs, lr)
    if strategy.type == "full":
        stages = [(list(groups), None, epochs, lr)]
    elif strategy.type == "head_only":
        stages = [([head], None, epochs, lr)]
    elif strategy.type == "gradual":
        stages = [([head], None, epochs, lr)] + [(below[i:i + n], None, epochs, lr) for i in range(0, len(below), n)]
    elif strategy.type == "lp_ft":
        stages = [([head], None, epochs, lr), (below, None, epochs, finetune_lr)]
    elif strategy.type == "chain_thaw":
        alone = [([g], [g], epochs, finetune_lr) for g in groups[:-1]]
        stages = [([head], None, epochs, lr), *alone, ([], [head, *below], epochs, finetune_lr)]
    elif strategy.type == "auto":
        auto_stages = -(-len(below) // n)
        return [{"stage": 1, "unfreeze": [head], "train": [head], "epochs": epochs, "lr": lr, "auto": False}] + [
            {"stage": i, "unfreeze": [], "train": None, "epochs": epochs, "lr": lr, "auto": True}
            for i in range(2, auto_stages + 2)]
    else:
        stages = [(s.unfreeze, None, s.epochs or epochs, s.lr or lr) for s in strategy.stages or []]
        _check_explicit([(u, e, r) for u, _, e, r in stages], groups)
    plan, unfrozen = [], []
    for number, (unfreeze, train, e, rate) in enumerate(stages, start=1):
        unfrozen += [g for g in unfreeze if g not in unfrozen]
        trained = train if train is not None else list(unfrozen)
        plan.append({"stage": number, "unfreeze": unfreeze, "train": trained, "epochs": e, "lr": rate, "auto": False})
    return plan


def _check_explicit(stages: list[tuple[list[str], int, float]], groups: list[str]) -> None:
    seen: dict[str, int] = {}
    for number, (unfreeze, _, _) in enumerate(stages, start=1):
        param = f"strategy.stages[{number - 1}].unfreeze"
        for group in unfreeze:
            if group not in groups:
                raise invalid(f"stage {number} names unknown group '{group}'; this model's groups are "
                              f"{', '.join(groups)}", param)
            if group in seen:
                raise invalid(f"stage {number} unfreezes '{group}' again (stage {seen[group]} already did); "
                              "each stage adds groups that are still frozen", param)
            seen[group] = number
    if groups[-1] not in stages[0][0]:
        raise invalid(f"stage 1 must unfreeze '{groups[-1]}': the new classification head starts untrained",
                      "strategy.stages[0].unfreeze")
