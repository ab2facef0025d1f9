//! Allocator settings for a small machine.
//!
//! glibc gives every thread that allocates its own malloc arena (up to 8 per core) and
//! keeps freed memory in each: with a walker, several workers and sled's threads, a
//! backup of 50,000 small files measured 127 MiB peak RSS with the defaults and 98 MiB
//! with two arenas, at the same speed. The Pi shares its RAM with MinIO, so the process
//! asks for two arenas before it starts any thread. Other C libraries (musl) have no
//! such knob and need none.

/// Limits glibc to two malloc arenas. Call first thing in `main`, before any thread
/// exists; a no-op elsewhere.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a parameter of the allocator; called before other threads
    // exist, so nothing races with it. A failure (returns 0) leaves the default in place.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
