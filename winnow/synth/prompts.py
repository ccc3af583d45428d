"""The rewrite instructions, one per WRAP style, written for winnow (the paper's own prompts are
described in ../shared/ALGORITHMS.md section 2; these say the same things in our words and add
the faithfulness rules the guard checks).

`TEMPLATE_VERSION` is part of every cache key: change any text here and bump it, so cached
rewrites made from the old wording are not served for the new one.
"""

from __future__ import annotations

from winnow.synth.backend import Request

TEMPLATE_VERSION = 1

SYSTEM = ("You rewrite text for a reader. You keep every fact, name and number of the original, "
          "add nothing that is not in it, and answer with the rewritten text only.")

INSTRUCTIONS: dict[str, str] = {
    "wiki": "Rewrite this passage as a clear, well-organised paragraph in the neutral style of an "
            "encyclopedia article such as Wikipedia.",
    "qa": "Turn this passage into a short series of questions and answers about what it says. Put each "
          "question on its own line starting with \"Question:\" and its answer on the next line starting "
          "with \"Answer:\".",
    "easy": "Rewrite this passage in very plain words and short, simple sentences that a young child "
            "could follow.",
    "hard": "Rewrite this passage in dense, formal language with rare and precise vocabulary, as a "
            "scholar writing for other specialists would.",
}
STYLES = tuple(INSTRUCTIONS)


def build_request(chunk: str, style: str, seed: int) -> Request:
    """The chat messages that ask for `chunk` rewritten in `style`."""
    user = f"{INSTRUCTIONS[style]}\n\nPassage:\n{chunk}"
    return Request(messages=(("system", SYSTEM), ("user", user)), seed=seed)
