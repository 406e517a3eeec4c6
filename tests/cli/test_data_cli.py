"""``nova data check`` and ``nova data preview`` as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import run_nova
from data_fixtures import chat, write_jsonl


def _config(tmp_path: Path, base: str, data: Path, method: str = "sft") -> Path:
    path = tmp_path / "phase.yaml"
    path.write_text(f"name: demo\nmodel:\n  base: {base}\nmethod: {method}\ndata:\n  datasets:\n"
                    f"    - path: {data}\n  eval_split: 0\n  cache_dir: {tmp_path / 'cache'}\n", encoding="utf-8")
    return path


def test_check_bad_file_exits_non_zero_with_one_clear_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(chat("a", "b")) + "\n" + '{"messages": [', encoding="utf-8")
    result = run_nova("data", "check", str(path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: bad data") and f"{path}:2: the last line is cut off" \
        in lines[0]


def test_check_config_json_has_token_view_from_model_base(tmp_path: Path, tiny_model_dir: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", [chat("hi", "hello"), chat("hi", "hello"), chat("q", "a")])
    result = run_nova("data", "check", "--config", str(_config(tmp_path, str(tiny_model_dir), data)), "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    report = out["stages"][0]["report"]
    assert out["ok"] and report["read"] == 3 and report["deduplicated"] == 1
    assert report["tokens"]["trained_tokens"] > 0 and report["tokens"]["masked_tokens"] > 0
    assert not (tmp_path / "cache").exists()  # a check never writes the cache


def test_check_with_gguf_base_gives_the_record_level_report(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", [chat("hi", "hello")])
    result = run_nova("data", "check", "--config", str(_config(tmp_path, str(tmp_path / "m.gguf"), data)))
    assert result.returncode == 0, result.stderr
    assert "read 1, kept 1" in result.stdout
    assert "tokens: not computed (the base is a .gguf file not imported yet" in result.stdout


def test_preview_marks_trained_tokens(tmp_path: Path, tiny_model_dir: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", [chat("Who are you?", "I am Nova."), chat("x", "y")])
    result = run_nova("data", "preview", "--config", str(_config(tmp_path, str(tiny_model_dir), data)), "-n", "1")
    assert result.returncode == 0, result.stderr
    assert "<|im_start|>user\nWho are you?<|im_end|>" in result.stdout
    assert "<|im_start|>assistant\n[[I am Nova.<|im_end|>]]" in result.stdout
    assert "example 2" not in result.stdout


def test_check_needs_a_file_or_a_config() -> None:
    result = run_nova("data", "check")
    assert result.returncode == 2 and "give either a data FILE or --config FILE" in result.stderr
    assert "Traceback" not in result.stderr


def test_data_cli_imports_no_heavy_packages() -> None:
    code = ("import sys, nova.cli.main; heavy = [m for m in ('torch', 'transformers', 'datasets', 'pyarrow') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_check_maps_columns_from_the_command_line(tmp_path: Path) -> None:
    rows = [{"question": "Which is larger, 2 or 3?", "response_j": "3 is larger.", "response_k": "2."},
            {"question": "Capital of France?", "response_j": "Paris.", "response_k": "Lyon."}]
    path = write_jsonl(tmp_path / "stack_exchange.jsonl", rows)
    mapped = run_nova("data", "check", str(path), "--columns", "prompt=question,chosen=response_j,rejected=response_k",
                      "--json")
    assert mapped.returncode == 0, mapped.stderr
    report = json.loads(mapped.stdout)["stages"][0]["report"]
    assert report["method"] == "dpo" and report["read"] == 2 and report["kept"] == 2
    assert report["sources"][0]["formats"] == {"preference": 2}
    typo = run_nova("data", "check", str(path), "--columns", "promt=question")
    assert typo.returncode == 2 and typo.stderr.count("\n") == 1
    assert "'promt' is not a field nova reads (did you mean 'prompt'?)" in typo.stderr
    assert run_nova("data", "check", str(path)).returncode == 2  # unmapped: no known fields


def test_check_a_file_for_every_method_and_format(tmp_path: Path) -> None:
    """--method takes every method nova trains, --format every format, --columns every field (the tables in
    nova.methods and nova.data.formats); a file's own format picks the method when none is given."""
    from nova.data.formats import FORMAT_CHOICES
    from nova.methods import METHOD_NAMES

    help_text = " ".join(run_nova("data", "check", "--help").stdout.split())
    assert all(f in help_text for f in FORMAT_CHOICES) and all(m in help_text for m in METHOD_NAMES)
    rows = [{"question": "2 + 2?", "reply": "4", "verdict": True}, {"question": "2 + 3?", "reply": "6",
                                                                   "verdict": False}]
    path = write_jsonl(tmp_path / "feedback.jsonl", rows)
    for method in ("kto", None):  # a labelled reply is KTO's: the default method for the file too
        args = ["--method", method] if method else []
        result = run_nova("data", "check", str(path), *args, "--columns",
                          "prompt=question,completion=reply,label=verdict", "--json")
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)["stages"][0]["report"]
        assert report["method"] == "kto" and report["kept"] == 2 and report["sources"][0]["formats"] == {"unpaired": 2}
        assert report["desirable"] + report["undesirable"] == report["train_records"] > 0
    wrong = run_nova("data", "check", str(path), "--method", "orpo", "--columns",
                     "prompt=question,completion=reply,label=verdict")
    assert wrong.returncode == 2 and "'unpaired' records cannot train a orpo stage" in wrong.stderr
    assert "use method: kto" in wrong.stderr
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"q": "2 + 2?", "solution": 4}])
    grpo = run_nova("data", "check", str(prompts), "--method", "grpo", "--columns", "prompt=q,answer=solution",
                    "--json")
    assert grpo.returncode == 0, grpo.stderr
    assert json.loads(grpo.stdout)["stages"][0]["report"]["sources"][0]["formats"] == {"prompt": 1}
