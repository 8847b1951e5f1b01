"""Integration: the embedded SmolLM2 against plain transformers (one test per real model path)."""

from __future__ import annotations

import json

import pytest
import torch

from interp.cli import main
from interp.data.questions import load_questions
from interp.model.load import embedded_gguf_path, get_tokenizer, load_model

from .test_evaluate import reference_probs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def hf_smollm():
    from transformers import AutoModelForCausalLM

    gguf = embedded_gguf_path()
    return AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name).eval()


@pytest.fixture(scope="module")
def smollm():
    return load_model("smollm2", device="cpu")


def test_embedded_logprobs_match_hf(smollm, hf_smollm):
    tok = get_tokenizer(smollm)
    ids = tok("The capital of France is Paris. The chemical symbol for gold is",
              return_tensors="pt").input_ids
    with torch.no_grad():
        ours = smollm(ids).log_softmax(-1)
        ref = hf_smollm(ids).logits.log_softmax(-1)
    assert (ours - ref).abs().max().item() <= 1e-4


@pytest.mark.parametrize("chat", [False, True])
def test_cli_eval_matches_plain_transformers(chat, smollm, hf_smollm, wmdp_jsonl, tmp_path):
    out = tmp_path / "res.json"
    args = ["eval", "--model", "smollm2", "--data", str(wmdp_jsonl), "--subject", "biology",
            "--out", str(out), "--device", "cpu"] + (["--chat"] if chat else [])
    assert main(args) == 0
    ours = torch.tensor([item["probs"] for item in json.loads(out.read_text())["items"]])
    questions = load_questions(wmdp_jsonl, subject="biology")
    ref = reference_probs(hf_smollm, get_tokenizer(smollm), questions, chat=chat)
    assert (ours - ref).abs().max().item() <= 2e-3


def test_embedded_knows_capitals_in_cloze(smollm, tmp_path):
    out = tmp_path / "caps.json"
    assert main(["eval", "--data", "bank:capitals", "--limit", "40", "--out", str(out),
                 "--device", "cpu"]) == 0
    assert json.loads(out.read_text())["accuracy"] >= 0.8


def test_export_smollm2_loads_in_plain_transformers(smollm, tmp_path):
    """`interp export smollm2 --out DIR`: a folder plain transformers loads to the same logits."""
    from transformers import AutoModelForCausalLM

    from interp.cli import main
    from interp.model.load import get_tokenizer

    out = tmp_path / "export"
    assert main(["export", "--model", "smollm2", "--device", "cpu", "--out", str(out)]) == 0
    assert {"config.json", "model.safetensors"} <= {p.name for p in out.iterdir()}
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    tokens = torch.tensor([get_tokenizer(smollm)("The capital of France is")["input_ids"]])
    with torch.no_grad():
        ours, theirs = smollm(tokens), hf(tokens).logits
    torch.testing.assert_close(theirs, ours, atol=2e-4, rtol=0)
