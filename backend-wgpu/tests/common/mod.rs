//! Helpers of the GPU kernel tests: the shared backend (or a skip notice),
//! running a graph on it, seeded inputs and tolerant comparisons.
#![allow(dead_code)]

pub mod reference;

use std::sync::{Arc, OnceLock};

use ndarray::{ArrayD, Dimension, IxDyn};
use tensorgraph_core::{Backend, CompileOptions, Device, Graph, PassOptions, Plan, Tensor, Value};
use tensorgraph_wgpu::WgpuBackend;

/// Whether GPU tests must run (CI with lavapipe) instead of skipping.
pub fn gpu_required() -> bool {
    std::env::var("TENSORGRAPH_REQUIRE_GPU").as_deref() == Ok("1")
}

/// A fresh backend, or `None` (printed as skipped) when no adapter exists.
/// Panics instead of skipping under `TENSORGRAPH_REQUIRE_GPU=1`.
pub fn new_backend() -> Option<Arc<WgpuBackend>> {
    match WgpuBackend::new() {
        Ok(b) => Some(Arc::new(b)),
        Err(e) if gpu_required() => panic!("TENSORGRAPH_REQUIRE_GPU=1 but no GPU backend: {e}"),
        Err(e) => {
            eprintln!("GPU test skipped: {e}");
            None
        }
    }
}

/// The backend shared by the tests of one binary.
pub fn gpu() -> Option<Arc<WgpuBackend>> {
    static GPU: OnceLock<Option<Arc<WgpuBackend>>> = OnceLock::new();
    GPU.get_or_init(new_backend).clone()
}

/// Compiles `outputs` for the GPU backend `b`.
pub fn compile(b: &Arc<WgpuBackend>, outputs: &[&Tensor]) -> Plan {
    compile_passes(b, outputs, PassOptions::default())
}

/// Compiles `outputs` for the GPU backend `b` with `passes`.
pub fn compile_passes(b: &Arc<WgpuBackend>, outputs: &[&Tensor], passes: PassOptions) -> Plan {
    let g = outputs[0].graph();
    let mut options = CompileOptions::new(Device::Gpu, vec![b.clone() as Arc<dyn Backend>]);
    options.passes = passes;
    g.compile(outputs, &options).expect("compiles for the GPU")
}

/// Runs `plan`, asserting every backend's measured peak and allocation
/// count equal the planned ones.
pub fn run_as_planned(plan: &Plan, feeds: &[(&str, Value)], what: &str) -> Vec<Value> {
    let (out, stats) = plan.run_with_stats(feeds).expect("runs on the GPU");
    for (i, m) in plan.planned_memory().iter().enumerate() {
        assert_eq!(
            stats.peak_bytes[i], m.peak_bytes,
            "{what}: peak on backend {i}"
        );
        assert_eq!(
            stats.allocations[i], m.allocations,
            "{what}: allocations on backend {i}"
        );
    }
    out
}

/// Compiles and runs `outputs` with `feeds`.
pub fn run(b: &Arc<WgpuBackend>, outputs: &[&Tensor], feeds: &[(&str, Value)]) -> Vec<Value> {
    compile(b, outputs).run(feeds).expect("runs on the GPU")
}

/// Deterministic values in [-1, 1) (a 64-bit LCG), seeded.
pub fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// A seeded f32 array of `dims`.
pub fn array(dims: &[usize], seed: u64) -> ArrayD<f32> {
    let n = dims.iter().product();
    ArrayD::from_shape_vec(IxDyn(dims), values(n, seed)).expect("shape fits")
}

/// A seeded i32 array of `dims` with values in [-range, range].
pub fn int_array(dims: &[usize], seed: u64, range: i32) -> ArrayD<i32> {
    array(dims, seed).mapv(|v| (v * range as f32).round() as i32)
}

/// Asserts `got` equals `want` within `tol` relative to each magnitude
/// (NaN matches NaN), naming the first mismatch.
#[track_caller]
pub fn assert_close(got: &Value, want: &ArrayD<f32>, tol: f32, what: &str) {
    let got = got
        .as_f32()
        .unwrap_or_else(|| panic!("{what}: expected f32, got {}", got.dtype()));
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    for ((i, &g), &w) in got.indexed_iter().zip(want.iter()) {
        let ok = (g.is_nan() && w.is_nan()) || g == w || (g - w).abs() <= tol * (1.0 + w.abs());
        assert!(ok, "{what}: at {:?} got {g}, want {w}", i.slice());
    }
}

/// Asserts exact equality of an i32 result.
#[track_caller]
pub fn assert_ints(got: &Value, want: &ArrayD<i32>, what: &str) {
    let got = got
        .as_i32()
        .unwrap_or_else(|| panic!("{what}: expected i32, got {}", got.dtype()));
    assert_eq!(got, want, "{what}");
}

/// A new graph.
pub fn graph() -> Graph {
    Graph::new()
}
