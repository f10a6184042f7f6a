//! # treaty-sqlite-pcache
//!
//! SQLite's own page cache (`pcache1`), wrapped to take out one wasted scan.
//!
//! When a B-tree page splits, SQLite's `balance_nonroot` puts the new sibling pages in
//! ascending page order by swapping their numbers through a temporary one: the pending-byte
//! page (`0x40000000 / page size + 1`, 262,145 at 4 KiB pages), which no real page ever has.
//! `pcache1` remembers the largest key it has held and never lowers it on a rekey, so after
//! such a swap it believes a page lies far beyond the end of the database. At the end of the
//! transaction the pager truncates the cache to the database's size, and `pcache1`, seeing a
//! range wider than its hash table, walks every slot and every cached page to find pages
//! that are not there. On a node's writer that is one walk of up to 16,384 pages per commit
//! with a split in it, several percent of a busy node's CPU, growing as its cache fills
//! (`docs/BENCHMARKS.md`, items 23 and 31).
//!
//! [`install`] registers, before SQLite starts, a page cache that forwards every call to
//! `pcache1` and keeps its own largest key, leaving out the temporary one while no page sits
//! at it. A truncation at or above that key has nothing to drop and is not passed on; any
//! other goes to `pcache1` unchanged. Nothing else differs: the pages, their memory, the
//! cache size and eviction are `pcache1`'s.

use std::cell::Cell;
use std::ffi::{c_int, c_uint, c_void};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use rusqlite::ffi;

/// The byte offset SQLite locks the file at, whose page it never uses (`PENDING_BYTE`; only a
/// test control of SQLite's own changes it, which would cost the saving, not correctness).
const PENDING_BYTE: u32 = 0x4000_0000;

/// Why the page cache could not be installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// SQLite had started (a connection was opened) before [`install`] was called: its page
    /// cache can only be chosen before that. SQLite runs on with its own, unchanged.
    AlreadyStarted,
    /// SQLite refused the configuration with this result code.
    Code(i32),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::AlreadyStarted => write!(f, "SQLite had already started, so its page cache could not be replaced"),
            Refused::Code(rc) => write!(f, "SQLite refused the page cache (result code {rc})"),
        }
    }
}

impl std::error::Error for Refused {}

/// `pcache1`'s methods, as SQLite had them before [`install`].
struct Methods(ffi::sqlite3_pcache_methods2);

// SAFETY: the table is written once, before SQLite uses it, and only read after: function
// pointers, and an argument pointer that is only handed back to SQLite's own functions.
unsafe impl Sync for Methods {}
// SAFETY: as for `Sync`: nothing in it is tied to the thread that read it.
unsafe impl Send for Methods {}

static INNER: OnceLock<Methods> = OnceLock::new();
static INSTALLED: OnceLock<Result<(), Refused>> = OnceLock::new();
static SKIPPED: AtomicU64 = AtomicU64::new(0);
static SWAPS: AtomicU64 = AtomicU64::new(0);

