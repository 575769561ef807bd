"""An Ollama `Modelfile` beside a GGUF file: its template and stop tokens from the run's chat
template.

Ollama templates are Go templates, chat templates are Jinja: no general translation exists. Most
chat templates wrap each message in a fixed prefix and suffix per role, though, and those can be
read off the template by rendering one message of each role around a marker. The wrappers are
then checked: rebuilt into the conversations given (the eval set's, when the export checks
parity), they must reproduce `apply_chat_template` character for character, or no TEMPLATE is
written (and the Modelfile says why) rather than a template that prompts the model differently
from how it was trained.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

_MARK = "\u2063MESSAGE\u2063"
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class ChatWrappers:
    """What a chat template writes: `start` once, then per message `prefix[role] + content +
    suffix[role]`, then `generation` (the assistant turn's opening) when asked to answer."""

    start: str
    prefix: dict[str, str]
    suffix: dict[str, str]
    generation: str

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        body = "".join(
            self.prefix[m["role"]] + m["content"] + self.suffix[m["role"]] for m in messages
        )
        return self.start + body + (self.generation if add_generation_prompt else "")

    def go_template(self) -> str:
        branches = "".join(
            f'{{{{- {"if" if i == 0 else "else if"} eq .Role "{role}" }}}}'
            f"{self.prefix[role]}{{{{ .Content }}}}{self.suffix[role]}"
            for i, role in enumerate(r for r in ROLES if r in self.prefix)
        )
        return (
            f"{self.start}{{{{- range .Messages }}}}{branches}{{{{- end }}}}{{{{- end }}}}"
            f"{self.generation}"
        )


def chat_wrappers(tokenizer: Any, conversations: list[list[dict[str, str]]]) -> ChatWrappers | None:
    """The per-role wrappers of the tokenizer's chat template that rebuild `conversations`
    exactly, or None when it has no template or no wrappers do.

    What every message opens with (a BOS a template writes once) cannot be told apart from a
    prefix the roles share ("<|" of "<|user|>" and "<|assistant|>") from one message alone, so
    each length of the roles' common prefix is tried, longest first, against the conversations.
    """
    if not tokenizer.chat_template:
        return None
    pieces: dict[str, tuple[str, str]] = {}
    for role in ROLES:
        try:
            text = tokenizer.apply_chat_template([{"role": role, "content": _MARK}], tokenize=False)
        except Exception:
            continue
        if text.count(_MARK) == 1:
            before, after = text.split(_MARK)
            pieces[role] = (before, after)
    if "user" not in pieces or "assistant" not in pieces:
        return None
    user = [{"role": "user", "content": _MARK}]
    with_prompt = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    without = tokenizer.apply_chat_template(user, tokenize=False)
    if not with_prompt.startswith(without):
        return None
    shared = _common_prefix([before for before, _ in pieces.values()])
    for length in range(len(shared), -1, -1):
        start = shared[:length]
        wrappers = ChatWrappers(
            start=start,
            prefix={role: before[length:] for role, (before, _) in pieces.items()},
            suffix={role: after for role, (_, after) in pieces.items()},
            generation=with_prompt[len(without) :],
        )
        if wrappers_reproduce(wrappers, tokenizer, conversations):
            return wrappers
    return None


def wrappers_reproduce(
    wrappers: ChatWrappers, tokenizer: Any, conversations: list[list[dict[str, str]]]
) -> bool:
    """Whether the wrappers rebuild every conversation exactly as the chat template does."""
    for messages in conversations:
        for generation in (False, True):
            expected = tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=generation
            )
            if wrappers.render(messages, generation) != expected:
                return False
    return True


def _common_prefix(texts: list[str]) -> str:
    first = min(texts, key=len) if texts else ""
    for i, char in enumerate(first):
        if any(t[i] != char for t in texts):
            return first[:i]
    return first


def _sample_conversations(tokenizer: Any) -> list[list[dict[str, str]]]:
    """Two turns of each kind, with a system message where the template takes one."""
    turns = [
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3 + 3?"},
    ]
    system = [{"role": "system", "content": "Answer with digits."}, *turns]
    try:
        tokenizer.apply_chat_template(system, tokenize=False)
    except Exception:
        return [turns]
    return [turns, system]


def write_modelfile(
    tokenizer: Any,
    model_file: Path,
    path: Path,
    conversations: list[list[dict[str, str]]] | None = None,
) -> Path:
    """`FROM ./<gguf>` with the TEMPLATE and stop tokens of the chat template (when its
    wrappers reproduce it on `conversations`, or on a two-turn sample when none are given)."""
    lines = [f"FROM ./{model_file.name}", ""]
    sample = conversations or _sample_conversations(tokenizer)
    wrappers = chat_wrappers(tokenizer, sample)
    if wrappers is not None:
        lines.append(f'TEMPLATE """{wrappers.go_template()}"""')
        roles = ("user", "system")
        stops = [
            tokenizer.eos_token,
            *(wrappers.prefix[r].strip() for r in roles if r in wrappers.prefix),
        ]
        for stop in dict.fromkeys(s for s in stops if s):
            lines.append(f'PARAMETER stop "{stop}"')
    else:
        lines.append(
            "# No TEMPLATE: the chat template does not wrap each message in a fixed prefix and"
        )
        lines.append("# suffix per role; write one by hand from tokenizer_config.json.")
        if tokenizer.eos_token:
            lines.append(f'PARAMETER stop "{tokenizer.eos_token}"')
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
