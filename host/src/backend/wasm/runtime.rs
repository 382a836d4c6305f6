//! `WasmRuntime`: one wasmtime `Engine` per host (component model, epoch interruption), the
//! epoch ticker, and the compile cache of precompiled components.
//!
//! Instances take their linear memories, tables and fiber stacks from a pool the engine reserves
//! once (wasmtime's pooling allocator, with copy-on-write memory images), so a fresh instance
//! costs a few µs instead of mapping and initializing memory each time. The pool is sized from
//! the machine ([`Allocation::for_machine`]); where it cannot be reserved (an address-space
//! limit, say) the engine maps memory per instance instead, and says so in the log.
//!
//! A component is compiled once: the precompiled form lands in the cache dir under a key of
//! the component's sha256 and the engine's compatibility hash (so a changed wasmtime or engine
//! configuration never loads a stale artifact), and the host keeps one `InstancePre` per
//! component in memory.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::bindings::CapabilityPre;
use super::instance::InstanceState;
use crate::backend::wasm::SandboxError;
use crate::error::{Error, Result};

/// How often the epoch advances: the granularity of deadlines and forced cancellation.
pub const EPOCH_TICK: Duration = Duration::from_millis(2);

/// How the engine allocates instances' memories, tables and stacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocation {
    /// From a pool reserved once, with room for `instances` component instances at a time
    /// (idle pooled instances included). Each linear memory slot is sized for wasm32's 4 GiB,
    /// so every `memory_limit_mb` grant fits; the grant itself is enforced per instance.
    Pooled {
        /// Component instances alive at once.
        instances: u32,
    },
    /// Mapped for each instance and unmapped after it.
    OnDemand,
}

impl Allocation {
    /// The pool for this machine: 32 instances per core, at least 128 and at most 1,024.
    /// Reserving it takes address space, not memory: about 4 GiB per slot (a wasm32
    /// memory's reach plus its guard), so at most 4 TiB per engine, and a process can hold
    /// many engines (a test binary does) before the 128 TiB of a 47-bit address space run
    /// out; past that, an engine falls back to mapping on demand.
    pub fn for_machine() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let instances = u32::try_from(cores.saturating_mul(32))
            .unwrap_or(u32::MAX)
            .clamp(128, 1024);
        Allocation::Pooled { instances }
    }

    /// The engine setting for this allocation.
    fn strategy(self) -> InstanceAllocationStrategy {
        match self {
            Allocation::OnDemand => InstanceAllocationStrategy::OnDemand,
            Allocation::Pooled { instances } => {
                // A component built for wasm32-wasip2 has a few core instances (the module
                // and the shims the component model adds), one memory and a table or two;
                // one with more memories takes more slots (a full pool is a shortage the
                // manager handles by unloading idle capabilities).
                // Where the kernel can say which pages a guest wrote (`PAGEMAP_SCAN`, Linux
                // 6.7+), only those are reset, so the first 2 MiB of a memory (a Rust
                // guest's 1 MiB stack, its data and the start of its heap) are kept: a
                // freed instance costs no `madvise` and the next one no page faults. Without
                // it every kept byte is zeroed on each reuse, so only the first 64 KiB.
                let keep_resident = if PoolingAllocationConfig::is_pagemap_scan_available() {
                    2 << 20
                } else {
                    64 << 10
                };
                let mut pool = PoolingAllocationConfig::new();
                pool.total_component_instances(instances)
                    .total_core_instances(instances.saturating_mul(4))
                    .total_memories(instances)
                    .total_tables(instances.saturating_mul(2))
                    .total_stacks(instances)
                    .max_memory_size(1 << 32)
                    .table_elements(TABLE_ELEMENTS)
                    // Checks at load, not reservations: room for large components (an
                    // interpreter compiled to wasm) and modules with several tables or
                    // memories, which the defaults (1 MiB, one of each) would refuse.
                    .max_component_instance_size(16 << 20)
                    .max_core_instance_size(4 << 20)
                    .max_tables_per_module(8)
                    .max_memories_per_module(4)
                    // A freed slot's first pages (a guest's tables, the start of its memory)
                    // are reset in place rather than given back to the kernel, and the rest
                    // is given back in batches of 8 regions (per shard of the pool): fewer
                    // page faults and TLB flushes on the next instance (a fresh instance
                    // 32 -> 22 µs here), while what a freed guest grew stays resident only
                    // until a few more instances end.
                    .table_keep_resident(256 << 10)
                    .linear_memory_keep_resident(keep_resident)
                    .pagemap_scan(Enabled::Auto)
                    .decommit_batch_size(8);
                InstanceAllocationStrategy::Pooling(pool)
            }
        }
    }
}

