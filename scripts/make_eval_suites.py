"""Make the small task suites nova ships (src/nova/resources/eval/) from the public test sets.

    python scripts/make_eval_suites.py --source ../shared/datasets/eval

Each suite is a JSONL file in the format any user can write (docs/eval.md): multiple choice
{"prompt", "choices", "answer": i} scored by log-likelihood, or {"prompt", "answer", "match"}
scored on the greedy reply. The selection is seeded and deterministic, so running this again
gives the same bytes; provenance and licenses are in src/nova/resources/eval/README.md, the
license texts beside the files.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "src" / "nova" / "resources" / "eval"
ITEMS = 100
SEED = 29
SENTENCE = re.compile(r"[^.!?]*(?:[.!?](?=\s|$)|$)")


def _write(name: str, rows: list[dict[str, object]]) -> None:
    with (OUT / f"{name}.jsonl").open("w", encoding="ascii", newline="\n") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=True, sort_keys=False) + "\n")
    print(f"{name}: {len(rows)} items")


def _sentence(context: str, start: int) -> str:
    """The sentence of ``context`` holding the character at ``start`` (short prompts keep the task fast)."""
    for match in SENTENCE.finditer(context):
        if match.start() <= start < match.end():
            return match.group(0).strip()
    return context


def xquad_ro(source: Path) -> list[dict[str, object]]:
    """Romanian reading comprehension as multiple choice: the sentence holding the answer, the question,
    and four spans (the gold answer and three answers to other questions of the same article)."""
    data = json.loads((source / "xquad" / "xquad.ro.json").read_text(encoding="utf-8"))
    rng = random.Random(SEED)
    rows = []
    for article in data["data"]:
        answers = sorted({qa["answers"][0]["text"].strip() for p in article["paragraphs"] for qa in p["qas"]})
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                gold = qa["answers"][0]["text"].strip()
                others = [a for a in answers if a.lower() != gold.lower() and gold.lower() not in a.lower()]
                if len(others) < 3:
                    continue
                choices = [gold, *rng.sample(others, 3)]
                rng.shuffle(choices)
                text = _sentence(paragraph["context"], qa["answers"][0]["answer_start"])
                rows.append({"id": qa["id"], "prompt": f"Text: {text}\n\nIntrebare: {qa['question']}\n"
                             "Raspunde doar cu fragmentul din text.", "choices": choices,
                             "answer": choices.index(gold)})
    rng.shuffle(rows)
    return rows[:ITEMS]


def hellaswag(source: Path) -> list[dict[str, object]]:
    """HellaSwag (commonsense completion, English): the context and its four endings."""
    lines = (source / "hellaswag" / "hellaswag_val_every10th.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    rng = random.Random(SEED)
    picked = rng.sample(rows, ITEMS)
    return [{"id": f"val-{r['val_index']}", "prompt": f"Finish the text: {r['ctx']}",
             "choices": [e.strip() for e in r["endings"]], "answer": int(r["label"])} for r in picked]


def gsm8k(source: Path) -> list[dict[str, object]]:
    """GSM8K (grade-school arithmetic, English): the question; scored on the last number of the reply."""
    lines = (source / "gsm8k" / "test.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    rng = random.Random(SEED)
    picked = sorted(rng.sample(range(len(rows)), ITEMS))
    out = []
    for i in picked:
        answer = rows[i]["answer"].rsplit("####", 1)[1].strip().replace(",", "")
        out.append({"id": f"test-{i}", "prompt": rows[i]["question"] + "\nSolve it step by step, then end with "
                    "'The answer is N.'", "answer": answer, "match": "number", "max_new_tokens": 192})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True, help="the eval/ folder of the shared datasets")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    _write("xquad_ro", xquad_ro(args.source))
    _write("hellaswag", hellaswag(args.source))
    _write("gsm8k", gsm8k(args.source))
    for name in ("xquad", "hellaswag", "gsm8k"):
        shutil.copyfile(args.source / name / "LICENSE", OUT / f"LICENSE-{name}")


if __name__ == "__main__":
    main()
