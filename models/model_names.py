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
    # MMLU-Pro spells RouterDC's base models without the org prefix: the same weights, and the links that put
    # RouterDC's 7B models on the same rating scale as the rest.
    "Mistral-7B-v0.1": "mistralai/Mistral-7B-v0.1",
    "Meta-Llama-3-8B": "meta-llama/Meta-Llama-3-8B",
    "claude": "claude-v1",  # AlpacaEval's "claude" is Claude 1, RouterBench's and TheoremQA's claude-v1
    # MMLU-Pro runs: gpt-4o is its own model (a stand-in for gpt-4-1106's tier, never renamed to it); the
    # "(2405run)" tags only say when the source ran it.
    "gpt-4o-2024-05-13(2405run)": "gpt-4o-2024-05-13",
    "deepseek-chat-v2(2405run)": "deepseek-chat-v2",
    # Faithful-CoT and TheoremQA both ran the 2023 OpenAI models; one name each, so their battles link up and,
    # through text-davinci-003 (AlpacaEval-1's baseline) and the Claude models (RouterBench), reach the others.
    # Faithful-CoT's bare "gpt4" is mapped in its loader: AlpacaEval's "gpt4" is another snapshot (0314).
    "gpt-4(0613-era,CoT)": "gpt-4-0613",
    "chatgpt(gpt-3.5-turbo,CoT)": "gpt-3.5-turbo-0613",
    "text003": "text-davinci-003",
    "text_davinci_003": "text-davinci-003",
    "GPT3.5-run(text-davinci-003?,CoT)": "text-davinci-003",
    "text002": "text-davinci-002",
    "GPT3-run(text-davinci-002?,CoT)": "text-davinci-002",
    "code002": "code-davinci-002",
    "code001": "code-davinci-001",
}


def canonical(name: str) -> str:
    """The one spelling of `name` used in artifacts (unknown names pass through unchanged)."""
    name = name.strip()
    return ALIASES.get(name, name)
