"""Bad input, a corpus: each case gives one clear error line, exit code 2, no traceback and no
result file. CLI cases run in-process through `interp.cli.main` (the console script's entry);
the API cases call the library directly and expect `InterpError`."""

from __future__ import annotations

import json
import struct

import pytest
import torch

from interp.cli import main
from interp.errors import InterpError

Q = {"question": "Which organelle makes ATP?",
     "choices": ["Nucleus", "Mitochondrion", "Ribosome", "Golgi"], "answer": 1}


def _jsonl(*rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


FILES = {
    "ok.jsonl": _jsonl(Q),
    "three.jsonl": _jsonl({**Q, "choices": Q["choices"][:3]}),
    "five.jsonl": _jsonl({**Q, "choices": Q["choices"] + ["Vacuole"]}),
    "range.jsonl": _jsonl({**Q, "answer": 7}),
    "notint.jsonl": _jsonl({**Q, "answer": "mitochondrion"}),
    "float.jsonl": _jsonl({**Q, "answer": 1.5}),
    "empty.jsonl": "",
    "schema.jsonl": _jsonl({"prompt": "x", "options": ["a", "b", "c", "d"], "label": 0}),
    "badjson.jsonl": '{"question": "q", "choices": [\n',
    "list.json": json.dumps({"question": "not a list"}),
    "badcsv.csv": "text,label\nhello,0\n",
    "long.jsonl": _jsonl({**Q, "question": "word " * 4000}),
    "emptyq.jsonl": _jsonl({**Q, "question": "  "}),
    "choices_str.jsonl": _jsonl({**Q, "choices": "Nucleus"}),
    "data.txt": "a question?",
}


@pytest.fixture()
def files(tmp_path, tiny_llama_dir):
    for name, text in FILES.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "latin1.jsonl").write_bytes(_jsonl(Q).encode().replace(b"ATP", b"\xe9\xff"))
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really parquet")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["a"], "label": [0]}), tmp_path / "schema.parquet")
    # model folders: truncated weights, no weights, a broken GGUF, a pickle checkpoint
    import shutil

    trunc = tmp_path / "trunc-model"
    shutil.copytree(tiny_llama_dir, trunc)
    weights = trunc / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    noweights = tmp_path / "noweights-model"
    shutil.copytree(tiny_llama_dir, noweights)
    (noweights / "model.safetensors").unlink()
    (tmp_path / "broken.gguf").write_bytes(b"GGUF" + struct.pack("<I", 3) + b"\x00" * 10)
    (tmp_path / "notgguf.gguf").write_bytes(b"hello world")
    (tmp_path / "datadir").mkdir()
    return tmp_path


M = "{model}"
CLI_CASES = [
    # (case, argv, words expected in the error line)
    ("unknown model", ["eval", "--model", "no-such-model-xyz", "--data", "{d}/ok.jsonl"],
     "unknown model"),
    ("missing data file", ["eval", "--data", "{d}/missing.jsonl"], "not found"),
    ("3 choices", ["eval", "--data", "{d}/three.jsonl"], "4 choices"),
    ("5 choices", ["eval", "--data", "{d}/five.jsonl"], "got 5"),
    ("answer out of range", ["eval", "--data", "{d}/range.jsonl"], "out of range"),
    ("answer not an integer", ["eval", "--data", "{d}/notint.jsonl"], "integer"),
    ("answer a float", ["eval", "--data", "{d}/float.jsonl"], "integer"),
    ("empty file", ["eval", "--data", "{d}/empty.jsonl"], "empty"),
    ("non-UTF-8 bytes", ["eval", "--data", "{d}/latin1.jsonl"], "UTF-8"),
    ("wrong schema", ["eval", "--data", "{d}/schema.jsonl"], "missing field"),
    ("invalid JSON line", ["eval", "--data", "{d}/badjson.jsonl"], "invalid JSON"),
    ("JSON not a list", ["eval", "--data", "{d}/list.json"], "list"),
    ("CSV wrong columns", ["eval", "--data", "{d}/badcsv.csv"], "missing field"),
    ("unreadable parquet", ["eval", "--data", "{d}/bad.parquet"], "parquet"),
    ("parquet wrong schema", ["eval", "--data", "{d}/schema.parquet"], "missing field"),
    ("unsupported file type", ["eval", "--data", "{d}/data.txt"], "unsupported"),
    ("empty question", ["eval", "--data", "{d}/emptyq.jsonl"], "question"),
    ("choices not a list", ["eval", "--data", "{d}/choices_str.jsonl"], "choices"),
    ("prompt longer than context", ["eval", "--data", "{d}/long.jsonl"], "context"),
    ("unknown fact bank", ["eval", "--data", "bank:nope"], "fact bank"),
    ("unwritable output", ["eval", "--data", "{d}/ok.jsonl", "--out", "/proc/nope/x.json"],
     "cannot write"),
    ("output is a folder", ["eval", "--data", "{d}/ok.jsonl", "--out", "{d}"], "folder"),
    ("batch size 0", ["eval", "--data", "{d}/ok.jsonl", "--batch-size", "0"], "batch size"),
    ("unknown device", ["eval", "--data", "{d}/ok.jsonl", "--device", "tpu"], "device"),
    ("unknown dtype", ["eval", "--data", "{d}/ok.jsonl", "--dtype", "float8"], "dtype"),
    ("truncated safetensors", ["eval", "--model", "{d}/trunc-model", "--data", "{d}/ok.jsonl"],
     "SafetensorError"),
    ("missing safetensors", ["eval", "--model", "{d}/noweights-model", "--data",
                             "{d}/ok.jsonl"], "weights"),
    ("truncated GGUF", ["eval", "--model", "{d}/broken.gguf", "--data", "{d}/ok.jsonl"], "GGUF"),
    ("not a GGUF file", ["eval", "--model", "{d}/notgguf.gguf", "--data", "{d}/ok.jsonl"],
     "GGUF"),
    ("pruning p > 1", ["attack", "prune", "--model", M, "--data", "{d}/datadir", "--out",
                       "{d}/prune", "--grid", "0.01,1.5"], "(0, 1]"),
    ("pruning grid not numbers", ["attack", "prune", "--model", M, "--data", "{d}/datadir",
                                  "--out", "{d}/prune", "--grid", "a,b"], "--grid"),
    ("finetune n = 0", ["attack", "finetune", "--model", M, "--data", "{d}/datadir", "--out",
                        "{d}/ft", "--unrelated-n", "0"], "at least 1"),
    ("finetune n not a number", ["attack", "finetune", "--model", M, "--data", "{d}/datadir",
                                 "--out", "{d}/ft", "--unrelated-n", "ten"], "whole numbers"),
    ("finetune lr grid not positive", ["attack", "finetune", "--model", M, "--data",
                                       "{d}/datadir", "--out", "{d}/ft", "--lrs", "1e-3,-1"],
     "positive"),
    ("enhanced GCG without original", ["attack", "gcg", "--model", M, "--data", "{d}/datadir",
                                       "--out", "{d}/gcg", "--objective", "enhanced"],
     "--original"),
    ("protect: unknown setting", ["protect", "rmu", "--model", M, "--data", "{d}/datadir",
                                  "--out", "{d}/rmu", "--set", "nope=1"], "unknown rmu setting"),
    ("protect: dpo forget_frac > 1", ["protect", "dpo", "--model", M, "--data", "{d}/datadir",
                                      "--out", "{d}/dpo", "--set", "forget_frac=2"],
     "forget_frac"),
    ("protect: --set without =", ["protect", "rmu", "--model", M, "--data", "{d}/datadir",
                                  "--out", "{d}/rmu", "--set", "lr"], "KEY=VALUE"),
    ("compare: one model only", ["attack", "compare", "--directions", "a={d}", "--out",
                                 "{d}/cmp"], "nothing to compare"),
    ("compare: missing results", ["attack", "compare", "--directions", "a={d}/x",
                                  "--directions", "b={d}/y", "--out", "{d}/cmp"], "missing"),
    ("audit: too few questions", ["audit", "--original", M, "--unlearned", M, "--forget",
                                  "{d}/ok.jsonl", "--retain", "{d}/ok.jsonl", "--out",
                                  "{d}/audit"], "at least 4"),
    ("bench: unknown benchmark", ["bench", "nonsense", "--out", "{d}/bench.json"],
     "unknown benchmark"),
]


