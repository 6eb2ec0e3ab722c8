"""The results documents of the private (2PC) path: cost, operators, policies, top-k, the chat."""

from __future__ import annotations

from pathlib import Path

from mpcache.eval.results_docs_common import header, image, load, section

MACHINE = ("Bytes and rounds are exact counts. Seconds are wall time on a 2-core CPU machine shared with "
           "other jobs, both parties on loopback: read them as upper bounds. Estimates: LAN = compute + "
           "bytes / 1 Gbit/s + rounds x 0.5 ms, WAN = compute + bytes / 100 Mbit/s + rounds x 40 ms; "
           "\"network s\" is the LAN estimate without compute.")


def mpc_cost(records: Path) -> str:
    recs = load(records, "mpc_cost.jsonl")

    def table(name: str) -> list[dict]:
        return [r for r in recs if r["table"] == name]

    out = header("Cost of private generation (SmolLM2-135M-Instruct, two parties)", ["mpc_cost.jsonl"])
    out += [MACHINE, ""]
    out += section("Mask reuse and the dealer (`v1` numerics, 128-token context)",
                   ["Per generated token after a 128-token prefill. Mask reuse cuts per-token traffic 29x: "
                    "the weights are opened once, in a 2.15 GB setup. Where `v1`'s 92.9 MB go: SiLU 39.1 MB, "
                    "the secure argmax over the 49,152-entry vocabulary 23.6 MB, softmax 22.2 MB, RMSNorm "
                    "2.3 MB, all linear layers 3.7 MB. With TTP the traffic between the parties is the same; "
                    "the dealer sends party 0 its shares of the products (its requests are synchronous, so "
                    "each is also a round trip, not in the estimates)."], table("smollm2_128_v1"))
    out += section("The two presets: `v1` and `fast` (same run, TFP, mask reuse)",
                   ["`fast` (the default with TFP) cuts the rounds 3x: softmax 3,030 -> 600 rounds, RMSNorm "
                    "1,342 -> 610, SiLU 750 -> 270, argmax 146 -> 26; the 128-token prefill 5,359 -> 1,867 "
                    "rounds and 8.9 -> 7.0 GB. At a 2048-token prompt only the softmax's max grows by one "
                    "level: ~1,990 rounds per token.",
                    "Accuracy of `fast` in plaintext: perplexity 22.28 at L = 2000 (exact: 22.28) and needle "
                    "29 of 30 (exact: 29 of 30); see [accuracy.md](accuracy.md). `make demo` (12 tokens, "
                    "`fast`, TFP) measured 60.8 MB / 1,824 rounds / 4.1 s per generated token; with "
                    "`--approx v1` 79.2 MB / 5,090 rounds / 9.2 s.",
                    "With the exact truncation now in place (see [truncation.md](truncation.md)) `fast` "
                    "costs 93.5 MB and 3,265 rounds per token at this length."], table("smollm2_128_presets"))
    out += section("The network model against a shaped link",
                   ["One operator (CrypTen's comparison of 1e5 elements: 43.2 MB in 8 rounds, "
                    "bandwidth-bound) on plain loopback, then inside a user namespace with loopback shaped "
                    "by `tc qdisc tbf`. Estimate = loopback seconds + bytes x 8 / rate. The bandwidth term "
                    "holds within 6-10 % where it dominates."], table("shaped_link"))
    out += ["## Correctness against plaintext", "",
            "`python examples/compare_plaintext.py --new-tokens 16 --json mpc_vs_plain.jsonl` (TFP, chat "
            "template): private greedy against `PlainBackend` with the same approximations, 16 tokens each. "
            "\"Write a haiku about the sea.\" and \"Explain photosynthesis in one sentence.\" match all 16 "
            "tokens (max |logit difference| per step <= 0.040 and <= 0.070). \"What is the capital of "
            "France?\" differs from the first token, where the plaintext top-2 logits are 0.006 apart, below "
            "the fixed-point error (0.034 at that step); along the private run's own tokens the logits still "
            "agree within 0.071. 16-bit fixed point resolves the argmax when the top-2 margin exceeds "
            "~0.1.", ""]
    return "\n".join(out)


