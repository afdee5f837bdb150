//! tensorgraph-wgpu: tensorgraph's GPU backend on wgpu compute. It owns a
//! device, a pool of storage buffers, lazily built and cached WGSL
//! pipelines (sources in the workspace's `shaders/`), and records each plan
//! segment into one command encoder, submitted once.
//!
//! Create it with [`WgpuBackend::new`] and hand it to a plan as an
//! `Arc<dyn Backend>`; the `tensorgraph` facade does this in `gpu_backend()`.

mod backend;
pub mod epilogue;
mod exec;
pub mod fused;
pub mod kernels;
pub mod params;
mod pipelines;
mod pool;
pub mod prologue;
pub mod record;
pub mod shaders;

use std::sync::Mutex;

use tensorgraph_core::{Device, Error, Result};

pub use wgpu;

use crate::pipelines::PipelineCache;
use crate::pool::Pool;
use crate::record::Gpu;

/// What to tell a user whose machine offers no usable adapter.
const NO_ADAPTER_HINT: &str = "no GPU adapter found; on Linux install a Vulkan driver (apt-get install mesa-vulkan-drivers libvulkan1)";

/// The wgpu backend: one adapter's device, its buffer pool and pipelines.
#[derive(Debug)]
pub struct WgpuBackend {
    gpu: Gpu,
    info: wgpu::AdapterInfo,
    pool: Pool,
    pipelines: PipelineCache,
    /// Held while a segment is recorded and submitted, so buffers freed in
    /// one recording are never handed to another before it is submitted.
    recording: Mutex<()>,
    name: String,
}

impl WgpuBackend {
    /// Opens the high-performance adapter (overridable with wgpu's
    /// `WGPU_*` environment variables) with all of its limits.
    ///
    /// Fails with [`Error::DeviceUnavailable`] when no adapter with compute
    /// shaders exists or the device cannot be created.
    pub fn new() -> Result<Self> {
        Self::with_limits(|_| {})
    }

    /// [`WgpuBackend::new`] with the device's limits first passed through
    /// `adjust`, which may only lower them: to run as an adapter at
    /// WebGPU's defaults would (8 storage buffers a stage, say) on one that
    /// allows more, and test what those limits refuse or reshape.
    pub fn with_limits(adjust: impl FnOnce(&mut wgpu::Limits)) -> Result<Self> {
        let unavailable = |hint: String| Error::DeviceUnavailable {
            device: Device::Gpu,
            hint,
        };
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter =
            pollster::block_on(
                instance.request_adapter(&wgpu::RequestAdapterOptions {
                    power_preference: wgpu::PowerPreference::from_env()
                        .unwrap_or(wgpu::PowerPreference::HighPerformance),
                    force_fallback_adapter: false,
                    compatible_surface: None,
                    apply_limit_buckets: false,
                }),
            )
            .map_err(|_| unavailable(NO_ADAPTER_HINT.to_string()))?;
        let info = adapter.get_info();
        let downlevel = adapter.get_downlevel_capabilities();
        if !downlevel
            .flags
            .contains(wgpu::DownlevelFlags::COMPUTE_SHADERS)
        {
            return Err(unavailable(format!(
                "adapter {} ({}) has no compute shaders; {NO_ADAPTER_HINT}",
                info.name, info.backend
            )));
        }
        let mut limits = adapter.limits();
        adjust(&mut limits);
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("tensorgraph"),
            required_features: wgpu::Features::empty(),
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::default(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| {
            unavailable(format!(
                "adapter {} ({}) refused a device: {e}",
                info.name, info.backend
            ))
        })?;
        // Errors outside our error scopes are logged, never a panic.
        device.on_uncaptured_error(std::sync::Arc::new(|e: wgpu::Error| {
            tracing::error!(target: "tensorgraph", "wgpu: {e}");
        }));
        let name = format!("wgpu:{} ({})", info.name, info.backend);
        tracing::info!(target: "tensorgraph", "GPU backend {name}");
        Ok(WgpuBackend {
            pool: Pool::new(device.clone(), limits.max_buffer_size),
            gpu: Gpu {
                device,
                queue,
                limits,
            },
            info,
            pipelines: PipelineCache::default(),
            recording: Mutex::new(()),
            name,
        })
    }

    /// The adapter in use: name, backend (Vulkan, Metal, ...), device type.
    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.info
    }

    /// The limits the device was created with (the adapter's own).
    pub fn limits(&self) -> &wgpu::Limits {
        &self.gpu.limits
    }

    /// Compute pipelines built so far; compiling a graph again reuses them.
    pub fn pipelines_created(&self) -> usize {
        self.pipelines.created()
    }

    /// Releases the pool's free buffers to the driver.
    pub fn trim_pool(&self) -> Result<()> {
        self.pool.trim().map_err(|m| self.error("trim", m))
    }

    /// An `Error::Backend` from this backend at `node`.
    fn error(&self, node: &str, message: String) -> Error {
        Error::Backend {
            backend: self.name.clone(),
            node: node.to_string(),
            message,
        }
    }
}
