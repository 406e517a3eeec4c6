"""Rebuild the derived files in data/ from the byte copies under ../shared/datasets.

Run from the repository root: ``.venv/bin/python data/derive.py``. The output is
deterministic (no randomness, sorted by source order), so a re-run reproduces the files
byte for byte. See data/README.md for sources and licenses.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
OUT = Path(__file__).resolve().parent
ROLES = {"human": "user", "gpt": "assistant", "system": "system"}
CJK = re.compile(r"[\u3000-\u9fff\uff00-\uffef]")


def _write(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{path.name}: {len(rows)} records", file=sys.stderr)


def _fill(text: str) -> str:
    """identity.json carries {{name}} / {{author}} placeholders meant to be filled per project."""
    return text.replace("{{name}}", "Nova").replace("{{author}}", "the nova team")


def identity_rows() -> list[dict]:
    """English identity chats (the Chinese ones are left out: this is the English set)."""
    rows = []
    for rec in json.loads((SHARED / "llamafactory" / "identity.json").read_text(encoding="utf-8")):
        if CJK.search(rec["instruction"] + rec["output"]):
            continue
        rows.append({"messages": [{"role": "user", "content": _fill(rec["instruction"])},
                                  {"role": "assistant", "content": _fill(rec["output"])}]})
    return rows


def preference_rows() -> list[dict]:
    """dpo_en_demo.json (ShareGPT form) converted to TRL's conversational preference form."""
    rows = []
    for rec in json.loads((SHARED / "llamafactory" / "dpo_en_demo.json").read_text(encoding="utf-8")):
        prompt = [{"role": ROLES[m["from"]], "content": m["value"]} for m in rec["conversations"]]
        rows.append({"prompt": prompt,
                     "chosen": [{"role": "assistant", "content": rec["chosen"]["value"]}],
                     "rejected": [{"role": "assistant", "content": rec["rejected"]["value"]}]})
    return rows


def chosen_as_sft(pref: list[dict], max_answer: int = 1500, max_total: int = 3000) -> list[dict]:
    """Preferred answers (with their whole conversation) as SFT chats: the usual SFT-then-DPO
    recipe. Long ones are left out so the set trains quickly at max_length 1024."""
    rows = []
    for rec in pref:
        answer = rec["chosen"][0]["content"]
        total = sum(len(m["content"]) for m in rec["prompt"]) + len(answer)
        if len(answer) <= max_answer and total <= max_total:
            rows.append({"messages": [*rec["prompt"], {"role": "assistant", "content": answer}]})
    return rows


def raw_text_rows(limit: int = 400) -> list[dict]:
    """Romanian sentences from UD RRT dev+test, grouped 4 per record, for raw-text training."""
    lines = [ln.strip() for ln in (SHARED / "ud-romanian-rrt" / "ro_rrt_dev_test_sentences.txt")
             .read_text(encoding="utf-8").splitlines() if ln.strip()]
    return [{"text": " ".join(lines[i:i + 4])} for i in range(0, min(len(lines), limit * 4), 4)]


def main() -> None:
    pref = preference_rows()
    _write(OUT / "sora_en.jsonl", identity_rows() + chosen_as_sft(pref))
    _write(OUT / "sora_dpo.jsonl", pref)
    _write(OUT / "rrt_ro_text.jsonl", raw_text_rows())


if __name__ == "__main__":
    main()
