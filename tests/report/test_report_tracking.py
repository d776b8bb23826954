"""``medfuse train --track mlflow``: params, per-epoch metrics and the package artifact in a
local MLflow file store; a clear message when MLflow is not installed."""

from __future__ import annotations

import json
import sys

import pytest
import yaml

from medfuse.cli import main


def test_track_without_mlflow_says_how_to_install(tmp_path, tiny_spec, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow -> ImportError
    cfg = tmp_path / "spec.yaml"
    cfg.write_text(yaml.safe_dump(tiny_spec))
    rc = main(
        ["train", str(cfg), "--out", str(tmp_path / "p"), "--device", "cpu", "--track", "mlflow"]
    )
    assert rc == 2
    assert "pip install medfuse[tracking]" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()  # nothing trained


def test_track_mlflow_logs_params_epochs_and_package(tmp_path, tiny_spec, monkeypatch):
    mlflow = pytest.importorskip("mlflow", reason="mlflow not installed (pip install mlflow)")
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "spec.yaml"
    cfg.write_text(yaml.safe_dump(tiny_spec))
    store = tmp_path / "store"
    rc = main(
        [
            "train",
            str(cfg),
            "--out",
            str(tmp_path / "pkg"),
            "--device",
            "cpu",
            "--json",
            "--track",
            "mlflow",
            "--track-uri",
            str(store),
        ]
    )
    assert rc == 0
    client = mlflow.tracking.MlflowClient(tracking_uri=store.as_uri())
    exp = client.get_experiment_by_name("medfuse")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.epochs"] == "2"
    assert run.data.params["branches.signal.type"] == "lstm"
    history = client.get_metric_history(run.info.run_id, "val_loss")
    assert [h.step for h in history] == [1, 2]  # one point per epoch
    assert "final_test_auroc" in run.data.metrics
    arts = {a.path for a in client.list_artifacts(run.info.run_id, "package")}
    assert {"package/medfuse.json", "package/model.safetensors", "package/metrics.jsonl"} <= arts
    meta = json.loads((tmp_path / "pkg" / "medfuse.json").read_text())
    assert run.data.tags["package"].endswith("pkg") and meta["name"] == "tiny"
