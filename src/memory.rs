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
//! freed; the read path's 4 MiB parts stay in the arenas, where they are
//! reused without page faults). After a dataset is gone, freed memory is
//! handed back with `malloc_trim`.

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
