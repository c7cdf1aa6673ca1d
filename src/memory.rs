//! Process-wide allocator policy for training on the CPU.
//!
//! A training step frees and re-allocates the same large activation buffers every step. glibc's
//! malloc serves buffers above its mmap threshold with fresh mappings and returns freed heap tops
//! to the kernel, so each step faults in (and the kernel zeroes) hundreds of megabytes of new
//! pages: 8–11 % of a SmolLM2 QLoRA step on 2 cores was `clear_page_erms` and page faults.
//! Raising the threshold to its maximum and never trimming keeps those buffers for reuse. Peak
//! memory is unchanged (the same buffers exist at the peak); memory freed after the peak stays
//! with the process until it exits.

/// Keeps freed memory in the process for reuse (glibc on Linux; a no-op elsewhere). Call once,
/// early, in a program that trains; `cargo xtask finetune` and the training benches do.
///
/// ```
/// medify_qlora::retain_freed_memory();
/// let v = vec![0u8; 8 << 20]; // served from the heap, and kept there when freed
/// drop(v);
/// ```
pub fn retain_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tunables; the values are in glibc's accepted ranges
    // (the mmap threshold's maximum is 32 MiB on 64-bit targets).
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}
