"""How an SFT row (prompt, response) becomes one training text, in one place.

The training text is the prompt, a blank line, then the response; the prompt's characters (and the
separator) are never a training target. The `prune` stage writes this text and masks the prompt in
`masked_spans`; the `tokenize` stage builds the same text when it is given `prompt_field` directly.
"""

from __future__ import annotations

SEPARATOR = "\n\n"


def training_text(prompt: str | None, response: str) -> tuple[str, int]:
    """(text, start of the response in it): `prompt + SEPARATOR + response`, or the response alone."""
    if not prompt:
        return response, 0
    head = prompt + SEPARATOR
    return head + response, len(head)


def token_mask(offsets: list[tuple[int, int]], masked: list[list[int]]) -> list[int]:
    """1 for each token (by its [start, end) characters) that overlaps no masked span, else 0."""
    if not masked:
        return [1] * len(offsets)
    spans = sorted(masked)
    out = []
    k = 0
    for a, b in offsets:
        while k < len(spans) and spans[k][1] <= a:   # spans wholly before this token
            k += 1
        hit = False
        j = k
        while j < len(spans) and spans[j][0] < max(b, a + 1):
            if spans[j][1] > a:
                hit = True
                break
            j += 1
        out.append(0 if hit else 1)
    return out
