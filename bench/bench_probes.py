"""Probe heads of Table I+ (linear, ep, attentive, vjepa2) beside meanFC, Tr d1 and STE d1: fwd+bwd per clip
at the base cache shape, GFLOP/s over the matmul canary. Run: `python -m bench probes` (a minute or two)."""

from bench.bench_heads import probes


def main() -> None:
    probes()


if __name__ == "__main__":
    main()
