"""LLM rephrasing: backends (llama.cpp, transformers, OpenAI-compatible HTTP, vLLM), prompts, chunking,
the faithfulness guard, the generation cache, and the `rephrase` stage that ties them together."""
