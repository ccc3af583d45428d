"""winnow: curate a text corpus for language-model training and measure the compute it saves."""

__version__ = "0.1.0"

import os as _os

# Nothing downloads at run time: keep the Hugging Face libraries offline unless the user says otherwise.
# (Best set before Python starts; set here, it still holds for everything winnow imports later.)
for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    _os.environ.setdefault(_var, "1")
