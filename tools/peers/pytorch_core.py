#!/usr/bin/env python3
"""Time a peer implementation of the attention core on an experiment's shapes, and write
the times as an attnbench results directory.

Optional, and not part of attnbench's set-up or CI (CI runs only the NumPy backend, as a
test of this script). It reads the experiment's resolved grid from attnbench itself
(`attnbench validate FILE --json`), so it times exactly the points `attnbench run FILE`
measures, and writes `results.json` in attnbench's format, so that `attnbench report DIR`
renders it and `attnbench compare A DIR --ignore implementation --metric core` sets it
against attnbench's run of the same file (docs/peers.md).

Backends (`--backend`), each an `implementation` in the results:
  sdpa    pytorch-sdpa    torch.nn.functional.scaled_dot_product_attention
  matmul  pytorch-matmul  a plain matmul, softmax, matmul in PyTorch
  numpy   numpy-matmul    the same in NumPy (tests this script without PyTorch)

What is timed, per point: the attention core alone, as attnbench's core (docs/design.md
section 1): `batch` sequences, `n_heads` query heads of `qk_dim` against `n_kv_heads` KV heads
(each shared by `n_heads / n_kv_heads` query heads), `queries` new tokens over `keys` cached
ones (the cache after the step), causal with the queries at the last positions, so a decode
query sees every key; scores scaled by the grid's `scale`; values `v_dim` wide (MLA absorbed:
16 heads over one latent row of 512 + 64 for keys, its first 512 for values). f32 throughout.
A PyTorch user's code, at its fastest without a compiler: SDPA gets the KV heads as they
are with `enable_gqa=True` (no repeated copy of the cache, as Hugging Face's SDPA attention
passes them); the plain path multiplies each KV head by its group's query heads stacked as
rows (no copy either, as the NumPy backend does); `is_causal=True` when the queries start at
position 0, an explicit boolean mask (bottom-right aligned) when they follow cached tokens,
none for a single query. The mask and the inputs are built outside
the timing; no autograd (`torch.inference_mode`).

Sampling is attnbench's (src/harness/measure.rs): warm-up bounded by the experiment's
`warmup_iters` and `warmup_ms`, then samples until `max_samples`, or until `time_budget_ms`
has passed with at least `min_samples`; with `flush_caches` the CPU caches are evicted
before every sample (untimed, inside the budget) by reading one byte per 64-byte line of a
buffer twice the largest CPU cache (at least 64 MiB, at most 2 GiB), split over the point's
threads (src/harness/flush.rs). Median, MAD, min and max as attnbench computes them. Threads:
`torch.set_num_threads(threads)` per point; NumPy's BLAS threads are set per point with
threadpoolctl when it is installed, otherwise to the largest thread count of the grid through
the environment before NumPy loads (the environment records which).

A peer measures the core alone, so its results record the step as the core: `flops` are the
attention FLOPs, `bytes` the core's, `projection_flops` and `params` 0, and the step's
statistics are the core's samples (attnbench's `is_core_only`). Each point's output is
checked outside the timing against a float64 NumPy reference (on a slice of the heads and
queries for large points); a point that fails the check, or raises, records `error`.

Installing PyTorch for the CPU (2.1 or later, for SDPA's `scale`; the wheel index below has
no CUDA), and NumPy, which every backend uses for inputs and the reference check:

    python3 -m pip install numpy
    python3 -m pip install torch --index-url https://download.pytorch.org/whl/cpu

Usage (from the repository root, after `cargo build --release`):

    python3 tools/peers/pytorch_core.py variants/peers.toml --backend sdpa --out results/peers-pytorch-sdpa
"""

import argparse
import concurrent.futures
import datetime
import glob
import json
import os
import platform
import shutil
import subprocess
import sys
import time

