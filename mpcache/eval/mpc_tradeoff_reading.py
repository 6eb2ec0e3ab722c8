"""What the trade-off records mean: the reading of docs/results/mpc_tradeoff.md (text only, kept apart
from the tables that ``mpc_tradeoff`` computes)."""

READING = [
    "- **The default is `preset=half`** (= `lean:r1_min=0.5`, the name its records carry; run "
    "`mpc_tradeoff_frontier`): `lean`'s exact token scores inside half of the 32-token parents "
    "instead of a quarter. At 2048 tokens: 205.3 MB per decode token, 0.70 of the full cache's "
    "292.7 MB, in 4,354 rounds (1.19x); the needle 0.933, 28 of 30 (L = 2000, 10 %, MPC numerics; "
    "`lean` 0.900, full 0.967); perplexity +4.6 % of full at 10 % (the 3 % bar missed: clusters of 8). "
    "`retrieval`, the default before, sent 1.15x full's bytes; with the level-by-level selections "
    "0.91x (`frontier2`). The bytes bar (1/4) and the rounds bar (1.10x) stay missed (below).",
    "- **`half` at 4096 tokens** (`mpc_tradeoff_4096`, its second run: full and the default in one "
    "invocation): 391.8 MB per decode token, 0.737 of the full cache's 531.6 MB (the bar is 1/6), in "
    "4,474 rounds (1.20x), compute 1.04x full's. Its selection alone sends 285.3 MB in 1,620 rounds "
    "(`lean` in the first run: 273.8 MB, 1,500 rounds, 0.715 of full), the softmax over the 409 "
    "selected keys 37.6 MB where full's over 4,097 keys sends 444.7 MB. What lies outside attention "
    "(50.9 MB) and q.K^T and the value product over the whole cache (36.0 MB) already come to 0.163 of "
    "full: the 1/6 bar leaves 1.8 MB per token for the selection and the softmax together.",
    "- **The static stage keeps runs of tokens.** Token-level static eviction (per KV head, 50 %) "
    "solved 0 of 5 needles: the model answers with the number's first digits (211 for 2164505). "
    "Runs of 32 tokens, each scored by its best token (`static_unit=32`), found it in 0.8 / 0.8 / "
    "0.9 at 30 / 50 / 70 % of the prompt (10 samples; 1.0 without the stage). A run and its "
    "neighbours (`static_spread=1`) on `half` at 50 %: 2 of 5 (samples 10-14, where the rule without "
    "neighbours was not run). No static rule reached 0.93 on SmolLM2: the default keeps the whole "
    "prompt. At 50 % the cache halves (46 MB, not 93) and a decode token sends 141.0 MB (0.48 of "
    "full) in 4,234 rounds; the stage costs 270 MB and 900 rounds once.",
    "- **Two-level selections applied level by level** under 2PC: attention gathers the scores by "
    "the parents' one-hot (the selection gathered them already), then by the children's, and "
    "scatters the probabilities back the same way, instead of one composed one-hot over all "
    "level-2 clusters (k2 x C2, opened with the G*n scores again) and the product that composes it.",
    "- **Bounded comparisons everywhere a maximum is taken** (the argmax over the 49,152 logits, the "
    "softmax shift, the selections' maxima, the top-k's): the dealer's one-digit comparison of "
    "differences below 2^16 (1 round, 16 B) instead of the preset's two-digit one (2 rounds, 80 B). "
    "The inputs' range is *checked* (2 one-digit comparisons per element, the count opened with the "
    "guard's other checks once per token; a value past 2^15 stops the run before anything is "
    "revealed) instead of clamped (2 ring comparisons and 2 products per element). The argmax fell "
    "from 19.3 MB to 4.7 MB per token and the full cache's softmax from 386 to 224 MB: this helps "
    "every policy, full included, so every ratio to full got harder.",
    "- **The floor.** What lies outside attention (SiLU, RMSNorm, the argmax, the linear layers) is the "
    "same for every policy (about 51 MB per token, 17 % of the full cache's 293 MB at 2048 tokens); "
    "with attention's own q.K^T and value products (opening G*n scores and probabilities, 18 MB), no "
    "policy that reads the whole cache through its mask can go below about 69 MB, 0.24 of full: "
    "the 1/4 bytes bar at 2048 tokens is out of reach for any configuration, before any selection "
    "or softmax is paid.",
    "- **Selection that does not grow with every cached token (per query head)**: level-1 parents of "
    "32 tokens, exact per-head token maxima only inside the picked quarter, the candidates' scores "
    "gathered (not their keys). Scoring the parents by their summaries (the design's linear "
    "alpha-mix, fixed operands masked once) cut the selection's bytes by about 2.7x against "
    "`retrieval` but lost the needle on SmolLM2 (0.6), Quest's upper bound did worse (0/5); the best "
    "token of the group-summed query (one score per KV head instead of g, no summaries, no static "
    "stage) kept it (preset `lean`, `score1=qsum`).",
    "- **Where it stood before `half`.** At 2048 tokens `lean` sends 0.64 of the "
    "full cache's bytes in 1.19x its rounds (network-only LAN time 0.88x) with the needle at "
    "0.900 (30 samples, MPC numerics; the bar is 0.93); the default `retrieval` sends 1.15x "
    "full's bytes and 1.22x its rounds at 2048 tokens (0.96x and 1.15x at 1024) with the needle at "
    "0.967. At 4096 tokens `lean` sends 0.72 "
    "of full's bytes (the 1/6 bar is far): its composed one-hot over all level-2 clusters (k2 x C2, "
    "both growing with n) and the group-summed token maxima over the whole cache still grow. The "
    "rounds bar (1.10x) fails because a selection adds ~40-50 sequential rounds per layer (maxima, "
    "top-k's, gathers) while the full cache's softmax max is ~12 binary levels (about 24 rounds); "
    "the byte bar fails on the floor above.",
    "- **q.K^T once, the maxnorm maxima as the softmax shift** (`share_scores`, on by default): the "
    "selection scores children from attention's own scaled scores and hands attention each head's "
    "max over the candidates and the tail, so the softmax runs no max tournament of its own (exact "
    "when k2 leaves room for every head's best child; a margin of 2^-8 keeps exp's argument >= 0).",
]
