//! Deterministic data shared by the crate's unit tests.

use ndarray::{ArrayD, IxDyn};

/// Pseudo-random floats in `[-half, half)`, in thousandths, from an
/// xorshift stream; `salt` gives each test module data of its own.
pub(crate) fn xorshift_floats(shape: &[usize], seed: u32, salt: u32, half: u32) -> ArrayD<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(salt);
    ArrayD::from_shape_simple_fn(IxDyn(shape), || {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        (s % (2000 * half)) as f32 / 1000.0 - half as f32
    })
}
