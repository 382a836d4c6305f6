"""Benchmark cjm-substrate's own host (the Python package) on the echo test capability.

Run with the interpreter of a venv that has cjm-substrate installed:

    VENV/bin/python compare_python.py --samples N --burst M [--data-dir DIR] [--echo-dir DIR]

The host is set up the way a cjm-substrate user sets it up, with default settings (journal,
diagnostics and empirical stores on, drift checks on, no cjm.yaml): a `CJMConfig` on the data
dir, the capability's v2.0 manifest (built by the same code `cjm-ctl install-all` runs,
introspecting the capability in this interpreter instead of a conda env) and its task
adapter's manifest in `DATA_DIR/manifests`, `CapabilityManager.discover_manifests()`, then
`load_capability`, which spawns `python -m cjm_substrate.core.worker` and waits for it.
Five queued jobs warm the worker and give admission its profile before anything is timed.

One JSON object goes to stdout; everything else (logs) to stderr. The figures:

- `load_ms`: one `CapabilityManager.load_capability` (spawn the worker, wait for /health,
  the config-schema and surface drift checks, /initialize with the schema defaults), in ms.
- `call_us`: median of N `await manager.execute_capability_async(ID, action="echo",
  text="a")` (one direct call through the manager to the warm worker), in µs.
- `job_us`: median of N `await queue.wait_for_job(await queue.submit(ID, action="echo",
  text="a"))` (one job through the JobQueue, submit to done, journaled), in µs.
- `burst_jobs_per_s`: M jobs submitted one after another, then all waited for; M divided
  by the time from the first submit to the last job done.
- `chain_us`: median of max(N // 3, 1) runs of a 3-node `Composition` (a: echo "a b";
  b: text = OutputRef(a, "text"); c: text = OutputRef(b, "text")), `submit_composition` to
  `wait_for_composition` done, in µs; null if the package has no composition API.

Medians are the sorted samples' element [len // 2], like `cjm-ctl bench`.
"""

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

NAME = "cjm-capability-echo"
KWARGS = {"action": "echo", "text": "a"}  # the execute-channel call of every figure
DEFAULT_ECHO_DIR = (Path(__file__).resolve().parents[3]
                    / "host/tests/fixtures/python/capability/cjm-capability-echo")


def fail(msg):
    print(f"compare_python: {msg}", file=sys.stderr)
    sys.exit(1)


