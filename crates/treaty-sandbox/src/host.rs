//! The wasmtime host: a deterministic engine, the host ABI, compiled-module cache, and one
//! bounded run of a contract module.
//!
//! Determinism: fuel metering (the budget comes from the network parameters, and the same
//! module on the same input burns the same fuel everywhere), NaN canonicalisation, no threads,
//! no relaxed SIMD, no multi-memory or 64-bit memory, a fixed stack limit, and no imports but
//! the six functions of module `treaty` (see `docs/sandbox.md`).

use std::collections::BTreeMap;
use std::sync::Arc;

use treaty_core::{ContractOutput, SandboxLimits};
use wasmtime::{
    Caller, Config, Engine, ExternType, InstanceAllocationStrategy, InstancePre, Linker, Module, OptLevel, PoolingAllocationConfig,
    ResourceLimiter, Store, Trap,
};

use crate::error::SandboxError;

/// The maximum wasm call stack, in bytes.
pub const MAX_WASM_STACK: usize = 512 * 1024;

/// The host functions a module may import, with their (params, results) arity — all i32.
const HOST_ABI: &[(&str, usize, usize)] =
    &[("input_len", 0, 1), ("input_read", 1, 0), ("file_len", 2, 1), ("file_read", 3, 1), ("fail", 2, 0), ("finish", 2, 0)];

/// Per-run state the host functions see.
pub(crate) struct HostState {
    input: Arc<Vec<u8>>,
    files: Arc<BTreeMap<String, Arc<[u8]>>>,
    output: Option<Vec<u8>>,
    failure: Option<String>,
    max_memory: usize,
    memory_refused: Option<usize>,
}

impl ResourceLimiter for HostState {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.max_memory {
            self.memory_refused = Some(desired);
            return Err(wasmtime::Error::msg("memory limit"));
        }
        Ok(true)
    }
    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// How many contract instances may be alive at once (each holds one pooled memory slot).
/// Callers beyond this wait for a slot (see `Sandbox`): a verdict never depends on load.
pub const INSTANCE_SLOTS: u32 = 32;

/// Bytes of a pooled memory or table kept resident (zeroed, not decommitted) between uses.
const KEEP_RESIDENT: usize = 2 << 20;

/// Builds the deterministic engine. Instances come from a pool of pre-reserved slots, so a
/// verification does not map and unmap memory.
pub(crate) fn engine(limits: &SandboxLimits) -> Result<Engine, SandboxError> {
    // Threads and shared memory are not even compiled in (wasmtime's `threads` feature is off),
    // nor are WASI, GC or the component model.
    let mut c = Config::new();
    c.consume_fuel(true)
        .cranelift_nan_canonicalization(true)
        .cranelift_opt_level(OptLevel::Speed)
        .wasm_relaxed_simd(false)
        .relaxed_simd_deterministic(true)
        .wasm_multi_memory(false)
        .wasm_memory64(false)
        .max_wasm_stack(MAX_WASM_STACK);
    let mut pool = PoolingAllocationConfig::new();
    pool.total_core_instances(INSTANCE_SLOTS)
        .total_memories(INSTANCE_SLOTS)
        .total_tables(INSTANCE_SLOTS)
        .max_memories_per_module(1)
        .max_tables_per_module(1)
        .max_memory_size(usize::try_from(limits.max_memory_bytes).unwrap_or(usize::MAX))
        // A slot is reset for the next instance by zeroing its first pages rather than
        // handing them back to the kernel (madvise): that syscall made the kernel interrupt
        // the other core to flush its TLB at every verification (~3% of a node's CPU in the
        // issue benchmark). Contracts' memories are small.
        .linear_memory_keep_resident(KEEP_RESIDENT)
        .table_keep_resident(KEEP_RESIDENT)
        // Where the kernel can say which pages an instance touched (Linux 6.7+), only those
        // are reset, rather than all of the first KEEP_RESIDENT bytes.
        .pagemap_scan(wasmtime::Enabled::Auto);
    // Copy-on-write memory images stay on: copying data segments instead (`memory_init_cow
    // (false)`) saved the TLB flushes of first writes but changed the fuel a contract burns
    // (golden_fuel_for_a_fixed_transaction), and fuel is part of the protocol.
    c.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&c).map_err(|e| SandboxError::Engine(e.to_string()))
}

fn memory(caller: &mut Caller<'_, HostState>) -> wasmtime::Result<wasmtime::Memory> {
    caller.get_export("memory").and_then(|e| e.into_memory()).ok_or_else(|| wasmtime::Error::msg("module exports no memory"))
}

