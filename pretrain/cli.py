"""How every command starts and ends: `python -m pretrain.NAME`.

A command module defines its flags in `define_flags()` and its work in
`main(argv)`, and ends with

    if __name__ == "__main__":
        cli.start(main, define_flags)

so that importing the module defines no flags (two commands may both have a
`--config`). An expected error (`PretrainError`) prints its message, which
says what to fix, and exits with its code (2) and no traceback; anything else
is a bug and keeps its traceback. `main` may return an exit status. Asking
for help (`--help`, `--helpfull`) is a success: exit 0 (absl exits 1).
"""
import sys

from absl import app, flags

from pretrain.errors import PretrainError

# A flag defined here (--set) belongs to the command that asks for it: it is
# listed in that command's --help.
flags.disclaim_key_flags()


def define_set_flag():
    flags.DEFINE_multi_string(
        "set", [], "Override one config value, validated like the file: --set "
        "train.batch_size=64 --set train.phases.0.steps=500 (repeatable; a value is "
        "JSON, or a plain string).")


def guarded(main):
    """`main` with expected errors turned into their message and exit code."""
    def run(argv):
        try:
            status = main(argv)
        except PretrainError as e:
            print("error: %s" % e, file=sys.stderr)
            sys.exit(e.exit_code)
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
    """absl's parser, but the usage a user asked for ends with status 0."""
    argv = bare_tpu_is_local(argv)
    try:
        return app.parse_flags_with_usage(argv)
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