/// The most elements a guest's table may grow to (the store's limiter and the pool agree).
pub(crate) const TABLE_ELEMENTS: usize = 100_000;

/// A component file's identity, and its bytes when they had to be read.
struct Source {
    sha256: String,
    bytes: Option<Vec<u8>>,
}

/// A component compiled, linked against the host's imports, and checked to implement the
/// `cjm:capability` world: ready to instantiate cheaply, any number of times.
pub struct LoadedComponent {
    pub(crate) pre: CapabilityPre<InstanceState>,
    pub(crate) allocation: Allocation,
    path: PathBuf,
    sha256: String,
}

impl std::fmt::Debug for LoadedComponent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedComponent")
            .field("path", &self.path)
            .field("sha256", &self.sha256)
            .finish_non_exhaustive()
    }
}

impl LoadedComponent {
    /// Where the component was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The sha256 (hex) of the component's bytes.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }
}

/// The wasm engine of one host. Cheap to share (`Arc`).
pub struct WasmRuntime {
    engine: Engine,
    allocation: Allocation,
    linker: Linker<InstanceState>,
    cache_dir: Option<PathBuf>,
    engine_key: String,
    loaded: Mutex<HashMap<String, Arc<LoadedComponent>>>,
}

impl std::fmt::Debug for WasmRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmRuntime")
            .field("cache_dir", &self.cache_dir)
            .field("allocation", &self.allocation)
            .field("engine_key", &self.engine_key)
            .finish_non_exhaustive()
    }
}

impl WasmRuntime {
    /// An engine whose precompiled components are cached under `cache_dir` (none: compile
    /// in memory every time), with the instance pool sized for this machine.
    pub fn new(cache_dir: Option<PathBuf>) -> Result<Self> {
        Self::with_allocation(cache_dir, Allocation::for_machine())
    }

    /// An engine allocating instances as `wanted` says; a pool that cannot be reserved falls
    /// back to [`Allocation::OnDemand`] ([`WasmRuntime::allocation`] tells which).
    pub fn with_allocation(cache_dir: Option<PathBuf>, wanted: Allocation) -> Result<Self> {
        let engine_with = |allocation: Allocation| {
            let mut config = Config::new();
            config
                .wasm_component_model(true)
                .epoch_interruption(true)
                // A guest recursing without bound traps at this depth instead of exhausting
                // the host thread's stack.
                .max_wasm_stack(1024 * 1024)
                .allocation_strategy(allocation.strategy());
            Engine::new(&config)
        };
        let (engine, allocation) = match engine_with(wanted) {
            Ok(engine) => (engine, wanted),
            Err(e) if wanted != Allocation::OnDemand => {
                tracing::warn!(error = %format!("{e:#}"), ?wanted, "cannot reserve the wasm instance pool; instances are allocated on demand");
                let engine = engine_with(Allocation::OnDemand)
                    .map_err(|e| Error::Sandbox(SandboxError::Engine(e)))?;
                (engine, Allocation::OnDemand)
            }
            Err(e) => return Err(Error::Sandbox(SandboxError::Engine(e))),
        };

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| Error::Sandbox(SandboxError::Engine(e)))?;
        super::bindings::Capability::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .map_err(|e| Error::Sandbox(SandboxError::Engine(e)))?;

        // sha256 of the engine's compatibility hash input: unlike std's `DefaultHasher`, the
        // same across Rust releases, so a toolchain update does not orphan the cache.
        let mut hasher = ShaHasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let engine_key = hex::encode(&hasher.0.finalize()[..8]);

        if let Some(dir) = &cache_dir {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }

