//! Shared bench helpers: the devices present and seeded inputs.
// Each bench binary uses a part of these helpers.
#![allow(dead_code)]

use ndarray::{Array, ArrayD, IxDyn};
use rand::{Rng, SeedableRng, rngs::StdRng};
use tensorgraph::Device;

/// Every device that can run here, with a label for criterion ids.
pub fn devices() -> Vec<(Device, String)> {
    [Device::Cpu, Device::Gpu]
        .into_iter()
        .filter_map(
            |d| match tensorgraph::options(d).and_then(|o| o.resolve()) {
                Ok(b) => {
                    eprintln!("bench device {d}: {}", b.name());
                    Some((d, format!("tensorgraph-{}", d.name())))
                }
                Err(e) => {
                    eprintln!("bench device {d} skipped: {e}");
                    None
                }
            },
        )
        .collect()
}

/// Whether the GPU here is a software rasteriser (Mesa's llvmpipe /
/// lavapipe, SwiftShader): correct, but its timings say nothing about GPUs,
/// so the largest GPU cases are skipped on it to keep bench runs short.
pub fn software_gpu() -> bool {
    tensorgraph::gpu_backend().is_ok_and(|b| {
        let name = b.name().to_ascii_lowercase();
        ["llvmpipe", "lavapipe", "swiftshader"]
            .iter()
            .any(|s| name.contains(s))
    })
}

/// A seeded uniform array in [-1, 1).
pub fn random(shape: &[usize], seed: u64) -> ArrayD<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    Array::from_shape_fn(IxDyn(shape), |_| rng.random_range(-1.0..1.0))
}
