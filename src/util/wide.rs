//! Loops compiled for wider vectors where the CPU has them. The crate is built for baseline x86-64
//! (SSE2), so a plain loop vectorizes 4 floats wide. A function that puts an `#[inline(always)]`
//! loop inside an `#[target_feature(enable = "avx2,fma")]` copy gets it compiled 8 wide, and
//! callers take that copy when [`has_avx2`] says the CPU can run it. Only the instructions
//! change: without fast-math flags LLVM fuses no multiply and add into an FMA and keeps every
//! operation's order, so results are bit-identical on either path.

/// Whether the CPU has AVX2 and FMA (detected once, then a cached load); false off x86-64.
pub fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}
