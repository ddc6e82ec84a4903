//! How the agent's memory comes back (glibc malloc). Left alone, glibc gives
//! every thread that allocates an arena of its own (up to eight per core),
//! raises its mmap threshold to the largest block freed so far (so that a
//! once-freed 16 MiB buffer is from then on carved out of an arena and never
//! returned), and gives freed arena memory back to the kernel only from the
//! top of the heap. Measured with `cargo bench --bench dataset_cost`: 200
//! idle datasets held 180 MiB, and 230 MiB stayed after all were detached.
//!
//! So, before any thread starts: two arenas, and a fixed mmap threshold of
//! 8 MiB (blocks of 8 MiB and more are mapped on their own and unmapped when
//! freed). After a dataset is gone, freed memory is handed back with
//! `malloc_trim`.
//!
//! Fixing the mmap threshold leaves glibc's trim threshold at 128 KiB: the
//! top of an arena goes back to the kernel as soon as it is free. When the
//! read path copied every GET into a 4 MiB buffer of its own, that cost
//! 84,000 page faults per GiB read (the worker's `minflt` in
//! `/proc/PID/stat` during `scripts/bench-s3.sh`'s sequential read); since
//! bodies stay in the HTTP client's buffers (`crate::s3fs::chunked`) it is
//! 30,000. A 64 MiB trim threshold (15,000) or a 16 MiB top pad (18,600)
//! moved the CPU by less than run-to-run noise (0.55–0.63 s per GiB), and a
//! trim threshold that high keeps the second arena's free top resident for
//! good (`malloc_trim` does not shrink a non-main arena's top), so neither
//! is set.

/// Arenas glibc may create: threads beyond share them.
const ARENAS: libc::c_int = 2;
/// Blocks this large or larger are mapped (and unmapped) on their own.
const MMAP_THRESHOLD: libc::c_int = 8 * 1024 * 1024;

/// Tunes the allocator; call first thing in `main`, before any thread starts.
pub fn tune_allocator() {
    // SAFETY: mallopt only sets allocator parameters; called before any
    // other thread exists, so no allocation races with the change.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, ARENAS);
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}

/// Gives memory that was freed (a detached dataset's tables, buffers and
/// client) back to the kernel.
pub fn return_freed_memory() {
    // SAFETY: malloc_trim is thread-safe and only releases free pages.
    unsafe {
        libc::malloc_trim(0);
    }
}
