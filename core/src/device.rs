//! Where a plan runs.

/// A device choice. Backends report `Cpu` or `Gpu`; users may also ask for
/// `Auto`, which takes the GPU when an adapter exists and otherwise the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Device {
    /// The host: rayon + ndarray.
    Cpu,
    /// A wgpu adapter.
    Gpu,
    /// The GPU when present, else the CPU.
    #[default]
    Auto,
}

impl Device {
    /// Lower-case name.
    pub const fn name(self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Gpu => "gpu",
            Device::Auto => "auto",
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Device {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" => Ok(Device::Cpu),
            "gpu" => Ok(Device::Gpu),
            "auto" => Ok(Device::Auto),
            other => Err(format!(
                "unknown device `{other}` (expected cpu, gpu or auto)"
            )),
        }
    }
}
