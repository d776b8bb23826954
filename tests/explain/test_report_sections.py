"""The explanation sections of the clinical HTML report (through the report's provider hook)."""

from __future__ import annotations

import re


def test_report_has_contributions_and_examples(small_package) -> None:
    import medfuse.explain.report  # noqa: F401  (registers the two section providers)
    from medfuse.report.clinical import clinical_evaluation
    from medfuse.report.html import SECTION_PROVIDERS, build_report

    assert {"modality_contributions", "explained_examples"} <= set(SECTION_PROVIDERS)
    ev = clinical_evaluation(small_package, n_boot=20, curves=True, per_modality=False)
    html = build_report(ev)
    a = html.index('id="modality_contributions"')
    b = html.index('id="explained_examples"')
    assert html.index('id="per_modality"') < a < b < html.index('id="training"')
    contrib = html[a:b]
    assert "This section failed" not in html[a : html.index('id="training"')]
    # the generator's truth is known for synthetic data: the report says the ranking matches
    assert "image &gt; signal &gt; tabular" in contrib and "matches the model" in contrib
    assert contrib.count("data:image/png;base64,") == 1
    heads = re.findall(r"<h3>(.*?)</h3>", html[b : html.index('id="training"')])
    assert 2 <= len(heads) <= 4  # per true class: best correct case (+ worst error)
    assert any("true negative" in h for h in heads) and any("true positive" in h for h in heads)
    assert html[b:].count("data:image/png;base64,") >= 4 * len(heads)  # waterfall + 3 maps