fn read_guest(caller: &mut Caller<'_, HostState>, ptr: i32, len: i32) -> wasmtime::Result<Vec<u8>> {
    let mem = memory(caller)?;
    let (ptr, len) = (ptr as u32 as usize, len as u32 as usize);
    let data = mem.data(&caller);
    let end = ptr.checked_add(len).filter(|&e| e <= data.len()).ok_or_else(|| wasmtime::Error::msg("out-of-bounds read"))?;
    Ok(data[ptr..end].to_vec())
}

fn write_guest(caller: &mut Caller<'_, HostState>, ptr: i32, bytes: &[u8]) -> wasmtime::Result<()> {
    let mem = memory(caller)?;
    mem.write(caller, ptr as u32 as usize, bytes).map_err(|_| wasmtime::Error::msg("out-of-bounds write"))
}

fn file(caller: &mut Caller<'_, HostState>, ptr: i32, len: i32) -> wasmtime::Result<Option<Arc<[u8]>>> {
    let name = read_guest(caller, ptr, len)?;
    let name = String::from_utf8(name).map_err(|_| wasmtime::Error::msg("file name is not UTF-8"))?;
    Ok(caller.data().files.get(&name).cloned())
}

/// Fuel every host call burns, whatever it does.
pub const HOST_CALL_FUEL: u64 = 10;

/// Burns the fuel of a host call that moves `bytes` bytes: [`HOST_CALL_FUEL`] plus one per
/// byte, as a guest loop copying them would at least. Fuel counts wasm instructions only, so an
/// uncharged call copying 64 MiB cost its caller four instructions: a contract looping on one
/// could keep a node's verifier busy for days on one transaction (found in review, 2026-11-24).
/// Charged before the work, so a call the budget cannot pay for does nothing.
fn charge(caller: &mut Caller<'_, HostState>, bytes: usize) -> wasmtime::Result<()> {
    let cost = HOST_CALL_FUEL.saturating_add(bytes as u64);
    let left = caller.get_fuel()?;
    if left < cost {
        caller.set_fuel(0)?;
        return Err(Trap::OutOfFuel.into());
    }
    caller.set_fuel(left - cost)
}

/// The linker holding the host ABI.
pub(crate) fn linker(engine: &Engine) -> Result<Linker<HostState>, SandboxError> {
    let mut l = Linker::new(engine);
    let wrap = |r: wasmtime::Result<&mut Linker<HostState>>| r.map(|_| ()).map_err(|e| SandboxError::Engine(e.to_string()));
    wrap(l.func_wrap("treaty", "input_len", |mut c: Caller<'_, HostState>| {
        charge(&mut c, 0)?;
        Ok(c.data().input.len() as i32)
    }))?;
    wrap(l.func_wrap("treaty", "input_read", |mut c: Caller<'_, HostState>, dst: i32| {
        let input = c.data().input.clone();
        charge(&mut c, input.len())?;
        write_guest(&mut c, dst, &input)
    }))?;
    wrap(l.func_wrap("treaty", "file_len", |mut c: Caller<'_, HostState>, p: i32, n: i32| {
        charge(&mut c, n.max(0) as usize)?;
        Ok(file(&mut c, p, n)?.map(|f| f.len() as i32).unwrap_or(-1))
    }))?;
    wrap(l.func_wrap("treaty", "file_read", |mut c: Caller<'_, HostState>, p: i32, n: i32, dst: i32| {
        charge(&mut c, n.max(0) as usize)?;
        match file(&mut c, p, n)? {
            Some(f) => {
                charge(&mut c, f.len())?;
                write_guest(&mut c, dst, &f)?;
                Ok(f.len() as i32)
            }
            None => Ok(-1),
        }
    }))?;
    wrap(l.func_wrap("treaty", "fail", |mut c: Caller<'_, HostState>, p: i32, n: i32| {
        let n = n.min(4096);
        charge(&mut c, n.max(0) as usize)?;
        if c.data().failure.is_some() {
            return Err(wasmtime::Error::msg("fail called twice"));
        }
        let msg = read_guest(&mut c, p, n)?;
        c.data_mut().failure = Some(String::from_utf8_lossy(&msg).into_owned());
        Ok(())
    }))?;
    wrap(l.func_wrap("treaty", "finish", |mut c: Caller<'_, HostState>, p: i32, n: i32| {
        charge(&mut c, n as u32 as usize)?;
        if c.data().output.is_some() {
            return Err(wasmtime::Error::msg("finish called twice: a contract gives one verdict"));
        }
        let out = read_guest(&mut c, p, n)?;
        c.data_mut().output = Some(out);
        Ok(())
    }))?;
    Ok(l)
}

