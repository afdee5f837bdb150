//! Shared helpers of the integration tests: which devices exist here,
//! running a graph on one of them, seeded random inputs, and array
//! comparisons that name the first mismatching element.
#![allow(dead_code)]

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::OnceLock;

use ndarray::{ArrayD, Dimension, IxDyn, Zip};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tensorgraph::{Device, Error, Graph, Plan, Tensor, Value};

/// Every device available on this machine: the CPU always, the GPU when
/// `tensorgraph::options(Device::Gpu)` succeeds.
///
/// Without a GPU this prints why GPU cases are skipped, or panics when
/// `TENSORGRAPH_REQUIRE_GPU=1` (CI machines that must run them).
pub fn devices() -> Vec<Device> {
    static GPU: OnceLock<Result<(), String>> = OnceLock::new();
    let gpu = GPU.get_or_init(|| match tensorgraph::options(Device::Gpu) {
        Ok(options) => {
            match options.resolve() {
                Ok(gpu) => eprintln!("GPU cases run on `{}`", gpu.name()),
                Err(e) => panic!("options(Gpu) succeeded but does not resolve: {e}"),
            }
            Ok(())
        }
        Err(e) => {
            eprintln!("GPU cases skipped: {e}");
            Err(e.to_string())
        }
    });
    let mut out = vec![Device::Cpu];
    match gpu {
        Ok(()) => out.push(Device::Gpu),
        Err(reason) => {
            if std::env::var("TENSORGRAPH_REQUIRE_GPU").as_deref() == Ok("1") {
                panic!(
                    "TENSORGRAPH_REQUIRE_GPU=1 but no GPU is available: {reason}\n\
                     (install a Vulkan driver such as Mesa's lavapipe, or unset the variable)"
                );
            }
        }
    }
    out
}

/// Runs `case` once per available device, saying which device a failure
/// happened on.
#[track_caller]
pub fn on_every_device(case: impl Fn(Device)) {
    for device in devices() {
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| case(device))) {
            eprintln!("case failed on device {device}");
            resume_unwind(panic);
        }
    }
}

/// The compile options for `device` (the process-wide backends, the CPU's
/// first), with every pass off when CI's node-by-node run asks.
#[track_caller]
pub fn options_on(device: Device) -> tensorgraph::CompileOptions {
    let mut options = tensorgraph::options(device)
        .unwrap_or_else(|e| panic!("options({device}) failed for an available device: {e}"));
    // CI runs the suite a second time node by node: TENSORGRAPH_PASSES=none.
    if std::env::var("TENSORGRAPH_PASSES").as_deref() == Ok("none") {
        options.passes = tensorgraph::PassOptions::none();
    }
    options
}

/// Compiles `outputs` for `device`. `None` (reported as skipped) when the
/// device's backend says it does not support a kernel; any other error
/// fails the test.
#[track_caller]
pub fn compile_on(device: Device, g: &Graph, outputs: &[&Tensor]) -> Option<Plan> {
    let options = options_on(device);
    match g.compile(outputs, &options) {
        Ok(plan) => Some(plan),
        Err(e @ Error::Unsupported { .. }) => {
            eprintln!("skipped on {device}: {e}");
            None
        }
        Err(e) => panic!("compile on {device} failed: {e}"),
    }
}

/// Compiles and runs `outputs` on `device` with `feeds`; `None` when the
/// backend does not support a kernel (see [`compile_on`]).
#[track_caller]
pub fn run_on(
    device: Device,
    g: &Graph,
    outputs: &[&Tensor],
    feeds: &[(&str, Value)],
) -> Option<Vec<Value>> {
    let plan = compile_on(device, g, outputs)?;
    let out = plan
        .run(feeds)
        .unwrap_or_else(|e| panic!("run on {device} failed: {e}"));
    assert_eq!(out.len(), outputs.len(), "{device}: number of outputs");
    Some(out)
}

/// [`run_on`] for a single output.
#[track_caller]
pub fn run1(device: Device, g: &Graph, output: &Tensor, feeds: &[(&str, Value)]) -> Option<Value> {
    run_on(device, g, &[output], feeds).map(|mut v| v.swap_remove(0))
}

/// The `f32` array held by `v`.
#[track_caller]
pub fn f32_of(v: Value) -> ArrayD<f32> {
    v.into_f32()
        .unwrap_or_else(|e| panic!("expected an f32 output: {e}"))
}

/// The `i32` array held by `v`.
#[track_caller]
pub fn i32_of(v: Value) -> ArrayD<i32> {
    v.into_i32()
        .unwrap_or_else(|e| panic!("expected an i32 output: {e}"))
}

