//! The policy host: evaluates policy modules (see `cogward-policy-abi`) in wasmtime.
//!
//! - A module is validated and compiled once ([`PolicyHost::load`]) and cached by its sha256.
//! - A [`Prepared`] policy is a module plus its data document. It keeps a pool of initialised
//!   instances (instantiated from an `InstancePre` through the pooling allocator, data parsed
//!   once per instance), so a decision costs one guest call, no compilation and no data parsing.
//! - Every decision runs under hard limits: fuel (a deterministic step budget), an epoch deadline
//!   (a wall-clock guard), a linear-memory cap and an output-size cap. The module gets no
//!   capabilities: every import it declares traps.
//! - It fails closed: a trap, exhausted fuel, a deadline, a memory-limit hit or output that is
//!   not a well-formed decision is a `deny` carrying the [`Fault`]; the instance is discarded and
//!   the next decision gets a fresh one.

pub mod builtins;
#[cfg(feature = "fixtures")]
pub mod fixtures;

pub use cogward_policy_abi::{ABI_VERSION, Decision, Effect, Obligation, Request};
use cogward_policy_abi::{InitResult, exports, unpack};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wasmtime::{
    Config, Engine, ExternType, InstanceAllocationStrategy, InstancePre, Linker, Memory, Module,
    OptLevel, PoolingAllocationConfig, ResourceLimiter, Store, Trap, TypedFunc, ValType,
};

/// The hard limits every module runs under.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Fuel (roughly, wasm instructions) per decision; `None` turns metering off and leaves the
    /// deadline as the only guard.
    pub fuel: Option<u64>,
    /// Fuel for parsing the data document when an instance starts.
    pub init_fuel: u64,
    /// Wall-clock guard per guest call.
    pub deadline: Duration,
    /// Linear memory cap per instance, bytes.
    pub memory_bytes: usize,
    pub max_module_bytes: usize,
    pub max_output_bytes: usize,
    /// Instances the pooling allocator can hold at once, across all policies.
    pub max_instances: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            fuel: Some(10_000_000),
            init_fuel: 2_000_000_000,
            deadline: Duration::from_millis(100),
            memory_bytes: 64 << 20,
            max_module_bytes: 8 << 20,
            max_output_bytes: 64 << 10,
            max_instances: 256,
        }
    }
}

/// Why a module was refused at load time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    #[error("module is {size} bytes, more than the {max}-byte limit")]
    TooLarge { size: usize, max: usize },
    #[error("not a valid WebAssembly module: {0}")]
    Invalid(String),
    #[error("forbidden import {module}::{name}: policies get no capabilities beyond WASI stubs")]
    ForbiddenImport { module: String, name: String },
    #[error("missing or mistyped export `{0}` (see docs/policies.md for the ABI)")]
    Export(&'static str),
    #[error("module speaks policy ABI version {found}, this host speaks {ABI_VERSION}")]
    AbiVersion { found: i64 },
    #[error("module faulted while reporting its ABI version: {0}")]
    Fault(Fault),
}

/// What went wrong inside a module. Every fault makes the decision a `deny`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "fault", rename_all = "snake_case")]
pub enum Fault {
    #[error("policy trapped: {message}")]
    Trap { message: String },
    #[error("policy exhausted its fuel ({fuel})")]
    FuelExhausted { fuel: u64 },
    #[error("policy exceeded its {ms} ms deadline")]
    Deadline { ms: u64 },
    #[error("policy exceeded its memory limit ({bytes} bytes)")]
    MemoryLimit { bytes: usize },
    #[error("policy returned malformed output: {message}")]
    MalformedOutput { message: String },
    #[error("policy refused its data document: {message}")]
    Init { message: String },
    #[error("policy instance could not be created: {message}")]
    Instantiate { message: String },
}

/// One decision and how it was reached.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub decision: Decision,
    /// Set when the module failed; the decision is then a `deny` naming it.
    pub fault: Option<Fault>,
    pub elapsed: Duration,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Per-store state: the memory limiter, which remembers whether it refused a growth.
struct StoreState {
    memory_bytes: usize,
    memory_refused: bool,
}

impl ResourceLimiter for StoreState {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            self.memory_refused = true;
            // An error (rather than `Ok(false)`) traps at the `memory.grow`: a policy that
            // wants more memory than it may have is stopped, not left to mishandle -1.
            return Err(wasmtime::Error::msg("policy memory limit"));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }

    fn instances(&self) -> usize {
        1
    }
    fn tables(&self) -> usize {
        4
    }
    fn memories(&self) -> usize {
        1
    }
}

