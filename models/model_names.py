"""One alias table for model names across data sources.

Sources spell the same model differently (AlpacaEval `gpt4_1106_preview`, RouterBench `gpt-4-1106-preview`,
RouterBench `mistralai/mixtral-8x7b-chat`, RouteLLM `mistralai/Mixtral-8x7B-Instruct-v0.1`). Every name that
enters the battles table goes through `canonical()`, so one model has one row in the tier table and one vector
in MF. Canonical names follow RouteLLM/Hugging Face spelling where one exists.
"""

from __future__ import annotations

ALIASES: dict[str, str] = {
    # the evaluation pair
    "gpt4_1106_preview": "gpt-4-1106-preview",
    "mistralai/mixtral-8x7b-chat": "mistralai/Mixtral-8x7B-Instruct-v0.1",
    "Mixtral-8x7B-Instruct-v0.1": "mistralai/Mixtral-8x7B-Instruct-v0.1",
    # AlpacaEval's "_concise" run is the same Mixtral weights asked for shorter answers; it is the only Mixtral
    # data on open-ended chat prompts, so it counts as Mixtral.
    "Mixtral-8x7B-Instruct-v0.1_concise": "mistralai/Mixtral-8x7B-Instruct-v0.1",
    # models that appear in more than one source
    "Yi-34B-Chat": "01-ai/Yi-34B-Chat",
    "zero-one-ai/Yi-34B-Chat": "01-ai/Yi-34B-Chat",
    "llama-2-70b-chat-hf": "meta-llama/Llama-2-70b-chat-hf",
    "meta/llama-2-70b-chat": "meta-llama/Llama-2-70b-chat-hf",
    "zephyr-7b-beta": "HuggingFaceH4/zephyr-7b-beta",
    "claude-2": "anthropic/claude-2",
    "claude-v2": "anthropic/claude-2",
    "gpt-3.5-turbo-1106": "gpt-3.5-turbo-1106",
}


def canonical(name: str) -> str:
    """The one spelling of `name` used in artifacts (unknown names pass through unchanged)."""
    name = name.strip()
    return ALIASES.get(name, name)
