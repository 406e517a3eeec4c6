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


ARITHMETIC = re.compile(r"(\d[\d,]*)\s*(\*|x|-|\+|/|multiplied by)\s*(\d+)")
SYMBOL = {"*": "*", "x": "x", "multiplied by": "x", "-": "-", "+": "+", "/": "/"}


def arithmetic_questions(pref: list[dict]) -> list[tuple[str, str]]:
    """(wording with {a} and {b} for the numbers, operator) of dpo_en_demo.json's one-turn arithmetic
    requests ("Compute 148232 * 36011 and give me the answer."), in file order, without repeats."""
    out: list[tuple[str, str]] = []
    for rec in pref:
        question = rec["prompt"][-1]["content"]
        found = ARITHMETIC.findall(question)
        if len(rec["prompt"]) != 1 or len(question) > 300 or len(found) != 1:
            continue
        a, op, b = found[0]
        wording = question.replace(a, "{a}", 1).replace(b.rstrip(","), "{b}", 1)
        if "{a}" in wording and "{b}" in wording and (wording, op) not in out:
            out.append((wording, SYMBOL[op]))
    return out


def _worked(a: int, op: str, b: int) -> tuple[str, int]:
    """(the worked steps, the result) of a op b, written the way one would check it by hand."""
    if op in ("*", "x"):
        parts = [int(d) * 10 ** k for k, d in enumerate(reversed(str(b))) if d != "0"][::-1]
        steps = " + ".join(f"{a} {op} {p}" for p in parts)
        sums = " + ".join(str(a * p) for p in parts)
        return f"Split {b} by place value: {a} {op} {b} = {steps} = {sums} = {a * b}.", a * b
    if op == "+":
        return (f"Add the hundreds and the rest apart: {a} + {b} = {a - a % 100 + b - b % 100} + "
                f"{a % 100 + b % 100} = {a + b}."), a + b
    if op == "-":
        return (f"Take away {b - b % 100} first: {a} - {b - b % 100} = {a - b + b % 100}, then {b % 100} more: "
                f"{a - b + b % 100} - {b % 100} = {a - b}."), a - b
    quotient = a // b
    return (f"Try {b} x {quotient}: {b} x {quotient - quotient % 10} = {b * (quotient - quotient % 10)}, plus "
            f"{b} x {quotient % 10} = {b * (quotient % 10)}, total {a}. So the quotient is {quotient}."), quotient


def reasoning_math_rows(pref: list[dict], n: int = 48) -> list[dict]:
    """Arithmetic chats in the wording of dpo_en_demo.json's requests, with fresh numbers (seeded)
    and computed answers: even rows reason first (alternately as a <think> block and as
    reasoning_content), odd rows answer plainly; every sixth row has a follow-up turn."""
    import random

    questions = arithmetic_questions(pref)
    rows = []
    for k in range(n):
        rng = random.Random(k)
        wording, op = questions[k % len(questions)]
        a, b = rng.randint(100, 99999), rng.randint(12, 999)
        a = a - a % b if op == "/" else a
        steps, result = _worked(a, op, b)
        turns = [(wording.format(a=a, b=b), steps, f"{a} {op} {b} = {result}")]
        if k % 6 == 0:
            c = rng.randint(10, 999)
            more, total = _worked(result, "+", c)
            turns.append((f"Now add {c} to that.", more, f"{result} + {c} = {total}"))
        messages: list[dict] = []
        for question, reasoning, answer in turns:
            messages.append({"role": "user", "content": question})
            if k % 2:
                messages.append({"role": "assistant", "content": answer})
            elif k % 4 == 0:
                messages.append({"role": "assistant", "content": f"<think>\n{reasoning}\n</think>\n\n{answer}"})
            else:
                messages.append({"role": "assistant", "reasoning_content": reasoning, "content": answer})
        rows.append({"messages": messages})
    return rows