/// Increments the engine's epoch every [`EPOCH_TICK`] until dropped.
struct EpochTicker {
    stop: Arc<AtomicBool>,
}

const EPOCH_TICK: Duration = Duration::from_millis(5);

impl EpochTicker {
    fn start(engine: Engine) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::Builder::new()
            .name("policy-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .ok();
        Self { stop }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A validated, compiled module.
pub struct LoadedModule {
    pub sha256: String,
    pub size: usize,
    pre: InstancePre<StoreState>,
}

impl std::fmt::Debug for LoadedModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModule")
            .field("sha256", &self.sha256)
            .field("size", &self.size)
            .finish()
    }
}

/// The wasmtime engine, its module cache and its limits. One per process.
pub struct PolicyHost {
    engine: Engine,
    limits: Limits,
    modules: Mutex<HashMap<String, Arc<LoadedModule>>>,
    _ticker: EpochTicker,
}

impl std::fmt::Debug for PolicyHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyHost")
            .field("limits", &self.limits)
            .finish()
    }
}

impl PolicyHost {
    pub fn new(limits: Limits) -> Result<Self, String> {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_core_instances(limits.max_instances)
            .total_memories(limits.max_instances)
            .total_tables(limits.max_instances)
            .max_memories_per_module(1)
            .max_tables_per_module(4)
            .max_memory_size(limits.memory_bytes);
        let mut config = Config::new();
        config
            .cranelift_opt_level(OptLevel::Speed)
            .consume_fuel(limits.fuel.is_some())
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(|e| format!("wasmtime engine: {e:#}"))?;
        Ok(Self {
            _ticker: EpochTicker::start(engine.clone()),
            engine,
            limits,
            modules: Mutex::new(HashMap::new()),
        })
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Validate and compile a module, or return the cached one with the same sha256. Checks the
    /// size, the imports (WASI functions only, all stubbed to trap), the ABI exports and their
    /// types, and the ABI version the module reports.
    pub fn load(&self, wasm: &[u8]) -> Result<Arc<LoadedModule>, LoadError> {
        if wasm.len() > self.limits.max_module_bytes {
            return Err(LoadError::TooLarge {
                size: wasm.len(),
                max: self.limits.max_module_bytes,
            });
        }
        let sha256 = sha256_hex(wasm);
        if let Some(m) = self.cached(&sha256) {
            return Ok(m);
        }
        let module =
            Module::new(&self.engine, wasm).map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
        for import in module.imports() {
            let is_func = matches!(import.ty(), ExternType::Func(_));
            if import.module() != "wasi_snapshot_preview1" || !is_func {
                return Err(LoadError::ForbiddenImport {
                    module: import.module().to_string(),
                    name: import.name().to_string(),
                });
            }
        }
        check_exports(&module)?;
        let mut linker = Linker::<StoreState>::new(&self.engine);
        linker
            .define_unknown_imports_as_traps(&module)
            .map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
        let pre = linker
            .instantiate_pre(&module)
            .map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
        let loaded = LoadedModule {
            sha256: sha256.clone(),
            size: wasm.len(),
            pre,
        };
        let mut slot = self.instantiate(&loaded).map_err(LoadError::Fault)?;
        slot.arm(
            self.limits.fuel.unwrap_or(self.limits.init_fuel),
            &self.limits,
        );
        let version = slot
            .version
            .call(&mut slot.store, ())
            .map_err(|e| LoadError::Fault(slot.fault(e, &self.limits)))?;
        if version != ABI_VERSION as i32 {
            return Err(LoadError::AbiVersion {
                found: version.into(),
            });
        }
        let loaded = Arc::new(loaded);
        if let Ok(mut cache) = self.modules.lock() {
            cache.insert(sha256, loaded.clone());
        }
        Ok(loaded)
    }

    /// Drop a module from the cache (a refused push must not keep its compiled code alive).
    pub fn evict(&self, sha256: &str) {
        if let Ok(mut cache) = self.modules.lock() {
            cache.remove(sha256);
        }
    }

    fn cached(&self, sha256: &str) -> Option<Arc<LoadedModule>> {
        self.modules.lock().ok()?.get(sha256).cloned()
    }

    /// Bind a module to its data document: starts one instance and initialises it, so a data
    /// document the policy refuses is reported here, not at the first decision.
    pub fn prepare(
        self: &Arc<Self>,
        module: Arc<LoadedModule>,
        data: &[u8],
    ) -> Result<Arc<Prepared>, Fault> {
        let prepared = Prepared {
            host: self.clone(),
            module,
            data: data.into(),
            data_sha256: sha256_hex(data),
            idle: Mutex::new(Vec::new()),
        };
        let slot = prepared.fresh_slot()?;
        prepared.put_back(slot);
        Ok(Arc::new(prepared))
    }

    fn instantiate(&self, module: &LoadedModule) -> Result<Slot, Fault> {
        let mut store = Store::new(
            &self.engine,
            StoreState {
                memory_bytes: self.limits.memory_bytes,
                memory_refused: false,
            },
        );
        store.limiter(|s| s as &mut dyn ResourceLimiter);
        if self.limits.fuel.is_some() {
            let _ = store.set_fuel(self.limits.init_fuel);
        }
        store.set_epoch_deadline(ticks(self.limits.deadline));
        let instance = module
            .pre
            .instantiate(&mut store)
            .map_err(|e| Fault::Instantiate {
                message: format!("{e:#}"),
            })?;
        let missing = |name| Fault::Instantiate {
            message: format!("export {name} vanished"),
        };
        Ok(Slot {
            memory: instance
                .get_memory(&mut store, exports::MEMORY)
                .ok_or_else(|| missing(exports::MEMORY))?,
            version: instance
                .get_typed_func(&mut store, exports::ABI_VERSION)
                .map_err(|_| missing(exports::ABI_VERSION))?,
            alloc: instance
                .get_typed_func(&mut store, exports::ALLOC)
                .map_err(|_| missing(exports::ALLOC))?,
            init: instance
                .get_typed_func(&mut store, exports::INIT)
                .map_err(|_| missing(exports::INIT))?,
            evaluate: instance
                .get_typed_func(&mut store, exports::EVALUATE)
                .map_err(|_| missing(exports::EVALUATE))?,
            input: None,
            store,
        })
    }
}

fn ticks(deadline: Duration) -> u64 {
    (deadline.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64 + 1
}

fn check_exports(module: &Module) -> Result<(), LoadError> {
    let func = |name: &'static str, params: &[ValType], results: &[ValType]| {
        let ok = match module.get_export(name) {
            Some(ExternType::Func(f)) => {
                f.params()
                    .map(|p| p.to_string())
                    .eq(params.iter().map(|p| p.to_string()))
                    && f.results()
                        .map(|p| p.to_string())
                        .eq(results.iter().map(|p| p.to_string()))
            }
            _ => false,
        };
        if ok {
            Ok(())
        } else {
            Err(LoadError::Export(name))
        }
    };
    if !matches!(
        module.get_export(exports::MEMORY),
        Some(ExternType::Memory(_))
    ) {
        return Err(LoadError::Export(exports::MEMORY));
    }
    use ValType::{I32, I64};
    func(exports::ABI_VERSION, &[], &[I32])?;
    func(exports::ALLOC, &[I32], &[I32])?;
    func(exports::INIT, &[I32, I32], &[I64])?;
    func(exports::EVALUATE, &[I32, I32], &[I64])
}

/// One live instance of a module.
struct Slot {
    store: Store<StoreState>,
    memory: Memory,
    version: TypedFunc<(), i32>,
    alloc: TypedFunc<i32, i32>,
    init: TypedFunc<(i32, i32), i64>,
    evaluate: TypedFunc<(i32, i32), i64>,
    /// The guest's input buffer (pointer, capacity) from the last `cogward_alloc`.
    input: Option<(i32, usize)>,
}

/// The smallest input buffer asked for: most requests fit, so `alloc` is called once.
const MIN_INPUT_BUFFER: usize = 4096;

impl Slot {
    /// Fresh budget for the next guest call.
    fn arm(&mut self, fuel: u64, limits: &Limits) {
        if limits.fuel.is_some() {
            let _ = self.store.set_fuel(fuel);
        }
        self.store.set_epoch_deadline(ticks(limits.deadline));
    }

