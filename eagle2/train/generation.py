"""Batched generation with the target, capturing its features (last hidden state after the final
norm) for every token it is fed, so that self-distillation needs no second forward pass.

The target's base model (`target.decoder`) is driven through its public forward with a 2-D padding
mask (left padding), explicit position ids and a transformers DynamicCache. Rows that finish are
dropped from the batch (and from the cache), so long answers do not keep finished rows busy.
"""

from __future__ import annotations

import inspect
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from eagle2.target import TargetModel


@dataclass(frozen=True)
class GeneratedSequence:
    prompt_ids: tuple[int, ...]
    output_ids: tuple[int, ...]  # new tokens, the stop token included when one was produced
    stopped: bool  # True when the answer ended with a stop token (False: hit max_new_tokens)
    # [len(prompt) + len(output) - 1, H]: the feature of every token fed to the target (all but the
    # last new token); None when features were not captured.
    features: torch.Tensor | None


def _cache_argument(decoder: torch.nn.Module) -> str:
    parameters = inspect.signature(decoder.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def choose_tokens(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    """[b, V] logits -> [b] tokens: exact argmax at temperature 0, else a sample from softmax(l/T)."""
    if temperature == 0.0:
        return logits.argmax(dim=-1)
    # Drawn on the CPU: the stages' generators are CPU generators, which a CUDA multinomial refuses.
    probs = torch.softmax(logits.detach().to(device="cpu", dtype=torch.float32) / temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1).to(logits.device)


@torch.inference_mode()
def batched_generate(
    target: TargetModel,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    temperature: float,
    stop_token_ids: Collection[int],
    generator: torch.Generator | None = None,
    capture_features: bool = True,
    feature_dtype: torch.dtype = torch.float16,
    pad_token_id: int = 0,
) -> list[GeneratedSequence]:
    """Generate an answer for each prompt (token ids) in one left-padded batch."""
    if not prompts:
        return []
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature > 0 and generator is None:
        raise ValueError("sampling (temperature > 0) needs an explicit torch.Generator")
    device = target.device
    stops = torch.tensor(sorted(int(t) for t in stop_token_ids), dtype=torch.long, device=device)
    lengths = [len(p) for p in prompts]
    if min(lengths) < 1:
        raise ValueError("every prompt needs at least one token")
    width = max(lengths)
    batch = len(prompts)
    input_ids = torch.full((batch, width), pad_token_id, dtype=torch.long, device=device)
    mask = torch.zeros(batch, width, dtype=torch.long, device=device)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt) :] = torch.as_tensor(list(prompt), dtype=torch.long, device=device)
        mask[row, width - len(prompt) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache()
    argument = _cache_argument(target.decoder)
    hidden = target.decoder(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True, **{argument: cache}).last_hidden_state
    # hidden: [b, width, H]
    features: list[list[torch.Tensor]] = [[] for _ in range(batch)]
    if capture_features:
        for row, length in enumerate(lengths):
            features[row].append(hidden[row, width - length :].to(feature_dtype))
    outputs: list[list[int]] = [[] for _ in range(batch)]
    stopped = [False] * batch
    active = torch.arange(batch, device=device)  # original row of each batch row
    next_position = positions[:, -1] + 1  # [b]
    logits = target.lm_head(hidden[:, -1])
    while True:
        tokens = choose_tokens(logits, temperature, generator)  # [b]
        token_list = tokens.tolist()
        is_stop = torch.isin(tokens, stops).tolist()
        keep: list[int] = []
        for i, row in enumerate(active.tolist()):
            outputs[row].append(token_list[i])
            if is_stop[i]:
                stopped[row] = True
            elif len(outputs[row]) < max_new_tokens:
                keep.append(i)
        if not keep:
            break
        if len(keep) < active.shape[0]:
            index = torch.tensor(keep, dtype=torch.long, device=device)
            cache.batch_select_indices(index)
            active, mask, tokens, next_position = active[index], mask[index], tokens[index], next_position[index]
        mask = torch.cat((mask, torch.ones(mask.shape[0], 1, dtype=mask.dtype, device=device)), dim=1)
        hidden = target.decoder(
            input_ids=tokens[:, None], attention_mask=mask, position_ids=next_position[:, None], use_cache=True, **{argument: cache}
        ).last_hidden_state  # [b, 1, H]
        next_position = next_position + 1
        if capture_features:
            for i, row in enumerate(active.tolist()):
                features[row].append(hidden[i].to(feature_dtype))
        logits = target.lm_head(hidden[:, -1])
    return [
        GeneratedSequence(
            prompt_ids=tuple(int(t) for t in prompts[row]),
            output_ids=tuple(outputs[row]),
            stopped=stopped[row],
            features=torch.cat(features[row]) if capture_features else None,
        )
        for row in range(batch)
    ]


@torch.inference_mode()
def prefill_features(
    target: TargetModel,
    sequences: Sequence[Sequence[int]],
    *,
    feature_dtype: torch.dtype = torch.float16,
    pad_token_id: int = 0,
) -> list[torch.Tensor]:
    """Teacher forcing: one left-padded forward over complete sequences; for each, the features of
    all its tokens but the last ([len - 1, H]), as generation would have captured them."""
    if not sequences:
        return []
    device = target.device
    lengths = [len(s) for s in sequences]
    if min(lengths) < 2:
        raise ValueError("every sequence needs at least two tokens")
    width = max(lengths) - 1  # the last token of each sequence is never fed
    input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long, device=device)
    mask = torch.zeros(len(sequences), width, dtype=torch.long, device=device)
    for row, sequence in enumerate(sequences):
        fed = list(sequence)[:-1]
        input_ids[row, width - len(fed) :] = torch.as_tensor(fed, dtype=torch.long, device=device)
        mask[row, width - len(fed) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    hidden = target.decoder(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=False).last_hidden_state
    return [hidden[row, width - (length - 1) :].to(feature_dtype) for row, length in enumerate(lengths)]
