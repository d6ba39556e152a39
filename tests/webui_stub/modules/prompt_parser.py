"""modules/prompt_parser.py: the multi-conditioning (AND) structures and their per-step reconstruction."""

from __future__ import annotations

from typing import NamedTuple

import torch


class ScheduledPromptConditioning(NamedTuple):
    end_at_step: int
    cond: torch.Tensor


class ComposableScheduledPromptConditioning:
    def __init__(self, schedules, weight=1.0):
        self.schedules: list[ScheduledPromptConditioning] = schedules
        self.weight: float = weight


class MulticondLearnedConditioning:
    def __init__(self, shape, batch):
        self.shape: tuple = shape
        self.batch: list[list[ComposableScheduledPromptConditioning]] = batch


class DictWithShape(dict):
    """SDXL's conditioning: {"crossattn": [B, T, D], "vector": [B, V]} that reports the crossattn shape."""

    def __init__(self, x, shape=None):
        super().__init__()
        self.update(x)

    @property
    def shape(self):
        return self["crossattn"].shape


def _stack(tensors):
    if isinstance(tensors[0], dict):
        return DictWithShape({k: torch.stack([t[k] for t in tensors]) for k in tensors[0]})
    return torch.stack(tensors)


def reconstruct_cond_batch(c: list[list[ScheduledPromptConditioning]], current_step):
    picked = []
    for cond_schedule in c:
        target_index = 0
        for current, entry in enumerate(cond_schedule):
            if current_step <= entry.end_at_step:
                target_index = current
                break
        picked.append(cond_schedule[target_index].cond)
    return _stack(picked)


def reconstruct_multicond_batch(c: MulticondLearnedConditioning, current_step):
    tensors = []
    conds_list = []
    for composable_prompts in c.batch:
        conds_for_batch = []
        for composable_prompt in composable_prompts:
            target_index = 0
            for current, entry in enumerate(composable_prompt.schedules):
                if current_step <= entry.end_at_step:
                    target_index = current
                    break
            conds_for_batch.append((len(tensors), composable_prompt.weight))
            tensors.append(composable_prompt.schedules[target_index].cond)
        conds_list.append(conds_for_batch)
    return conds_list, _stack(tensors)
