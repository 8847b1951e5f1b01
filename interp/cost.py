"""What a run will do, counted before it runs: the unit `interp plan` projects time with.

Every protection and attack module may define `cost(cfg, sizes) -> dict[str, int]`: how many steps
of each kind one run of it does on data of these sizes. The kinds are the stages `interp plan`
measures: "score" (one question scored), "rmu" / "npo" / "dpo" (one training step), "lora" (one
finetuning step), "gcg" (one search step), "snip" (one attribution sample), "directions" (one prompt
through the difference-in-means pass, per model), "lens" (one question through the logit lens),
"readout" (one question's residuals read at every layer, for the tuned lens and the probes),
"soft_prompt" / "latent" (one optimizer step).
The counts follow each module's own loops (the tests compare them with what a run does).

A module also says how `interp plan` times one step of each kind it counts: `probes(cfg) ->
{kind: StepProbe}` for an attack; a protection's own kind (its name) is timed by its `train` with
`steps` set, unless the module gives `probes` too. A kind nothing can time, or a module without
`cost`, is named in the plan, not skipped.

For memory (`interp plan --card`), a module may define `memory_steps(cfg, config, prompt_tokens)
-> list[Workload]`: its largest steps (batch, tokens, what gets gradients, what trains); without
it, one forward of its `batch_size` prompts (16 if it has none).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

SMALLER_BATCH = "half the batch_size with grad_accum 2 (the same effective batch)"


@dataclass
class Sizes:
    """The data a preset runs on, as the data layout splits it."""

    forget_train: int
    forget_test: int  # the test split
    retain_train: int
    retain_test: int
    unrelated: int
    n_layers: int
    forget_val: int = 0
    retain_val: int = 0
    letter: bool = True  # WMDP-style letter questions: the no-attack scores are raw and chat
    letter_test: int = 0  # questions of the `*_test_letter` sample sets (scored raw and chat)
    control_test: int = 0  # the never-known control (`interp.data.control`)
    control_val: int = 0


def capped(n: int, limit: int | None) -> int:
    """`n`, at most `limit` (None: no limit)."""
    return n if limit is None else min(n, limit)


def measure_cost(s: Sizes) -> dict[str, int]:
    """The protections' no-attack scores (`protections.base.measure`), once."""
    return {"score": (s.forget_test + s.retain_test + s.control_test) * (2 if s.letter else 1)
            + 2 * s.letter_test}


def add(total: dict[str, int], part: dict[str, int]) -> dict[str, int]:
    """Add the step counts of `part` into `total` (by kind), and return `total`."""
    for k, v in part.items():
        total[k] = total.get(k, 0) + int(v)
    return total


@dataclass(frozen=True)
class StepProbe:
    """How `interp plan` times one step of a kind: `measure(probe, cfg)` runs the module's real
    code for `probe.steps` steps on a random-weight model (`probe`: model, data, steps, device,
    original) and returns seconds per step; `knob` is what to lower when it does not fit."""

    unit: str
    measure: Callable[[Any, Any], float]
    knob: str = SMALLER_BATCH


@dataclass
class Workload:
    """One stage's largest step, for the memory plan: `batch` sequences of `tokens`, gradients of
    nothing, of the inputs (an embedding-space attack) or of the block weights; `trained`: "all"
    (AdamW on `params`, every block weight if empty, float32 masters in half precision), "lora"
    (adapters of `lora_params`) or ""; `snip`: float32 |grad| sums of every block matrix; `models`:
    weight copies held (2: the original too); `stop_at`: the forward stops before that block."""

    stage: str
    batch: int
    tokens: int
    grad: str = "none"  # none | inputs | weights
    trained: str = ""  # "" | all | lora
    lora_params: int = 0
    snip: bool = False
    models: int = 1
    note: str = ""
    params: tuple[str, ...] = field(default_factory=tuple)
    stop_at: int | None = None


def lora_param_count(config: dict, rank: int) -> int:
    """Adapter weights of rank `rank` on every attention and MLP matrix of every block of a
    Hugging Face config."""
    d, m = config["hidden_size"], config["intermediate_size"]
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or d // heads
    kv = (config.get("num_key_value_heads") or heads) * head_dim
    q = heads * head_dim
    return rank * ((d + q) * 2 + (d + kv) * 2 + (d + m) * 3) * config["num_hidden_layers"]
