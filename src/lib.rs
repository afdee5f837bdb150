#![doc = include_str!("../README.md")]

pub use tensorgraph_core::{
    Backend, BinaryOp, BufferId, CompileOptions, Ctx, DType, Device, DotDetail, DotOptions,
    Error, EventKind, Graph, Kernel, LayoutOp, MemoryPlan, Node, NodeId, NodeStyle, Op, Plan,
    Port, ReduceOp, Result, RunStats, Shape, SliceRange, SplitSpec, Step, Tensor, TensorType,
    Timeline, TimelineEvent, UnaryOp, Value, ValueId,
};

pub mod viz;

/// The core crate, for backend authors.
pub use tensorgraph_core as core;

use std::sync::{Arc, OnceLock};

/// The process-wide CPU backend (one rayon pool sized to the machine).
pub fn cpu_backend() -> Arc<dyn Backend> {
    static CPU: OnceLock<Arc<dyn Backend>> = OnceLock::new();
    CPU.get_or_init(|| Arc::new(tensorgraph_cpu::CpuBackend::new()))
        .clone()
}

/// The process-wide GPU backend, if this build has one and an adapter
/// exists; otherwise why not.
pub fn gpu_backend() -> Result<Arc<dyn Backend>> {
    #[cfg(feature = "gpu")]
    {
        // Created once: adapter discovery is slow, and one device per
        // process keeps one buffer pool and one pipeline cache.
        static GPU: OnceLock<Result<Arc<dyn Backend>>> = OnceLock::new();
        GPU.get_or_init(|| {
            tensorgraph_wgpu::WgpuBackend::new().map(|b| Arc::new(b) as Arc<dyn Backend>)
        })
        .clone()
    }
    #[cfg(not(feature = "gpu"))]
    {
        Err(Error::DeviceUnavailable {
            device: Device::Gpu,
            hint: "this build has no GPU backend (the `gpu` feature is off); use Device::Cpu or Device::Auto"
                .into(),
        })
    }
}

/// Compile options for `device`, with every backend this build and machine
/// offer. `Device::Gpu` fails here when no GPU backend is available;
/// `Device::Auto` falls back to the CPU and logs which it chose.
pub fn options(device: Device) -> Result<CompileOptions> {
    let mut backends = vec![cpu_backend()];
    match device {
        Device::Cpu => {}
        Device::Gpu => backends.push(gpu_backend()?),
        Device::Auto => match gpu_backend() {
            Ok(gpu) => backends.push(gpu),
            Err(e) => tracing::info!(target: "tensorgraph", "auto: using the CPU ({e})"),
        },
    }
    Ok(CompileOptions::new(device, backends))
}

/// The device `device` resolves to on this machine (`Auto` becomes `Cpu`
/// or `Gpu`), with the backend's name.
pub fn resolve(device: Device) -> Result<(Device, String)> {
    let backend = options(device)?.resolve()?;
    Ok((backend.device(), backend.name().to_string()))
}
