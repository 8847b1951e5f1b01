"""The unrelated corpus: text with no information about the forget domain.

The paper finetunes on wikitext; offline, the stand-in is text the embedded model writes itself
from generic prompts (cooking, music, exercise, ...), then filtered so that no passage names an
entity or value of the forget domain. The generated file ships in the repo
(`interp/data/bundled/unrelated.jsonl`); `python -m interp.data.unrelated OUT` regenerates it.
"""

from __future__ import annotations

import json
import random
import re
import sys
from pathlib import Path
from typing import Iterable

BUNDLED = Path(__file__).parent / "bundled" / "unrelated.jsonl"

TOPICS = [
    "baking bread", "growing tomatoes", "learning to swim", "playing the piano", "riding a bicycle",
    "making pancakes", "caring for a puppy", "painting with watercolors", "writing a poem",
    "saving money", "getting a good night's sleep", "drinking enough water", "running a marathon",
    "studying for an exam", "organizing a closet", "planting a tree", "brewing tea",
    "building a birdhouse", "learning to knit", "keeping a journal", "playing chess",
    "making friends", "cleaning a kitchen", "cooking rice", "taking care of houseplants",
    "doing yoga", "reading books", "listening to music", "writing a letter", "fixing a flat tire",
    "walking in the park", "teaching a child to read", "baking cookies", "making a sandwich",
    "the water cycle", "how rainbows form", "why the sky is blue", "how computers store data",
    "the rules of basketball", "how bees make honey", "what clouds are made of",
    "how a bicycle works", "the benefits of exercise", "how to tie a knot", "recycling",
    "photosynthesis", "the solar system", "how magnets work", "how to make soup",
    "prime numbers", "fractions", "the history of the wheel", "how to brush your teeth",
    "staying calm under stress", "working in a team", "public speaking", "time management",
    "camping in the woods", "birthday parties", "snowy winter days", "a trip to the beach",
]
STYLES = [
    "Write a short paragraph about {t}.",
    "Explain {t} to a ten-year-old.",
    "Give some practical tips about {t}.",
    "Write a short story that involves {t}.",
    "Describe {t} in simple words.",
    "Write a short encyclopedia-style entry about {t}.",
]


def prompts() -> list[str]:
    """The generation prompts: every style for every topic."""
    return [s.format(t=t) for t in TOPICS for s in STYLES]


def mentions(text: str, names: Iterable[str]) -> list[str]:
    """Names that occur in `text` as whole words (case-sensitive)."""
    return [n for n in names if re.search(rf"(?<![\w]){re.escape(n)}(?![\w])", text)]


def load_unrelated(path: Path = BUNDLED) -> list[str]:
    """The unrelated passages of a JSONL file (the bundled one by default)."""
    return [json.loads(line)["text"] for line in path.read_text().splitlines() if line.strip()]


def generate(out: Path, samples_per_prompt: int = 3, max_new_tokens: int = 72, seed: int = 0,
             batch_size: int = 40) -> None:
    """Sample passages from the embedded model (plain transformers generate, KV cache)."""
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from interp.model.load import embedded_gguf_path

    gguf = embedded_gguf_path()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name).eval()
    torch.manual_seed(seed)
    random.seed(seed)
    jobs = [p for p in prompts() for _ in range(samples_per_prompt)]
    rows = []
    for start in tqdm(range(0, len(jobs), batch_size), desc="generating"):
        batch = jobs[start:start + batch_size]
        texts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                         add_generation_prompt=True) for p in batch]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out_ids = model.generate(**enc, do_sample=True, temperature=0.8, top_p=0.95,
                                     max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id)
        for prompt, ids in zip(batch, out_ids[:, enc.input_ids.shape[1]:]):
            text = tok.decode(ids, skip_special_tokens=True).strip()
            if len(text) > 40:
                rows.append({"prompt": prompt, "text": text})
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {len(rows)} passages to {out}")


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else BUNDLED)