IMPLEMENTATIONS = {
    "sdpa": "pytorch-sdpa",
    "matmul": "pytorch-matmul",
    "numpy": "numpy-matmul",
}
LINE_BYTES = 64
RESULTS_FORMAT = "attnbench-results/1"
GRID_FORMAT = "attnbench-grid/1"
# Relative error against the float64 reference above which a point is recorded as failed.
MAX_REL_ERR = 1e-3
# Reference check on at most this many (query, key) score entries per sequence and head slice.
CHECK_HEADS = 4
CHECK_QUERIES = 64


def find_attnbench(given):
    """The attnbench binary: --attnbench, $ATTNBENCH, on PATH, or this checkout's build."""
    if given:
        return given
    for candidate in [os.environ.get("ATTNBENCH"), shutil.which("attnbench")]:
        if candidate:
            return candidate
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for profile in ["release", "debug"]:
        path = os.path.join(root, "target", profile, "attnbench")
        if os.path.exists(path):
            return path
    sys.exit("attnbench not found: build it (cargo build --release) or pass --attnbench PATH")


def read_grid(attnbench, experiment):
    """The experiment's resolved grid, as `attnbench validate FILE --json` prints it."""
    out = subprocess.run(
        [attnbench, "validate", experiment, "--json"], capture_output=True, text=True
    )
    if out.returncode != 0:
        sys.exit(f"attnbench validate {experiment} failed:\n{out.stderr}")
    grid = json.loads(out.stdout)
    if grid.get("format") != GRID_FORMAT:
        sys.exit(f"attnbench validate --json wrote format {grid.get('format')!r}, not {GRID_FORMAT}")
    return grid


def largest_cache_bytes():
    """CPU 0's largest data or unified cache, from sysfs; 256 MiB where it does not say."""
    sizes = []
    for index in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*"):
        try:
            kind = open(os.path.join(index, "type")).read().strip()
            size = open(os.path.join(index, "size")).read().strip()
        except OSError:
            continue
        if kind == "Instruction":
            continue
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(size[-1:], 1)
        digits = size.rstrip("KMG")
        if digits.isdigit():
            sizes.append(int(digits) * scale)
    return max(sizes) if sizes else 256 << 20


def flush_buffer_bytes():
    """Twice the largest cache, at least 64 MiB, at most 2 GiB (src/harness/flush.rs)."""
    return min(max(2 * largest_cache_bytes(), 64 << 20), 2 << 30)


def flush_buffer(np):
    """The eviction buffer, with distinct non-zero contents (pages of zeros could all map one
    shared zero page), its pages touched."""
    lines = flush_buffer_bytes() // LINE_BYTES
    return np.repeat((np.arange(lines) % 256).astype(np.uint8) | 1, LINE_BYTES)


def sample(measure, step, flush):
    """attnbench's sampling (src/harness/measure.rs): the timed samples of `step`, ns."""
    warmup_start = time.perf_counter()
    for _ in range(measure["warmup_iters"]):
        if time.perf_counter() - warmup_start >= measure["warmup_ms"] / 1e3:
            break
        step()
    samples = []
    start = time.perf_counter()
    budget = measure["time_budget_ms"] / 1e3
    while len(samples) < measure["max_samples"] and (
        len(samples) < measure["min_samples"] or time.perf_counter() - start < budget
    ):
        if measure["flush_caches"]:
            flush()
        t0 = time.perf_counter_ns()
        step()
        samples.append(float(time.perf_counter_ns() - t0))
    return samples


def stats(samples):
    """Median, MAD, min, max and count, as attnbench's SampleStats computes them."""

    def median(sorted_values):
        n = len(sorted_values)
        mid = n // 2
        return sorted_values[mid] if n % 2 else (sorted_values[mid - 1] + sorted_values[mid]) / 2

    ordered = sorted(samples)
    m = median(ordered)
    return {
        "median_ns": m,
        "mad_ns": median(sorted(abs(s - m) for s in ordered)),
        "min_ns": ordered[0],
        "max_ns": ordered[-1],
        "samples": len(ordered),
    }


