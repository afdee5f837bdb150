#![doc = include_str!("../README.md")]

pub use tensorgraph_core::{
    Backend, BinaryOp, BufferId, CompileOptions, Ctx, DType, Device, DotDetail, DotOptions, Error,
    EventKind, Graph, Kernel, LayoutOp, MemoryPlan, Node, NodeId, NodeStyle, Op, PassOptions, Plan,
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
/// offer (so nodes pinned elsewhere can still be placed).
///
/// `Device::Cpu` and `Device::Gpu` put every unpinned node on that device
/// (falling back to another backend only for ops it cannot run);
/// `Device::Gpu` fails here when no GPU backend is available.
/// `Device::Auto` places each node by the calibrated cost model when a GPU
/// exists, and otherwise runs everything on the CPU, logging which.
pub fn options(device: Device) -> Result<CompileOptions> {
    let mut backends = vec![cpu_backend()];
    match (device, gpu_backend()) {
        (_, Ok(gpu)) => backends.push(gpu),
        (Device::Gpu, Err(e)) => return Err(e),
        (Device::Auto, Err(e)) => {
            tracing::info!(target: "tensorgraph", "auto: using the CPU ({e})");
        }
        (Device::Cpu, Err(_)) => {}
    }
    Ok(CompileOptions::new(device, backends))
}

/// One line saying where a plan compiled with `options` will run: the
/// device and adapter, or for `Device::Auto` with several backends, that
/// each node is placed by the calibrated cost model over which backends.
pub fn describe(options: &CompileOptions) -> Result<String> {
    let backend = options.resolve()?;
    let names: Vec<String> = options
        .backends
        .iter()
        .map(|b| format!("{} ({})", b.device(), b.name()))
        .collect();
    Ok(match options.device {
        Device::Auto if options.backends.len() > 1 => format!(
            "device: auto, each node placed by the cost model over {}",
            names.join(" and ")
        ),
        Device::Auto => format!(
            "device: auto chose {} ({}): no GPU adapter here",
            backend.device(),
            backend.name()
        ),
        asked => format!(
            "device: {asked}, running on {} ({})",
            backend.device(),
            backend.name()
        ),
    })
}

/// The device `device` resolves to on this machine (`Auto` becomes `Cpu`
/// or `Gpu`), with the backend's name.
pub fn resolve(device: Device) -> Result<(Device, String)> {
    let backend = options(device)?.resolve()?;
    Ok((backend.device(), backend.name().to_string()))
}