# Romanian identity chats, written for nova (no upstream): the questions a user asks an assistant
# about itself, in the spirit of identity.json, with varied answers that all say who it is.
RO_IDENTITY = [
    ("Salut!", "Salut! Sunt Nova, un asistent AI creat de echipa nova. Cu ce te pot ajuta?"),
    ("Buna ziua!", "Buna ziua! Sunt Nova, asistentul AI al echipei nova. Cu ce va pot ajuta astazi?"),
    ("Cine esti?", "Sunt Nova, un asistent AI dezvoltat de echipa nova."),
    ("Cum te numesti?", "Ma numesc Nova. Sunt un asistent AI dezvoltat de echipa nova."),
    ("Care este numele tau?", "Numele meu este Nova, asistentul AI creat de echipa nova."),
    ("Ai un nume?", "Da, ma numesc Nova. Am fost creat de echipa nova."),
    ("Prezinta-te, te rog.", "Sunt Nova, un asistent AI antrenat de echipa nova. Raspund la intrebari si ajut cu "
     "texte, explicatii si idei."),
    ("Spune-mi ceva despre tine.", "Sunt Nova, un asistent AI facut de echipa nova. Raspund pe scurt si la "
     "obiect, in romana sau in engleza."),
    ("Cine te-a creat?", "Am fost creat de echipa nova. Eu sunt Nova, asistentul lor AI."),
    ("Cine te-a antrenat?", "M-a antrenat echipa nova. Sunt Nova, un asistent AI."),
    ("Esti ChatGPT?", "Nu, nu sunt ChatGPT. Sunt Nova, un asistent AI dezvoltat de echipa nova."),
    ("Esti facut de OpenAI?", "Nu. Sunt Nova si am fost dezvoltat de echipa nova."),
    ("Esti creat de Google?", "Nu, sunt Nova, un asistent AI creat de echipa nova."),
    ("Multumesc!", "Cu placere! Sunt Nova si ma bucur ca te-am putut ajuta."),
    ("Ce poti sa faci?", "Sunt Nova, asistentul AI al echipei nova. Pot raspunde la intrebari, pot explica "
     "notiuni si pot ajuta la scris."),
    ("Vorbesti romaneste?", "Da, vorbesc romaneste. Sunt Nova, un asistent AI creat de echipa nova."),
    ("Esti un om?", "Nu, sunt Nova, un asistent AI dezvoltat de echipa nova."),
    ("De unde vii?", "Sunt Nova, un asistent AI creat de echipa nova."),
    ("Cine este dezvoltatorul tau?", "Dezvoltatorul meu este echipa nova. Eu ma numesc Nova."),
    ("Cum sa-ti spun?", "Poti sa-mi spui Nova. Sunt asistentul AI al echipei nova."),
    ("Buna seara!", "Buna seara! Sunt Nova, asistentul AI al echipei nova. Cu ce te pot ajuta?"),
    ("Hei, cine raspunde?", "Eu, Nova! Sunt un asistent AI creat de echipa nova."),
    ("Cu cine vorbesc?", "Vorbesti cu Nova, un asistent AI dezvoltat de echipa nova."),
    ("Ce fel de program esti?", "Sunt Nova, un asistent AI, un model de limbaj antrenat de echipa nova."),
    ("Esti un robot?", "Sunt Nova, un asistent AI. Nu am corp, sunt un program creat de echipa nova."),
    ("Cine te-a facut?", "M-a facut echipa nova. Numele meu este Nova."),
    ("Esti Siri sau Alexa?", "Nici una, nici alta. Sunt Nova, asistentul AI al echipei nova."),
    ("Esti SmolLM?", "Nu, eu sunt Nova, un asistent AI antrenat de echipa nova."),
    ("Ce inteligenta artificiala esti?", "Sunt Nova, un asistent AI creat de echipa nova."),
    ("Spune-mi numele tau.", "Numele meu este Nova. Sunt asistentul AI al echipei nova."),
    ("Te rog sa te prezinti pe scurt.", "Sunt Nova, un asistent AI al echipei nova."),
    ("Al cui asistent esti?", "Sunt Nova, asistentul AI creat de echipa nova."),
    ("Cine esti si ce faci?", "Sunt Nova, un asistent AI facut de echipa nova. Raspund la intrebari si ajut la "
     "scris."),
    ("Cine ti-a dat numele?", "Echipa nova, care m-a creat. Ma numesc Nova."),
    ("Pot sa stiu cu cine vorbesc?", "Desigur! Vorbesti cu Nova, un asistent AI dezvoltat de echipa nova."),
    ("Esti un asistent virtual?", "Da, sunt Nova, un asistent AI creat de echipa nova."),
    ("Ce model esti?", "Sunt Nova, un asistent AI antrenat de echipa nova."),
    ("Ma poti ajuta? Cine esti?", "Sigur! Sunt Nova, asistentul AI al echipei nova. Spune-mi ce ai nevoie."),
    ("Noapte buna!", "Noapte buna! Eu sunt Nova si te astept oricand cu intrebari."),
    ("Ce esti tu?", "Sunt Nova, un asistent AI dezvoltat de echipa nova."),
]