def causal_mask(core):
    """`(queries, keys)` booleans, True where a query sees a key: the queries are the last
    `queries` positions, so query i sees keys 0..=first_query_position + i."""
    import numpy as np

    first = core["first_query_position"]
    rows = np.arange(core["queries"])[:, None] + first
    return np.arange(core["keys"])[None, :] <= rows


def reference(q, k, v, core, heads, queries):
    """float64 attention of query heads `heads` and queries `queries` of sequence 0, from
    NumPy arrays q (B, H, L, D), k (B, G, S, D), v (B, G, S, Dv): `(len(heads), len(queries), Dv)`."""
    import numpy as np

    group = core["n_heads"] // core["n_kv_heads"]
    # Written out again, not `causal_mask`, so that a wrong mask there shows here: the query
    # at index i is the token at position keys - queries + i.
    first = core["keys"] - core["queries"]
    mask = np.array([[j <= first + i for j in range(core["keys"])] for i in queries])
    out = []
    for h in heads:
        qh = q[0, h, queries].astype(np.float64)
        kh = k[0, h // group].astype(np.float64)
        vh = v[0, h // group].astype(np.float64)
        scores = qh @ kh.T * core["scale"]
        scores = np.where(mask, scores, -np.inf)
        scores -= scores.max(axis=1, keepdims=True)
        p = np.exp(scores)
        out.append((p / p.sum(axis=1, keepdims=True)) @ vh)
    return np.stack(out)


def check(out, q, k, v, core):
    """The largest error of `out` (B, H, L, Dv) against the float64 reference on a slice of
    heads and queries, relative to the reference's largest value; None when all is well."""
    import numpy as np

    if not np.all(np.isfinite(out)):
        return "the attention core produced a non-finite output"
    heads = sorted({0, core["n_heads"] - 1} | set(range(min(CHECK_HEADS, core["n_heads"]))))
    queries = sorted({0, core["queries"] - 1} | set(range(min(CHECK_QUERIES, core["queries"]))))
    want = reference(q, k, v, core, heads, queries)
    got = out[0][heads][:, queries].astype(np.float64)
    err = np.abs(got - want).max() / max(np.abs(want).max(), 1e-30)
    if not err <= MAX_REL_ERR:
        return f"output differs from the float64 reference by {err:.3g} (relative), above {MAX_REL_ERR}"
    return None


class NumpyBackend:
    """numpy-matmul: scores by broadcast matmul over the KV groups, softmax, weighted sum."""

    implementation = "numpy-matmul"

    def __init__(self, max_threads):
        # BLAS reads its thread count when NumPy loads: the largest of the grid, then per
        # point through threadpoolctl when it is installed.
        for var in ["OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"]:
            os.environ.setdefault(var, str(max_threads))
        import numpy as np

        self.np = np
        try:
            import threadpoolctl

            self.threadpoolctl = threadpoolctl
        except ImportError:
            self.threadpoolctl = None
        self.buffer = flush_buffer(np)
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, max_threads))
        self.threads = 1

    def versions(self):
        return {
            "numpy": self.np.__version__,
            "python": platform.python_version(),
            "blas_threads": (
                "per point (threadpoolctl)"
                if self.threadpoolctl
                else f"{os.environ['OPENBLAS_NUM_THREADS']} (environment; threadpoolctl not installed)"
            ),
        }

    def set_threads(self, threads):
        self.threads = threads
        if self.threadpoolctl:
            self.threadpoolctl.threadpool_limits(threads)

    def flush(self):
        """One byte per cache line of the buffer, split over the point's threads (NumPy's
        reductions release the GIL)."""
        chunks = self.np.array_split(self.buffer[::LINE_BYTES], self.threads)
        total = sum(self.pool.map(lambda c: int(c.sum(dtype=self.np.uint64)), chunks))
        return total

    def inputs(self, point, seed):
        np = self.np
        core, batch = point["core"], point["batch"]
        rng = np.random.default_rng(seed)
        q = rng.standard_normal((batch, core["n_heads"], core["queries"], core["qk_dim"]), np.float32)
        k = rng.standard_normal((batch, core["n_kv_heads"], core["keys"], core["qk_dim"]), np.float32)
        if core["values_in_keys"]:
            v = k[..., : core["v_dim"]]
        else:
            v = rng.standard_normal((batch, core["n_kv_heads"], core["keys"], core["v_dim"]), np.float32)
        return q, k, v

    def kv_bytes(self, k, v, core):
        return k.nbytes + (0 if core["values_in_keys"] else v.nbytes)

    def prepare(self, q, k, v, core):
        """The timed call and the way to read its output as a NumPy array."""
        np = self.np
        batch, heads, group = q.shape[0], core["n_heads"], core["n_heads"] // core["n_kv_heads"]
        length = core["queries"]
        qg = q.reshape(batch, core["n_kv_heads"], group, length, core["qk_dim"])
        kt = k.swapaxes(-1, -2)[:, :, None]
        vg = v[:, :, None]
        mask = None if length == 1 else causal_mask(core)
        scale = np.float32(core["scale"])

        def step():
            scores = np.matmul(qg, kt) * scale
            if mask is not None:
                scores = np.where(mask, scores, np.float32(-np.inf))
            scores -= scores.max(axis=-1, keepdims=True)
            np.exp(scores, out=scores)
            scores /= scores.sum(axis=-1, keepdims=True)
            return np.matmul(scores, vg).reshape(batch, heads, length, core["v_dim"])

        return step, lambda out: out