/// Uniform `f32` values in `lo..hi`, reproducible from `seed`.
pub fn rand_f32(seed: u64, shape: &[usize], lo: f32, hi: f32) -> ArrayD<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    ArrayD::from_shape_fn(IxDyn(shape), |_| rng.random_range(lo..hi))
}

/// Uniform `i32` values in `lo..=hi`, reproducible from `seed`.
pub fn rand_i32(seed: u64, shape: &[usize], lo: i32, hi: i32) -> ArrayD<i32> {
    let mut rng = StdRng::seed_from_u64(seed);
    ArrayD::from_shape_fn(IxDyn(shape), |_| rng.random_range(lo..=hi))
}

/// `0, 1, 2, ...` in row-major order, as `f32`.
pub fn iota_f32(shape: &[usize]) -> ArrayD<f32> {
    let n: usize = shape.iter().product();
    ArrayD::from_shape_vec(IxDyn(shape), (0..n).map(|i| i as f32).collect())
        .expect("iota shape matches its length")
}

/// `0, 1, 2, ...` in row-major order, as `i32`.
pub fn iota_i32(shape: &[usize]) -> ArrayD<i32> {
    let n: usize = shape.iter().product();
    ArrayD::from_shape_vec(IxDyn(shape), (0..n as i32).collect())
        .expect("iota shape matches its length")
}

/// The NumPy broadcast of two shapes, written out independently of the
/// library (trailing dimensions align, 1 stretches).
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> Vec<usize> {
    let rank = a.len().max(b.len());
    (0..rank)
        .map(|i| {
            let da = if i + a.len() >= rank {
                a[i + a.len() - rank]
            } else {
                1
            };
            let db = if i + b.len() >= rank {
                b[i + b.len() - rank]
            } else {
                1
            };
            match (da, db) {
                (x, y) if x == y => x,
                (1, y) => y,
                (x, 1) => x,
                _ => panic!("test bug: {a:?} and {b:?} do not broadcast"),
            }
        })
        .collect()
}

/// Elementwise `f(a, b)` with NumPy broadcasting, computed by ndarray.
pub fn zip_broadcast<A: Copy, B: Copy, C>(
    a: &ArrayD<A>,
    b: &ArrayD<B>,
    f: impl Fn(A, B) -> C,
) -> ArrayD<C> {
    let shape = IxDyn(&broadcast_shape(a.shape(), b.shape()));
    let av = a.broadcast(shape.clone()).expect("lhs broadcasts");
    let bv = b.broadcast(shape).expect("rhs broadcasts");
    Zip::from(&av).and(&bv).map_collect(|&x, &y| f(x, y))
}

/// Asserts `actual` matches `expected` elementwise within
/// `atol + rtol * |expected|` (NaN matches NaN, infinities must be equal),
/// reporting the first mismatching index and how many differ.
#[track_caller]
pub fn assert_close(
    actual: &ArrayD<f32>,
    expected: &ArrayD<f32>,
    rtol: f32,
    atol: f32,
    what: &str,
) {
    assert_eq!(actual.shape(), expected.shape(), "{what}: shapes differ");
    let mut first = None;
    let mut count = 0usize;
    for ((index, &e), &a) in expected.indexed_iter().zip(actual.iter()) {
        let ok = if e.is_nan() {
            a.is_nan()
        } else if e.is_infinite() {
            a == e
        } else {
            (a - e).abs() <= atol + rtol * e.abs()
        };
        if !ok {
            count += 1;
            if first.is_none() {
                first = Some((index.slice().to_vec(), a, e));
            }
        }
    }
    if let Some((index, a, e)) = first {
        panic!(
            "{what}: {count} of {} elements differ beyond rtol {rtol} + atol {atol}; \
             first at index {index:?}: actual {a}, expected {e} (diff {})",
            expected.len(),
            (a - e).abs()
        );
    }
}

/// Asserts two `i32` arrays are equal, reporting the first mismatching
/// index and how many differ.
#[track_caller]
pub fn assert_eq_i32(actual: &ArrayD<i32>, expected: &ArrayD<i32>, what: &str) {
    assert_eq!(actual.shape(), expected.shape(), "{what}: shapes differ");
    // Fast path for large arrays (indexed iteration is slow in debug builds).
    if let (Some(a), Some(e)) = (actual.as_slice(), expected.as_slice())
        && a == e
    {
        return;
    }
    let mut first = None;
    let mut count = 0usize;
    for ((index, &e), &a) in expected.indexed_iter().zip(actual.iter()) {
        if a != e {
            count += 1;
            if first.is_none() {
                first = Some((index.slice().to_vec(), a, e));
            }
        }
    }
    if let Some((index, a, e)) = first {
        panic!(
            "{what}: {count} of {} elements differ; first at index {index:?}: actual {a}, expected {e}",
            expected.len()
        );
    }
}
