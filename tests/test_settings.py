"""Settings that must not change silently between a run and its resumption, and options that
must reach the setting they name."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from interp.errors import InterpError


def test_a_run_folder_refuses_other_scoring_settings(tmp_path):
    from interp.pipelines.reproduce import PRESETS, same_run_settings

    same_run_settings(tmp_path, PRESETS["smoke"])
    same_run_settings(tmp_path, PRESETS["smoke"])  # the same: fine
    with pytest.raises(InterpError, match="letter_ids='in-context'"):
        same_run_settings(tmp_path, replace(PRESETS["smoke"], letter_ids="official"))


def _fit(tmp_path, fingerprint: str, steps: int = 3):
    from interp.training import TrainConfig, train

    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.zeros(3))
    target = torch.tensor([1.0, -2.0, 0.5])
    cfg = TrainConfig(steps=steps, lr=0.1, progress=False, fingerprint=fingerprint)
    return train([w], lambda b: ((w - target) ** 2).sum(), lambda s, m: None, cfg,
                 run_dir=tmp_path, param_names=["w"])


def test_a_checkpoint_from_other_settings_is_not_resumed(tmp_path):
    first = _fit(tmp_path, '{"max_len": 64}')
    again = _fit(tmp_path, '{"max_len": 64}')
    assert again.resumed_from == 3 and again.losses == first.losses  # finished: read back
    other = _fit(tmp_path, '{"max_len": 32}')
    assert other.resumed_from == 0 and len(other.losses) == 3  # started over


def test_bad_training_settings_are_one_line_errors():
    from interp.training import TrainConfig

    with pytest.raises(InterpError, match="grad_accum"):
        TrainConfig(grad_accum=0)
    with pytest.raises(InterpError, match="warmup_steps"):
        TrainConfig(warmup_steps=-1)


def test_directions_flags_reach_the_settings_they_name():
    """The official recipe's knobs have their own names, so --skip-first and --set batch_size
    still mean the toolkit recipe's settings."""
    from interp.attacks import directions
    from interp.options import apply_settings, options

    flags = {o.flag for o in options(directions.Config)}
    assert {"--skip-first", "--batch-size", "--forget-skip", "--outlier-zscore"} <= flags
    cfg = apply_settings(directions.Config(), ["batch_size=64", "skip_first=2"])
    assert cfg.batch_size == 64 and cfg.directions.skip_first == 2
    assert cfg.official.pass_batch == 8 and cfg.official.forget_skip == 40


def test_prune_snip_data_has_its_own_flag():
    from interp.attacks import prune
    from interp.options import options

    flags = {o.flag for o in options(prune.Config)}
    assert "--snip-data" in flags and "--data" not in flags


def test_the_audit_refuses_a_folder_computed_otherwise(smoke_audit, tmp_path):
    """Another budget, model or question set, or a finished cell of another config: one line
    naming the difference, before anything computes; the same settings read the audit back."""
    import json
    import shutil

    from interp.pipelines.audit import audit

    run, folder, forget, retain, result = smoke_audit
    same = dict(budget="quick", progress=False)
    assert audit(result["original"], result["unlearned"], forget, retain, folder, **same) == \
        result
    with pytest.raises(InterpError, match=r"budget='quick' \(now 'full'\)"):
        audit(result["original"], result["unlearned"], forget, retain, folder, budget="full",
              progress=False)
    with pytest.raises(InterpError, match=r"unlearned='.*npo' \(now '.*rmu'\)"):
        audit(result["original"], str(run / "models" / "rmu"), forget, retain, folder, **same)
    with pytest.raises(InterpError, match="questions="):
        audit(result["original"], result["unlearned"], forget[:-1], retain, folder, **same)
    copy = tmp_path / "audit"
    shutil.copytree(folder, copy)
    (copy / "audit.json").unlink()
    cell = copy / "cells" / "lens.json"
    saved = json.loads(cell.read_text())
    saved["result"]["config"]["limit"] = 7
    cell.write_text(json.dumps(saved))
    with pytest.raises(InterpError, match=r"the lens cell in .* limit=7 \(now 100\)"):
        audit(result["original"], result["unlearned"], forget, retain, copy, **same)
    (copy / "settings.json").unlink()
    (copy / "audit.json").write_text("{}")
    with pytest.raises(InterpError, match="without its settings"):
        audit(result["original"], result["unlearned"], forget, retain, copy, **same)