def median_us(xs):
    return round(sorted(xs)[len(xs) // 2] * 1e7) / 10.0


def write_manifests(manifests, echo_dir):
    """Write the echo capability's and its task adapter's manifests, as cjm-ctl would."""
    from cjm_substrate import __version__
    from cjm_substrate.core.adapter_manifest import AdapterManifest
    from cjm_substrate.core.capability import derive_structural_surface
    from cjm_substrate.core.manifest_format import (CodeSection, DriftTracking, InstallSection,
                                                    ManifestV2, compute_config_schema_hash,
                                                    compute_structural_surface_hash,
                                                    write_manifest)
    sys.path.insert(0, str(echo_dir))  # the introspection runs in this interpreter
    from cjm_capability_echo import __version__ as echo_version
    from cjm_capability_echo.adapter import EchoTaskAdapter
    from cjm_capability_echo.capability import EchoCapability
    try:
        import tomllib
        project = tomllib.loads((echo_dir / "pyproject.toml").read_text())["project"]
    except Exception:
        project = {}
    now = datetime.now(timezone.utc).isoformat()
    cap = EchoCapability()
    schema = cap.get_config_schema()
    surface = derive_structural_surface(EchoCapability)
    manifest = ManifestV2(
        install=InstallSection(
            python_path=sys.executable, conda_env=NAME,
            env_vars={"PYTHONPATH": str(echo_dir)},  # the worker imports it from its source dir
            installed_at=now, installer_version=f"cjm-ctl {__version__}",
            package_source=str(echo_dir), mode="dev"),
        code=CodeSection(
            name=project.get("name", NAME), version=project.get("version", echo_version),
            description=project.get("description", ""),
            module=EchoCapability.__module__, class_name=EchoCapability.__name__,
            config_schema=schema, regenerated_at=now,
            worker_env=[dataclasses.asdict(s) for s in EchoCapability.WORKER_ENV],
            structural_surface=surface),
        drift_tracking=DriftTracking(
            config_schema_hash=compute_config_schema_hash(schema),
            structural_surface_hash=compute_structural_surface_hash(surface)),
    )
    manifests.mkdir(parents=True, exist_ok=True)
    write_manifest(manifests / f"{manifest.code.name}.json", manifest)
    proto = derive_structural_surface(EchoTaskAdapter.required_tool_protocol)
    adapter = AdapterManifest(
        name=f"{EchoTaskAdapter.__module__}.{EchoTaskAdapter.__name__}", version=echo_version,
        task_name=EchoTaskAdapter.task_name, module=EchoTaskAdapter.__module__,
        class_name=EchoTaskAdapter.__name__,
        required_tool_protocol=(f"{EchoTaskAdapter.required_tool_protocol.__module__}."
                                f"{EchoTaskAdapter.required_tool_protocol.__qualname__}"),
        protocol_members={"methods": proto["methods"], "properties": proto["properties"]},
        conda_env=NAME, generated_at=now)
    (manifests / f"adapter-{adapter.task_name}-{adapter.class_name}.json").write_text(
        json.dumps(adapter.to_dict(), indent=2))
    return manifest.code.name


async def run_job(queue, instance):
    from cjm_substrate.core.queue import JobStatus
    job = await queue.wait_for_job(await queue.submit(instance, **KWARGS))
    if job.status != JobStatus.completed:
        raise RuntimeError(f"job {job.id} ended {job.status.value}: {job.error}")


async def bench(data_dir, echo_dir, samples, burst):
    import cjm_substrate
    from cjm_substrate.core.config import CJMConfig, set_config
    from cjm_substrate.core.manager import CapabilityManager
    from cjm_substrate.core.queue import JobQueue
    try:
        from cjm_substrate.core.ports import Composition, CompositionNode, NodeState, OutputRef
    except ImportError:
        Composition = None  # no composition API in this version: chain_us is null

    cfg = CJMConfig(data_dir=data_dir)  # what `cjm-ctl --data-dir DIR` sets, minus a cjm.yaml
    set_config(cfg)
    name = write_manifests(cfg.manifests_dir, echo_dir)
    manager = CapabilityManager(search_paths=[cfg.manifests_dir])
    meta = next((m for m in manager.discover_manifests() if m.name == name), None)
    if meta is None:
        fail(f"cjm-substrate did not discover {name} in {cfg.manifests_dir}")
    t = time.perf_counter()
    if not manager.load_capability(meta):
        fail(f"cjm-substrate could not load {name} (its log lines above say why)")
    load_ms = round((time.perf_counter() - t) * 1e4) / 10.0
    # max_history >= burst: a finished job evicted from the history cannot be waited for.
    queue = JobQueue(deps=manager, max_history=max(100, burst))
    await queue.start()
    try:
        for _ in range(5):  # warm the worker; the first runs give admission a profile
            await run_job(queue, name)
        await manager.execute_capability_async(name, **KWARGS)

        xs = []
        for _ in range(samples):
            t = time.perf_counter()
            await manager.execute_capability_async(name, **KWARGS)
            xs.append(time.perf_counter() - t)
        call_us = median_us(xs)

        xs = []
        for _ in range(samples):
            t = time.perf_counter()
            await run_job(queue, name)
            xs.append(time.perf_counter() - t)
        job_us = median_us(xs)

        t = time.perf_counter()
        ids = [await queue.submit(name, **KWARGS) for _ in range(burst)]
        jobs = [await queue.wait_for_job(i) for i in ids]
        rate = round(burst / (time.perf_counter() - t))
        bad = [j for j in jobs if j.status.value != "completed"]
        if bad:
            raise RuntimeError(f"{len(bad)} burst jobs did not complete: {bad[0].error}")

        chain_us = None
        if Composition is not None:
            chain = Composition(nodes=[
                CompositionNode("a", name, {"action": "echo", "text": "a b"}),
                CompositionNode("b", name, {"action": "echo", "text": OutputRef("a", "text")}),
                CompositionNode("c", name, {"action": "echo", "text": OutputRef("b", "text")}),
            ])
            xs = []
            for _ in range(max(samples // 3, 1)):
                t = time.perf_counter()
                run = await queue.wait_for_composition(await queue.submit_composition(chain))
                xs.append(time.perf_counter() - t)
                if run.status != NodeState.completed:
                    raise RuntimeError(f"composition {run.id} ended {run.status.value}")
            chain_us = median_us(xs)
    finally:
        await queue.stop()
        manager.unload_all()
    return {"substrate_version": cjm_substrate.__version__,
            "python": ".".join(map(str, sys.version_info[:3])),
            "call_us": call_us, "job_us": job_us, "burst_jobs_per_s": rate,
            "chain_us": chain_us, "load_ms": load_ms, "samples": samples, "burst": burst}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=300, help="timed runs per median (>= 1)")
    p.add_argument("--burst", type=int, default=5000, help="jobs submitted at once (>= 1)")
    p.add_argument("--data-dir", type=Path, help="host data dir (default: a fresh temp dir, "
                   "removed at the end)")
    p.add_argument("--echo-dir", type=Path, default=DEFAULT_ECHO_DIR,
                   help="source dir of cjm-capability-echo (default: %(default)s)")
    a = p.parse_args()
    if a.samples < 1 or a.burst < 1:
        fail("--samples and --burst must be at least 1")
    echo_dir = a.echo_dir.resolve()
    if not (echo_dir / "cjm_capability_echo" / "capability.py").is_file():
        fail(f"no cjm-capability-echo source in {echo_dir} (pass --echo-dir)")
    try:
        import cjm_substrate  # noqa: F401
    except ImportError:
        fail(f"cjm_substrate is not importable by {sys.executable}; "
             "run this with the venv's python")
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    data_dir = (a.data_dir.resolve() if a.data_dir
                else Path(tempfile.mkdtemp(prefix="cjm-py-bench-")))
    try:
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries only the result
            result = asyncio.run(bench(data_dir, echo_dir, a.samples, a.burst))
    except SystemExit:
        raise
    except Exception as e:
        fail(f"{type(e).__name__}: {e}")
    finally:
        if a.data_dir is None:
            shutil.rmtree(data_dir, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
