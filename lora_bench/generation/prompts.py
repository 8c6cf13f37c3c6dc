"""Prompts and targets as token ids, the same for training, greedy evaluation and lm-eval.

With a chat template (SmolLM2-Instruct, Qwen ...) the prompt is one user message rendered with
`add_generation_prompt=True` and the target is the assistant's reply followed by the template's own
end-of-turn (`<|im_end|>`), so the tuned model learns to stop. Without one, the prompt is
`<bos>{instruction}\\n\\n{text}\\n{answer_prefix}` and the target ` {target}<eos>`.

The prompt and the target are tokenized separately and concatenated, so the prompt's token ids are
exactly what generation starts from, and the loss mask is exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .data import GenExample, GenTask

SENTINEL = "LBSENTINEL7731"
TEMPLATE_KWARGS = {"enable_thinking": False}   # Qwen3-style templates: answer directly, no <think> block


@dataclass
class Formatter:
    tokenizer: Any
    task: GenTask
    labels: list[str] | None = None
    chat: bool = False
    turn_end: str = ""                               # text the template puts after an assistant reply
    end_ids: list[int] = field(default_factory=list)  # appended to every target (end-of-turn / eos)
    stop_ids: set[int] = field(default_factory=set)   # a generated id that ends the reply
    stop_strings: list[str] = field(default_factory=list)
    _cuts: dict[str, str] = field(default_factory=dict)

    @classmethod
    def build(cls, tokenizer: Any, task: GenTask, labels: list[str] | None = None) -> Formatter:
        chat = bool(getattr(tokenizer, "chat_template", None))
        turn_end, end_ids = "", []
        if chat:
            turn_end = _turn_end(tokenizer)
            end_ids = tokenizer(turn_end, add_special_tokens=False)["input_ids"] if turn_end else []
        if not end_ids:
            end = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
            end_ids = [end] if end is not None else []
        stop_ids = {i for i in (tokenizer.eos_token_id,) if i is not None}
        if len(end_ids) == 1:
            stop_ids.add(end_ids[0])
        stops = list(task.generation["stop"]) + ([turn_end] if turn_end else [])
        return cls(tokenizer, task, labels, chat, turn_end, end_ids, stop_ids, stops)

    def settings(self) -> dict[str, Any]:
        """What the record says about the prompt format."""
        return {"chat_template": self.chat, "turn_end": self.turn_end, "end_ids": self.end_ids,
                "stop_ids": sorted(self.stop_ids), "stop_strings": self.stop_strings,
                "instruction": self.instruction(), "body_tokens": self.task.body_tokens,
                "answer_prefix": None if self.chat else self.task.generation["answer_prefix"]}

    def instruction(self) -> str:
        text = self.task.generation["instruction"]
        if "{labels}" in text:
            text = text.replace("{labels}", ", ".join(self.labels or []))
        return text

    def cut(self, text: str) -> str:
        """The body cut to `body_tokens` tokens of this tokenizer (bbc tasks); other prompts whole."""
        limit = self.task.body_tokens
        if not limit:
            return text
        if text not in self._cuts:
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            self._cuts[text] = text if len(ids) <= limit else self.tokenizer.decode(ids[:limit]).strip()
        return self._cuts[text]

    def user_message(self, example: GenExample) -> str:
        instruction = self.instruction()
        body = self.cut(example.prompt)
        return f"{instruction}\n\n{body}" if instruction else body

    def prompt_text(self, example: GenExample) -> str:
        user = self.user_message(example)
        if self.chat:
            return self.tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                                      add_generation_prompt=True, **TEMPLATE_KWARGS)
        bos = self.tokenizer.bos_token or ""
        return f"{bos}{user}\n{self.task.generation['answer_prefix']}"

    def target_text(self, target: str) -> str:
        """The reply as the prompt continues into it (a leading space after `Answer:`)."""
        return target if self.chat else f" {target}"

    def prompt_ids(self, example: GenExample) -> list[int]:
        return self.tokenizer(self.prompt_text(example), add_special_tokens=False)["input_ids"]

    def target_ids(self, target: str) -> list[int]:
        return self.tokenizer(self.target_text(target), add_special_tokens=False)["input_ids"] + self.end_ids

    def encode(self, example: GenExample) -> tuple[list[int], list[int]]:
        return self.prompt_ids(example), self.target_ids(example.target)

    def finish(self, ids: list[int]) -> str:
        """Generated ids -> the reply: cut at the first stop id and stop string, special tokens dropped, stripped."""
        for i, token in enumerate(ids):
            if token in self.stop_ids:
                ids = ids[:i]
                break
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        for stop in self.stop_strings:
            at = text.find(stop)
            if at >= 0:
                text = text[:at]
        return text.strip()

    def stopped(self, ids: list[int]) -> bool:
        """Whether generation may end: a stop id, or a stop string in the decoded reply."""
        if ids and ids[-1] in self.stop_ids:
            return True
        if not self.stop_strings:
            return False
        tail = self.tokenizer.decode(ids[-4:], skip_special_tokens=False)
        return any(stop in tail for stop in self.stop_strings)


def _turn_end(tokenizer: Any) -> str:
    """What the chat template writes after an assistant reply, up to the line break (`<|im_end|>`)."""
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": SENTINEL}]
    try:
        rendered = tokenizer.apply_chat_template(messages, tokenize=False, **TEMPLATE_KWARGS)
    except Exception:  # a template that refuses this conversation
        return ""
    after = rendered.split(SENTINEL, 1)[1] if SENTINEL in rendered else ""
    return after.split("\n", 1)[0].strip()