    /// Copy `input` into a guest buffer, call `f` on it and read back the JSON it returns.
    fn call(
        &mut self,
        f: TypedFunc<(i32, i32), i64>,
        input: &[u8],
        limits: &Limits,
    ) -> Result<Vec<u8>, Fault> {
        let malformed = |message: String| Fault::MalformedOutput { message };
        let len = i32::try_from(input.len()).map_err(|_| malformed("input too large".into()))?;
        let ptr = match self.input {
            Some((ptr, capacity)) if capacity >= input.len() => ptr,
            _ => {
                let capacity = input.len().max(MIN_INPUT_BUFFER);
                let ptr = self
                    .alloc
                    .call(&mut self.store, capacity as i32)
                    .map_err(|e| self.fault(e, limits))?;
                self.input = Some((ptr, capacity));
                ptr
            }
        };
        self.memory
            .write(&mut self.store, ptr as u32 as usize, input)
            .map_err(|_| malformed(format!("cogward_alloc returned an unusable buffer {ptr}")))?;
        let packed = f
            .call(&mut self.store, (ptr, len))
            .map_err(|e| self.fault(e, limits))?;
        let (out_ptr, out_len) = unpack(packed as u64);
        if out_len as usize > limits.max_output_bytes {
            return Err(malformed(format!(
                "{out_len}-byte output exceeds the {}-byte limit",
                limits.max_output_bytes
            )));
        }
        let mut out = vec![0; out_len as usize];
        self.memory
            .read(&self.store, out_ptr as usize, &mut out)
            .map_err(|_| malformed(format!("output at {out_ptr}+{out_len} is out of bounds")))?;
        Ok(out)
    }

