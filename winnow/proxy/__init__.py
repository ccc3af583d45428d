"""Proxy language models: model.py (the network), flops.py (cost), train.py (the loop),
evaluate.py (the compute multiplier) and downstream.py (zero-shot multiple choice)."""
