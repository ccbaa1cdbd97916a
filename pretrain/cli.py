"""How every command starts and ends: `python -m pretrain.NAME`.

A command module defines its flags in `define_flags()` and its work in
`main(argv)`, and ends with

    if __name__ == "__main__":
        cli.start(main, define_flags)

so that importing the module defines no flags (two commands may both have a
`--config`). An expected error (`PretrainError`) prints its message, which
says what to fix, and exits with its code (2) and no traceback; anything else
is a bug and keeps its traceback. A command line absl cannot parse (an
unknown flag, a missing required one, a bad value) and `app.UsageError` are
expected errors too: one `error: ...` line, exit 2, no usage dump. `main` may
return an exit status. Asking for help (`--help`, `--helpfull`) is a success:
exit 0 (absl exits 1).

`--help` and flag errors stay fast: an entry defines its flags without
importing TensorFlow, and its `main` imports the implementation.
"""
import ast
import glob
import os
import sys

from absl import app, flags

from pretrain import fs
from pretrain.config import note_renamed
from pretrain.errors import PretrainError, UsageError

# A flag defined here (--set) belongs to the command that asks for it: it is
# listed in that command's --help.
flags.disclaim_key_flags()


def define_set_flag():
    flags.DEFINE_multi_string(
        "set", [], "Override one config value, validated like the file: --set "
        "train.batch_size=64 --set train.phases.0.steps=500 (repeatable; a value is "
        "JSON, or a plain string).")


def fail(message, exit_code=UsageError.exit_code):
    """The end of a command that stops on an expected error: one line, no traceback."""
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    print("error: %s" % " ".join(lines), file=sys.stderr)
    sys.exit(exit_code)


def check_input(flag, path, suffixes=("",), what="file"):
    """A missing input fails before TensorFlow loads: raise UsageError unless
    `path` plus one of `suffixes` exists (gs:// paths are checked where read)."""
    if path and not fs.is_remote(path) and not any(fs.exists(path + s) for s in suffixes):
        raise UsageError("%s %s: no such %s" % (flag, path, what))


def renamed_flag(old, new):
    """The value of --`new`, or of its deprecated name --`old` (with a note)."""
    if not flags.FLAGS[old].present:
        return flags.FLAGS[new].value
    if flags.FLAGS[new].present:
        raise UsageError("--%s and --%s are the same setting; give --%s only" % (old, new, new))
    note_renamed("--" + old, "--" + new)
    return flags.FLAGS[old].value


def define_device_flags(flag_values=None):
    """The flags of a command that trains: which TPU, its runtime, XLA, and
    whether a machine whose accelerator TensorFlow cannot use may train on
    its CPU."""
    fv = {"flag_values": flags.FLAGS if flag_values is None else flag_values}
    flags.DEFINE_string("tpu", None, "TPU to use: bare --tpu (or 'local') on a Colab/Cloud TPU "
                        "VM, a TPU name, or grpc://IP:8470. Omit for GPU/CPU.", **fv)
    flags.DEFINE_enum("tpu_runtime", None, ["auto", "pjrt", "legacy"], "TPU runtime TensorFlow "
                      "loads: auto (default, or $PRETRAIN_TPU_RUNTIME) picks PJRT on TPU v5e, "
                      "v5p, v6e and legacy on v2, v3, v4. Read before TensorFlow loads.", **fv)
    flags.DEFINE_bool("xla", None, "Compile the train step with XLA; default: yes on GPUs "
                      "(except compute capability 12.0+, which TF 2.21's XLA cannot target) and "
                      "on a CPU whose build has XLA. TPUs always compile.", **fv)
    flags.DEFINE_integer("tpu_timeout", 300, "Seconds to wait for the TPU before failing.", **fv)
    flags.DEFINE_bool("allow_cpu", False, "Train on the CPU even though this machine has a TPU "
                      "or GPU that TensorFlow cannot use (by default the run stops and says "
                      "why).", **fv)


def guarded(main):
    """`main` with expected errors turned into their message and exit code."""
    def run(argv):
        try:
            status = main(argv)
        except PretrainError as e:
            fail(e, e.exit_code)
        except app.UsageError as e:  # absl's own, raised by a library or a script
            fail(e)
        sys.exit(status or 0)
    return run


_HELP = {"-?", "-help", "--help", "-helpshort", "--helpshort", "-helpfull", "--helpfull"}


def bare_tpu_is_local(argv):
    """argv with a bare `--tpu` (last, or before another flag) as `--tpu=local`:
    the TPU of this VM, as on Colab and Cloud TPU VMs. absl string flags need a value."""
    out = list(argv[:1])
    for i, arg in enumerate(argv[1:], 1):
        if arg == "--":
            return out + argv[i:]
        after = argv[i + 1] if i + 1 < len(argv) else "-"
        out.append(arg + "=local" if arg in ("--tpu", "-tpu") and after.startswith("-")
                   else arg)
    return out


def parse_flags(argv):
    """absl's parser, but a bad command line is one `error:` line and status 2,
    and the usage a user asked for ends with status 0."""
    argv = bare_tpu_is_local(argv)
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        fail("%s (see --help)" % e)
    except SystemExit as e:
        args = argv[1:argv.index("--")] if "--" in argv else argv[1:]
        if e.code == 1 and _HELP & set(args):
            sys.exit(0)
        raise


def start(main, define_flags=None):
    """Define the command's flags, parse them, run `main`, exit with its status."""
    if define_flags is not None:
        define_flags()
        # The flags belong to the module `python -m` ran (a thin entry, maybe):
        # its --help lists them.
        flags.adopt_module_key_flags(sys.modules[define_flags.__module__])
    # --help opens with the docstring of the module that holds `main`.
    sys.modules["__main__"].__doc__ = sys.modules[main.__module__].__doc__
    app.run(guarded(main), flags_parser=parse_flags)


def commands(root=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))):
    """Every command of the package under `root`, as `python -m` names it: the
    modules whose `if __name__ == "__main__":` block calls `cli.start`."""
    found = []
    for path in sorted(glob.glob(os.path.join(root, "pretrain", "**", "*.py"), recursive=True)):
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        if any(isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)
               and "cli.start(" in ast.unparse(node) for node in tree.body):
            module = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
            found.append(module[:-len(".__main__")] if module.endswith(".__main__") else module)
    return found
