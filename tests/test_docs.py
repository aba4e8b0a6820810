"""The documentation is checked like code: every relative link and anchor of README.md, docs/*.md and
examples/README.md resolves, and every command in them is parsed by the command-line tool it names.

A command is run up to the point where its tool has parsed the arguments (`argparse`/`HfArgumentParser`), then
stopped: a misspelled flag, a bad choice or a missing recipe file fails here, no training starts. `make` targets
run with `make -n`, shell scripts with their `--dry_run`, whose printed command is checked in turn. Flags named alone
in the text (`--eval_steps`) must belong to one of the project's tools. Python code blocks run as written, unless
their first line marks them as an excerpt (`# Excerpt: <what it needs>`); excerpts must compile.
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import importlib
import io
import re
import runpy
import shlex
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "examples" / "README.md"]
PYTHON = {"python", "python3", ".venv/bin/python"}
# Commands of other tools (installers, git, the Hub CLI, img2dataset, SLURM): their paths are checked, their flags
# are not.
NOT_OURS = {"pip", "git", "cd", "hf", "huggingface-cli", "export", "tensorboard", "nvidia-smi", "img2dataset",
            "sbatch"}  # fmt: skip
NOT_OUR_MODULES = {"pip", "spacy"}
# Scripts that pass the arguments after `--` on to another tool.
PASS_THROUGH = {"examples/train_on_own_data.py": "training/train.py"}
ACCELERATE_LAUNCH = "accelerate.commands.launch:main"
# Top-level folders of the repository: a command's argument under one of them must exist.
REPOSITORY_DIRS = {"benchmarks", "docs", "examples", "model_cards", "modeling_concept_clip", "requirements",
                   "tests", "training"}  # fmt: skip

FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$", re.MULTILINE)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
INLINE_CODE = re.compile(r"`([^`\n]+)`")
FLAG = re.compile(r"(?<![\w-])--[A-Za-z][\w-]*")
EXCERPT = re.compile(r"^# Excerpt: \S")


# ----------------------------------------------------------------------------------------------------- Markdown


def split_markdown(text: str) -> tuple[str, list[tuple[str, str]]]:
    """The text without its fenced code blocks, and the blocks as `(language, code)`."""
    blocks = [(match.group(1).lower(), match.group(2)) for match in FENCE.finditer(text)]
    return FENCE.sub("", text), blocks


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: the text without markup, lowercase, punctuation dropped, spaces to '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"[^\w\- ]", "", text.replace("`", "").strip().lower())
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    prose, _ = split_markdown(text)
    found: set[str] = set(re.findall(r"<a\s+(?:name|id)=\"([^\"]+)\"", prose))
    seen: dict[str, int] = {}
    for match in HEADING.finditer(prose):
        anchor = github_anchor(match.group(2))
        found.add(f"{anchor}-{seen[anchor]}" if anchor in seen else anchor)
        seen[anchor] = seen.get(anchor, 0) + 1
    return found


def link_problems(page: Path) -> list[str]:
    prose, _ = split_markdown(page.read_text(encoding="utf-8"))
    problems = []
    for target in LINK.findall(prose):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            problems.append(f"{page.name}: link to {target}: {resolved} does not exist")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved.read_text(encoding="utf-8")):
            problems.append(f"{page.name}: link to {target}: no heading with anchor #{anchor} in {resolved.name}")
    return problems


# ----------------------------------------------------------------------------------------------------- commands


def split_commands(code: str) -> list[list[str]]:
    """The commands of a shell snippet as argument lists (continuations joined, comments, `...` and environment
    variables dropped, `&&`/`;`/`|` splitting one line into several; a `<placeholder>` is one argument)."""
    commands = []
    for line in code.replace("\\\n", " ").splitlines():
        line = re.sub(r"<[^<>]*>", lambda match: match.group(0).replace(" ", "_"), line.strip().removeprefix("$ "))
        command: list[str] = []
        for token in [*shlex.split(line, comments=True), ";"]:
            if token in ("&&", "||", ";", "|"):
                while command and re.fullmatch(r"[A-Za-z_]\w*=.*|nice|-n|\d+|time", command[0]):
                    command.pop(0)  # VAR=value, nice -n 10, time
                if command:
                    commands.append(command)
                command = []
            elif token != "...":
                command.append(token)
    return commands


class _Parsed(Exception):
    """Raised once a tool has parsed its arguments: the command is valid, nothing more is run."""


@contextlib.contextmanager
def parsing_only(parsers: list[argparse.ArgumentParser]) -> Iterator[None]:
    """Make every `ArgumentParser` stop the program once its arguments are parsed (and fail on unknown or
    abbreviated ones)."""
    original = argparse.ArgumentParser.parse_known_args

    def parse_known_args(self, *args, **kwargs):
        parsers.append(self)
        self.allow_abbrev = False  # the documentation spells flags out: `--max_train_step` is a typo there
        namespace, extras = original(self, *args, **kwargs)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        raise _Parsed(namespace)

    argparse.ArgumentParser.parse_known_args = parse_known_args
    try:
        yield
    finally:
        argparse.ArgumentParser.parse_known_args = original


def console_scripts() -> dict[str, str]:
    """`{name: "module:function"}` of setup.cfg's console scripts."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    lines = config["options.entry_points"]["console_scripts"].strip().splitlines()
    return dict(tuple(part.strip() for part in line.split("=", 1)) for line in lines)


