"""How the package's modules import each other: no cycles, lazy imports only
for heavy dependencies (with a reason), and a preprocessing run whose worker
processes never load TensorFlow."""
import ast
import glob
import json
import os
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "pretrain")
SAMPLE = os.path.join(REPO, "data", "sample", "clue_small.txt")

# Third-party packages worth deferring to the function that needs them.
HEAVY = {"tensorflow", "torch", "transformers", "safetensors", "onnxruntime", "sklearn", "scipy",
         "jieba", "rjieba"}  # the segmenters: one of the two is used, rjieba is optional
TF_LIBS = {"tensorflow", "tf_keras", "bert4keras"}
# The floors, lowest first: a module imports only from its own floor and the
# ones below. The top-level modules are the shared seams (errors, fs, config,
# cli) and the commands' entries; a subpackage's `__main__` is an entry too.
SEAMS = {"__init__", "errors", "fs", "config", "cli"}
FLOORS = ["cloud", "runtime", "data", "models", "export", "training", "simbert", "finetune"]
# TensorFlow-free at import: preprocessing (and its spawned workers), config
# loading, the command plumbing, the data side of the tasks, and every
# command's entry (its --help and flag errors come before TensorFlow).
TF_FREE_FOLDERS = {"data"}
TF_FREE_MODULES = {"simbert.data", "finetune.data", "finetune.baselines", "run", "preprocess",
                   "doctor", "gcs", "model_summary", "export.__main__", "finetune.__main__",
                   "simbert.__main__", "selftest", "models.costs"}
# Standard library only at import: scripts/install.sh imports them before it has
# installed anything else.
STDLIB_ONLY = {"runtime.doctor", "runtime.hardware", "runtime.tpu_runtime"}


def _modules():
    """Dotted names under pretrain/: "cli", "data.corpus", "data" (its __init__)."""
    out = []
    for path in glob.glob(os.path.join(PACKAGE, "**", "*.py"), recursive=True):
        name = os.path.relpath(path, PACKAGE)[:-3].replace(os.sep, ".")
        if name.endswith(".__init__"):
            name = name[:-len(".__init__")]
        out.append(name)
    return sorted(out)


MODULES = set(_modules())
TF_FREE = ({m for m in MODULES if m.split(".")[0] in TF_FREE_FOLDERS} | TF_FREE_MODULES
           | (SEAMS - {"__init__"}))


def _path(module):
    parts = module.split(".")
    if module == "__init__" or module not in MODULES or os.path.isdir(os.path.join(PACKAGE, *parts)):
        return os.path.join(PACKAGE, *(parts if module != "__init__" else []), "__init__.py")
    return os.path.join(PACKAGE, *parts) + ".py"


def floor(module):
    """The floor's index: -1 for the seams, len(FLOORS) for the entries."""
    top = module.split(".")[0]
    if module in SEAMS:
        return -1
    if top in FLOORS and not module.endswith("__main__"):
        return FLOORS.index(top)
    return len(FLOORS)


class _Import(object):
    def __init__(self, module, line, targets, lazy, comment):
        self.module, self.line, self.lazy, self.comment = module, line, lazy, comment
        self.targets = targets  # [("pretrain", "data.records") or ("lib", "tensorflow")]


def _resolve(dotted):
    """The package module a dotted name under pretrain imports."""
    return dotted if dotted in MODULES else "__init__"


def _targets(node):
    """What an import statement loads: pretrain modules and top-level libraries."""
    out = []
    if isinstance(node, ast.Import):
        for alias in node.names:
            parts = alias.name.split(".")
            if parts[0] == "pretrain":
                out.append(("pretrain", _resolve(".".join(parts[1:])) if len(parts) > 1
                            else "__init__"))
            else:
                out.append(("lib", parts[0]))
        return out
    assert not node.level, "relative imports are not used in this package"
    parts = (node.module or "").split(".")
    if parts[0] != "pretrain":
        return [("lib", parts[0])]
    base = ".".join(parts[1:])
    for alias in node.names:
        name = (base + "." if base else "") + alias.name
        out.append(("pretrain", name if name in MODULES else _resolve(base) if base else "__init__"))
    return out


