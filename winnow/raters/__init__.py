"""Model-based scorers: sentence embeddings now; quality classifiers and the DataRater next."""
