"""GRPO's rewards: the built-ins, checked on plain strings, and the user's own functions.

Every reward is called as TRL 1.x calls one, ``f(prompts, completions, completion_ids=..., **fields)``,
where ``fields`` are the record's own fields (``answer``, ...), one list entry per completion, and
returns one float (or None: "not scored") per completion. A completion is a string, or for chat
prompts ``[{"role": "assistant", "content": ...}]``; the built-ins read either.

A user reward is a function in a Python file the config names. That file is the user's code and
runs as trusted code (like a training script): nova imports it before the model loads, so a
missing file or function is one config error line, not a traceback 40 minutes in. An exception
inside it during training stops the stage with a message; the last checkpoint stays for a resume.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nova.errors import ConfigError, NovaError, Problem, printable
from nova.methods.grpo import GRPOConfig, RewardSpec

RewardFn = Callable[..., list[float | None]]
_THINK = re.compile(r"^\s*<think>(?P<thought>.*?)</think>(?P<answer>.*)$", re.DOTALL)
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?")
_EDGES = " \t\r\n.,;:!?\"'`*()[]"


def completion_text(completion: Any) -> str:
    """The text of one completion: a string, or the content of a chat completion's last message."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
    if isinstance(completion, list | tuple) and completion:
        return completion_text(completion[-1])
    return ""


def final_answer(text: str) -> str:
    """The answer part of a completion: after a closing </think>, inside \\boxed{} when there is one."""
    if "</think>" in text:
        text = text.rsplit("</think>", 1)[1]
    boxed = _BOXED.findall(text)
    return boxed[-1] if boxed else text


def parse_number(text: str) -> float | None:
    """The value of a number written as text ("1,000", "42.0", "-3", "1e3"); None when it is not one."""
    if not _NUMBER.fullmatch(text.strip()):
        return None
    return float(text.strip().replace(",", ""))


def _last_number(text: str) -> float | None:
    found = _NUMBER.findall(text)
    return float(found[-1].replace(",", "")) if found else None


def _normal(text: str) -> str:
    return " ".join(text.strip(_EDGES).casefold().split())


def exact_match_score(completion: str, reference: Any) -> float:
    """1.0 when the completion's final answer is the reference: a numeric reference against the answer's
    last number, as numbers (42 = 42.0 = "42"); any other against the answer's text, case, spacing and
    surrounding punctuation ignored."""
    answer = final_answer(completion)
    expected = reference if isinstance(reference, int | float) and not isinstance(reference, bool) else (
        parse_number(str(reference)))
    if expected is not None:
        got = _last_number(answer)
        return 1.0 if got is not None and math.isclose(got, float(expected), rel_tol=1e-9, abs_tol=1e-9) else 0.0
    return 1.0 if _normal(answer) == _normal(str(reference)) else 0.0


def regex_score(completion: str, pattern: re.Pattern[str]) -> float:
    """1.0 when the pattern is found in the completion (re.search)."""
    return 1.0 if pattern.search(completion) else 0.0


def think_format_score(completion: str) -> float:
    """1.0 for one <think>...</think> block with some reasoning in it, then a non-empty answer."""
    found = _THINK.match(completion)
    if found is None or not found["thought"].strip() or not found["answer"].strip():
        return 0.0
    return 0.0 if "<think>" in found["answer"] or "</think>" in found["answer"] else 1.0


def length_score(tokens: int, target: int) -> float:
    """1.0 at ``target`` tokens, falling linearly to 0 at 0 and at 2 x target (a length penalty)."""
    return max(0.0, 1.0 - abs(tokens - target) / target)


def _builtin(spec: RewardSpec) -> RewardFn:
    """The scoring function of a built-in reward, in TRL's calling convention."""
    if spec.name == "exact_match":
        field = spec.reads[0]
        return lambda prompts, completions, **kw: [
            exact_match_score(completion_text(c), ref) for c, ref in zip(completions, kw[field], strict=True)]
    if spec.name == "regex":
        pattern = re.compile(spec.pattern or "")
        return lambda prompts, completions, **kw: [regex_score(completion_text(c), pattern) for c in completions]
    if spec.name == "think_format":
        return lambda prompts, completions, **kw: [think_format_score(completion_text(c)) for c in completions]
    target = spec.target or 1
    return lambda prompts, completions, completion_ids=None, **kw: [
        length_score(len(ids), target) for ids in (completion_ids or [[]] * len(completions))]


def _reward_file(spec: RewardSpec, key: str) -> tuple[Path, Callable[[str, str], ConfigError]]:
    """The user's reward file, which must exist, and the error naming it (shared by import and dry run)."""
    assert spec.file is not None and spec.function is not None
    path = Path(spec.file).expanduser()
    shown = printable(spec.file)

    def fail(message: str, hint: str) -> ConfigError:
        return ConfigError("invalid config", [Problem(key, f"reward file {shown}: {message}", hint)])

    if not path.is_file():
        raise fail("not found", "paths are relative to the directory nova runs in")
    return path, fail


