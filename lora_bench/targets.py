"""Named target-module sets (`qv`, `qkv`, `qkvo`, `all-linear`) resolved per architecture.

`qkvo` means query/key/value/attention.output.dense on BERT and q_proj/k_proj/v_proj/o_proj on
Llama or Qwen; the names are suffixes that peft matches against the model's module names.
"""

from __future__ import annotations

from .schema import TARGET_SETS, SpecError

_BERT = {"q": ["query"], "k": ["key"], "v": ["value"], "o": ["attention.output.dense"],
         "mlp": ["intermediate.dense", "output.dense"]}
_DECODER = {"q": ["q_proj"], "k": ["k_proj"], "v": ["v_proj"], "o": ["o_proj"],
            "mlp": ["gate_proj", "up_proj", "down_proj"]}

# model_type (from the checkpoint's config.json) -> its attention/MLP linear layers
ARCHITECTURES: dict[str, dict[str, list[str]]] = {
    "bert": _BERT, "roberta": _BERT, "xlm-roberta": _BERT, "electra": _BERT,
    "llama": _DECODER, "mistral": _DECODER, "qwen2": _DECODER, "qwen3": _DECODER, "gemma": _DECODER,
    "gemma2": _DECODER, "gemma3_text": _DECODER, "olmo2": _DECODER, "phi3": _DECODER,
}


def _set_parts(name: str) -> list[str]:
    return {"qv": ["q", "v"], "qkv": ["q", "k", "v"], "qkvo": ["q", "k", "v", "o"],
            "all-linear": ["q", "k", "v", "o", "mlp"]}[name]


def known_module_names(architecture: str) -> set[str]:
    return {m for parts in ARCHITECTURES[architecture].values() for m in parts}


def resolve_targets(targets: tuple[str, ...], architecture: str | None) -> list[str] | None:
    """Module-name suffixes for peft. Returns None when the architecture is not known yet
    (a hub id before download): the runner resolves it again once the config is loaded."""
    if architecture is None:
        return None
    if architecture not in ARCHITECTURES:
        if len(targets) == 1 and targets[0] in TARGET_SETS:
            raise SpecError("targets", targets[0],
                            f"named module sets are defined for {', '.join(sorted(ARCHITECTURES))}; "
                            f"architecture {architecture!r} needs an explicit list of module names")
        return list(targets)
    table = ARCHITECTURES[architecture]
    if len(targets) == 1 and targets[0] in TARGET_SETS:
        return [m for part in _set_parts(targets[0]) for m in table[part]]
    known = known_module_names(architecture)
    unknown = [t for t in targets if t not in known]
    if unknown:
        raise SpecError("targets", "+".join(targets),
                        f"unknown module(s) {', '.join(unknown)} for {architecture}; allowed: "
                        f"{', '.join(TARGET_SETS)} or names among {', '.join(sorted(known))}")
    return list(targets)
