//! Whether the CPU has AVX2 and FMA. The crate builds for baseline x86-64 (SSE2), where the
//! compiler's own vector loops are 4 lanes wide; the loops that pay for wider ones (group norm's
//! passes, the fused classification loss) are written for AVX2 as well and check here at run time,
//! keeping their plain loops for other CPUs.

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
