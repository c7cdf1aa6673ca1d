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

/// The process's peak resident memory in bytes since it started or since the last
/// [`reset_peak_memory`] (Linux `VmHWM`); `None` where the system does not report it.
///
/// ```
/// let before = medify_qlora::peak_rss_bytes();
/// let v = vec![1u8; 32 << 20];
/// assert!(medify_qlora::peak_rss_bytes() >= before);
/// drop(v);
/// ```
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Starts a new peak-memory window: afterwards [`peak_rss_bytes`] reports the peak since this call
/// (Linux: writing 5 to `/proc/self/clear_refs`). Returns whether the system supports it.
pub fn reset_peak_memory() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// What a training step used: the process's peak resident memory during the step (host memory:
/// all of it on the CPU, the optimizer's paged state and the program on accelerators) and, where
/// the device's allocator reports it, the bytes it holds after the step (its pools keep the
/// step's peak pages, so this bounds the device peak from above).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct StepMemory {
    /// Peak resident set during the step, when [`reset_peak_memory`] worked.
    pub peak_rss_bytes: Option<u64>,
    /// Bytes the device allocator reserves (CUDA, wgpu); `None` on Flex.
    pub device_reserved_bytes: Option<u64>,
}

impl StepMemory {
    /// Reads the window opened by `reset` (the result of [`reset_peak_memory`]).
    pub fn read(reset: bool, device: &burn::tensor::Device) -> StepMemory {
        StepMemory {
            peak_rss_bytes: if reset { peak_rss_bytes() } else { None },
            device_reserved_bytes: device.memory_pool_usage().map(|u| u.bytes_reserved),
        }
    }
}

/// Returns freed heap memory to the system (glibc `malloc_trim`), so that a following peak
/// measurement counts what is live rather than what loading left behind. No-op elsewhere.
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns unused heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}
