//! # treaty-contract-sdk
//!
//! Contract authors write states and commands as serde types and a verification function
//!
//! ```ignore
//! fn verify(tx: &LedgerTransaction) -> Result<ContractVerdict, ContractRejection>
//! ```
//!
//! in ordinary Rust over [`treaty_core`], then export them with one macro:
//!
//! ```ignore
//! treaty_contract_sdk::export_contracts! {
//!     "com.example.Token" => token::verify,
//! }
//! ```
//!
//! Built for `wasm32-unknown-unknown`, the crate becomes a contract module: it exports
//! `treaty_verify` and imports only the host ABI in [`guest`] (documented in `docs/sandbox.md`).
//! Built natively, the same functions are available as [`treaty_core::NativeContracts`] through the
//! generated `native_contracts()`, so unit tests run exactly the code the sandbox runs.

pub use treaty_core;
pub use treaty_core::{ContractRejection, ContractVerdict, LedgerTransaction};

/// Rejects with a message unless `cond` holds: `require(outputs > 0, "no outputs")?`.
pub fn require(cond: bool, message: impl FnOnce() -> String) -> Result<(), ContractRejection> {
    if cond { Ok(()) } else { Err(ContractRejection::new(message())) }
}

/// Reads a data file (by path) from the transaction's attachments. In the sandbox this goes
/// through the host ABI; natively it reads the files registered with
/// [`native::set_data_files`].
pub fn data_file(path: &str) -> Option<Vec<u8>> {
    #[cfg(target_arch = "wasm32")]
    {
        guest::data_file(path)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        native::data_file(path)
    }
}

/// Native stand-ins for the host ABI, for unit tests.
#[cfg(not(target_arch = "wasm32"))]
pub mod native {
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    thread_local! {
        static FILES: RefCell<BTreeMap<String, Vec<u8>>> = const { RefCell::new(BTreeMap::new()) };
    }

    /// Makes `files` readable through [`crate::data_file`] on this thread.
    pub fn set_data_files(files: BTreeMap<String, Vec<u8>>) {
        FILES.with(|f| *f.borrow_mut() = files);
    }

    pub(crate) fn data_file(path: &str) -> Option<Vec<u8>> {
        FILES.with(|f| f.borrow().get(path).cloned())
    }
}

/// The guest side of the host ABI (module `treaty`). Only built for wasm32.
#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)]
pub mod guest {
    use treaty_core::{ContractInput, ContractOutput, ContractRejection, ContractVerdict, LedgerTransaction, encoding};

    #[link(wasm_import_module = "treaty")]
    unsafe extern "C" {
        fn input_len() -> i32;
        fn input_read(dst: *mut u8);
        fn file_len(path: *const u8, path_len: i32) -> i32;
        fn file_read(path: *const u8, path_len: i32, dst: *mut u8) -> i32;
        fn fail(msg: *const u8, msg_len: i32);
        fn finish(out: *const u8, out_len: i32);
    }

    fn report_failure(msg: &str) {
        // SAFETY: the host reads exactly `msg.len()` bytes from our memory at `msg`.
        unsafe { fail(msg.as_ptr(), msg.len() as i32) }
    }

    pub(crate) fn data_file(path: &str) -> Option<Vec<u8>> {
        // SAFETY: the host reads `path` (bounds-checked) and writes at most `n` bytes to `buf`.
        unsafe {
            let n = file_len(path.as_ptr(), path.len() as i32);
            if n < 0 {
                return None;
            }
            let mut buf = vec![0u8; n as usize];
            (file_read(path.as_ptr(), path.len() as i32, buf.as_mut_ptr()) == n).then_some(buf)
        }
    }

    /// Runs one verification: reads the input, dispatches to the named contract, hands back
    /// the output. Panics are reported to the host with their message before the module traps.
    pub fn run(dispatch: fn(&str, &LedgerTransaction) -> Option<Result<ContractVerdict, ContractRejection>>) {
        std::panic::set_hook(Box::new(|info| {
            let payload = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic".to_string());
            report_failure(&payload);
        }));
        // SAFETY: the host writes exactly `input_len()` bytes into the buffer.
        let input = unsafe {
            let n = input_len().max(0) as usize;
            let mut buf = vec![0u8; n];
            input_read(buf.as_mut_ptr());
            buf
        };
        let output: ContractOutput = match encoding::decode::<ContractInput>(&input) {
            Err(e) => Err(format!("contract input does not decode: {e}")),
            Ok(ContractInput { contract, tx }) => match dispatch(&contract, &tx) {
                None => Err(format!("this module does not define contract {contract}")),
                Some(Ok(v)) => Ok(v.summaries),
                Some(Err(r)) => Err(r.message),
            },
        };
        let bytes = encoding::encode(&output);
        // SAFETY: the host copies `bytes.len()` bytes from our memory before we return.
        unsafe { finish(bytes.as_ptr(), bytes.len() as i32) }
    }
}

/// Exports contracts by name: `export_contracts! { "com.example.Token" => token::verify }`.
///
/// Generates `CONTRACT_NAMES`, `native_contracts()` and, on wasm32, the `treaty_verify`
/// export. The crate using it must not `forbid(unsafe_code)` (the export is `no_mangle`).
#[macro_export]
macro_rules! export_contracts {
    ($($name:literal => $verify:path),+ $(,)?) => {
        /// The contracts this crate defines, by name.
        pub const CONTRACT_NAMES: &[&str] = &[$($name),+];

        /// These contracts as native verifiers, for unit tests and tools.
        pub fn native_contracts() -> $crate::treaty_core::NativeContracts {
            $crate::treaty_core::NativeContracts::new()$(.with($name, $verify))+
        }

        /// The module's entry point, called by the sandbox.
        #[cfg(target_arch = "wasm32")]
        #[allow(unsafe_code)]
        #[unsafe(no_mangle)]
        pub extern "C" fn treaty_verify() {
            $crate::guest::run(|name, tx| match name {
                $($name => Some($verify(tx)),)+
                _ => None,
            });
        }
    };
}