def run_until_parsed(program: list[str], args: list[str]) -> tuple[argparse.Namespace | None, list, str]:
    """Run `program` (`["-m", module]`, `[script.py]` or `["entry", "module:function"]`) with `args` until its
    parser is done. Returns the parsed namespace (`None` after `--help`), the parsers it built, and its stderr."""
    parsers: list[argparse.ArgumentParser] = []
    stderr, old_argv, old_path = io.StringIO(), sys.argv, list(sys.path)
    try:
        with (
            parsing_only(parsers),
            warnings.catch_warnings(),
            contextlib.redirect_stderr(stderr),
            contextlib.redirect_stdout(io.StringIO()),
        ):
            warnings.filterwarnings("ignore", "'.*' found in sys.modules", RuntimeWarning)  # re-running a module
            if program[0] == "-m":
                sys.argv = [program[1], *args]
                runpy.run_module(program[1], run_name="__main__", alter_sys=True)
            elif program[0] == "entry":
                module, function = program[1].split(":")
                sys.argv = [module, *args]
                getattr(importlib.import_module(module), function)()
            else:
                sys.argv = [program[0], *args]
                sys.path.insert(0, str((ROOT / program[0]).parent))  # as `python script.py` does
                runpy.run_path(str(ROOT / program[0]), run_name="__main__")
    except _Parsed as parsed:
        return parsed.args[0], parsers, stderr.getvalue()
    except SystemExit as exit_:
        if exit_.code not in (0, None) or not parsers:
            raise AssertionError(f"exit status {exit_.code}: {stderr.getvalue().strip()[-600:]}") from None
        return None, parsers, stderr.getvalue()  # --help
    finally:
        sys.argv, sys.path[:] = old_argv, old_path
    raise AssertionError("the program ended without parsing command-line arguments")


