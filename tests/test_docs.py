"""The README and docs/ against the code: every `--flag` they give a command
is in that command's help, every config key they name is in the shipped
configs, and every relative link leads to a file."""
import glob
import os
import re
import shlex
import subprocess
import sys

import pytest

from pretrain import config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = [os.path.join(REPO, "README.md")] + sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))
# Pages that other work adds; a link to one of them may not resolve yet.
PENDING_PAGES = {"docs/tpus_and_gpus.md", "docs/export.md", "docs/selftest.md"}
# Keys the pages name on purpose as examples of what the config check refuses.
REFUSED_EXAMPLES = {"train.bogus", "model.hiden_size"}
SECTIONS = ("model", "tokenizer", "data", "train", "smoke", "simbert")
FLAG = re.compile(r"^--(?:\[no\])?([A-Za-z][\w-]*)")
HELP_FLAG = re.compile(r"--(?:\[no\])?([A-Za-z][\w-]*)")
KEY = re.compile(r"^(?:%s)(?:\.\w+)+$" % "|".join(SECTIONS))
FILE_NAME = re.compile(r"\.(h5|json|txt|tsv|npy|png|py|md|ckpt|safetensors|onnx)$")  # model.h5 is a file, not a key


def code_of(text):
    """(fenced block bodies, inline code spans) of a markdown text."""
    fence = r"^[ \t]*```[^\n]*\n(.*?)^[ \t]*```"  # also indented, inside a list item
    blocks = re.findall(fence, text, flags=re.S | re.M)
    prose = re.sub(fence, "", text, flags=re.S | re.M)
    return blocks, re.findall(r"`([^`\n]+)`", prose.replace("\n", " "))


def commands(code):
    """Each shell command of a piece of code, as a list of words (comments,
    line continuations and `&&`/`;`/`|` chains split off)."""
    code = code.replace("\\\n", " ")
    out = []
    for line in code.split("\n"):
        line = re.sub(r"(^|\s)#.*", "", line)
        for part in re.split(r"&&|\|\||;|\|", line):
            try:
                words = shlex.split(part)
            except ValueError:  # an unbalanced quote: a fragment, not a command
                words = part.split()
            if words:
                out.append(words)
    return out


def command_of(words):
    """(the command's name, the words after it) or None: `python -m
    pretrain.X`, `python pretrain/run.py`, `python scripts/X.py`, `python -m
    pytest`, `bash scripts/X.sh`."""
    while words and "=" in words[0] and not words[0].startswith("-"):
        words = words[1:]  # VAR=value prefixes
    if len(words) >= 3 and words[0].startswith("python") and words[1] == "-m":
        return words[2], words[3:]
    if len(words) >= 2 and words[0].startswith("python") and words[1].endswith(".py"):
        return words[1], words[2:]
    if len(words) >= 2 and words[0] == "bash" and words[1].endswith(".sh"):
        return words[1], words[2:]
    return None


def flags_of(words):
    """The --flags among a command's words, up to a bare `--` (what follows it
    goes to another program)."""
    out = []
    for word in words:
        if word == "--":
            break
        match = FLAG.match(word.lstrip("["))  # [--flag] marks it optional
        if match:
            out.append(match.group(1).split("=")[0])
    return out


def known_flags(name):
    """The flags a command's help lists (for a shell script: the --words in its text)."""
    if name.endswith(".sh"):
        with open(os.path.join(REPO, name)) as f:
            return set(HELP_FLAG.findall(f.read()))
    argv = ([sys.executable, name] if name.endswith(".py") else [sys.executable, "-m", name])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))
    out = set()
    # absl lists every flag with --helpfull (a plain absl.app exits 1 after
    # help); argparse refuses it (exit 2) and lists its flags with --help.
    for ask in ("--helpfull", "--help"):
        done = subprocess.run(argv + [ask], cwd=REPO, env=env, capture_output=True, text=True)
        if done.returncode in (0, 1):
            out |= set(HELP_FLAG.findall(done.stdout + done.stderr))
            break
    assert out, "%s: neither --helpfull nor --help worked" % " ".join(argv)
    return out


def accepts(known, flag):
    """absl's boolean --noX is --X."""
    return flag in known or (flag.startswith("no") and flag[2:] in known)


