"""How long each command's `--help` takes, and whether it imports TensorFlow.

    python benchmarks/cli_help.py [--root DIR] [--repeat 3]

Runs `python -m COMMAND --help` for every command of the package under
`--root` (default: this checkout), `--repeat` times each, with that root first
on PYTHONPATH, and prints the median wall time and whether the process
imported TensorFlow (`sys.modules`, read at exit by a site hook).
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from pretrain import cli  # noqa: E402

# Written at exit: did anything import TensorFlow?
_HOOK = """
import atexit, os, sys
atexit.register(lambda: open(os.environ["HELP_PROBE"], "w").write(
    str("tensorflow" in sys.modules)))
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default=ROOT, help="checkout whose commands to time")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "sitecustomize.py"), "w") as f:
            f.write(_HOOK)
        probe = os.path.join(tmp, "probe")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([tmp, args.root]), HELP_PROBE=probe)
        print("%-26s %8s  %s" % ("command", "--help s", "imports TensorFlow"))
        for module in cli.commands(args.root):
            times = []
            for _ in range(args.repeat):
                start = time.perf_counter()
                done = subprocess.run([sys.executable, "-m", module, "--help"], cwd=args.root,
                                      env=env, capture_output=True, text=True)
                times.append(time.perf_counter() - start)
            with open(probe) as f:
                tf = f.read()
            print("%-26s %8.2f  %s%s" % (module, statistics.median(times), tf,
                                         "" if done.returncode == 0 else
                                         "  (exit %d)" % done.returncode))


if __name__ == "__main__":
    main()