def mpc_ops(records: Path) -> str:
    recs = load(records, "mpc_ops.jsonl")
    out = header("Private operators: stock CrypTen against ours", ["mpc_ops.jsonl"])
    out += section("SmolLM2's operators (TFP)",
                   ["Inputs recorded from the plaintext model on essay text: the last query's scores over "
                    "128 and 2048 keys in the layer with the widest spread, the SiLU input with the largest "
                    "|x|, the RMSNorm input with the largest variance (a massive-activation row), the "
                    "logits, 1e5 gate inputs for one comparison layer. Error against float64; for argmax the "
                    "logit gap between the true max and the chosen token; for the comparison the largest |x| "
                    "whose sign came out wrong. Cell: MB / rounds / seconds / max error.",
                    "Stock CrypTen's `inv_sqrt` diverges on massive-activation rows (error 4e9: its fixed "
                    "initial guess assumes a small range), which is why `v1` reduces the range. `fast` cuts "
                    "the rounds 2.3-6x against `v1` and 2-6x against stock CrypTen, with softmax, SiLU and "
                    "RMSNorm errors at or below `v1`'s; its comparison resolves signs at 2^-8, in 2 rounds "
                    "and 80 B per element instead of 8 rounds and 432 B."], recs)
    out += image("ops_smollm2.png", "operators: stock CrypTen vs ours")
    return "\n".join(out)


def mpc_policies(records: Path) -> str:
    recs = load(records, "mpc_policies.jsonl")

    def table(name: str) -> list[dict]:
        return [r for r in recs if r["table"] == name]

    out = header("KV-cache policies under 2PC: cost per decode token", ["mpc_policies.jsonl"])
    out += ["SmolLM2-135M-Instruct, TFP, budget 0.1, `--prefill plaintext`: a cost benchmark, not a private "
            "run (the server computes the prompt's KV cache in plaintext and secret-shares it; the static "
            "stage and every decode step run under 2PC). " + MACHINE, ""]
    out += section("Selection through the cache's own mask, exact dealer comparisons",
                   ["`mpcache:s2=16` is the retrieval preset with clusters of 16, as measured (the default "
                    "now uses clusters of 4, below); `mpcache:preset=paper` the original design; "
                    "`mpcache:share=true` adds cross-layer sharing. \"attention MB\" = scores + softmax + "
                    "values + selection.",
                    "`preset=paper` with `fast` takes 1.11x full's rounds and 1/2.19 of its network time at "
                    "2048 tokens, with 1/4.0 of its bytes: ~50 MB per token lies outside attention (SiLU, "
                    "the secure argmax, RMSNorm, linear layers) and is the same for every policy. The "
                    "retrieval preset's selection is O(n) per layer and step (a comparison per cached token "
                    "and query head), so it saves less."], table("selection"))
    out += image("mpc_selection.png", "bytes, rounds, LAN time per decode token vs prompt length")
    out += section("Cheaper selection for the retrieval preset: bounded comparisons, `group=` (2048)",
                   ["Selections compare score differences far below 2^16, so one 32-bit digit suffices "
                    "(1 round, 16 B with TFP, instead of 2 rounds and 80 B); the all-pairs top-k needs no "
                    "product (5 -> 3 rounds). \"before\" is the row of the table above. Needle accuracy in "
                    "plaintext (see [mpcache_options.md](mpcache_options.md)).",
                    "The default today (clusters of 4 found through `parents=16`) measured, same command: "
                    "263.5 MB / 2,918 rounds per token, network 3.57 s (full: 392.9 MB / 1,988 rounds, 4.14 "
                    "s); `group=meannorm` 247.1 MB / 2,648, `group=qsum` 229.2 MB / 2,528, 205 keys "
                    "per layer."],
                   table("group_2048"))
    out += section("At a longer context (4096)",
                   "The retrieval presets' selection grows with the cache, so their byte ratio stays "
                   "~1/2.6-1/3.1; `qsum` meets 1.25x full's rounds and half its network time at 4096. "
                   "`preset=paper` moves 1/4.97 of full's bytes (by linear extrapolation 1/6 only near 12k "
                   "tokens, beyond SmolLM2's 8,192 positions).", table("group_4096"))
    out += section("First measurement (before attention through the cache's mask)",
                   ["`v1` numerics, CrypTen's comparison in every selection and gathered keys/values opened "
                    "(the code has changed since: the commands rerun the setting, not these numbers). The "
                    "original design moved 1/2.6 of full's bytes at 2048 with 1.01x its rounds; the static "
                    "stage cost 11.4 decode tokens of full in bytes at 1024. At 1024 tokens its first 8 "
                    "private tokens equal the plaintext twin's."], table("policies_first"))
    out += image("mpc_policies.png", "bytes, rounds, LAN time per decode token vs prompt length, per policy")
    return "\n".join(out)


