"""Human-readable cost tables for the examples and the demo."""

from __future__ import annotations

from dataclasses import dataclass, field

from protocols.net.accounting import NETWORKS, Cost, total


@dataclass
class CostTable:
    rows: list[Cost] = field(default_factory=list)

    def add(self, step: dict[str, Cost]) -> None:
        self.rows.append(total(step))

    def render(self, plaintext_per_token_s: float | None = None) -> str:
        lan, wan = NETWORKS["lan"], NETWORKS["wan"]
        lines = [
            f"{'token':>6} {'online MB':>10} {'rounds':>7} {'compute s':>10} {'LAN s':>8} {'WAN s':>8}",
        ]
        for i, c in enumerate(self.rows):
            label = "prefill" if i == 0 else str(i)
            lines.append(f"{label:>6} {c.online_bytes / 1e6:10.2f} {c.rounds:7d} {c.compute_s:10.2f} "
                         f"{c.wall_s(lan):8.2f} {c.wall_s(wan):8.2f}")
        decode = self.rows[1:]
        if decode:
            mean = Cost()
            for c in decode:
                mean = mean + c
            mean = mean.scaled(1 / len(decode))
            lines.append(f"{'mean':>6} {mean.online_bytes / 1e6:10.2f} {mean.rounds:7.0f} "
                         f"{mean.compute_s:10.2f} "
                         f"{mean.wall_s(lan):8.2f} {mean.wall_s(wan):8.2f}   (per generated token)")
            if plaintext_per_token_s:
                p = plaintext_per_token_s
                lines.append(f"plaintext: {p:.3f} s per token on this machine -> private is "
                             f"{mean.compute_s / p:.0f}x (compute), {mean.wall_s(lan) / p:.0f}x (LAN), "
                             f"{mean.wall_s(wan) / p:.0f}x (WAN)")
        lines.append("online MB = all traffic between the parties (both directions); LAN = 1 Gbit/s, "
                     "0.5 ms RTT; WAN = 100 Mbit/s, 40 ms RTT; est. = compute + bytes/bandwidth + rounds*RTT")
        return "\n".join(lines)
