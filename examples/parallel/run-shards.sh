#!/usr/bin/env bash
# Run an experiment's N shards with GNU parallel, one at a time per host (a benchmark needs
# its machine to itself), on this machine or over ssh, then merge them into one result set.
#
#   examples/parallel/run-shards.sh variants/seq_len.toml 4                 # here, in turn
#   examples/parallel/run-shards.sh variants/seq_len.toml 8 node1,node2    # over ssh
#
# Over ssh every host needs attnbench on its PATH and this checkout at the same path on a
# shared file system (the shards write under it). See docs/sharding.md.
set -euo pipefail

file=${1:?usage: run-shards.sh EXPERIMENT.toml N [HOST,HOST...]}
n=${2:?usage: run-shards.sh EXPERIMENT.toml N [HOST,HOST...]}
hosts=${3:-}
out=${OUT:-results/$(basename "$file" .toml)}

options=(--jobs 1 --line-buffer --tag)
if [[ -n $hosts ]]; then
    options+=(--sshlogin "$hosts" --workdir "$PWD")
fi
# Every shard runs even when one fails; --resume lets a rerun of this script finish the
# shards that did not. $(hostname) is expanded on the host that runs the shard.
seq 1 "$n" | parallel "${options[@]}" --halt never \
    attnbench run "$file" --shard "{}/$n" --resume --quiet \
    --out "$out/shard-{}-of-$n" --machine 'results/machines/$(hostname).json' || true

attnbench merge --force "$out" "$out"/shard-*-of-"$n"