def check_command(argv: list[str]) -> None:
    """Raise `AssertionError` naming what is wrong with the command `argv`."""
    program, args = argv[0], argv[1:]
    for value in (arg.split("=", 1)[-1] for arg in argv):
        if value.split("/")[0] in REPOSITORY_DIRS and not re.search(r"[<*{]", value):
            assert (ROOT / value).exists(), f"{value} does not exist"
    if program in NOT_OURS or (program in PYTHON and args[:1] == ["-m"] and args[1] in NOT_OUR_MODULES):
        return
    if program == "make":
        result = subprocess.run(["make", "-n", *args], cwd=ROOT, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
    elif program == "bash":
        result = subprocess.run(["bash", *args, "--dry_run"], cwd=ROOT, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        check_command(shlex.split(result.stdout))
    elif program == "accelerate":
        assert args[:1] == ["launch"], "only `accelerate launch` is checked"
        if len(args) > 1:  # more than the tool's name
            launch, _, _ = run_until_parsed(["entry", ACCELERATE_LAUNCH], args[1:])
            script = ["-m", launch.training_script] if launch.module else [launch.training_script]  # -m package
            check_command(["python", *script, *launch.training_script_args])
    elif program in console_scripts():
        run_until_parsed(["entry", console_scripts()[program]], args)
    elif program in PYTHON:
        assert args, "python without a script"
        script, rest = (args[:2], args[2:]) if args[0] == "-m" else (args[:1], args[1:])
        if script[0] in PASS_THROUGH and "--" in rest:
            check_command(["python", PASS_THROUGH[script[0]], *rest[rest.index("--") + 1 :]])
            rest = rest[: rest.index("--")]
        run_until_parsed(script, rest)
    else:
        raise AssertionError(f"unknown command {program!r}: teach tests/test_docs.py how to check it")


def known_flags() -> set[str]:
    """Every option string of the project's command-line tools (console scripts, training, examples, benchmarks)
    and of `accelerate launch`."""
    programs = [["entry", target] for target in [*console_scripts().values(), ACCELERATE_LAUNCH]]
    programs += [["-m", "training.train"], ["-m", "training.demo"]]
    programs += [
        [str(path.relative_to(ROOT))]
        for folder in ("examples", "benchmarks")
        for path in sorted((ROOT / folder).glob("*.py"))
    ]
    flags: set[str] = set()
    for program in programs:
        try:
            _, parsers, _ = run_until_parsed(program, ["--help"])
        except AssertionError:  # a module without a command line (example_utils)
            continue
        for parser in parsers:
            flags.update(parser._option_string_actions)
    return flags


def command_problems(page: Path, flags: set[str]) -> list[str]:
    prose, blocks = split_markdown(page.read_text(encoding="utf-8"))
    commands = [command for language, code in blocks if language in ("bash", "sh", "shell", "console")
                for command in split_commands(code)]  # fmt: skip
    problems = []
    programs = {"make", "bash", "accelerate", *PYTHON, *NOT_OURS, *console_scripts()}
    for span in INLINE_CODE.findall(prose):
        words = [word for word in span.split() if not re.fullmatch(r"[A-Za-z_]\w*=\S*", word)]  # VAR=value
        if len(words) > 1 and words[0] in programs:
            commands += split_commands(span)
        else:
            problems += [f"{page.name}: `{span}`: no tool has a flag {flag}" for flag in FLAG.findall(span)
                         if flag not in flags]  # fmt: skip
    for command in commands:
        try:
            check_command(command)
        except AssertionError as error:
            problems.append(f"{page.name}: `{shlex.join(command)}`: {error}")
    for language, code in blocks:
        if language == "python":
            try:
                compile(code, f"{page.name} code block", "exec")
            except SyntaxError as error:
                problems.append(f"{page.name}: Python block does not compile: {error}")
    return problems


# ----------------------------------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def flags() -> set[str]:
    return known_flags()


@pytest.fixture(autouse=True)
def in_repository(monkeypatch):
    monkeypatch.chdir(ROOT)  # the documented commands run from the repository root


@pytest.mark.parametrize("page", PAGES, ids=lambda path: str(path.relative_to(ROOT)))
def test_links_and_anchors_resolve(page):
    assert link_problems(page) == []


@pytest.mark.parametrize("page", PAGES, ids=lambda path: str(path.relative_to(ROOT)))
def test_commands_parse_with_their_tools(page, flags):
    assert command_problems(page, flags) == []


def test_python_blocks_run_unless_marked_as_excerpts(tmp_path, monkeypatch):
    """Every Python block runs as written (offline, in a folder where `outputs/c2lip` holds a trained checkpoint, as
    after the training commands of the documentation), or says in its first line that it is an excerpt and what it
    needs."""
    from modeling_concept_clip.testing_utils import save_tiny_checkpoint

    save_tiny_checkpoint(tmp_path / "outputs" / "c2lip", "clip")
    monkeypatch.chdir(tmp_path)
    ran = []
    for page in PAGES:
        for language, code in split_markdown(page.read_text(encoding="utf-8"))[1]:
            if language == "python" and not EXCERPT.match(code):
                exec(compile(code, f"{page.name} code block", "exec"), {"__name__": "__main__"})
                ran.append(page.name)
    assert "hub_and_model_cards.md" in ran
    assert (tmp_path / "outputs" / "c2lip" / "README.md").is_file()  # what the block writes


def test_readme_stays_short():
    assert len((ROOT / "README.md").read_bytes()) <= 10_500


def test_the_checks_fail_on_a_dead_link_a_wrong_anchor_and_a_misspelled_flag(tmp_path, flags):
    (tmp_path / "other.md").write_text("# Other page\n\n## Setup `x`, fast\n")
    page = tmp_path / "page.md"
    good = (
        "# Title\n\nSee [other](other.md#setup-x-fast), [here](#title) and `--eval_steps`.\n\n```bash\n"
        "python -m training.train --learning_rate 1e-5 --config training/configs/clip_b32_cc3m.yaml \\\n"
        "    --output_dir outputs/x   # a comment\n"
        "concept-clip-push outputs/x --repo_id <you>/name --dry_run && make -n demo\n"
        "python examples/zero_shot.py --labels a b\n```\n"
    )
    page.write_text(good)
    assert link_problems(page) == [] and command_problems(page, flags) == []

    page.write_text(good.replace("other.md#", "missing.md#").replace("#title", "#titel"))
    assert [problem.split(":")[1] for problem in link_problems(page)] == [" link to missing.md#setup-x-fast",
                                                                          " link to #titel"]  # fmt: skip
    for old, new, expected in [
        ("--learning_rate", "--learnig_rate", "unrecognized arguments: --learnig_rate"),
        ("--labels", "--labls", "unrecognized arguments: --labls"),
        ("clip_b32_cc3m.yaml", "clip_b32.yaml", "training/configs/clip_b32.yaml does not exist"),
        ("`--eval_steps`", "`--eval_step`", "no tool has a flag --eval_step"),
        ("--repo_id <you>/name ", "", "the following arguments are required: --repo_id"),
        ("make -n demo", "make -n dmeo", "No rule to make target"),
    ]:
        page.write_text(good.replace(old, new, 1))
        problems = command_problems(page, flags)
        assert len(problems) == 1 and expected in problems[0], problems