        // The ticker lives as long as the engine does — which is as long as any component or
        // instance made by it, not merely this runtime value — and ends when the last goes.
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("cjm-epoch".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(EPOCH_TICK);
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })
            .map_err(|e| Error::io("<epoch thread>", e))?;

        Ok(WasmRuntime {
            engine,
            allocation,
            linker,
            cache_dir,
            engine_key,
            loaded: Mutex::new(HashMap::new()),
        })
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// How the engine allocates instances (a pool, unless it could not be reserved).
    pub fn allocation(&self) -> Allocation {
        self.allocation
    }

    /// Loads the component at `path`: from memory if already loaded, else from the compile
    /// cache, else compiled (and cached). A file that is not a valid component implementing
    /// the `cjm:capability` world is an [`SandboxError::InvalidComponent`] naming the file.
    pub fn load(&self, path: &Path) -> Result<Arc<LoadedComponent>> {
        let source = self.source(path)?;
        let sha256 = source.sha256.clone();
        if let Some(found) = self.lock_loaded().get(&sha256) {
            return Ok(Arc::clone(found));
        }
        let component = self.compile_cached(path, source)?;
        let instance_pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| invalid(path, "its imports cannot be satisfied by the host", e))?;
        let pre = CapabilityPre::new(instance_pre)
            .map_err(|e| invalid(path, "it does not implement the cjm:capability world", e))?;
        let loaded = Arc::new(LoadedComponent {
            pre,
            allocation: self.allocation,
            path: path.to_owned(),
            sha256: sha256.clone(),
        });
        self.lock_loaded().insert(sha256, Arc::clone(&loaded));
        Ok(loaded)
    }

    /// Forgets components loaded in memory (the on-disk cache stays): the next load reads the
    /// precompiled artifact again. Used to measure a cold load.
    pub fn forget_loaded(&self) {
        self.lock_loaded().clear();
    }

    fn lock_loaded(&self) -> parking_lot::MutexGuard<'_, HashMap<String, Arc<LoadedComponent>>> {
        self.loaded.lock()
    }

    /// The cache file of a component with `sha256`.
    pub fn cache_path(&self, sha256: &str) -> Option<PathBuf> {
        self.cache_dir
            .as_ref()
            .map(|dir| dir.join(format!("{sha256}-{}.cwasm", self.engine_key)))
    }

    /// The sha256 of the component at `path`, from its stat sidecar in the cache dir when the
    /// file's size and mtime are those recorded (a host restart then never re-reads and
    /// re-hashes megabytes of unchanged components), else by reading and hashing it.
    fn source(&self, path: &Path) -> Result<Source> {
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        let stamp = format!("{} {mtime}", meta.len());
        let sidecar = self.cache_dir.as_ref().map(|dir| {
            let key = hex::encode(Sha256::digest(path.to_string_lossy().as_bytes()));
            dir.join("sources").join(format!("{key}.stat"))
        });
        if let Some(recorded) = sidecar
            .as_ref()
            .and_then(|f| std::fs::read_to_string(f).ok())
            && let Some((seen, sha256)) = recorded.rsplit_once(' ')
            && seen == stamp
            && sha256.len() == 64
        {
            return Ok(Source {
                sha256: sha256.to_owned(),
                bytes: None,
            });
        }
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let sha256 = hex::encode(Sha256::digest(&bytes));
        if let Some(sidecar) = sidecar {
            // Only an optimisation: a failure to record costs a re-hash next time.
            let write = || -> std::io::Result<()> {
                if let Some(dir) = sidecar.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                let tmp = sidecar.with_extension(format!("tmp{}", std::process::id()));
                std::fs::write(&tmp, format!("{stamp} {sha256}"))?;
                std::fs::rename(&tmp, &sidecar)
            };
            let _ = write();
        }
        Ok(Source {
            sha256,
            bytes: Some(bytes),
        })
    }

    fn compile_cached(&self, path: &Path, source: Source) -> Result<Component> {
        let cached = self.cache_path(&source.sha256);
        // Read into memory rather than mapping the file: a mapped cache file truncated by
        // another process would crash the host with SIGBUS.
        if let Some(bytes) = cached.as_ref().and_then(|c| std::fs::read(c).ok()) {
            // SAFETY: the file is in the host's own cache dir, written by `store_cache` below
            // from `Component::serialize` of this very engine configuration (the file name
            // carries the engine's compatibility hash), and wasmtime checks its header again.
            #[allow(unsafe_code)]
            let loaded = unsafe { Component::deserialize(&self.engine, &bytes) };
            match loaded {
                Ok(component) => return Ok(component),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "discarding unusable precompiled component");
                }
            }
        }
        let bytes = match source.bytes {
            Some(bytes) => bytes,
            None => std::fs::read(path).map_err(|e| Error::io(path, e))?,
        };
        check_header(path, &bytes)?;
        let component = self.compile(path, &bytes)?;
        if let Some(cached) = cached {
            self.store_cache(&cached, &component);
        }
        Ok(component)
    }

    fn compile(&self, path: &Path, bytes: &[u8]) -> Result<Component> {
        Component::from_binary(&self.engine, bytes)
            .map_err(|e| invalid(path, "it is not a valid wasm component", e))
    }

    /// Writes the precompiled form atomically (temp file + rename). A failure only costs a
    /// recompilation next time, so it is logged, not returned.
    fn store_cache(&self, cached: &Path, component: &Component) {
        let write = || -> std::io::Result<()> {
            let bytes = component.serialize().map_err(std::io::Error::other)?;
            let tmp = cached.with_extension(format!("tmp{}", std::process::id()));
            std::fs::write(&tmp, bytes)?;
            std::fs::rename(&tmp, cached)
        };
        if let Err(e) = write() {
            tracing::warn!(path = %cached.display(), error = %e, "cannot write the component cache");
        }
    }
}