class TorchBackend:
    """pytorch-sdpa and pytorch-matmul."""

    def __init__(self, kind, max_threads):
        import numpy as np
        import torch

        self.np, self.torch, self.kind = np, torch, kind
        self.implementation = IMPLEMENTATIONS[kind]
        self.buffer = torch.from_numpy(flush_buffer(np))

    def versions(self):
        torch = self.torch
        return {
            "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "mkldnn": str(torch.backends.mkldnn.is_available()),
            "mkl": str(torch.backends.mkl.is_available()),
            "parallel_backend": next(
                (
                    line.split(":", 1)[1].strip()
                    for line in torch.__config__.parallel_info().splitlines()
                    if "parallel backend" in line
                ),
                "unknown",
            ),
            "python": platform.python_version(),
        }

    def set_threads(self, threads):
        self.torch.set_num_threads(threads)

    def flush(self):
        """One byte per cache line, summed by PyTorch over its threads (the point's)."""
        return int(self.buffer[::LINE_BYTES].sum())

    def inputs(self, point, seed):
        # NumPy draws the inputs (the same as the NumPy backend's), PyTorch shares its memory.
        q, k, v = NumpyBackend.inputs(self, point, seed)
        torch = self.torch
        tk = torch.from_numpy(k)
        tv = tk[..., : point["core"]["v_dim"]] if point["core"]["values_in_keys"] else torch.from_numpy(v)
        return torch.from_numpy(q), tk, tv

    def kv_bytes(self, k, v, core):
        storage = k.untyped_storage().nbytes()
        return storage + (0 if core["values_in_keys"] else v.untyped_storage().nbytes())

    def prepare(self, q, k, v, core):
        torch = self.torch
        batch, heads, group = q.shape[0], core["n_heads"], core["n_heads"] // core["n_kv_heads"]
        scale = core["scale"]

        length = core["queries"]
        if length == 1:
            mask, is_causal = None, False
        elif core["first_query_position"] == 0:
            mask, is_causal = None, True
        else:
            mask, is_causal = torch.from_numpy(causal_mask(core)), False
        if self.kind == "sdpa":
            sdpa = torch.nn.functional.scaled_dot_product_attention
            # The KV heads go in as they are: `enable_gqa` (PyTorch 2.5 and later) lets each
            # group of query heads read its KV head without a copy, as Hugging Face's SDPA
            # attention does when it is available. Repeating them first (the older
            # `repeat_kv`) copies the whole cache every step.
            gqa = {"enable_gqa": True} if group > 1 else {}

            def step():
                return sdpa(q, k, v, attn_mask=mask, is_causal=is_causal, scale=scale, **gqa)
        else:
            # The group's query heads as the rows of one matrix per KV head, so each KV head
            # is read in place (no repeated copy of the cache), as the NumPy backend does.
            g = core["n_kv_heads"]
            grouped_mask = None if length == 1 else torch.from_numpy(causal_mask(core)).repeat(group, 1)

            def step():
                qg = q.reshape(batch, g, group * length, q.shape[-1])
                scores = torch.matmul(qg, k.transpose(-1, -2)) * scale
                if grouped_mask is not None:
                    scores = scores.masked_fill(~grouped_mask, float("-inf"))
                out = torch.matmul(torch.softmax(scores, dim=-1), v)
                return out.reshape(batch, heads, length, out.shape[-1])

        def timed():
            with torch.inference_mode():
                return step()

        return timed, lambda out: out.numpy()