/// Installs the page cache for every SQLite connection this process opens afterwards. Call it
/// before the first connection, and before any other thread may open one (SQLite's
/// configuration is not synchronised with its start); later calls return the first call's
/// result. Refused (and harmless: SQLite keeps its own cache) when SQLite has already started.
pub fn install() -> Result<(), Refused> {
    *INSTALLED.get_or_init(|| {
        let mut inner = ffi::sqlite3_pcache_methods2 {
            iVersion: 0,
            pArg: std::ptr::null_mut(),
            xInit: None,
            xShutdown: None,
            xCreate: None,
            xCachesize: None,
            xPagecount: None,
            xFetch: None,
            xUnpin: None,
            xRekey: None,
            xTruncate: None,
            xDestroy: None,
            xShrink: None,
        };
        // SAFETY: SQLITE_CONFIG_GETPCACHE2 takes one pointer to a methods table and copies the
        // current one into it; `inner` is such a table, alive for the call.
        let rc = unsafe { ffi::sqlite3_config(ffi::SQLITE_CONFIG_GETPCACHE2, &mut inner as *mut ffi::sqlite3_pcache_methods2) };
        if rc == ffi::SQLITE_MISUSE {
            return Err(Refused::AlreadyStarted);
        }
        if rc != ffi::SQLITE_OK {
            return Err(Refused::Code(rc));
        }
        let complete = inner.xCreate.is_some()
            && inner.xFetch.is_some()
            && inner.xUnpin.is_some()
            && inner.xRekey.is_some()
            && inner.xTruncate.is_some()
            && inner.xDestroy.is_some();
        if !complete {
            return Err(Refused::Code(ffi::SQLITE_ERROR));
        }
        let wrapped = ffi::sqlite3_pcache_methods2 {
            iVersion: inner.iVersion,
            pArg: inner.pArg,
            // Always set: a table without `xInit` makes SQLite put its default cache back.
            xInit: Some(x_init),
            xShutdown: inner.xShutdown.map(|_| x_shutdown as unsafe extern "C" fn(*mut c_void)),
            xCreate: Some(x_create),
            xCachesize: inner.xCachesize.map(|_| x_cachesize as unsafe extern "C" fn(*mut ffi::sqlite3_pcache, c_int)),
            xPagecount: inner.xPagecount.map(|_| x_pagecount as unsafe extern "C" fn(*mut ffi::sqlite3_pcache) -> c_int),
            xFetch: Some(x_fetch),
            xUnpin: Some(x_unpin),
            xRekey: Some(x_rekey),
            xTruncate: Some(x_truncate),
            xDestroy: Some(x_destroy),
            xShrink: inner.xShrink.map(|_| x_shrink as unsafe extern "C" fn(*mut ffi::sqlite3_pcache)),
        };
        if INNER.set(Methods(inner)).is_err() {
            return Err(Refused::Code(ffi::SQLITE_ERROR));
        }
        // SAFETY: SQLITE_CONFIG_PCACHE2 takes one pointer to a methods table and copies it;
        // every function in it is defined below and reads `INNER`, set just above.
        let rc = unsafe { ffi::sqlite3_config(ffi::SQLITE_CONFIG_PCACHE2, &wrapped as *const ffi::sqlite3_pcache_methods2) };
        match rc {
            ffi::SQLITE_OK => Ok(()),
            ffi::SQLITE_MISUSE => Err(Refused::AlreadyStarted),
            rc => Err(Refused::Code(rc)),
        }
    })
}

/// Truncations not passed on to `pcache1` because no page could be at or above their limit,
/// since this process started.
pub fn skipped_truncations() -> u64 {
    SKIPPED.load(Ordering::Relaxed)
}

/// Pages moved through the temporary key by B-tree rebalancing, since this process started:
/// each would have made the next truncation walk the whole cache.
pub fn temporary_key_swaps() -> u64 {
    SWAPS.load(Ordering::Relaxed)
}

/// One cache, as handed to SQLite: `pcache1`'s cache and what this wrapper keeps of it.
struct Cache {
    inner: *mut ffi::sqlite3_pcache,
    /// No page of this cache has a key above this one, leaving out `temp_key`.
    max_key: Cell<c_uint>,
    /// `balance_nonroot`'s temporary key at this cache's page size.
    temp_key: c_uint,
    /// A page sits at `temp_key` now (between the first and last rekey of a swap).
    at_temp: Cell<bool>,
}

fn methods() -> &'static ffi::sqlite3_pcache_methods2 {
    match INNER.get() {
        Some(m) => &m.0,
        // Unreachable: SQLite has these functions only after `INNER` is set. A C caller cannot
        // take a Rust panic, so abort rather than unwind.
        None => std::process::abort(),
    }
}

/// # Safety
/// `p` must be a pointer [`x_create`] returned and [`x_destroy`] has not freed.
unsafe fn cache<'a>(p: *mut ffi::sqlite3_pcache) -> &'a Cache {
    // SAFETY: by the caller's promise `p` is a live `Box<Cache>` made by `x_create`; SQLite
    // uses one cache from one connection at a time, so nothing else touches it meanwhile.
    unsafe { &*(p as *const Cache) }
}

macro_rules! inner {
    ($name:ident) => {
        match methods().$name {
            Some(f) => f,
            None => std::process::abort(),
        }
    };
}

unsafe extern "C" fn x_init(arg: *mut c_void) -> c_int {
    match methods().xInit {
        // SAFETY: forwarded unchanged; `arg` is pcache1's own argument.
        Some(f) => unsafe { f(arg) },
        None => ffi::SQLITE_OK,
    }
}

unsafe extern "C" fn x_shutdown(arg: *mut c_void) {
    // SAFETY: forwarded unchanged; `arg` is pcache1's own argument.
    unsafe { inner!(xShutdown)(arg) }
}

