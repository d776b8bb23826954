"""``pip install 'medfuse[serve]'`` serves an exported package without the training stack: the
app, built where torch, pandas, scipy and scikit-learn cannot be imported, predicts over HTTP."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BLOCKER_DIR = Path(__file__).resolve().parents[1]

SCRIPT = """
import json, sys
sys.path.insert(0, sys.argv[2])
from blocked_run import Refuse
names = {"torch", "pandas", "scipy", "sklearn", "safetensors", "matplotlib", "captum"}
sys.meta_path.insert(0, Refuse(names))
from fastapi.testclient import TestClient
from medfuse.serve.app import create_app
c = TestClient(create_app(sys.argv[1]))
x = [[[0.5] * 16] * 16]
r = c.post("/v1/predict", json={"instances": [{"image": {"array": x}}]})
print(json.dumps({"health": c.get("/health").status_code, "status": r.status_code,
                  "body": r.json(),
                  "loaded": sorted(m for m in sys.modules if m.split(".")[0] in names)}))
"""


def test_serve_predicts_without_the_training_stack(exported_package: Path) -> None:
    from medfuse.core.onnx import load

    r = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(exported_package), str(BLOCKER_DIR)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["loaded"] == [] and out["health"] == 200 and out["status"] == 200, out
    pred = out["body"]["predictions"][0]
    import numpy as np

    want = load(exported_package).predict_proba({"image": np.full((1, 1, 16, 16), 0.5)})
    assert abs(pred["probabilities"]["positive"] - float(want[0])) < 1e-6
    assert out["body"]["runtime"] == "onnx"