def named(texts):
    """{command: {flag: page}}, {flag: page} for flags named without a
    command, {config key: page}, over (page, text) pairs."""
    by_command, bare, keys = {}, {}, {}
    for page, text in texts:
        blocks, spans = code_of(text)
        for code in blocks + spans:
            for words in commands(code):
                found = command_of(words)
                if found:
                    for flag in flags_of(found[1]):
                        by_command.setdefault(found[0], {}).setdefault(flag, page)
                elif words[0].startswith("--"):
                    for flag in flags_of(words):
                        bare.setdefault(flag, page)
                for i, word in enumerate(words[:-1]):
                    key = words[i + 1].split("=")[0]
                    if word == "--set" and not key.isupper():  # KEY=VALUE is a placeholder
                        keys.setdefault(key, page)
        for span in spans:
            for word in span.split():
                word = word.split("=")[0].rstrip(",.:")
                if KEY.match(word) and not FILE_NAME.search(word):
                    keys.setdefault(word, page)
    return by_command, bare, keys


def unknown_flags(by_command, bare, helps):
    """["page: command --flag", ...] for flags that no help lists; `helps`
    maps a command to its known flags."""
    bad = []
    for name, flags in by_command.items():
        for flag, page in flags.items():
            if not accepts(helps[name], flag):
                bad.append("%s: %s --%s" % (page, name, flag))
    everything = set().union(*helps.values()) if helps else set()
    for flag, page in bare.items():
        if not accepts(everything, flag):
            bad.append("%s: --%s (in no command's help)" % (page, flag))
    return sorted(bad)


def key_exists(cfgs, key):
    parts = key.split(".")
    if parts[0] == "smoke":  # a partial config over the others: its keys are theirs
        parts = parts[1:]
    for cfg in cfgs:
        node = cfg
        for part in parts:
            if isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            elif isinstance(node, dict) and part in node:
                node = node[part]
            else:
                break
        else:
            return True
    return False


def shipped_configs():
    return [config.load_config(path) for path in sorted(glob.glob(os.path.join(REPO, "configs", "*.json")))]


def _texts():
    out = []
    for path in PAGES:
        with open(path, encoding="utf-8") as f:
            out.append((os.path.relpath(path, REPO), f.read()))
    return out


@pytest.fixture(scope="module")
def found():
    return named(_texts())


@pytest.fixture(scope="module")
def helps(found):
    """Every named command's flags, the helps asked for in parallel."""
    by_command, _, _ = found
    names = set(by_command) | {"pretrain/run.py", "pretrain.preprocess", "pretrain.export",
                               "pretrain.finetune", "pretrain.simbert", "pretrain.gcs",
                               "pretrain.doctor", "pretrain.model_summary", "pytest"}
    names |= {os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "scripts", "*.sh"))}
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(4) as pool:
        return dict(zip(names, pool.map(known_flags, names)))


def test_pages_name_commands_flags_and_keys(found):
    by_command, bare, keys = found
    assert {"pretrain/run.py", "pretrain.preprocess", "pretrain.finetune", "pytest"} <= set(by_command)
    assert "smoke" in by_command["pretrain/run.py"] and "set" in by_command["pretrain/run.py"]
    assert {"train.batch_size", "train.keep_checkpoints", "data.masking"} <= set(keys)


def test_every_flag_is_in_its_commands_help(found, helps):
    by_command, bare, _ = found
    assert unknown_flags(by_command, bare, helps) == []


def test_a_made_up_flag_is_caught(helps):
    text = ("```bash\npython pretrain/run.py --config roberta_tiny.json --no_such_flag 3\n```\n"
            "and `python -m pretrain.finetune --set train.seed=1` and `--nor_this_one`\n")
    by_command, bare, keys = named([("made_up.md", text)])
    assert unknown_flags(by_command, bare, helps) == [
        "made_up.md: --nor_this_one (in no command's help)",
        "made_up.md: pretrain.finetune --set",  # finetune takes no --set
        "made_up.md: pretrain/run.py --no_such_flag"]
    assert not key_exists(shipped_configs(), "train.no_such_key")


def test_every_config_key_is_in_the_shipped_configs(found):
    _, _, keys = found
    cfgs = shipped_configs()
    missing = ["%s: %s" % (page, key) for key, page in sorted(keys.items())
               if key not in REFUSED_EXAMPLES and not key_exists(cfgs, key)]
    assert missing == []


def test_every_relative_link_resolves():
    broken = []
    for page, text in _texts():
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue  # a URL, or an anchor on the same page
            path = os.path.normpath(os.path.join(os.path.dirname(page), target.split("#")[0]))
            if not os.path.exists(os.path.join(REPO, path)) and path not in PENDING_PAGES:
                broken.append("%s: %s" % (page, target))
    assert broken == []