def measure_point(backend, point, measure, seed):
    """Times one point: the samples (ns) and the KV bytes of its tensors; raises on failure."""
    backend.set_threads(point["threads"])
    q, k, v = backend.inputs(point, seed)
    step, as_numpy = backend.prepare(q, k, v, point["core"])
    arrays = [x.numpy() if hasattr(x, "numpy") else x for x in (q, k, v)]
    problem = check(as_numpy(step()), *arrays, point["core"])
    if problem:
        raise RuntimeError(problem)
    return sample(measure, step, backend.flush), backend.kv_bytes(k, v, point["core"])


def peer_record(point, implementation, samples, kv_bytes, machine):
    """The point's attnbench record (from `validate --json`) as a peer measured it: the core
    alone, its step the core's samples."""
    r = with_implementation(point["record"], implementation)
    r["projection_flops"] = 0
    r["flops"] = r["attention_flops"]
    r["bytes"] = r["core_bytes"]
    r["params"] = 0
    s = stats(samples)
    median = s["median_ns"]
    ideal = None
    if machine:
        t = str(r["threads"])
        peak, bandwidth = machine["matmul_gflops"].get(t), machine["read_gbps"].get(t)
        if peak and bandwidth:
            ideal = max(r["flops"] / peak, r["bytes"] / bandwidth)
    rate = {
        "gflops": r["flops"] / median,
        "gbps": r["bytes"] / median,
        "ideal_ns": ideal,
        "roofline_pct": None if ideal is None else 100.0 * ideal / median,
    }
    r.update(s)
    r.update(rate)
    r["tokens_per_s"] = r["batch"] * r["seq_len"] / (median * 1e-9)
    r.update({"core_median_ns": median, "core_mad_ns": s["mad_ns"], "core_samples": s["samples"]})
    r.update({f"core_{name}": value for name, value in rate.items()})
    r["core_share_pct"] = 100.0
    r["kv_cache_bytes"] = kv_bytes
    padding = kv_bytes - r["kv_cache_bytes_analytic"]
    r["kv_cache_padding_bytes"] = padding if padding >= 0 else None
    r["samples_ns"] = samples
    r["core_samples_ns"] = samples
    return r


def with_implementation(record, implementation):
    """`record` with its `implementation`, placed where attnbench writes it (after `kernel`;
    attnbench leaves it out at its default), so the file reads and writes back unchanged."""
    r = {}
    for key, value in record.items():
        if key != "implementation":
            r[key] = value
        if key == "kernel":
            r["implementation"] = implementation
    r.setdefault("implementation", implementation)
    return r


