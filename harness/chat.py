"""Chat formatting: conversations -> prompt token ids, and the token ids that end an answer.

Two kinds of template: the tokenizer's own Jinja chat template (`tokenizer`, the default), or a
FastChat conversation template by name (`vicuna_v1.1`, `llama-2`, ...), which is what the EAGLE
papers used for Vicuna and LLaMA2-Chat.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

logger = logging.getLogger(__name__)

TOKENIZER_TEMPLATE = "tokenizer"
# Chat end markers of common templates; whichever are single tokens in a vocabulary stop generation.
KNOWN_END_MARKERS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<|endoftext|>", "</s>", "<end_of_turn>")


@dataclass(frozen=True)
class Message:
    role: str  # "system" | "user" | "assistant"
    content: str


class ChatTemplate:
    """Renders a conversation (ending with a user turn) as prompt ids with the assistant cue."""

    def __init__(
        self, tokenizer, spec: str = TOKENIZER_TEMPLATE, system_message: str | None = None, *, extra_stop_token_ids: Sequence[int] = ()
    ) -> None:
        """`extra_stop_token_ids`: more ids that end an answer, e.g. the model's generation-config eos list."""
        self.tokenizer = tokenizer
        self.spec = spec
        self.system_message = system_message
        if spec == TOKENIZER_TEMPLATE:
            if not getattr(tokenizer, "chat_template", None):
                raise ValueError(
                    "the tokenizer has no chat template; set the model's chat_template to a FastChat template "
                    "name such as 'vicuna_v1.1' or 'llama-2'"
                )
            self._conversation = None
        else:
            from fastchat.conversation import conv_templates

            if spec not in conv_templates:
                raise ValueError(
                    f"unknown chat template {spec!r}; use 'tokenizer' or a FastChat template, e.g. "
                    + ", ".join(sorted(n for n in conv_templates if n in ("vicuna_v1.1", "llama-2", "llama-3", "chatml", "mistral", "qwen-7b-chat", "zero_shot")))
                )
            self._conversation = conv_templates[spec]
        self.stop_token_ids: frozenset[int] = self._stop_token_ids() | frozenset(int(i) for i in extra_stop_token_ids)

    def _stop_token_ids(self) -> frozenset[int]:
        tok = self.tokenizer
        ids: set[int] = set()
        eos = getattr(tok, "eos_token_id", None)
        if isinstance(eos, int):
            ids.add(eos)
        elif isinstance(eos, Sequence):
            ids.update(int(i) for i in eos)
        vocab = tok.get_vocab()
        for marker in KNOWN_END_MARKERS:
            if marker in vocab:
                ids.add(vocab[marker])
        if self._conversation is not None:
            ids.update(self._conversation.stop_token_ids or ())
            stop_str = self._conversation.stop_str
            for text in [stop_str] if isinstance(stop_str, str) else (stop_str or []):
                if text in vocab:
                    ids.add(vocab[text])
        return frozenset(ids)

    def render(self, messages: Sequence[Message], *, add_generation_prompt: bool = True) -> str:
        if self._conversation is None:
            chat = [{"role": m.role, "content": m.content} for m in messages]
            if self.system_message is not None and (not chat or chat[0]["role"] != "system"):
                chat.insert(0, {"role": "system", "content": self.system_message})
            return self.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=add_generation_prompt)
        conv = self._conversation.copy()
        if self.system_message is not None:
            conv.set_system_message(self.system_message)
        for message in messages:
            if message.role == "system":
                conv.set_system_message(message.content)
            else:
                conv.append_message(conv.roles[0 if message.role == "user" else 1], message.content)
        if add_generation_prompt:
            conv.append_message(conv.roles[1], None)
        return conv.get_prompt()

    def prompt_ids(self, messages: Sequence[Message]) -> list[int]:
        text = self.render(messages, add_generation_prompt=True)
        # Jinja templates write their own BOS; FastChat prompts rely on the tokenizer adding it.
        add_special = self._conversation is not None
        return self.tokenizer(text, add_special_tokens=add_special).input_ids