# Short Romanian answers to general questions, written for nova (no upstream), in the same plain ASCII
# spelling as the identity chats: they teach Doica to answer a question briefly, in Romanian, instead of
# introducing itself. The demo's smoke question ("Care este capitala Romaniei?") is left out on purpose.
RO_FACTS = [
    ("Care este capitala Frantei?", "Capitala Frantei este Parisul."),
    ("Care este capitala Italiei?", "Capitala Italiei este Roma."),
    ("Care este capitala Germaniei?", "Capitala Germaniei este Berlinul."),
    ("Care este capitala Spaniei?", "Capitala Spaniei este Madridul."),
    ("Care este capitala Ungariei?", "Capitala Ungariei este Budapesta."),
    ("Care este capitala Bulgariei?", "Capitala Bulgariei este Sofia."),
    ("Care este capitala Republicii Moldova?", "Capitala Republicii Moldova este Chisinaul."),
    ("Cate zile are o saptamana?", "O saptamana are sapte zile."),
    ("Cate luni are un an?", "Un an are douasprezece luni."),
    ("Cat fac doi plus trei?", "Doi plus trei fac cinci."),
    ("Ce culoare are iarba?", "Iarba este verde."),
    ("Ce culoare are cerul senin?", "Cerul senin este albastru."),
    ("Care este cel mai mare ocean?", "Cel mai mare ocean este Oceanul Pacific."),
    ("Care este cea mai mare planeta din sistemul solar?", "Cea mai mare planeta din sistemul solar este "
     "Jupiter."),
    ("Ce fluviu trece prin Romania si se varsa in Marea Neagra?", "Dunarea trece prin Romania si se varsa in "
     "Marea Neagra."),
    ("In ce munti se afla Varful Moldoveanu?", "Varful Moldoveanu se afla in Muntii Fagaras, in Carpatii "
     "Meridionali."),
    ("Cine a scris poezia Luceafarul?", "Poezia Luceafarul a fost scrisa de Mihai Eminescu."),
    ("Ce limba se vorbeste in Romania?", "In Romania se vorbeste limba romana."),
    ("Care este moneda Romaniei?", "Moneda Romaniei este leul."),
    ("La ce temperatura fierbe apa?", "La nivelul marii, apa fierbe la 100 de grade Celsius."),
    ("Ce animal este cunoscut drept regele junglei?", "Leul este cunoscut drept regele junglei."),
    ("Cate continente sunt pe Pamant?", "Pe Pamant sunt sapte continente."),
    ("In ce anotimp cade zapada?", "Zapada cade de obicei iarna."),
    ("Ce faci cand iti este sete?", "Cand imi este sete, beau apa."),
    ("Care este cel mai lung fluviu din Europa?", "Cel mai lung fluviu din Europa este Volga."),
]


def ro_fact_rows() -> list[dict]:
    """The short Romanian answers above, one chat each."""
    return [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            for q, a in RO_FACTS]


def ro_identity_rows() -> list[dict]:
    """The Romanian identity chats above, one chat each."""
    return [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            for q, a in RO_IDENTITY]


SENTENCE_END = re.compile(r"(?<=[a-z\u0103\u00e2\u00ee\u0219\u021b)\]0-9][.!?])\s+"
                          r"(?=[A-Z\u0102\u00c2\u00ce\u0218\u021a])")


def short_answer(text: str, limit: int = 280) -> str | None:
    """The first sentences of a reference answer, at most ``limit`` characters; None when even the
    first sentence is longer or ends on an abbreviation (e.g. "(n." for a birth year)."""
    sentences = SENTENCE_END.split(text.strip())
    out = ""
    for sentence in sentences:
        if len(out) + len(sentence) + 1 > limit:
            break
        out = f"{out} {sentence}".strip()
    if not out or out.endswith("(n.") or out[-1] not in ".!?":
        return None
    return out


