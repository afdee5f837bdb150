//! The cost model behind automatic placement: per-backend constants
//! measured on this machine (once per process, cached), and the estimated
//! time of a step and of a transfer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Instant;

use crate::backend::{Backend, Kernel};
use crate::{CompileOptions, DType, Device, Graph, Op, Result, Value};

/// Measured speed of one backend.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Calibration {
    /// Fixed cost of one step, seconds.
    pub launch_s: f64,
    /// Matmul throughput, FLOP/s.
    pub flops_per_s: f64,
    /// Elementwise memory throughput, bytes/s.
    pub bytes_per_s: f64,
    /// Host <-> device copy throughput, bytes/s (one direction).
    pub transfer_bytes_per_s: f64,
    /// Fixed cost of one transfer, seconds.
    pub transfer_latency_s: f64,
}

impl Calibration {
    /// Estimated seconds to run `kernel` here.
    pub fn step_seconds(&self, kernel: &Kernel) -> f64 {
        let bytes: usize = kernel
            .inputs
            .iter()
            .chain(&kernel.outputs)
            .map(|t| t.bytes())
            .sum();
        let flops = kernel.op.flops(&kernel.inputs, &kernel.outputs) as f64;
        let compute = match kernel.op {
            Op::MatMul => flops / self.flops_per_s,
            _ => 0.0,
        };
        self.launch_s + compute + bytes as f64 / self.bytes_per_s
    }

    /// Estimated seconds to move `bytes` between this device and the host.
    pub fn transfer_seconds(&self, bytes: usize) -> f64 {
        self.transfer_latency_s + bytes as f64 / self.transfer_bytes_per_s
    }
}

/// The calibration of `backend`, measured on first use and cached for the
/// life of the process.
pub fn calibration(backend: &Arc<dyn Backend>) -> Calibration {
    static CACHE: OnceLock<Mutex<HashMap<String, Calibration>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let key = backend.name().to_string();
    if let Some(c) = cache
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&key)
    {
        return *c;
    }
    let measured = measure(backend).unwrap_or_else(|e| {
        tracing::warn!(target: "tensorgraph", "calibrating {key} failed ({e}); using defaults");
        default_for(backend.device())
    });
    tracing::info!(target: "tensorgraph", "calibrated {key}: {measured:?}");
    cache
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(key, measured);
    measured
}

/// Rough figures used only when measuring fails.
fn default_for(device: Device) -> Calibration {
    match device {
        Device::Gpu => Calibration {
            launch_s: 20e-6,
            flops_per_s: 1e12,
            bytes_per_s: 200e9,
            transfer_bytes_per_s: 10e9,
            transfer_latency_s: 50e-6,
        },
        Device::Cpu | Device::Auto => Calibration {
            launch_s: 1e-6,
            flops_per_s: 50e9,
            bytes_per_s: 10e9,
            transfer_bytes_per_s: 10e9,
            transfer_latency_s: 1e-6,
        },
    }
}

/// Best of a few timed runs, after one warm-up.
fn best_of(runs: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut best = f64::INFINITY;
    for _ in 0..runs {
        let t = Instant::now();
        f()?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best.max(1e-9))
}

/// Runs small probe plans on `backend` alone.
fn measure(backend: &Arc<dyn Backend>) -> Result<Calibration> {
    // Node by node: each probe measures the kernels it names.
    let mut options = CompileOptions::new(backend.device(), vec![backend.clone()]);
    options.passes = crate::PassOptions::none();
    let fill = |n: usize| Value::F32(ndarray::ArrayD::from_elem(vec![n], 0.5f32));

    // Copy in and out: an input requested as output.
    let n_copy = 1 << 20;
    let g = Graph::new();
    let x = g.input("x", DType::F32, [n_copy])?;
    let plan = g.compile(&[&x], &options)?;
    let feeds = [("x", fill(n_copy))];
    let copy = best_of(3, || plan.run(&feeds).map(drop))?;
    let small_feeds = [("x", fill(1))];
    let g = Graph::new();
    let x1 = g.input("x", DType::F32, [1])?;
    let plan1 = g.compile(&[&x1], &options)?;
    let latency = best_of(3, || plan1.run(&small_feeds).map(drop))? / 2.0;

    // Launch overhead: a chain of tiny ops.
    let chain = 64;
    let mut t = x1.clone();
    for _ in 0..chain {
        t = t.add(&x1)?;
    }
    let plan = g.compile(&[&t], &options)?;
    let chained = best_of(3, || plan.run(&small_feeds).map(drop))?;
    let launch = ((chained - 2.0 * latency) / chain as f64).max(1e-7);

    // Memory bandwidth: one large add.
    let n = 1 << 22;
    let g = Graph::new();
    let x = g.input("x", DType::F32, [n])?;
    let y = x.add(&x)?.mul(&x)?;
    let plan = g.compile(&[&y], &options)?;
    let feeds = [("x", fill(n))];
    let t_bw = best_of(3, || plan.run(&feeds).map(drop))?;
    let transfer = (copy / 2.0 - latency).max(1e-9);
    let transfer_bps = (4 * n_copy) as f64 / transfer;
    let moved = (4 * n * 5) as f64;
    let bw_time = (t_bw - 2.0 * latency - (8 * n) as f64 / transfer_bps).max(1e-9);

    // Matmul throughput.
    let m = 256;
    let g = Graph::new();
    let a = g.input("a", DType::F32, [m, m])?;
    let b = a.matmul(&a)?;
    let plan = g.compile(&[&b], &options)?;
    let feeds = [(
        "a",
        Value::F32(ndarray::ArrayD::from_elem(vec![m, m], 0.5f32)),
    )];
    let t_mm = best_of(3, || plan.run(&feeds).map(drop))?;
    let mm_time = (t_mm - 2.0 * latency - (8 * m * m) as f64 / transfer_bps).max(1e-9);

    Ok(Calibration {
        launch_s: launch,
        flops_per_s: 2.0 * (m * m * m) as f64 / mm_time,
        bytes_per_s: moved / bw_time,
        transfer_bytes_per_s: transfer_bps,
        transfer_latency_s: latency,
    })
}