/// A module compiled, checked against the ABI and pre-linked: ready to instantiate cheaply.
pub(crate) struct LoadedModule {
    pre: InstancePre<HostState>,
}

/// Compiles and checks a module: it must be wasm, import only the host ABI (with the right
/// types), and export `memory` and `treaty_verify: () -> ()`.
pub(crate) fn load(
    engine: &Engine,
    linker: &Linker<HostState>,
    bytes: &[u8],
    limits: &SandboxLimits,
) -> Result<LoadedModule, SandboxError> {
    if bytes.len() as u64 > limits.max_module_bytes {
        return Err(SandboxError::ModuleTooLarge { size: bytes.len() as u64, limit: limits.max_module_bytes });
    }
    if !bytes.starts_with(b"\0asm") {
        return Err(SandboxError::InvalidModule("not a WebAssembly module (no \\0asm header)".into()));
    }
    let module = Module::from_binary(engine, bytes).map_err(|e| SandboxError::InvalidModule(format!("{e:#}")))?;
    for import in module.imports() {
        let known = HOST_ABI.iter().find(|(name, _, _)| import.module() == "treaty" && import.name() == *name);
        let ok = match (known, import.ty()) {
            (Some((_, params, results)), ExternType::Func(f)) => {
                f.params().len() == *params
                    && f.results().len() == *results
                    && f.params().chain(f.results()).all(|t| matches!(t, wasmtime::ValType::I32))
            }
            _ => false,
        };
        if !ok {
            return Err(SandboxError::ForbiddenImport { module: import.module().to_string(), name: import.name().to_string() });
        }
    }
    let exports: Vec<(String, ExternType)> = module.exports().map(|e| (e.name().to_string(), e.ty())).collect();
    if !exports.iter().any(|(n, t)| n == "memory" && matches!(t, ExternType::Memory(_))) {
        return Err(SandboxError::InvalidModule("module does not export its memory as \"memory\"".into()));
    }
    if !exports
        .iter()
        .any(|(n, t)| n == "treaty_verify" && matches!(t, ExternType::Func(f) if f.params().len() == 0 && f.results().len() == 0))
    {
        return Err(SandboxError::InvalidModule("module does not export treaty_verify: () -> ()".into()));
    }
    let pre = linker.instantiate_pre(&module).map_err(|e| SandboxError::InvalidModule(format!("{e:#}")))?;
    Ok(LoadedModule { pre })
}

/// The outcome of one run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunOutcome {
    /// What the contract said.
    pub output: ContractOutput,
    /// Fuel consumed.
    pub fuel: u64,
}

/// Runs `treaty_verify` once on `input`, with the given data files and limits.
pub(crate) fn run(
    engine: &Engine,
    module: &LoadedModule,
    input: Arc<Vec<u8>>,
    files: Arc<BTreeMap<String, Arc<[u8]>>>,
    limits: &SandboxLimits,
) -> Result<RunOutcome, SandboxError> {
    let state = HostState { input, files, output: None, failure: None, max_memory: limits.max_memory_bytes as usize, memory_refused: None };
    let mut store = Store::new(engine, state);
    store.limiter(|s| s);
    store.set_fuel(limits.fuel_per_verification).map_err(|e| SandboxError::Engine(e.to_string()))?;
    let fuel_used = |store: &Store<HostState>| limits.fuel_per_verification - store.get_fuel().unwrap_or(0);
    let result = module
        .pre
        .instantiate(&mut store)
        .and_then(|instance| instance.get_typed_func::<(), ()>(&mut store, "treaty_verify"))
        .and_then(|f| f.call(&mut store, ()));
    let fuel = fuel_used(&store);
    if let Err(e) = result {
        let state = store.data();
        if let Some(requested) = state.memory_refused {
            return Err(SandboxError::MemoryLimit { requested: requested as u64, limit: limits.max_memory_bytes });
        }
        if let Some(msg) = &state.failure {
            return Err(SandboxError::Panicked(msg.clone()));
        }
        return Err(match e.downcast_ref::<Trap>() {
            Some(Trap::OutOfFuel) => SandboxError::OutOfFuel { budget: limits.fuel_per_verification },
            Some(Trap::StackOverflow) => SandboxError::StackOverflow,
            Some(t) => SandboxError::Trapped(t.to_string()),
            None => SandboxError::Trapped(format!("{e:#}")),
        });
    }
    let output = store.into_data().output.ok_or(SandboxError::NoVerdict)?;
    let output: ContractOutput = treaty_core::encoding::decode(&output).map_err(|e| SandboxError::MalformedVerdict(e.to_string()))?;
    Ok(RunOutcome { output, fuel })
}
