#!/usr/bin/env python3
"""Write results/peers-comparison.md: attnbench's attention core against PyTorch's on the
shapes of variants/peers.toml and variants/peers_mla.toml, from the committed result sets.

    python3 tools/peers/comparison.py [--attnbench PATH] [--host NAME]

Reads results/{peers,peers_mla}{,-pytorch-sdpa,-pytorch-matmul}/results.json (written by
`attnbench run` and tools/peers/pytorch_core.py; docs/peers.md), prints a per-shape table of
the core medians and the ratio of attnbench's to the faster PyTorch path's, and appends the
full `attnbench compare --ignore implementation --metric core` of every pair (noise bounds
and verdicts). With --host NAME the sets of a second machine are read instead,
results/{peers,peers_mla}-NAME{,-pytorch-sdpa,-pytorch-matmul}/, and the table goes to
results/peers-comparison-NAME.md. Measures nothing.
"""
import argparse
import json
import statistics
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SETS = ["peers", "peers_mla"]
PEERS = ["pytorch-sdpa", "pytorch-matmul"]


def points(name):
    data = json.loads((ROOT / "results" / name / "results.json").read_text())
    return data, {p["key"]: p for p in data["points"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attnbench", default=str(ROOT / "target/release/attnbench"))
    parser.add_argument("--host", help="the sets of another machine: results/SET-HOST/...")
    args = parser.parse_args()
    sets = [f"{name}-{args.host}" if args.host else name for name in SETS]
    written = f"peers-comparison-{args.host}.md" if args.host else "peers-comparison.md"
    lines, ratios = [], []
    lines.append("# attnbench against PyTorch: the attention core, shape by shape\n")
    lines.append(
        "Written by `python3 tools/peers/comparison.py` from the result sets named below "
        "([docs/peers.md](../docs/peers.md)). Core medians in ms; the last column is "
        "attnbench's time over the faster PyTorch path's at that shape (below 1: attnbench "
        "is faster).\n"
    )
    for name in sets:
        ours, mine = points(name)
        peers = {peer: points(f"{name}-{peer}") for peer in PEERS}
        env = ours["environment"]
        torch = peers["pytorch-sdpa"][0]["environment"].get("implementation_versions", {})
        lines.append(f"## {name}\n")
        lines.append(
            f"attnbench at {env['git_revision'][:12]} measured {env['date']}; PyTorch "
            f"{torch.get('torch', '?')} ({torch.get('cpu_capability', '?')}) measured "
            f"{peers['pytorch-sdpa'][0]['environment']['date']}; on {env['cpu_model']}.\n"
        )
        lines.append("| point | attnbench | pytorch-sdpa | pytorch-matmul | attnbench / faster |")
        lines.append("|---|---|---|---|---|")
        for key, point in mine.items():
            a = point["core_median_ns"] / 1e6
            times = [peers[peer][1][key]["core_median_ns"] / 1e6 for peer in PEERS]
            ratio = a / min(times)
            ratios.append(ratio)
            lines.append(f"| {key} | {a:.4g} | {times[0]:.4g} | {times[1]:.4g} | {ratio:.2f} |")
        lines.append("")
    lines.insert(
        2,
        f"Over all {len(ratios)} shapes: attnbench / faster PyTorch path from "
        f"{min(ratios):.2f} to {max(ratios):.2f}, median {statistics.median(ratios):.2f}.\n",
    )
    for name in sets:
        for peer in PEERS:
            out = subprocess.run(
                [args.attnbench, "compare", f"results/{name}", f"results/{name}-{peer}",
                 "--ignore", "implementation", "--metric", "core"],
                cwd=ROOT, capture_output=True, text=True, check=True,
            ).stdout
            lines.append(f"## `attnbench compare results/{name} results/{name}-{peer}`\n")
            lines.append(out)
    (ROOT / "results" / written).write_text("\n".join(lines))
    print(f"wrote results/{written}")


if __name__ == "__main__":
    main()
