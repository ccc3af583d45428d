"""winnow: curate a text corpus for language-model training and measure the compute it saves."""

__version__ = "0.1.0"
