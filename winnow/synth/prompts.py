"""The rewrite instructions, one per WRAP style, written for winnow (the paper's own prompts are
described in ../shared/ALGORITHMS.md section 2).

The wording suits small instruction-tuned models: a plain system line, the instruction, the text
after a `Text:` label and a cue naming what comes next. A longer system prompt listing rules
("keep every fact, add nothing") made SmolLM2-135M comment on the passage instead of rewriting it:
on 16 curated web chunks the guard kept 1 wiki rewrite with it and 7 with this layout (T=0.3;
bench/LOG.md). The model is a plumbing stand-in: no wording makes a 135M model a reliable rephraser.

The cache keys every generation on the full rendered request (cache.py), so editing any text here
makes new keys by itself: rewrites made from the old wording are never served for the new one.
"""

from __future__ import annotations

from winnow.synth.types import Request

SYSTEM = "You are a helpful assistant."

INSTRUCTIONS: dict[str, str] = {
    "wiki": "Paraphrase the following text in clear, encyclopedic English. Keep all facts.",
    "qa": "Turn the following text into questions and answers about what it says. Start each question "
          "with \"Question:\" and each answer with \"Answer:\".",
    "easy": "Rewrite the following text with very simple words and short sentences that a small child "
            "could understand. Keep all facts.",
    "hard": "Rewrite the following text in formal, learned language with rare and precise words, as a "
            "scholar would write it. Keep all facts.",
}
CUES: dict[str, str] = {"wiki": "Paraphrase:", "qa": "Questions and answers:", "easy": "Simple version:",
                        "hard": "Scholarly version:"}
STYLES = tuple(INSTRUCTIONS)


def build_request(chunk: str, style: str, seed: int) -> Request:
    """The chat messages that ask for `chunk` rewritten in `style`."""
    user = f"{INSTRUCTIONS[style]}\n\nText: {chunk}\n\n{CUES[style]}"
    return Request(messages=(("system", SYSTEM), ("user", user)), seed=seed)