unsafe extern "C" fn x_create(page_size: c_int, extra: c_int, purgeable: c_int) -> *mut ffi::sqlite3_pcache {
    // SAFETY: forwarded unchanged.
    let inner = unsafe { inner!(xCreate)(page_size, extra, purgeable) };
    if inner.is_null() {
        return inner;
    }
    // SQLite's page sizes are powers of two from 512 to 65,536.
    let temp_key = PENDING_BYTE / page_size.max(1) as u32 + 1;
    // Out of memory here aborts the process, as any other allocation in it does.
    Box::into_raw(Box::new(Cache { inner, max_key: Cell::new(0), temp_key, at_temp: Cell::new(false) })) as *mut ffi::sqlite3_pcache
}

unsafe extern "C" fn x_cachesize(p: *mut ffi::sqlite3_pcache, pages: c_int) {
    // SAFETY: SQLite passes a cache `x_create` made; its `inner` is pcache1's.
    unsafe { inner!(xCachesize)(cache(p).inner, pages) }
}

unsafe extern "C" fn x_pagecount(p: *mut ffi::sqlite3_pcache) -> c_int {
    // SAFETY: as in `x_cachesize`.
    unsafe { inner!(xPagecount)(cache(p).inner) }
}

unsafe extern "C" fn x_fetch(p: *mut ffi::sqlite3_pcache, key: c_uint, create: c_int) -> *mut ffi::sqlite3_pcache_page {
    // SAFETY: as in `x_cachesize`.
    let c = unsafe { cache(p) };
    // SAFETY: forwarded unchanged to pcache1's cache.
    let page = unsafe { inner!(xFetch)(c.inner, key, create) };
    if !page.is_null() && key > c.max_key.get() {
        c.max_key.set(key);
    }
    page
}

unsafe extern "C" fn x_unpin(p: *mut ffi::sqlite3_pcache, page: *mut ffi::sqlite3_pcache_page, discard: c_int) {
    // SAFETY: as in `x_cachesize`; `page` is one of pcache1's pages.
    unsafe { inner!(xUnpin)(cache(p).inner, page, discard) }
}

unsafe extern "C" fn x_rekey(p: *mut ffi::sqlite3_pcache, page: *mut ffi::sqlite3_pcache_page, old: c_uint, new: c_uint) {
    // SAFETY: as in `x_cachesize`.
    let c = unsafe { cache(p) };
    // SAFETY: forwarded unchanged to pcache1's cache.
    unsafe { inner!(xRekey)(c.inner, page, old, new) };
    if new == c.temp_key {
        c.at_temp.set(true);
        SWAPS.fetch_add(1, Ordering::Relaxed);
        return;
    }
    if old == c.temp_key {
        c.at_temp.set(false);
    }
    if new > c.max_key.get() {
        c.max_key.set(new);
    }
}

unsafe extern "C" fn x_truncate(p: *mut ffi::sqlite3_pcache, limit: c_uint) {
    // SAFETY: as in `x_cachesize`.
    let c = unsafe { cache(p) };
    if limit > c.max_key.get() && !c.at_temp.get() {
        // No page has a key at or above `limit`: pcache1 would find nothing to drop.
        SKIPPED.fetch_add(1, Ordering::Relaxed);
        if cfg!(debug_assertions) {
            // Debug builds (every test of every crate) check that claim: asked anyway,
            // pcache1 drops nothing. A failure aborts the process, naming the limit.
            if let Some(count) = methods().xPagecount {
                // SAFETY: forwarded unchanged to pcache1's cache, as below.
                let before = unsafe { count(c.inner) };
                // SAFETY: as below.
                unsafe { inner!(xTruncate)(c.inner, limit) };
                // SAFETY: as above.
                let after = unsafe { count(c.inner) };
                assert_eq!(before, after, "a skipped page-cache truncation at {limit} would have dropped pages");
            }
        }
        return;
    }
    // SAFETY: forwarded unchanged to pcache1's cache.
    unsafe { inner!(xTruncate)(c.inner, limit) };
    if limit <= c.max_key.get() {
        c.max_key.set(limit.saturating_sub(1));
    }
    if c.temp_key >= limit {
        c.at_temp.set(false);
    }
}

unsafe extern "C" fn x_destroy(p: *mut ffi::sqlite3_pcache) {
    // SAFETY: SQLite passes a cache `x_create` made, for the last time: pcache1's is
    // destroyed, then the box `x_create` leaked is taken back and dropped.
    unsafe {
        inner!(xDestroy)(cache(p).inner);
        drop(Box::from_raw(p as *mut Cache));
    }
}

unsafe extern "C" fn x_shrink(p: *mut ffi::sqlite3_pcache) {
    // SAFETY: as in `x_cachesize`.
    unsafe { inner!(xShrink)(cache(p).inner) }
}
