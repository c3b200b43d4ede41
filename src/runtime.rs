//! Process-wide CPU runtime settings, applied once at start-up by the binary (before any thread
//! exists). Measured on the project's 2-core machines (`fl-lab bench train`, perf):
//! - candle's elementwise ops run on its own spin-waiting thread pool, beside the rayon pool that
//!   runs fl-lab's convolutions; on few cores its spinning worker took a third of the CPU time of a
//!   training step. fl-lab's heavy kernels are rayon's, so candle's pool gets no extra worker
//!   (`CANDLE_NUM_THREADS=1`) unless the user sets that variable.
//! - glibc returns large blocks to the kernel on every free (mmap/munmap), so each step's tensors
//!   page-fault afresh; raising the mmap and trim thresholds keeps them in the heap.

/// Applies the settings above; call before any other thread starts.
pub fn tune_for_training() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY (set_var): called at start-up, before any other thread reads the environment.
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes allocator parameters; no memory is touched.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        }
    }
}

/// Restores the default action of SIGPIPE, so that output piped into a reader that stops early
/// (`fl-lab ... | head`) ends the process quietly, as it ends `cat` or `grep`. Rust ignores SIGPIPE by
/// default, and every `println!` after the reader has gone would then panic with a broken pipe.
pub fn quiet_on_closed_stdout() {
    #[cfg(unix)]
    // SAFETY: resetting a signal's disposition to its default touches no memory; called at start-up.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
