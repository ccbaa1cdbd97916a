"""What a run directory holds besides checkpoints: the run's identity, its
record, and the export after each phase.

- `run_config.json`: the sections that define the run; a resume with other
  ones would mix two runs in one directory (`check_output_dir`).
- `run.json`: how the latest start of the run was made: the resolved config
  (with its `overrides`), the command line and its flag values, and the
  package versions (`run_record`); each export's pretrain_export.json holds
  the same record.
- `export/PHASE/`: the phase's final weights in bert4keras's layout, reloaded
  by bert4keras in a fresh process and compared (`export_phase`).
"""
import datetime
import importlib.metadata
import json
import os
import sys

from absl import flags, logging

from pretrain import fs
from pretrain.export import writer as export
from pretrain.export import check as export_check
from pretrain.errors import TrainingError

# The sections of a config that define what a run directory holds; a resume
# with any of them changed would silently mix two runs.
_RUN_IDENTITY = ("name", "model", "tokenizer", "data")
# The train section is saved too. On resume these keys may change freely (they
# only say when to log, save and eval); these fix which batch every step reads,
# so no resume may change them; any other change needs --allow_train_changes.
_TRAIN_FREE = ("log_every", "save_every", "eval_every", "eval_steps", "keep_checkpoints")
_TRAIN_FIXED = ("batch_size", "grad_accum_steps", "seed")
_PHASE_FIXED = ("name", "seq_len")
RUN_RECORD = "run.json"
PACKAGES = ("tensorflow", "tf_keras", "bert4keras", "numpy", "pretrain")


def check_output_dir(cfg, output_dir, allow_train_changes=False, write=True):
    """Refuse to mix two configs' runs in one directory, or to resume with a
    train section that moves the data position or the schedule unasked.
    `write`: record this run's config there (the chief's job)."""
    # so does the task's own config section (null when the config has none)
    identity = {k: cfg.get(k) for k in _RUN_IDENTITY + (cfg["data"]["task"],)}
    identity["smoke"] = cfg.get("smoke", False)
    path = os.path.join(output_dir, "run_config.json")
    if fs.exists(path):
        with fs.open(path) as f:
            previous = json.load(f)
        if {k: previous.get(k) for k in identity} != identity:
            diff = sorted(k for k in identity if previous.get(k) != identity[k])
            raise TrainingError(
                "%s holds a run of config %r (smoke=%s) that differs from %r (smoke=%s) in "
                "%s. Choose another --output, or delete that directory to start over."
                % (output_dir, previous.get("name"), previous.get("smoke"), cfg["name"],
                   identity["smoke"], ", ".join(diff)))
        if previous.get("train") == cfg["train"]:
            return
        if "train" not in previous:
            logging.warning("%s has no train section (an older run dir): saving this one; "
                            "later resumes are checked against it", path)
        else:
            _check_train_changes(previous["train"], cfg["train"], output_dir,
                                 allow_train_changes)
    if not write:
        return
    fs.makedirs(output_dir)
    with fs.open(path, "w") as f:
        json.dump(dict(identity, train=cfg["train"]), f, indent=2, ensure_ascii=False)


def _train_changes(old, new):
    """[(key, old value, new value, kind)] with kind "free", "flag" or "fixed"."""
    def kind(key, fixed):
        return "free" if key in _TRAIN_FREE else "fixed" if key in fixed else "flag"

    out = [(k, old.get(k), new.get(k), kind(k, _TRAIN_FIXED))
           for k in sorted((set(old) | set(new)) - {"phases"}) if old.get(k) != new.get(k)]
    old_phases, new_phases = old.get("phases") or [], new["phases"]
    for i in range(max(len(old_phases), len(new_phases))):
        if i >= len(new_phases):
            out.append(("phases[%d]" % i, old_phases[i]["name"], "removed", "fixed"))
        elif i >= len(old_phases):
            out.append(("phases[%d]" % i, "none", new_phases[i]["name"], "flag"))
        else:
            a, b = old_phases[i], new_phases[i]
            out.extend(("phases[%d].%s" % (i, k), a.get(k), b.get(k), kind(k, _PHASE_FIXED))
                       for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))
    return out


def _check_train_changes(old, new, output_dir, allow):
    changes = _train_changes(old, new)

    def listing(kinds):
        return ", ".join("%s: %s -> %s" % (k, a, b) for k, a, b, c in changes if c in kinds)

    if any(c == "fixed" for _, _, _, c in changes):
        raise TrainingError(
            "%s holds a run with another train section: %s. These decide which batch each "
            "step reads, so a resume cannot change them: restore them, or choose another "
            "--output to start a new run." % (output_dir, listing(("fixed",))))
    if not allow and any(c == "flag" for _, _, _, c in changes):
        raise TrainingError(
            "%s holds a run with another train section: %s. These change the schedule of the "
            "run being resumed: restore them, or pass --allow_train_changes to resume with "
            "them." % (output_dir, listing(("flag",))))
    logging.warning("%s: resuming with train changes %s", output_dir, listing(("free", "flag")))


def _version(package):
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def run_record(cfg):
    """The config, command line, flag values and package versions of this process."""
    values = None
    if flags.FLAGS.is_parsed():  # the flags of the module run as the program
        values = {f.name: f.value for f in flags.FLAGS.get_flags_for_module(sys.argv[0])}
    return {"config": cfg, "argv": list(sys.argv), "flags": values,
            "versions": {p: _version(p) for p in PACKAGES},
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds")}


def write_run_record(output_dir, record):
    fs.makedirs(output_dir)
    with fs.open(os.path.join(output_dir, RUN_RECORD), "w") as f:
        json.dump(record, f, indent=2, ensure_ascii=False, default=str)


def export_phase(cfg, bundle, output_dir, phase, latest, record=None):
    """Export `phase`'s final weights (checkpoint `latest`) to OUTPUT/export/PHASE,
    unless a checked export of that checkpoint is there (a half-written or older
    one is redone); `record` goes into its pretrain_export.json. Returns its dir."""
    out = os.path.join(output_dir, "export", phase["name"])
    source = {"checkpoint": os.path.basename(latest) if latest else None,
              "phase": phase["name"], "phase_steps": phase["steps"]}
    info = export.read_info(out)
    if (info and info.get("source") == source
            and info.get("reload_max_abs_diff") is not None):
        return out
    try:
        _, diff = export.publish_export(cfg, bundle, out, source,
                                        extra_info={"run": record} if record else None)
    except export_check.ExportCheckError as e:
        raise TrainingError(str(e)) from None
    logging.info("exported %s from %s (bert4keras reload max |diff| = %.2e)", out,
                 source["checkpoint"], diff)
    return out