def topk(records: Path) -> str:
    recs = load(records, "topk.jsonl")

    def table(name: str) -> list[dict]:
        return [r for r in recs if r["table"] == name]

    out = header("Oblivious top-k under 2PC: measurements", ["topk.jsonl"])
    out += ["The constructions and the rule that picks one are in [../topk.md](../topk.md). One row of "
            "random scores (H = 1), two local parties, TFP; online MB = all traffic between the parties, "
            "compaction included; every selection equalled `PlainBackend.topk`. LAN/WAN net s = bytes / "
            "bandwidth + rounds x RTT (1 Gbit/s, 0.5 ms; 100 Mbit/s, 40 ms), compute excluded.", ""]
    out += section("With CrypTen's comparison circuit",
                   "One comparison: 432 B, 8 rounds. `argmax` is skipped where its estimate exceeds 10,000 "
                   "rounds. Selections have since moved to the dealer's comparison (next table); a rerun "
                   "gives those figures.", table("crypten_cmp"))
    out += section("With the dealer's exact ring comparison",
                   "2 rounds and 80 B per comparison; counts against k in one digit; the compaction's "
                   "one-hot by one opening. All-pairs falls from 28-35 rounds to 5 at any n and k.",
                   table("ring_cmp"))
    out += section("Bounded score comparisons (the default)",
                   "All-pairs compares the scores themselves in one 32-bit digit (1 round, 16 B); with TFP "
                   "the compaction needs no product. In parentheses: ring keys, the table above.",
                   table("bounded"))
    return "\n".join(out)


def chat(records: Path) -> str:
    recs = load(records, "chat.jsonl", "chat_turns")
    out = header("Private chat: a scripted 3-turn session", ["chat.jsonl"])
    out += section("SmolLM2-135M-Instruct, TTP dealer, 4 answer tokens per turn",
                   ["`make chat-demo`: dealer, server and client of `mpcache chat` on one machine, the "
                    "client fed three messages. Party 0's counts; seconds are the client's wall time for the "
                    "turn on a shared 2-core machine (upper bounds; bytes and rounds are exact). Weight "
                    "setup once: 2152 MB, 95 s.",
                    "Turns 2 and 3 feed only their own 35 tokens on top of the persistent secret cache: per "
                    "new token they cost 1.11x and 1.23x turn 1's traffic (attention over the cached "
                    "history), rounds are flat. Re-prefilling the whole history instead cost 4.1 GB for a "
                    "63-token turn 2. Nothing is evicted at this length (budget 512)."], recs)
    out += section("One turn: TTP dealer against TFP",
                   ["`examples/chat_turn.sh`: one SmolLM2 turn (a 59-token message with its template, 16 "
                    "answer tokens), chat defaults (`mpcache:static=true`, budget 0.2). Each pair ran back "
                    "to back; seconds are the client's wall time on the 2-core machine, busy with other "
                    "jobs or quiet as shown, CPU is user + sys of all the turn's processes (time -v).",
                    "Most of the TTP turn is the dealer's one-hot tables (exp, comparisons) and their "
                    "bounded comparisons in 8 digits of 4 bits, where TFP opens one 32-bit digit: in the "
                    "prefill, softmax moves 2,829 MB online (TFP 509 MB) and SiLU 2,349 MB (TFP 1,392 MB). "
                    "`fast-lite3` (exp in three 6-bit digits) is the TTP default in the rows "
                    "\"after fast-lite3\"."],
                   load(records, "chat.jsonl", "turn_dealers"))
    out += section("The chat's answer tokens against `mpcache bench mpc`'s decode tokens",
                   ["The same model, prompt length, dealer (TFP) and numerics, back to back: the chat's "
                    "compute per answer token against the bench's per decode token over the same context.",
                    "With `full` the two do the same work (same bytes and rounds). The `mpcache` pair is "
                    "not the same state: the chat holds 39 tokens and attends 23 per layer on average (its "
                    "/stats line); the bench holds 28 keys and its selection phase counts 0 rounds."],
                   load(records, "chat.jsonl", "chat_vs_bench"))
    return "\n".join(out)
