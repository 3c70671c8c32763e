//! The instruction sets Lampo has kernels for, which of them this CPU
//! runs, and which to use: the fastest it has, or the one `LAMPO_ISA`
//! names (`avx512`, `avx2`, `neon`, `portable`; `LAMPO_PORTABLE=1` means
//! `portable`), refused when the CPU lacks it. The choice is made once,
//! when a CPU backend is built; tests and benchmarks use it to run every
//! path on one machine.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// AVX-512 (F, BW, VL) with VNNI, plus AVX2, FMA and F16C.
    Avx512Vnni,
    /// AVX2 with FMA and F16C.
    Avx2,
    /// aarch64 NEON.
    Neon,
    /// Plain Rust, on any CPU.
    Portable,
}

impl Isa {
    /// Every instruction set Lampo knows, fastest first.
    pub const ALL: [Isa; 4] = [Isa::Avx512Vnni, Isa::Avx2, Isa::Neon, Isa::Portable];

    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512Vnni => "avx512-vnni",
            Isa::Avx2 => "avx2",
            Isa::Neon => "neon",
            Isa::Portable => "portable",
        }
    }

    /// The instruction set a name (as `LAMPO_ISA` takes it) means.
    pub fn parse(name: &str) -> Option<Isa> {
        match name.trim().to_ascii_lowercase().as_str() {
            "avx512" | "avx512-vnni" | "avx512vnni" => Some(Isa::Avx512Vnni),
            "avx2" => Some(Isa::Avx2),
            "neon" => Some(Isa::Neon),
            "portable" | "scalar" => Some(Isa::Portable),
            _ => None,
        }
    }

    /// Whether this CPU runs this instruction set.
    pub fn supported(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => {
                Isa::Avx2.supported()
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => true,
            Isa::Portable => true,
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// The instruction sets this CPU runs, fastest first.
    pub fn available() -> Vec<Isa> {
        Isa::ALL.into_iter().filter(|i| i.supported()).collect()
    }

    /// The fastest instruction set this CPU runs.
    pub fn best() -> Isa {
        Isa::available()[0]
    }

    /// The instruction set to use: `LAMPO_ISA` if set (refused when this
    /// CPU lacks it), `portable` if `LAMPO_PORTABLE` is set, else the best.
    pub fn from_env() -> Result<Isa, String> {
        if let Some(name) = std::env::var_os("LAMPO_ISA").filter(|v| !v.is_empty()) {
            let name = name.to_string_lossy();
            let isa = Isa::parse(&name).ok_or_else(|| {
                format!("LAMPO_ISA={name} names no instruction set (avx512, avx2, neon, portable)")
            })?;
            if !isa.supported() {
                let have: Vec<&str> = Isa::available().iter().map(|i| i.name()).collect();
                return Err(format!(
                    "LAMPO_ISA={name}: this CPU does not run {} (it runs {})",
                    isa.name(),
                    have.join(", ")
                ));
            }
            return Ok(isa);
        }
        if std::env::var_os("LAMPO_PORTABLE").is_some_and(|v| v != "0" && !v.is_empty()) {
            return Ok(Isa::Portable);
        }
        Ok(Isa::best())
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_portable_is_always_there() {
        for isa in Isa::ALL {
            assert_eq!(Isa::parse(isa.name()), Some(isa));
        }
        assert_eq!(Isa::parse("AVX512"), Some(Isa::Avx512Vnni));
        assert_eq!(Isa::parse("sse9"), None);
        assert!(Isa::Portable.supported());
        assert_eq!(Isa::available().last(), Some(&Isa::Portable));
        assert!(Isa::best().supported());
    }
}