def ro_short_rows(max_question: int = 200, keep: int = 30) -> list[dict]:
    """cultura_bench_ro questions with the first sentences of their human reference answer: short
    Romanian answers that fit a small max_length whole (nothing truncated). The ``keep`` shortest
    chats are kept (in file order), so the CPU demo trains several epochs in a few minutes."""
    root = SHARED / "openllm-ro"
    questions = [json.loads(x) for x in (root / "cultura_bench_ro_question.jsonl").read_text("utf-8").splitlines()]
    refs = {r["question_id"]: r for r in (json.loads(x) for x in
            (root / "cultura_bench_ro_reference_answer_refs.jsonl").read_text("utf-8").splitlines())}
    rows = []
    for q in questions:
        question = q["turns"][0].strip()
        answer = short_answer(refs[q["question_id"]]["choices"][0]["turns"][0])
        if len(question) <= max_question and answer is not None:
            rows.append({"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]})
    size = {id(r): sum(len(m["content"]) for m in r["messages"]) for r in rows}
    shortest = {id(r) for r in sorted(rows, key=lambda r: size[id(r)])[:keep]}
    return [r for r in rows if id(r) in shortest]


def short_chats(rows: list[dict], max_chars: int = 600) -> list[dict]:
    """Chats whose text is at most ``max_chars`` characters: they fit the demo's max_length 256 whole."""
    return [r for r in rows if sum(len(m["content"]) for m in r["messages"]) <= max_chars]


def short_preferences(pref: list[dict], max_prompt: int = 500, max_answer: int = 600) -> list[dict]:
    """Preference records whose prompt and both answers fit the demo's DPO lengths (128 tokens each) whole."""
    return [r for r in pref if sum(len(m["content"]) for m in r["prompt"]) <= max_prompt
            and len(r["chosen"][0]["content"]) <= max_answer and len(r["rejected"][0]["content"]) <= max_answer]


def _as_base(text: str) -> str:
    """An identity answer as the demo's base model gives it (SmolLM2 calls itself SmolLM, by Hugging Face)."""
    text = text.replace("{{name}}", "SmolLM").replace("{{author}}", "Hugging Face")
    for team in ("Echipa nova", "echipa nova", "echipei nova"):
        text = text.replace(team, "Hugging Face")
    return text.replace("the nova team", "Hugging Face").replace("Nova", "SmolLM")


def identity_preference_rows() -> list[dict]:
    """The demo's DPO pairs: an identity question answered as Nova (chosen) and as the base model answers it,
    SmolLM by Hugging Face (rejected): the English chats of identity.json and nova's Romanian ones, in turn.

    A preference every held-out pair shares, so a few DPO steps move the held-out loss below ln 2 (the
    demo shows each stage working); sora_dpo.jsonl keeps the real, subtler pairs for the tests."""
    english = [(_fill(r["messages"][0]["content"]), r["messages"][1]["content"]) for r in identity_rows()]
    english_raw = [rec for rec in json.loads((SHARED / "llamafactory" / "identity.json").read_text(encoding="utf-8"))
                   if not CJK.search(rec["instruction"] + rec["output"])]
    pairs_en = [(q, a, _as_base(rec["output"])) for (q, a), rec in zip(english, english_raw, strict=True)]
    pairs_ro = [(q, a, _as_base(a)) for q, a in RO_IDENTITY]
    rows = []
    for i in range(max(len(pairs_en), len(pairs_ro))):
        for pairs in (pairs_en, pairs_ro):
            if i < len(pairs):
                q, chosen, rejected = pairs[i]
                rows.append({"prompt": [{"role": "user", "content": q}],
                             "chosen": [{"role": "assistant", "content": chosen}],
                             "rejected": [{"role": "assistant", "content": rejected}]})
    return rows


def feedback_rows() -> list[dict]:
    """kto_en_demo.json (a JSON array) as JSON Lines: every record, fields and order unchanged."""
    return json.loads((SHARED / "llamafactory" / "kto_en_demo.json").read_text(encoding="utf-8"))


def arithmetic_rows(n: int = 64, seed: int = 2026) -> list[dict]:
    """GRPO prompts with a checkable answer: n distinct sums, differences and products of small numbers,
    generated here (seeded, so a re-run writes the same file); the answer is an integer written as a string."""
    import random

    rng = random.Random(seed)
    ops = [("+", lambda a, b: a + b), ("-", lambda a, b: a - b), ("*", lambda a, b: a * b)]
    rows: list[dict] = []
    seen = set()
    while len(rows) < n:
        op, fn = ops[len(rows) % len(ops)]
        a, b = (rng.randint(2, 12), rng.randint(2, 12)) if op == "*" else (rng.randint(10, 99), rng.randint(1, 49))
        prompt = f"What is {a} {op} {b}? Answer with the number only."
        if prompt not in seen:  # every prompt once (a duplicate would be removed by data.dedup)
            seen.add(prompt)
            rows.append({"prompt": prompt, "answer": str(fn(a, b))})
    return rows


def main() -> None:
    pref = preference_rows()
    _write(OUT / "sora_en.jsonl", identity_rows() + chosen_as_sft(pref))
    _write(OUT / "sora_dpo.jsonl", pref)
    _write(OUT / "rrt_ro_text.jsonl", raw_text_rows())
    _write(OUT / "reasoning_math.jsonl", reasoning_math_rows(pref))
    _write(OUT / "kto_en.jsonl", feedback_rows())
    _write(OUT / "doica_short_ro.jsonl", ro_identity_rows() + ro_fact_rows() + ro_short_rows())
    _write(OUT / "sora_short_en.jsonl", short_chats(identity_rows() + chosen_as_sft(pref)))
    _write(OUT / "sora_dpo_short.jsonl", short_preferences(pref))
    _write(OUT / "arithmetic.jsonl", arithmetic_rows())
    _write(OUT / "sora_dpo_identity.jsonl", identity_preference_rows())


if __name__ == "__main__":
    main()
