"""How every command starts and ends: `python -m pretrain.NAME`.

A command module defines its flags in `define_flags()` and its work in
`main(argv)`, and ends with

    if __name__ == "__main__":
        cli.start(main, define_flags)

so that importing the module defines no flags (two commands may both have a
`--config`). An expected error (`PretrainError`) prints its message, which
says what to fix, and exits with its code (2) and no traceback; anything else
is a bug and keeps its traceback. `main` may return an exit status.
"""
import sys

from absl import app, flags

from pretrain.errors import PretrainError


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


def start(main, define_flags=None):
    if define_flags is not None:
        define_flags()
    app.run(guarded(main))
