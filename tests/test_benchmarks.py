import json
import math
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).parents[1]


def test_fusion_scaling_small_prints_one_json_object():
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "fusion_scaling.py"), "--cases", "small", "--repeats", "1",
         "--omp-compare"],
        check=True, capture_output=True, text=True, timeout=600,
    ).stdout
    result = json.loads(out)
    for case in result["cases"]:
        assert case["found"] == case["true"]
        assert case["objective_monotone"] and case["converged"]
        assert case["omp_wait_policy"] is None  # the cases are the runs without the variable
        assert case["peak_rss_gb"] >= case["rss_before_gb"] > case["input_gb"] > 0
        assert 0 <= case["rule_seconds"] <= case["seconds"] and case["cpu_seconds"] > 0
    for pair in result["omp_comparison"]:
        assert pair["ratio"] == pytest.approx(pair["seconds_unset"] / pair["seconds_passive"])
    assert result["threads"] >= 1 and "load_average" in result


def test_lda_fusion_small_scores_every_row_over_seeds():
    pytest.importorskip("sklearn")  # the `bench` extra: the scikit-learn row
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "lda_fusion.py"), "--small", "--corpus", "brown",
         "--seeds", "0", "1", "--quiet"],
        check=True, capture_output=True, text=True, timeout=600,
    ).stdout
    result = json.loads(out)
    assert [run["seed"] for run in result["runs"]] == [0, 1]
    expected_rows = {"fused", "fused_parametric", "pooled", "pooled_matched", "sklearn_pooled", "naive_average",
                     "local_best", "local_mean"}
    for run in result["runs"]:
        rows = run["rows"]
        assert set(rows) == expected_rows
        assert rows["pooled_matched"]["num_topics"] == rows["fused"]["num_topics"] == len(run["support"])
        assert rows["sklearn_pooled"]["num_topics"] == rows["pooled"]["num_topics"] == run["topics_per_client"]
        for row in rows.values():
            assert math.isfinite(row["heldout_ll_per_word"]) and row["heldout_ll_per_word"] < 0
            assert row["fit_cpu_s"] > 0 and row["score_cpu_s"] >= 0
        assert run["score_cpu_s_all_rows"] >= sum(rows[k]["score_cpu_s"] for k in rows if k != "local_mean")
    for row, summary in result["summary"]["brown"].items():
        values = [run["rows"][row]["heldout_ll_per_word"] for run in result["runs"]]
        assert summary["heldout_ll_per_word"]["mean"] == pytest.approx(sum(values) / 2)
        assert summary["heldout_ll_per_word"]["min"] == min(values)
    assert result["environment"]["threads"] == 1
