import pathlib
import re


def test_readme_usage_example_runs():
    text = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    block = re.search(r"## Usage\s+```python\n(.*?)```", text, re.S).group(1)
    assert len(block.strip().splitlines()) <= 30
    namespace = {}
    exec(compile(block, "README.md", "exec"), namespace)
    fused = namespace["fused"]
    assert fused.num_global == 4
    assert namespace["global_guide"].locs.locs.shape == (4, 2)
