import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).parents[1]


def test_fusion_scaling_small_prints_one_json_object():
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "fusion_scaling.py"), "--cases", "small", "--repeats", "1"],
        check=True, capture_output=True, text=True, timeout=300,
    ).stdout
    result = json.loads(out)
    for case in result["cases"]:
        assert case["found"] == case["true"]
        assert case["objective_monotone"]
    assert result["threads"] >= 1 and "load_average" in result
