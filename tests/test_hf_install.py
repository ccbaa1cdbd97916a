"""The documented install of the HF and ONNX extras pulls no CUDA wheels on a
CPU machine (pip --dry-run resolution: nothing is installed)."""
import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _install_lines():
    with open(os.path.join(ROOT, "docs", "export.md"), encoding="utf-8") as f:
        section = f.read().split("## Installing the HF and ONNX extras without CUDA\n", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line.split() for line in block.strip().splitlines()]


def test_documented_lines_pin_the_cpu_torch_that_install_sh_pins():
    torch_line, extras_line = _install_lines()
    with open(os.path.join(ROOT, "scripts", "install.sh")) as f:
        pinned = re.search(r'reqs\+=\("(torch==[^"]+)"\)', f.read()).group(1)
    assert torch_line == ["pip", "install", pinned, "--index-url",
                          "https://download.pytorch.org/whl/cpu"]
    assert extras_line == ["pip", "install", "-e", '".[hf,onnx]"']


def test_extras_line_keeps_the_cpu_torch_and_adds_no_cuda_wheel(tmp_path):
    import torch
    if "+cpu" not in torch.__version__:
        pytest.skip("needs torch's CPU build installed (the first documented line), got %s"
                    % torch.__version__)
    _, extras_line = _install_lines()
    report = str(tmp_path / "report.json")
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--quiet",
                           "--report", report, "-e", extras_line[-1].strip('"')],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(report) as f:
        names = {i["metadata"]["name"].lower().replace("_", "-")
                 for i in json.load(f)["install"]}
    assert not {n for n in names if n.startswith("nvidia-")}, sorted(names)
    assert "torch" not in names and "triton" not in names, sorted(names)
    assert "pretrain" in names