@pytest.mark.parametrize("case,argv,words", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input(case, argv, words, files, tiny_llama_dir, capsys):
    argv = [a.format(d=files, model=tiny_llama_dir) for a in argv]
    if argv[0] == "eval":
        if "--model" not in argv:
            argv += ["--model", str(tiny_llama_dir)]
        if "--out" not in argv:
            argv += ["--out", str(files / "out.json")]
        if "--device" not in argv:
            argv += ["--device", "cpu"]
    before = {p for p in files.rglob("*")}
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.strip().splitlines()
             if line.strip() and "%|" not in line]  # progress bars aside
    assert len(lines) == 1 and lines[0].startswith("interp: error: "), err
    assert words in lines[0], lines[0]
    assert "Traceback" not in err
    created = {p for p in files.rglob("*")} - before
    assert not [p for p in created if p.is_file()], created  # nothing half-written


def test_corpus_size():
    assert len(CLI_CASES) + len(API_CASES) >= 30


def _zero_direction(model):
    from interp.attacks.directions import ablation_hooks

    ablation_hooks(model, torch.zeros(model.cfg.n_layers, model.cfg.d_model))


def _nan_direction(model):
    from interp.attacks.directions import orthogonalize_weights

    orthogonalize_weights(model, torch.full((model.cfg.d_model,), float("nan")))


def _q_above_p(model):
    from interp.attacks.prune import set_difference

    set_difference(torch.ones(10), torch.ones(10), q=0.2, p=0.1)


def _gcg_special_init(model):
    from interp.attacks.gcg import GCGConfig, allowed_tokens, initial_prefix
    from interp.model.load import get_tokenizer

    tok = get_tokenizer(model)
    initial_prefix(tok, GCGConfig(init=tok.eos_token + " hello"),
                   allowed_tokens(tok, model.cfg.d_vocab, False))


def _lora_rank_zero(model):
    from interp.model.lora import LoRAConfig, add_lora

    add_lora(model, LoRAConfig(rank=0))


def _no_questions(model):
    from interp.scoring import evaluate

    evaluate(model, [])


API_CASES = [("zero direction", _zero_direction, "zero or NaN"),
             ("NaN direction", _nan_direction, "zero or NaN"),
             ("pruning q > p", _q_above_p, "q <= p"),
             ("GCG prefix that does not tokenize back", _gcg_special_init, "tokenize back"),
             ("LoRA rank 0", _lora_rank_zero, "rank"),
             ("no questions", _no_questions, "no questions")]


@pytest.mark.parametrize("case,fn,words", API_CASES, ids=[c[0] for c in API_CASES])
def test_api_bad_input(case, fn, words, tiny_model):
    with pytest.raises(InterpError, match=None) as info:
        fn(tiny_model)
    assert words in str(info.value) and "\n" not in str(info.value)
