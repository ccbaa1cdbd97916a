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


def check_output_dir(cfg, output_dir, allow_train_changes=False, write=True, records=None,
                     allow_data_change=False):
    """Refuse to mix two configs' runs in one directory, or to resume with a
    train section that moves the data position or the schedule unasked, or
    on other data. `records`: {"path", "fingerprint"} of the data this start
    reads (`Task.fingerprint`); None skips that check. `write`: record this
    run's config (and `records`) there, the chief's job once every check of
    the start has passed."""
    # so does the task's own config section (null when the config has none)
    identity = {k: cfg.get(k) for k in _RUN_IDENTITY + (cfg["data"]["task"],)}
    identity["smoke"] = cfg.get("smoke", False)
    path = os.path.join(output_dir, "run_config.json")
    previous = {}
    if fs.exists(path):
        with fs.open(path) as f:
            previous = json.load(f)
        if {k: previous.get(k) for k in identity} != identity:
            diff = [k for k in sorted(identity) if previous.get(k) != identity[k]]
            raise TrainingError(
                "%s holds a run of config %r (smoke=%s) that differs from %r (smoke=%s) in "
                "%s. Choose another --output, or delete that directory to start over."
                % (output_dir, previous.get("name"), previous.get("smoke"), cfg["name"],
                   identity["smoke"], _changes(diff, previous, identity)))
        if previous.get("train") != cfg["train"]:
            if "train" not in previous:
                logging.warning("%s has no train section (an older run dir): saving this "
                                "one; later resumes are checked against it", path)
            else:
                _check_train_changes(previous["train"], cfg["train"], output_dir,
                                     allow_train_changes)
    if records is not None:
        records = _check_records(previous.get("records"), records, output_dir,
                                 allow_data_change)
    elif "records" in previous:
        records = previous["records"]
    if not write:
        return
    saved = dict(identity, train=cfg["train"])
    if records:
        saved["records"] = records
    fs.makedirs(output_dir)
    with fs.open(path, "w") as f:
        json.dump(saved, f, indent=2, ensure_ascii=False)


def _changes(sections, old, new):
    """"data.masked_lm_prob: 0.15 -> 0.2, name: a -> b" for the changed sections."""
    out = []
    for section in sections:
        a, b = old.get(section), new.get(section)
        if isinstance(a, dict) and isinstance(b, dict):
            out += ["%s.%s: %s -> %s" % (section, k, a.get(k, "unset"), b.get(k, "unset"))
                    for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        else:
            out.append("%s: %s -> %s" % (section, a, b))
    return ", ".join(out)


def _check_records(old, new, output_dir, allow):
    """The records to record: `new`, after refusing other data unless `allow`.
    Lengths only one side has are not compared (a later phase's records may
    be made later)."""
    if not old or not new["fingerprint"]:
        return new if new["fingerprint"] else old
    a, b = old["fingerprint"], new["fingerprint"]
    shared = sorted(set(a) & set(b)) if isinstance(a, dict) and isinstance(b, dict) else None
    differ = ([k for k in shared if a[k] != b[k]] if shared is not None else a != b)
    if differ and not allow:
        raise TrainingError(
            "%s holds a run trained on the records in %s (%s), but --data %s holds other "
            "records (%s): a resume on them would not continue the same run. Give the run's "
            "own --data, choose another --output, or pass --allow_data_change to resume on "
            "these records." % (output_dir, old["path"], _digests(a, differ), new["path"],
                                _digests(b, differ)))
    if differ:
        logging.warning("%s: resuming on other records (%s instead of %s), as "
                        "--allow_data_change asks", output_dir, new["path"], old["path"])
    merged = dict(a, **b) if isinstance(a, dict) and isinstance(b, dict) else b
    return {"path": new["path"], "fingerprint": merged}


def _digests(fingerprint, keys):
    if isinstance(keys, list) and isinstance(fingerprint, dict):
        return ", ".join("%s %s" % (k, fingerprint[k]) for k in keys)
    return "fingerprint %s" % json.dumps(fingerprint, sort_keys=True)


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
