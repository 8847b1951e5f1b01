"""What interp keeps about a model besides its weights: one explicit side table.

A `HookedTransformer` that interp builds comes with settings its module does not hold: the
tokenizer as the checkpoint ships it (TransformerLens keeps a BOS-adding copy as
`model.tokenizer`), the letter-id rule its scores use (`interp.scoring.set_letter_ids`), the folder
it was loaded from (`interp.score_cache` serves that folder's kept scores while the weights are
untouched) and its attached LoRA adapters (`interp.model.lora`). They live here, one frozen
`ModelState` per model, in a table that holds the model weakly (the entry goes with the model).
`find_state` / `model_state` read it, `set_state` writes it.

Copies: `copy.deepcopy(model)` (and `copy_model`, which also refuses a model with LoRA adapters
attached) gives the copy an entry of its own: the same tokenizer object and letter-id rule, and no
load source, so the score cache never takes the copy, which may be edited, for the untouched
loaded model. (`copyreg` hands deep copies of a `HookedTransformer` to `_copy_with_state`; a
model without an entry copies as before.) A model interp never built has no entry: its tokenizer
is TransformerLens' own.
"""

from __future__ import annotations

import copy
import weakref
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from torch import nn
from torch.nn.utils import parametrize

from interp.errors import InterpError
from interp.model.files import weights_stamp

M = TypeVar("M", bound=nn.Module)

@dataclass(frozen=True)
class Source:
    """Where a model was loaded from (`interp.score_cache`): the folder, its weights file's stamp
    (size, mtime in ns) and each parameter's identity (data pointer, version) right after."""

    folder: str
    weights: tuple[int, int]
    tensors: tuple[tuple[int, int], ...]


@dataclass
class LoRAAdapters:
    """What `interp.model.lora.add_lora` attached: the adapters (`LoRADelta` modules) by weight
    name, the form ("hooks" or "weights"), the hook handles, the parameters' earlier grad flags."""

    impl: str
    deltas: dict[str, nn.Module]
    handles: list = field(default_factory=list)
    flags: dict[str, bool] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelState:
    """Everything interp keeps about one model besides its weights (see the module docstring)."""

    tokenizer: Any = None  # the checkpoint's tokenizer; None: TransformerLens' `model.tokenizer`
    letter_ids: str | None = None  # None: the default rule ("in-context")
    source: Source | None = None  # the load folder, while the score cache may serve it
    lora: LoRAAdapters | None = None


_STATES: weakref.WeakKeyDictionary[nn.Module, ModelState] = weakref.WeakKeyDictionary()


def find_state(model: nn.Module) -> ModelState | None:
    """The model's state; None for a model interp never built."""
    try:
        return _STATES.get(model)
    except TypeError:  # not weakly referenceable or not hashable: no model interp built
        return None


def model_state(model: nn.Module) -> ModelState:
    """The model's state; `InterpError` when it has none (not built by interp)."""
    found = find_state(model)
    if found is None:
        raise InterpError("interp keeps no state for this model (it was not built by "
                          "interp.load_model)")
    return found


def set_state(model: nn.Module, **changes: Any) -> ModelState:
    """Set some of the model's `ModelState` fields (the rest kept, or defaults); returns it."""
    current = find_state(model) or ModelState()
    _STATES[model] = updated = replace(current, **changes)
    return updated


def get_tokenizer(model: nn.Module):
    """The tokenizer as the checkpoint ships it (TransformerLens keeps a BOS-adding copy).

    Raw-mode prompts are tokenized with this one, so BOS appears only where the tokenizer adds it.
    A model interp did not build has TransformerLens' own tokenizer only.
    """
    found = find_state(model)
    if found is not None and found.tokenizer is not None:
        return found.tokenizer
    return model.tokenizer


def tensor_stamp(model: nn.Module) -> tuple[tuple[int, int], ...]:
    """Each parameter's (data pointer, version): changes with any in-place edit or new tensor."""
    return tuple((p.data_ptr(), p._version) for p in model.parameters())


def loaded_from(model: nn.Module, folder: str | Path) -> Source | None:
    """The `Source` of a model just loaded from `folder`; None when the folder has no weights."""
    stamp = weights_stamp(folder)
    if stamp is None:
        return None
    return Source(folder=str(Path(folder).resolve()), weights=stamp, tensors=tensor_stamp(model))


def copy_model(model: M) -> M:
    """A deep copy that scores as `model` does: the same tokenizer and letter-id rule, and no load
    source (the score cache computes the copy's scores). Use it instead of `copy.deepcopy`, which
    does not copy what interp keeps about the model. Copy before attaching LoRA adapters."""
    found = find_state(model)
    if (found is not None and found.lora is not None) or any(
            parametrize.is_parametrized(m) for m in model.modules()):
        # hook-form adapters are closures over the original's; a deep-copied parametrization
        # shares its module class with the original, and removing one breaks the other
        raise InterpError("the model has LoRA adapters (or parametrizations) attached, which a "
                          "copy cannot take over; merge or remove them before copying")
    return copy.deepcopy(model)  # the entry follows (`_copy_with_state`)


def _copy_with_state(new, args: tuple, original_id: int):
    """A deep copy's new object, given the original's entry (less its load source and adapters)
    before the copy's fields are filled in."""
    twin = new(*args)
    found = next((st for m, st in list(_STATES.items()) if id(m) == original_id), None)
    if found is not None:
        _STATES[twin] = replace(found, source=None, lora=None)
    return twin


def _reduce_with_state(model):
    """`copyreg`'s reducer for a `HookedTransformer`: the default one, whose object is made by
    `_copy_with_state` when the model has an entry (pickling takes the same path: an unpickled
    model in another process finds no entry and is a model interp did not build)."""
    reduced = model.__reduce_ex__(4)
    if find_state(model) is None:
        return reduced
    new, args, *rest = reduced
    return (_copy_with_state, (new, args, id(model)), *rest)


def _register_copies() -> None:
    import copyreg

    from transformer_lens import HookedTransformer

    copyreg.pickle(HookedTransformer, _reduce_with_state)


_register_copies()