def _lazy_comment(lines, node):
    """The `# lazy: reason` on the import's line or on the comment lines just
    above it (one comment may cover a block of consecutive imports)."""
    i = node.lineno - 1
    if "# lazy:" in lines[i]:
        return lines[i].split("# lazy:", 1)[1].strip()
    i -= 1
    while i >= 0:
        text = lines[i].strip()
        if text.startswith("# lazy:"):
            return text.split("# lazy:", 1)[1].strip()
        if not (text.startswith(("import ", "from ", "#"))):
            return None
        i -= 1
    return None


def _imports(module):
    path = _path(module)
    with open(path, encoding="utf-8") as f:
        source = f.read()
    lines = source.split("\n")
    out = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                out.append(_Import(module, child.lineno, _targets(child), in_function,
                                   _lazy_comment(lines, child) if in_function else None))
            visit(child, in_function or isinstance(
                child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(ast.parse(source, path), False)
    return out


IMPORTS = {m: _imports(m) for m in MODULES}


def _graph(lazy_too=True):
    return {m: sorted({t for i in IMPORTS[m] if lazy_too or not i.lazy
                       for kind, t in i.targets if kind == "pretrain" and t != m})
            for m in MODULES}


def find_cycles(graph):
    """The cycles of the strongly connected components (Tarjan) of more than
    one module: the shortest cycle through each member, [a, b, ..., a]."""
    index, low, stack, on_stack, sccs = {}, {}, [], set(), []

    def connect(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1:
                sccs.append(sorted(scc))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    cycles = []
    for scc in sccs:
        for start in scc:  # the shortest cycle through each member, once each
            cycle = _cycle_in(graph, scc, start)[:-1]
            i = cycle.index(min(cycle))
            cycle = cycle[i:] + cycle[:i] + [cycle[i]]
            if cycle not in cycles:
                cycles.append(cycle)
    return cycles


def _cycle_in(graph, scc, start):
    # Shortest path back to `start`, inside the component.
    members = set(scc)
    paths, seen = [[start]], {start}
    while paths:
        path = paths.pop(0)
        for w in graph[path[-1]]:
            if w == start:
                return path + [start]
            if w in members and w not in seen:
                seen.add(w)
                paths.append(path + [w])
    return scc


def test_cycle_finder_names_a_cycle():
    graph = {"a": ["b"], "b": ["c"], "c": ["a", "d"], "d": []}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    graph = {"a": ["b", "c"], "b": ["a"], "c": ["a"]}
    assert sorted(find_cycles(graph)) == [["a", "b", "a"], ["a", "c", "a"]]
    assert find_cycles({"a": ["b"], "b": []}) == []


def test_no_import_cycles_counting_function_level_imports():
    cycles = find_cycles(_graph())
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def _loads_tf_at_import(module, seen=None):
    """True when importing pretrain.`module` imports a TF library (module-level
    imports, followed through the package)."""
    seen = set() if seen is None else seen
    if module in seen:
        return False
    seen.add(module)
    for imp in IMPORTS.get(module, ()):
        if imp.lazy:
            continue
        for kind, target in imp.targets:
            if kind == "lib" and target in TF_LIBS:
                return True
            if kind == "pretrain" and _loads_tf_at_import(target, seen):
                return True
    return False


def _allowed_lazily(module, kind, target):
    if module in STDLIB_ONLY:
        return True  # anything beyond the standard library waits, with its reason
    if kind == "lib":
        return target in HEAVY or (target == "bert4keras" and module in TF_FREE)
    # A TF-free module may defer a package module that loads TensorFlow.
    return module in TF_FREE and _loads_tf_at_import(target)


def test_function_level_imports_are_heavy_and_say_why():
    bad = []
    for module in sorted(MODULES):
        for imp in IMPORTS[module]:
            if not imp.lazy:
                continue
            where = "%s:%d" % (os.path.relpath(_path(module), REPO), imp.line)
            names = ", ".join("pretrain." + t if k == "pretrain" else t for k, t in imp.targets)
            if not all(_allowed_lazily(module, k, t) for k, t in imp.targets):
                bad.append("%s imports %s inside a function: not a heavy optional "
                           "dependency, import it at module level" % (where, names))
            elif not imp.comment:
                bad.append("%s imports %s inside a function without a `# lazy: <reason>` "
                           "comment" % (where, names))
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("module", sorted(STDLIB_ONLY))
def test_modules_install_sh_imports_need_only_the_standard_library(module):
    with open(_path(module), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    # what runs only as a command (`if __name__ == "__main__":`) is not imported
    commands = [n for n in tree.body if isinstance(n, ast.If) and "__main__" in ast.unparse(n.test)]
    start = min([n.lineno for n in commands] or [10 ** 9])
    for imp in IMPORTS[module]:
        assert imp.lazy or imp.line > start or all(k == "pretrain" and t in STDLIB_ONLY | {"errors", "__init__"}
                               or k == "lib" and t in sys.stdlib_module_names
                               for k, t in imp.targets), (module, imp.line, imp.targets)


def test_no_import_runs_up_a_floor():
    """Folders by pipeline stage, lowest first: data never imports models,
    models never import training, training names no task of its own."""
    up = ["%s:%d imports pretrain.%s" % (os.path.relpath(_path(m), REPO), i.line, t)
          for m in sorted(MODULES) for i in IMPORTS[m] for k, t in i.targets
          if k == "pretrain" and t != m and floor(t) > floor(m)
          and not (m == "__init__" and t in STDLIB_ONLY)]  # the package's start: stdlib only
    assert not up, "imports that run up a floor (%s):\n%s" % (" < ".join(FLOORS), "\n".join(up))


def test_every_module_is_on_a_floor_and_short():
    assert {m.split(".")[0] for m in MODULES if "." in m} <= set(FLOORS)
    long = []
    for m in sorted(MODULES):
        with open(_path(m), encoding="utf-8") as f:
            n = sum(1 for _ in f)
        if n > 450:
            long.append("%s: %d lines" % (os.path.relpath(_path(m), REPO), n))
    assert not long, "modules over 450 lines: " + ", ".join(long)


@pytest.mark.parametrize("module", sorted(TF_FREE))
def test_preprocessing_modules_do_not_import_tensorflow(module):
    assert not _loads_tf_at_import(module), (
        "importing pretrain.%s imports TensorFlow (module-level imports)" % module)


# A site hook for the child processes: every interpreter that starts records
# its pid, and the moment anything imports TensorFlow it records that too,
# with the importing stack (a marker file per pid, written at once, so a
# worker killed by Pool.terminate still leaves it).
_HOOK = textwrap.dedent('''
    import json, os, sys, traceback
    _dir = os.environ["IMPORT_PROBE_DIR"]

    def _started(how):
        with open(os.path.join(_dir, "start-%d.json" % os.getpid()), "w") as f:
            json.dump({"pid": os.getpid(), "ppid": os.getppid(), "argv": sys.argv,
                       "how": how}, f)

    _started("spawn" if "--multiprocessing-fork" in sys.argv else "exec")
    os.register_at_fork(after_in_child=lambda: _started("fork"))

    class _Probe(object):
        def find_spec(self, name, path=None, target=None):
            if name == "tensorflow":
                with open(os.path.join(_dir, "tf-%d.txt" % os.getpid()), "w") as f:
                    f.write("".join(traceback.format_stack()))
            return None

    sys.meta_path.insert(0, _Probe())
''')


def _processes_that_import_tf(tmp_path, code):
    probe = tmp_path / "probe"
    probe.mkdir()
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_HOOK)
    script = tmp_path / "main.py"
    script.write_text(code)
    env = dict(os.environ, IMPORT_PROBE_DIR=str(probe),
               PYTHONPATH=os.pathsep.join([str(hook), REPO]))
    result = subprocess.run([sys.executable, str(script)], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    starts = [json.loads(p.read_text()) for p in probe.glob("start-*.json")]
    main = next(s for s in starts if s["how"] == "exec" and s["argv"] == [str(script)])
    workers = [s for s in starts if s["ppid"] == main["pid"] and s["how"] != "exec"]
    tf = {int(p.name[3:-4]): p.read_text() for p in probe.glob("tf-*.txt")}
    return main, workers, tf


@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_preprocessing_workers_never_import_tensorflow(tmp_path, start):
    """A real 2-worker run of `preprocess.run` on real text: no process of it,
    driver or worker, imports TensorFlow. The pool forks from a driver without
    TensorFlow or other threads (the CLI) and spawns otherwise; a thread left
    running in the driver makes it spawn."""
    corpus = tmp_path / "docs.txt"
    with open(SAMPLE, encoding="utf-8") as f:
        corpus.write_text("".join(f.readlines()[:120]), encoding="utf-8")
    code = textwrap.dedent('''
        import threading
        from pretrain import config
        from pretrain.data import preprocess
        if __name__ == "__main__":
            if %r == "spawn":
                threading.Thread(target=threading.Event().wait, daemon=True).start()
            cfg = config.load_config("roberta_tiny")
            preprocess.run(cfg, %r, %r, seq_lens=[128], dupe_factor=1, workers=2,
                           shard_mb=0.03, progress=False)
    ''' % (start, str(corpus), str(tmp_path / "records")))
    main, workers, tf = _processes_that_import_tf(tmp_path, code)
    assert [w["how"] for w in workers] == [start, start], workers
    assert not tf, "TensorFlow imported by %s:\n%s" % (
        ", ".join("worker %d" % p if p != main["pid"] else "the driver" for p in tf),
        "\n".join(tf.values())[-3000:])


def test_the_probe_sees_a_worker_that_imports_tensorflow(tmp_path):
    """The probe of the test above, on spawned workers that do import TF."""
    code = textwrap.dedent('''
        import multiprocessing
        def work(_):
            import tensorflow  # noqa: F401
            return 0
        if __name__ == "__main__":
            with multiprocessing.get_context("spawn").Pool(2) as pool:
                pool.map(work, range(2), chunksize=1)
    ''')
    main, workers, tf = _processes_that_import_tf(tmp_path, code)
    assert len(workers) == 2
    assert tf and main["pid"] not in tf and set(tf) <= {w["pid"] for w in workers}


# TF 2.21.0 logs two INFO notices (oneDNN on, no CUDA driver) through absl
# before it reads TF_CPP_MIN_LOG_LEVEL, so no setting hides them; errors and
# warnings must not appear.
NOISE = ("failed call to cuInit", "cpu_feature_guard")
LEVELS = ("E0000", "W0000", "F0000")


@pytest.mark.skipif(any(os.path.exists(p) for p in ("/dev/nvidiactl", "/proc/driver/nvidia",
                                                    "/dev/dxg")),
                    reason="a machine with an NVIDIA device: TF's CUDA start is not noise")
def test_a_tensorflow_start_after_import_pretrain_is_quiet():
    """On this GPU-less machine: no CUDA probing error, no CPU instruction
    notice, no warning- or error-level line (the settings come from `import
    pretrain` alone)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLED_DEVICE_TYPES")}
    result = subprocess.run(
        [sys.executable, "-c", "import pretrain, tensorflow as tf; print(tf.constant(1) + 1)"],
        cwd=REPO, env=dict(env, PYTHONPATH=REPO), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "tf.Tensor(2" in result.stdout
    noisy = [line for line in result.stderr.splitlines()
             if any(n in line for n in NOISE) or line.startswith(LEVELS)]
    assert not noisy, "\n".join(noisy)
