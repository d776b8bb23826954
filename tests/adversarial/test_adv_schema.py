"""17.3a: medfuse.json has a schema, checked on every load; a missing or out-of-range decision
field is a PackageError naming it (never a KeyError, never a silent 0.5)."""

from __future__ import annotations

import math

import pytest

from medfuse.core.errors import PackageError
from medfuse.core.package import read_meta, typed_meta


@pytest.mark.parametrize("key", ["labels", "task", "spec", "preprocessing", "threshold"])
def test_a_deleted_required_field_is_refused_by_name(pkg, edit, cli, key) -> None:
    edit(pkg, lambda m: m.pop(key))
    with pytest.raises(PackageError, match=key):
        read_meta(pkg)
    code, out = cli("verify", str(pkg))
    assert code == PackageError.exit_code, out
    assert key in out and "Traceback" not in out and "KeyError" not in out


BAD = {
    "temperature -1": (lambda m: m["calibration"].update(temperature=-1.0), "temperature"),
    "temperature 0": (lambda m: m["calibration"].update(temperature=0.0), "temperature"),
    "temperature NaN": (lambda m: m["calibration"].update(temperature=math.nan), "temperature"),
    "threshold 1.5": (lambda m: m["threshold"].update(value=1.5), "threshold"),
    "threshold -0.1": (lambda m: m["threshold"].update(value=-0.1), "threshold"),
    "threshold text": (lambda m: m["threshold"].update(value="high"), "threshold"),
    "std 0": (lambda m: m["preprocessing"]["image"].update(std=[0.0]), "std"),
    "mean inf": (lambda m: m["preprocessing"]["image"].update(mean=[math.inf]), "mean"),
    "labels repeated": (
        lambda m: (m.update(labels=["a", "a"]), m["spec"]["task"].update(labels=["a", "a"])),
        "unique",
    ),
    "three labels, binary": (
        lambda m: (
            m.update(labels=["a", "b", "c"]),
            m["spec"]["task"].update(labels=["a", "b", "c"]),
        ),
        "2 labels",
    ),
    "labels differ from the spec": (lambda m: m.update(labels=["x", "y"]), "differ"),
    "unknown task": (lambda m: m.update(task="regression"), "task"),
    "spec that does not parse": (lambda m: m["spec"].update(fusion={"type": "nope"}), "spec"),
    "no statistics for a modality": (lambda m: m["preprocessing"].pop("signal"), "signal"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_out_of_range_fields_are_refused(pkg, edit, case) -> None:
    change, word = BAD[case]
    edit(pkg, change)
    with pytest.raises(PackageError, match=word):
        read_meta(pkg)


def test_a_package_written_before_calibration_existed_still_loads(pkg, edit) -> None:
    edit(pkg, lambda m: m.pop("calibration"))
    meta = read_meta(pkg)
    assert typed_meta(meta).calibration.temperature == 1.0
    assert meta["calibration"]["temperature"] == 1.0


def test_the_service_refuses_a_damaged_package_before_starting(pkg, edit) -> None:
    from medfuse.serve.service import Service

    edit(pkg, lambda m: m["calibration"].update(temperature=0.0))
    with pytest.raises(PackageError, match="temperature"):
        Service(pkg)


def test_serve_refuses_a_package_without_labels_before_binding(pkg, edit, capsys) -> None:
    from medfuse.cli import main

    edit(pkg, lambda m: m.pop("labels"))
    assert main(["serve", str(pkg), "--port", "8765"]) == PackageError.exit_code
    err = capsys.readouterr().err
    assert "labels" in err and "KeyError" not in err


def test_a_hand_edit_of_medfuse_json_is_refused(pkg, cli) -> None:
    """A threshold moved by hand in medfuse.json (checksums cover every other file) was used
    by predict, the runtime and serve: every case decided at 0.95 without a word; only
    ``medfuse verify`` noticed. The file's own digest refuses it on load; medfuse's writers
    (calibrate) re-seal it."""
    import json

    from medfuse.runtime import load as runtime_load
    from medfuse.serve.service import Service

    f = pkg / "medfuse.json"
    text = f.read_text()
    meta = json.loads(text)
    meta["threshold"]["value"] = 0.95
    f.write_text(json.dumps(meta, indent=2))
    for load in (read_meta, runtime_load, Service):
        with pytest.raises(PackageError, match="changed after medfuse wrote it"):
            load(pkg)
    code, out = cli("predict", str(pkg), "--input", str(pkg / "verification.npz"))
    assert code == PackageError.exit_code and "meta_sha256" in out
    f.write_text(text)  # put back: loads; calibrate's own change is sealed
    code, out = cli("calibrate", str(pkg), "--threshold-method", "fixed", "--value", "0.95")
    assert code == 0, out
    assert read_meta(pkg)["threshold"]["value"] == 0.95
