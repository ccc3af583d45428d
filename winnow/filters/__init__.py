"""Rule-based stages: normalisation, heuristic filters (datatrove's) and deduplication."""
