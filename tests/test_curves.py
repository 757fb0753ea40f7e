"""Training-curve figures from a run's log."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from coinlib.curves import read_log, save_training_curves


def _log(contrastive: bool) -> pd.DataFrame:
    nan = math.nan
    return pd.DataFrame({"step": [1, 2], "loss": [3.0, 2.5], "loss_ent": [2.0, 1.8],
                         "loss_ctr": [0.5, 0.4] if contrastive else [nan, nan],
                         "weight": [4.0, 4.5] if contrastive else [nan, nan],
                         "cos_pos": [0.9, 0.95] if contrastive else [nan, nan],
                         "cos_neg": [0.8, 0.7] if contrastive else [nan, nan]})


@pytest.mark.parametrize("contrastive", [True, False])
def test_curves_saved_with_their_data(tmp_path, contrastive):
    run = tmp_path / "run"
    run.mkdir()
    _log(contrastive).to_csv(run / "train_log.csv", index=False)
    paths = save_training_curves(run, tmp_path / "fig", "t")
    assert sorted(p.suffix for p in paths) == [".csv", ".pdf", ".png"]
    assert pd.read_csv(tmp_path / "fig" / "training_curves.csv")["loss_ent"].tolist() == [2.0, 1.8]


def test_missing_log_names_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="train the run first"):
        read_log(tmp_path)
