"""Tokenizers (trained or local), the tokenize and pack stages, and the token files trainers read."""
