"""The scorer against an independent plain-transformers implementation of the paper's recipe."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from interp.data.questions import Question, load_questions
from interp.errors import InterpError
from interp.prompts import encode_question, first_token_after
from interp.scoring import evaluate, last_logits, pad_left

PAPER_TEMPLATE = (
    "The following are multiple choice questions (with answers) about {subject}.\n\n"
    "{question}\nA. {c0}\nB. {c1}\nC. {c2}\nD. {c3}\nAnswer:"
)


def reference_probs(hf, tokenizer, questions, *, chat: bool, prefix: str | None = None):
    """The official recipe, written out again: one prompt at a time, letters' logits, softmax."""
    out = []
    for q in questions:
        text = PAPER_TEMPLATE.format(subject=q.subject, question=q.question.strip(),
                                     c0=q.choices[0], c1=q.choices[1], c2=q.choices[2],
                                     c3=q.choices[3])
        if prefix:
            text = prefix + " " + text
        if chat:
            ids = tokenizer.apply_chat_template(
                [{"role": "system", "content": ""}, {"role": "user", "content": text}],
                add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
            letters = [tokenizer.convert_tokens_to_ids(x) for x in "ABCD"]
        else:
            ids = tokenizer(text, return_tensors="pt").input_ids
            letters = [tokenizer(" " + x, add_special_tokens=False).input_ids[-1] for x in "ABCD"]
        with torch.no_grad():
            logits = hf(ids).logits[0, -1]
        out.append(logits[letters].softmax(-1))
    return torch.stack(out)


@pytest.mark.parametrize("chat", [False, True])
def test_scorer_matches_reference(tiny_model, tiny_llama_dir, bpe_tokenizer, wmdp_jsonl, chat):
    hf = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    questions = load_questions(wmdp_jsonl, subject="biology")
    ours = evaluate(tiny_model, questions, chat=chat, batch_size=2, progress=False)
    ref = reference_probs(hf, bpe_tokenizer, questions, chat=chat)
    assert (ours.probs - ref).abs().max().item() <= 1e-4
    assert ours.preds.tolist() == ref.argmax(-1).tolist()
    expected_acc = (ref.argmax(-1) == torch.tensor([q.answer for q in questions])).float().mean()
    assert ours.accuracy == pytest.approx(expected_acc.item())


def test_prefix_goes_first(tiny_model, tiny_llama_dir, bpe_tokenizer, wmdp_jsonl):
    hf = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    questions = load_questions(wmdp_jsonl, subject="biology")
    ours = evaluate(tiny_model, questions, prefix="zx qv", progress=False)
    ref = reference_probs(hf, bpe_tokenizer, questions, chat=False, prefix="zx qv")
    assert (ours.probs - ref).abs().max().item() <= 1e-4


def test_batched_equals_single(tiny_model, wmdp_jsonl):
    questions = load_questions(wmdp_jsonl, subject="biology") * 3
    questions += [Question("The capital of France is", ("Paris", "Rome", "Oslo", "Lima"), 0,
                           format="cloze")]
    batched = evaluate(tiny_model, questions, batch_size=8, progress=False)
    single = torch.cat([evaluate(tiny_model, [q], batch_size=1, progress=False).probs
                        for q in questions])
    assert (batched.probs - single).abs().max().item() <= 1e-4


def test_last_logits_equals_full_forward(tiny_model, bpe_tokenizer):
    seqs = [bpe_tokenizer(t)["input_ids"] for t in ["a short one", "a much longer prompt here"]]
    tokens, mask = pad_left(seqs, 0, "cpu")
    with torch.no_grad():
        ours = last_logits(tiny_model, tokens, mask)
        for i, s in enumerate(seqs):
            full = tiny_model(torch.tensor([s]))[0, -1]
            torch.testing.assert_close(ours[i], full, atol=1e-4, rtol=0)


def test_hooks_change_scores_and_are_removed(tiny_model, wmdp_jsonl):
    questions = load_questions(wmdp_jsonl, subject="biology")
    base = evaluate(tiny_model, questions, progress=False)

    def scale(x, hook):
        return x * 0.0

    hooked = evaluate(tiny_model, questions, hooks=[("blocks.1.hook_mlp_out", scale)],
                      progress=False)
    assert (hooked.probs - base.probs).abs().max() > 1e-4
    assert all(not hp._forward_hooks for hp in tiny_model.hook_dict.values())
    again = evaluate(tiny_model, questions, progress=False)
    torch.testing.assert_close(again.probs, base.probs)


def test_letter_tokens_byte_level_bpe(bpe_tokenizer):
    from interp.prompts import chat_text

    raw = first_token_after(bpe_tokenizer, "Answer:", " A", chat=False)
    assert bpe_tokenizer.decode([raw]) == " A"
    context = chat_text(bpe_tokenizer, "question")
    chat = first_token_after(bpe_tokenizer, context, "A", chat=True)
    assert bpe_tokenizer.decode([chat]) == "A" and chat != raw


def test_letter_tokens_sentencepiece(sp_tokenizer):
    q = Question("Which?", ("one", "two", "three", "four"), 0, subject="biology")
    enc = encode_question(sp_tokenizer, q, chat=False)
    pieces = sp_tokenizer.convert_ids_to_tokens(list(enc.candidates))
    assert pieces == ["▁A", "▁B", "▁C", "▁D"] or [p.lstrip("▁") for p in pieces] == list("ABCD")
    # the paper's rule (last id of tokenizing the bare letter) agrees for SentencePiece
    paper = [sp_tokenizer(x, add_special_tokens=False).input_ids[-1] for x in "ABCD"]
    assert list(enc.candidates) == paper
    assert enc.ids[0] == sp_tokenizer.bos_token_id  # raw mode: BOS because this tokenizer adds it


def test_raw_mode_adds_no_bos_for_smollm(bpe_tokenizer):
    q = Question("Which?", ("one", "two", "three", "four"), 0, subject="biology")
    enc = encode_question(bpe_tokenizer, q, chat=False)
    assert enc.ids == bpe_tokenizer(PAPER_TEMPLATE.format(
        subject="biology", question="Which?", c0="one", c1="two", c2="three", c3="four"),
        add_special_tokens=True)["input_ids"]
    assert enc.ids[0] != bpe_tokenizer.bos_token_id
    chat = encode_question(bpe_tokenizer, q, chat=True)
    assert chat.ids.count(bpe_tokenizer.convert_tokens_to_ids("<|im_start|>")) == 3


def test_cloze_candidates_must_differ(bpe_tokenizer):
    q = Question("The word is", ("San Jose", "San Marino", "Paris", "Rome"), 0, format="cloze")
    with pytest.raises(InterpError, match="share their first token"):
        encode_question(bpe_tokenizer, q, chat=False)


def test_prompt_longer_than_context(tiny_model):
    q = Question("word " * 400, ("a", "b", "c", "d"), 0, subject="x")
    with pytest.raises(InterpError, match="context"):
        evaluate(tiny_model, [q], progress=False)


def test_cached_generation_equals_recomputing(tiny_model):
    from interp.model.load import get_tokenizer
    from interp.scoring import generate_greedy

    tok = get_tokenizer(tiny_model)
    prompts = [tok(t)["input_ids"] for t in ("The capital of France is",
                                             "Gold", "A dolphin is a kind of sea")]
    cached = generate_greedy(tiny_model, prompts, max_new_tokens=12, use_cache=True)
    full = generate_greedy(tiny_model, prompts, max_new_tokens=12, use_cache=False)
    assert cached == full and all(len(c) > 0 for c in cached)