/// Feeds what a `Hash` impl writes into sha256.
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(&self) -> u64 {
        0
    }
}

fn invalid(path: &Path, reason: &str, e: wasmtime::Error) -> Error {
    Error::Sandbox(SandboxError::InvalidComponent {
        path: path.to_owned(),
        reason: format!("{reason}: {e:#}"),
        source: Some(e),
    })
}

/// Tells the common mistakes apart before the engine's own, terser errors: not wasm at all,
/// a core module instead of a component, a file cut short.
fn check_header(path: &Path, bytes: &[u8]) -> Result<()> {
    let fail = |reason: &str| {
        Err(Error::Sandbox(SandboxError::InvalidComponent {
            path: path.to_owned(),
            reason: reason.to_owned(),
            source: None,
        }))
    };
    if bytes.is_empty() {
        return fail("the file is empty");
    }
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return fail("not a WebAssembly file (no \\0asm header)");
    }
    match &bytes[4..8] {
        [1, 0, 0, 0] => fail(
            "a core wasm module, not a component: build for wasm32-wasip2 (or wrap it with \
             `wasm-tools component new`)",
        ),
        [_, _, 1, 0] => Ok(()),
        _ => fail("unknown WebAssembly version or layer"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_is_reserved_or_the_engine_falls_back_to_on_demand() {
        assert!(matches!(
            Allocation::for_machine(),
            Allocation::Pooled { instances } if (128..=1024).contains(&instances)
        ));
        let small = Allocation::Pooled { instances: 8 };
        assert_eq!(
            WasmRuntime::with_allocation(None, small)
                .unwrap()
                .allocation(),
            small
        );
        // 100,000 memory slots of 4 GiB: 400 TiB, far past a 47-bit address space, so the
        // reservation fails and the engine maps memory per instance.
        let rt =
            WasmRuntime::with_allocation(None, Allocation::Pooled { instances: 100_000 }).unwrap();
        assert_eq!(rt.allocation(), Allocation::OnDemand);
    }

    #[test]
    fn header_check_names_the_mistake() {
        let p = Path::new("x.wasm");
        let msg = |b: &[u8]| check_header(p, b).unwrap_err().to_string();
        assert!(msg(b"").contains("empty"));
        assert!(msg(b"hello world").contains("not a WebAssembly file"));
        assert!(msg(b"\0asm\x01\0\0\0").contains("core wasm module"));
        assert!(check_header(p, b"\0asm\x0d\0\x01\0").is_ok());
    }
}
