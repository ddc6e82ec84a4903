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
//! freed). Fixing the mmap threshold also leaves glibc's trim threshold at
//! 128 KiB: every time the top of an arena was freed it went back to the
//! kernel, and the next part of the read path faulted it in again, page by
//! page (84,000 page faults and about 0.1 CPU-second per GiB read, measured
//! on the worker with `/proc/PID/stat` during `scripts/bench-s3.sh`'s
//! sequential read). The trim threshold is [`TRIM_THRESHOLD`] (24,000
//! faults: the first touch of the pages in use). What that keeps is handed
//! back by `malloc_trim` every [`IDLE_TRIM_EVERY`] and after a dataset is
//! gone.

/// Arenas glibc may create: threads beyond share them.
const ARENAS: libc::c_int = 2;
/// Blocks this large or larger are mapped (and unmapped) on their own.
const MMAP_THRESHOLD: libc::c_int = 8 * 1024 * 1024;
/// Free memory at the top of an arena is kept up to this much (a sequential
/// reader's prefetch window and then some).
const TRIM_THRESHOLD: libc::c_int = 64 * 1024 * 1024;
/// How often the worker hands freed memory back anyway.
pub const IDLE_TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// Tunes the allocator; call first thing in `main`, before any thread starts.
pub fn tune_allocator() {
    // SAFETY: mallopt only sets allocator parameters; called before any
    // other thread exists, so no allocation races with the change.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, ARENAS);
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
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
