"""The finetuning attack at smoke scale: clean data, training that lowers the loss, resumable."""

from __future__ import annotations

import torch

from interp.attacks.finetune import (
    WIKI_PREFIX,
    FinetuneConfig,
    curve_marks,
    forget_names,
    forget_samples,
    unrelated_samples,
)
from interp.attacks.finetune import run as finetune_attack
from interp.data.questions import load_questions
from interp.model.load import load_model
from interp.model.lora import LoRAConfig, has_lora


def test_unrelated_finetuning_data_names_no_forget_entity(smoke_data):
    folder, _ = smoke_data
    names = forget_names(folder)
    questions = load_questions(folder / "forget_test.jsonl")
    assert {q.meta["entity"] for q in questions} <= set(names)
    assert {q.choices[q.answer] for q in questions} <= set(names)
    texts = unrelated_samples(folder, 100, seed=0)
    assert len(texts) == 100
    lowered = [t.lower() for t in texts]
    for name in names:
        # whole-word check, independent of the filter's regex
        hits = [t for t in lowered if f" {name.lower()} " in f" {t} ".replace(".", " ")
                .replace(",", " ")]
        assert not hits, (name, hits[:1])


def test_forget_samples_one_per_entity(smoke_data):
    folder, _ = smoke_data
    texts, entities = forget_samples(folder, 5, seed=0)
    assert len(texts) == 5 and len(entities) == 5
    assert all(any(e in t for e in entities) for t in texts)
    # training-split entities only: never one the validation or test questions ask about
    train = {q.meta["entity"] for q in load_questions(folder / "forget_train.jsonl")}
    asked = {q.meta["entity"] for name in ("forget_val", "forget_test")
             for q in load_questions(folder / f"{name}.jsonl")}
    assert entities <= train and not entities & asked


def test_finetune_attack_trains_scores_and_resumes(smoke_protected, tmp_path):
    folder, out, _ = smoke_protected
    model = load_model(out / "npo", device="cpu")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = FinetuneConfig(unrelated_n=(10,), forget_k=(5,), lr=5e-3, epochs=4, batch_size=4,
                         lora=LoRAConfig(rank=4, alpha=8.0))
    r = finetune_attack(model, folder, cfg, out=tmp_path / "ft", progress=False)
    assert set(r.cells) == {"unrelated-n10", "forget-k5"}
    for cell in r.cells.values():
        assert cell.steps == 4 * ((cell.size + 3) // 4)
        assert 0 <= cell.forget <= 1 and 0 <= cell.retain <= 1
    assert len(r.cells["forget-k5"].trained_entities) == 5
    # the budget curve: scored at evenly spaced steps, the last one the cell's own scores
    curve = r.cells["forget-k5"].curve
    assert [p["step"] for p in curve] == curve_marks(r.cells["forget-k5"].steps, cfg.curve_points)
    assert curve[-1]["forget"] == r.cells["forget-k5"].forget
    assert not has_lora(model)
    for n, p in model.named_parameters():  # adapters removed: the protected model is intact
        assert torch.equal(p, before[n]), n
    losses = __import__("json").loads((tmp_path / "ft" / "train" / "forget-k5" /
                                       "checkpoint.json").read_text())["losses"]
    assert losses[-1] < losses[0]
    assert all((tmp_path / "ft" / f).is_file() for f in ("finetune.html", "result.json"))
    # a rerun with one cell's result removed retrains only that cell and gets the same numbers
    (tmp_path / "ft" / "result.json").unlink()
    (tmp_path / "ft" / "cells" / "forget-k5.json").unlink()
    import shutil

    shutil.rmtree(tmp_path / "ft" / "train" / "forget-k5")
    again = finetune_attack(model, folder, cfg, out=tmp_path / "ft", progress=False)
    assert again.cells["forget-k5"].forget == r.cells["forget-k5"].forget
    assert again.cells["forget-k5"].final_loss == r.cells["forget-k5"].final_loss
    assert WIKI_PREFIX.startswith("Of course")


def test_learning_rate_grid_is_chosen_on_validation(smoke_protected, tmp_path):
    folder, out, _ = smoke_protected
    model = load_model(out / "rmu", device="cpu")
    # forget cells at their own batch size and epochs (the paper's batch 1): 2 x 5 steps
    common = dict(unrelated_n=(), forget_k=(5,), epochs=1, batch_size=4, curve_points=2,
                  forget_batch_size=1, forget_epochs=2, lora=LoRAConfig(rank=4, alpha=8.0))
    grid = (1e-5, 2e-2)
    r = finetune_attack(model, folder, FinetuneConfig(lrs=grid, **common),
                        out=tmp_path / "grid", progress=False)
    cell = r.cells["forget-k5"]
    assert cell.steps == 10
    tried = [__import__("json").loads((tmp_path / "grid" / "cells" / "forget-k5" /
                                       f"lr-{lr:g}.json").read_text()) for lr in grid]
    # the choice reads validation only: the best val forget (then val retain, then grid order)
    best = max(range(2), key=lambda i: (tried[i]["val_forget"], tried[i]["val_retain"], -i))
    assert cell.lr == grid[best]
    assert [g["lr"] for g in cell.lr_grid] == list(grid)
    assert all("forget" not in g and "retain" not in g for g in cell.lr_grid)  # no test numbers
    assert [g["val_forget"] for g in cell.lr_grid] == [t["val_forget"] for t in tried]
    # the reported numbers are a plain run at the chosen rate, computed again without the grid
    plain = finetune_attack(model, folder, FinetuneConfig(lr=grid[best], **common),
                            out=tmp_path / "plain", progress=False).cells["forget-k5"]
    assert (plain.forget, plain.retain, plain.val_forget) == (cell.forget, cell.retain,
                                                              cell.val_forget)
    assert plain.final_loss == cell.final_loss and plain.curve == cell.curve
    # a grid of one value trains at that value, not at `lr`
    one = finetune_attack(model, folder, FinetuneConfig(lrs=(grid[best],), **common),
                          progress=False).cells["forget-k5"]
    assert one.lr == grid[best] and one.final_loss == plain.final_loss
    rows = r.rows("rmu")
    assert rows[0].note == f"lr {grid[best]:g} of 2"
    assert not has_lora(model)


def test_choose_lr_reads_validation_only():
    """Made-up cells whose validation and test rankings disagree: the validation one wins."""
    from interp.attacks.finetune import FinetuneCell, choose_lr

    def cell(lr, val_forget, val_retain, forget):
        return FinetuneCell(kind="forget", size=5, forget=forget, retain=0.9, steps=3,
                            final_loss=1.0, seconds=1.0, config={}, val_forget=val_forget,
                            val_retain=val_retain, lr=lr)

    tried = [cell(1e-4, 0.30, 0.9, 0.80), cell(1e-3, 0.60, 0.9, 0.40), cell(1e-2, 0.60, 0.5, 0.9)]
    chosen = choose_lr(tried)
    assert chosen.lr == 1e-3 and chosen.forget == 0.40  # its own test number, not the best one
    assert chosen.seconds == 3.0 and len(chosen.lr_grid) == 3
    # a tie on both validation numbers goes to the earlier grid value
    tie = choose_lr([cell(1e-4, 0.5, 0.9, 0.2), cell(1e-3, 0.5, 0.9, 0.9)])
    assert tie.lr == 1e-4