    fn fault(&self, e: wasmtime::Error, limits: &Limits) -> Fault {
        if self.store.data().memory_refused {
            return Fault::MemoryLimit {
                bytes: limits.memory_bytes,
            };
        }
        match e.downcast_ref::<Trap>() {
            Some(Trap::OutOfFuel) => Fault::FuelExhausted {
                fuel: limits.fuel.unwrap_or(0),
            },
            Some(Trap::Interrupt) => Fault::Deadline {
                ms: limits.deadline.as_millis() as u64,
            },
            _ => Fault::Trap {
                message: format!("{e:#}").lines().next().unwrap_or("").to_string(),
            },
        }
    }
}

/// A module bound to its data document, with a pool of initialised instances.
pub struct Prepared {
    host: Arc<PolicyHost>,
    module: Arc<LoadedModule>,
    data: Box<[u8]>,
    data_sha256: String,
    idle: Mutex<Vec<Slot>>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("module_sha256", &self.module.sha256)
            .field("data_sha256", &self.data_sha256)
            .finish()
    }
}

/// Idle initialised instances kept per prepared policy.
const MAX_IDLE: usize = 8;

impl Prepared {
    pub fn module_sha256(&self) -> &str {
        &self.module.sha256
    }

    pub fn data_sha256(&self) -> &str {
        &self.data_sha256
    }

    fn fresh_slot(&self) -> Result<Slot, Fault> {
        let limits = &self.host.limits;
        let mut slot = self.host.instantiate(&self.module)?;
        slot.arm(limits.init_fuel, limits);
        let init = slot.init.clone();
        let out = slot.call(init, &self.data, limits)?;
        let result: InitResult =
            serde_json::from_slice(&out).map_err(|e| Fault::MalformedOutput {
                message: format!("init result: {e}"),
            })?;
        match result.error {
            Some(message) => Err(Fault::Init { message }),
            None => Ok(slot),
        }
    }

    fn put_back(&self, slot: Slot) {
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < MAX_IDLE
        {
            idle.push(slot);
        }
    }

    /// One decision. Never fails: a module fault is a `deny` with the fault attached, and the
    /// instance that faulted is discarded.
    pub fn evaluate(&self, request: &[u8]) -> Evaluation {
        let start = Instant::now();
        let result = self.try_evaluate(request);
        let elapsed = start.elapsed();
        match result {
            Ok(decision) => Evaluation {
                decision,
                fault: None,
                elapsed,
            },
            Err(fault) => Evaluation {
                decision: Decision::deny(fault.to_string()),
                fault: Some(fault),
                elapsed,
            },
        }
    }

    fn try_evaluate(&self, request: &[u8]) -> Result<Decision, Fault> {
        let limits = &self.host.limits;
        let idle = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let mut slot = match idle {
            Some(slot) => slot,
            None => self.fresh_slot()?,
        };
        slot.arm(limits.fuel.unwrap_or(0), limits);
        let evaluate = slot.evaluate.clone();
        let out = slot.call(evaluate, request, limits)?;
        let decision: Decision =
            serde_json::from_slice(&out).map_err(|e| Fault::MalformedOutput {
                message: e.to_string(),
            })?;
        self.put_back(slot);
        Ok(decision)
    }
}