def load_user_function(spec: RewardSpec, key: str) -> Callable[..., Any]:
    """The function ``spec.function`` of the user's file ``spec.file``, imported as trusted code; anything
    missing is a ConfigError naming the file and what to fix."""
    path, fail = _reward_file(spec, key)
    name = "nova_user_reward_" + hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    loader = importlib.util.spec_from_file_location(name, path)
    if loader is None or loader.loader is None:
        raise fail("cannot be imported as Python", "give a .py file")
    module = importlib.util.module_from_spec(loader)
    sys.modules[name] = module  # dataclasses and pickling look modules up by name
    try:
        loader.loader.exec_module(module)
    except Exception as exc:  # the user's code: any error, reported as one line
        line = f" (line {exc.lineno})" if isinstance(exc, SyntaxError) and exc.lineno else ""
        raise fail(f"importing it raised {type(exc).__name__}{line}: {printable(str(exc))[:200]}",
                   "fix the file; it is imported as Python before training") from None
    function = getattr(module, spec.function, None)
    if function is None:
        names = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise fail(f"has no function '{spec.function}'", f"functions in it: {', '.join(names) or 'none'}")
    if not callable(function):
        raise fail(f"'{spec.function}' is a {type(function).__name__}, not a function",
                   "name a function defined with def")
    return function  # type: ignore[no-any-return]


def _checked(function: Callable[..., Any], label: str, file: str) -> RewardFn:
    """A user function whose failures and malformed results stop training with a message naming it."""
    def call(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float | None]:
        try:
            out = function(prompts=prompts, completions=completions, **kwargs)
        except Exception as exc:  # the user's code
            raise NovaError(f"reward function {label} ({printable(file)}) raised {type(exc).__name__}: "
                            f"{printable(str(exc))[:200]}", hint="fix the function, then resume the run") from None
        return _as_rewards(out, len(completions), f"reward function {label} ({printable(file)})")

    call.__name__ = label
    return call


def _as_rewards(out: Any, n: int, who: str) -> list[float | None]:
    if not isinstance(out, list | tuple) or len(out) != n:
        size = len(out) if isinstance(out, list | tuple) else type(out).__name__
        raise NovaError(f"{who} returned {size} for {n} completions",
                        hint="return a list with one float (or None) per completion")
    bad = [v for v in out if v is not None and (isinstance(v, bool) or not isinstance(v, int | float))]
    if bad:
        raise NovaError(f"{who} returned {type(bad[0]).__name__} values", hint="return floats (or None: not scored)")
    return [None if v is None else float(v) for v in out]


def check_rewards(stage: Any, keys: str = "", *, run_code: bool = True) -> None:
    """GRPO's check before the model loads (its spec's ``before_loading``): every reward file imports and
    names its function. ``keys``: where the stage's keys are in the config (``stages[1].``, or the phase).
    ``run_code=False`` (a dry run, which runs no user code): each file is read and parsed, never imported."""
    if run_code:
        build_rewards(stage.grpo, f"{keys}grpo.rewards")
        return
    for i, spec in enumerate(stage.grpo.rewards):
        if spec.file is not None:
            check_user_function_statically(spec, f"{keys}grpo.rewards[{i}]")


MAX_REWARD_FILE = 10 * 1024 * 1024  # a reward file is a page of Python; more is not parsed


def check_user_function_statically(spec: RewardSpec, key: str) -> None:
    """The reward file exists, parses as Python and binds ``spec.function`` at its top level (a def, an
    assignment or an import): read with ``ast``, nothing of it runs."""
    import ast

    path, fail = _reward_file(spec, key)
    if path.stat().st_size > MAX_REWARD_FILE:
        raise fail(f"more than {MAX_REWARD_FILE} bytes", "a reward file is a short Python file")
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError) as exc:
        line = f" (line {exc.lineno})" if isinstance(exc, SyntaxError) and exc.lineno else ""
        raise fail(f"is not valid Python{line}: {printable(str(exc))[:200]}", "fix the file") from None
    bound = _top_level_names(tree)
    if spec.function not in bound:
        defs = sorted(n for n, kind in bound.items() if kind == "def" and not n.startswith("_"))
        raise fail(f"has no function '{spec.function}'", f"functions in it: {', '.join(defs) or 'none'}")


def _top_level_names(tree: Any) -> dict[str, str]:
    """Names a module binds at its top level: ``def`` for functions, ``name`` for anything else."""
    import ast

    out: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            out[node.name] = "def"
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            out.update({t.id: "name" for t in targets if isinstance(t, ast.Name)})
        elif isinstance(node, ast.Import | ast.ImportFrom):
            out.update({(a.asname or a.name).split(".")[0]: "name" for a in node.names})
        elif isinstance(node, ast.ClassDef):
            out[node.name] = "name"
    return out


def build_rewards(grpo: GRPOConfig, key: str = "grpo.rewards") -> tuple[list[RewardFn], list[float]]:
    """The stage's reward functions (named as they are logged: rewards/<name>/mean) and their weights.
    User files are imported here, so call this before the model loads."""
    functions: list[RewardFn] = []
    used: list[str] = []
    for i, spec in enumerate(grpo.rewards):
        label = _unique(spec.label, used)
        if spec.file is not None:
            fn = _checked(load_user_function(spec, f"{key}[{i}]"), label, spec.file)
        else:
            fn = _builtin(spec)
            fn.__name__ = label
        functions.append(fn)
    return functions, [spec.weight for spec in grpo.rewards]


def _unique(label: str, used: list[str]) -> str:
    """regex, regex_2, ...: two rewards of one kind are logged apart."""
    name, k = label, 1
    while name in used:
        k += 1
        name = f"{label}_{k}"
    used.append(name)
    return name
