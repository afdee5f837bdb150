//! Shared bench helpers: the devices present and seeded inputs.

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

/// A seeded uniform array in [-1, 1).
pub fn random(shape: &[usize], seed: u64) -> ArrayD<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    Array::from_shape_fn(IxDyn(shape), |_| rng.random_range(-1.0..1.0))
}