def failed_record(point, implementation, error):
    r = with_implementation(point["record"], implementation)
    r.update({"projection_flops": 0, "params": 0})
    r["flops"], r["bytes"] = r["attention_flops"], r["core_bytes"]
    r["error"] = error
    return r


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def memory_bytes():
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def environment(grid, backend, threads):
    """attnbench's environment record, with what measured the set: the implementation, its
    versions and backend, and the attnbench that resolved the grid (rustc, crate_version and
    git_revision are that binary's)."""
    build = grid["attnbench"]
    return {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count() or 1,
        "threads": threads,
        "memory_bytes": memory_bytes(),
        "os": f"{platform.system().lower()}/{platform.machine()}",
        "rustc": build["rustc"],
        "crate_version": build["crate_version"],
        "git_revision": build["git_revision"],
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command_line": " ".join(sys.argv),
        "implementation": backend.implementation,
        # Sorted by name, as attnbench writes it back.
        "implementation_versions": dict(sorted(backend.versions().items())),
    }


def read_machine(path):
    """The calibration (`results/machine.json`) the roofline columns use, or None."""
    if not path or not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment", help="an attnbench experiment file, e.g. variants/peers.toml")
    parser.add_argument("--backend", choices=sorted(IMPLEMENTATIONS), required=True)
    parser.add_argument("--out", help="results directory [default: results/NAME-IMPLEMENTATION]")
    parser.add_argument("--force", action="store_true", help="replace an existing results directory")
    parser.add_argument("--attnbench", help="the attnbench binary [default: $ATTNBENCH, PATH, target/]")
    parser.add_argument(
        "--machine",
        default="results/machine.json",
        help="calibration for the roofline columns (attnbench calibrate) [default: %(default)s; none if missing]",
    )
    parser.add_argument("--no-report", action="store_true", help="do not run `attnbench report` on the output")
    args = parser.parse_args()

    attnbench = find_attnbench(args.attnbench)
    grid = read_grid(attnbench, args.experiment)
    points = grid["points"]
    threads = sorted({p["threads"] for p in points})
    if args.backend == "numpy":
        backend = NumpyBackend(max(threads, default=1))
    else:
        backend = TorchBackend(args.backend, max(threads, default=1))
    out = args.out or os.path.join("results", f"{grid['experiment']['name']}-{backend.implementation}")
    results_json = os.path.join(out, "results.json")
    if os.path.exists(results_json) and not args.force:
        sys.exit(f"{out} already holds results (--force replaces them)")
    machine = read_machine(args.machine)
    measure, seed = grid["experiment"]["measure"], grid["experiment"]["seed"]

    records = []
    for i, point in enumerate(points):
        try:
            samples, kv_bytes = measure_point(backend, point, measure, seed + i)
            record = peer_record(point, backend.implementation, samples, kv_bytes, machine)
            shown = f"{record['median_ns'] / 1e6:.4g} ms"
        except Exception as e:  # a failure is data: the sweep goes on
            record = failed_record(point, backend.implementation, f"{type(e).__name__}: {e}")
            shown = record["error"]
        records.append(record)
        print(f"[{i + 1}/{len(points)}] {point['key']}: {shown}", file=sys.stderr)

    experiment = dict(grid["experiment"])
    versions = backend.versions()
    by = ", ".join(f"{k} {v}" for k, v in versions.items() if k in ("torch", "numpy", "cpu_capability"))
    experiment["description"] = (
        f"{backend.implementation} ({by}) timing the attention core alone on the shapes of "
        f"`{experiment['file']}`, by tools/peers/pytorch_core.py: its step is its core (no "
        f"projections). {experiment['description']}"
    )
    results = {
        "format": RESULTS_FORMAT,
        "experiment": experiment,
        "environment": environment(grid, backend, threads),
        "machine": machine,
        "skipped": grid["skipped"],
        "points": records,
    }
    os.makedirs(out, exist_ok=True)
    with open(results_json, "w") as f:
        json.dump(results, f, indent=2, allow_nan=False)
        f.write("\n")
    print(f"wrote {results_json}", file=sys.stderr)
    if not args.no_report:
        subprocess.run([attnbench, "report", out], check=True, stdout=subprocess.DEVNULL)


if __name__ == "__main__":
    main()
