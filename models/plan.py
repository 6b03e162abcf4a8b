"""Resolving a strategy into its plan: the list of stages, the groups each adds, epochs and head rate."""

from typing import Any

from models.errors import invalid
from models.spec import Strategy


def resolve_plan(strategy: Strategy, groups: list[str]) -> list[dict[str, Any]]:
    """Stages as `{"stage", "unfreeze", "epochs", "lr"}`; `groups` run from input to output, head last.

    Raises a 422 error naming the stage and group when an explicit plan is invalid.
    """
    head = groups[-1]
    epochs, lr = strategy.epochs_per_stage, strategy.lr
    if strategy.type == "full":
        stages = [(list(groups), epochs, lr)]
    elif strategy.type == "head_only":
        stages = [([head], epochs, lr)]
    elif strategy.type == "gradual":
        below = list(reversed(groups[:-1]))
        n = strategy.groups_per_stage
        stages = [([head], epochs, lr)] + [(below[i:i + n], epochs, lr) for i in range(0, len(below), n)]
    else:
        stages = [(s.unfreeze, s.epochs or epochs, s.lr or lr) for s in strategy.stages or []]
        _check_explicit(stages, groups)
    return [{"stage": i, "unfreeze": unfreeze, "epochs": e, "lr": rate}
            for i, (unfreeze, e, rate) in enumerate(stages, start=1)]


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
