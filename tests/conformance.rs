//! The conformance suite: every case is written once as a function over a
//! `Device`, runs on every device this machine has, and is compared with a
//! plain ndarray computation at a stated tolerance.
//!
//! Operands are fed as inputs rather than built as constants, so a future
//! constant-folding pass cannot compute a case on the host and hide a
//! backend's kernel.
//!
//! Tolerances: f32 arithmetic rtol 1e-5; transcendental ops rtol 1e-5 +
//! atol 1e-6 against an f64 reference; reductions and matmul rtol 1e-4
//! with an absolute term scaled by the number of summed terms.

mod common;

use common::*;
use ndarray::{ArrayD, Axis, IxDyn, Slice, arr0};
use tensorgraph::{BinaryOp, DType, Device, Graph, ReduceOp, SplitSpec, Tensor, UnaryOp, Value};

/// Sizes that cross the usual workgroup edges, plus one large case.
const SIZES: [usize; 8] = [1, 3, 63, 64, 65, 783, 4096, 1 << 20];

/// Elementwise f32 arithmetic tolerance.
const ARITH: (f32, f32) = (1e-5, 0.0);
/// Transcendental tolerance (relative, absolute).
const TRANS: (f32, f32) = (1e-5, 1e-6);

/// Registers each case as one `#[test]` that runs it on every device.
macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        mod on_every_device {
            $(
                #[test]
                fn $name() {
                    crate::common::on_every_device(super::$name);
                }
            )*
        }
    };
}

cases!(
    binary_f32_sizes,
    binary_f32_broadcasting,
    binary_f32_nan_propagates_through_maximum_minimum,
    binary_f32_scalar_overloads,
    unary_f32_sizes,
    unary_f32_rank3,
    binary_i32_broadcasting,
    binary_i32_division_truncates_and_by_zero_is_zero,
    binary_i32_overflow_wraps,
    binary_i32_pow_non_negative_exponents,
    binary_i32_pow_negative_exponents,
    unary_i32,
    matmul_2d,
    matmul_large_non_multiple,
    matmul_batched_broadcast,
    matmul_1d_promotions,
    matmul_i32,
    reduce_rank3_every_axis,
    reduce_i32,
    reduce_sizes,
    reduce_large,
    reduce_sum_over_empty_axis_is_zero,
    reshape,
    reshape_after_permute,
    permute_and_transpose,
    broadcast_to,
    slice,
    slice_huge_step,
    concat_three_inputs,
    split_all_outputs,
    split_with_empty_part,
    cast_both_ways,
    softmax,
    softmax_is_stable_for_large_inputs,
    plan_runs_twice_with_new_feeds,
    compile_prunes_unrelated_nodes,
    outputs_that_are_inputs_or_repeated,
    mlp_forward,
    zero_size_tensors,
    dispatch_counts_past_one_grid_dimension,
    elementwise_past_16m_elements,
);

// ---------------------------------------------------------------------------
// References, written independently of the library.

fn f32_binary_ref(op: BinaryOp) -> fn(f32, f32) -> f32 {
    match op {
        BinaryOp::Add => |a, b| a + b,
        BinaryOp::Sub => |a, b| a - b,
        BinaryOp::Mul => |a, b| a * b,
        BinaryOp::Div => |a, b| a / b,
        BinaryOp::Max => |a: f32, b: f32| {
            if a.is_nan() || b.is_nan() {
                f32::NAN
            } else {
                a.max(b)
            }
        },
        BinaryOp::Min => |a: f32, b: f32| {
            if a.is_nan() || b.is_nan() {
                f32::NAN
            } else {
                a.min(b)
            }
        },
        BinaryOp::Pow => |a, b| f64::from(a).powf(f64::from(b)) as f32,
    }
}

fn f32_binary_tol(op: BinaryOp) -> (f32, f32) {
    match op {
        BinaryOp::Pow => TRANS,
        BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul | BinaryOp::Div => ARITH,
        BinaryOp::Max | BinaryOp::Min => (0.0, 0.0),
    }
}

/// Operands in the op's domain: positive bases for pow, divisors away
/// from zero for div.
fn f32_binary_operands(
    op: BinaryOp,
    seed: u64,
    a: &[usize],
    b: &[usize],
) -> (ArrayD<f32>, ArrayD<f32>) {
    match op {
        BinaryOp::Pow => (
            rand_f32(seed, a, 0.1, 3.0),
            rand_f32(seed + 1, b, -2.0, 2.0),
        ),
        BinaryOp::Div => {
            let d = rand_f32(seed + 1, b, 0.5, 4.0);
            let sign = rand_f32(seed + 2, b, -1.0, 1.0);
            let d = ndarray::Zip::from(&d)
                .and(&sign)
                .map_collect(|&x, &s| if s < 0.0 { -x } else { x });
            (rand_f32(seed, a, -10.0, 10.0), d)
        }
        BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul | BinaryOp::Max | BinaryOp::Min => (
            rand_f32(seed, a, -10.0, 10.0),
            rand_f32(seed + 1, b, -10.0, 10.0),
        ),
    }
}

fn i32_binary_ref(op: BinaryOp) -> fn(i32, i32) -> i32 {
    match op {
        BinaryOp::Add => i32::wrapping_add,
        BinaryOp::Sub => i32::wrapping_sub,
        BinaryOp::Mul => i32::wrapping_mul,
        BinaryOp::Div => |a: i32, b: i32| if b == 0 { 0 } else { a.wrapping_div(b) },
        BinaryOp::Max => |a: i32, b: i32| a.max(b),
        BinaryOp::Min => |a: i32, b: i32| a.min(b),
        BinaryOp::Pow => |a: i32, b: i32| {
            assert!(b >= 0, "test bug: negative i32 exponent");
            a.wrapping_pow(b as u32)
        },
    }
}

fn unary_ref(op: UnaryOp) -> fn(f64) -> f64 {
    match op {
        UnaryOp::Neg => |x| -x,
        UnaryOp::Abs => f64::abs,
        UnaryOp::Exp => f64::exp,
        UnaryOp::Log => f64::ln,
        UnaryOp::Sqrt => f64::sqrt,
        UnaryOp::Relu => |x| if x > 0.0 { x } else { 0.0 },
        UnaryOp::Tanh => f64::tanh,
        UnaryOp::Sigmoid => |x| 1.0 / (1.0 + (-x).exp()),
        UnaryOp::Sin => f64::sin,
        UnaryOp::Cos => f64::cos,
    }
}

/// Inputs in the op's domain.
fn unary_input(op: UnaryOp, seed: u64, shape: &[usize]) -> ArrayD<f32> {
    match op {
        UnaryOp::Log | UnaryOp::Sqrt => rand_f32(seed, shape, 0.01, 10.0),
        UnaryOp::Exp => rand_f32(seed, shape, -10.0, 10.0),
        UnaryOp::Neg
        | UnaryOp::Abs
        | UnaryOp::Relu
        | UnaryOp::Tanh
        | UnaryOp::Sigmoid
        | UnaryOp::Sin
        | UnaryOp::Cos => rand_f32(seed, shape, -5.0, 5.0),
    }
}

fn unary_tol(op: UnaryOp) -> (f32, f32) {
    match op {
        UnaryOp::Neg | UnaryOp::Abs | UnaryOp::Relu => (0.0, 0.0),
        UnaryOp::Sqrt => ARITH,
        UnaryOp::Exp
        | UnaryOp::Log
        | UnaryOp::Tanh
        | UnaryOp::Sigmoid
        | UnaryOp::Sin
        | UnaryOp::Cos => TRANS,
    }
}

/// Matrix product of rank >= 2 arrays with broadcast batch axes, in f64.
fn matmul_ref(a: &ArrayD<f32>, b: &ArrayD<f32>) -> ArrayD<f32> {
    let (ra, rb) = (a.ndim(), b.ndim());
    let (m, k) = (a.shape()[ra - 2], a.shape()[ra - 1]);
    let (k2, n) = (b.shape()[rb - 2], b.shape()[rb - 1]);
    assert_eq!(k, k2, "test bug: inner dims");
    let batch = broadcast_shape(&a.shape()[..ra - 2], &b.shape()[..rb - 2]);
    let count: usize = batch.iter().product();
    let with = |tail: [usize; 2]| {
        let mut s = batch.clone();
        s.extend(tail);
        IxDyn(&s)
    };
    let a3 = a
        .broadcast(with([m, k]))
        .expect("lhs batch broadcasts")
        .mapv(f64::from)
        .into_shape_with_order((count, m, k))
        .expect("lhs reshape");
    let b3 = b
        .broadcast(with([k, n]))
        .expect("rhs batch broadcasts")
        .mapv(f64::from)
        .into_shape_with_order((count, k, n))
        .expect("rhs reshape");
    let mut out = ndarray::Array3::<f64>::zeros((count, m, n));
    for i in 0..count {
        out.index_axis_mut(Axis(0), i)
            .assign(&a3.index_axis(Axis(0), i).dot(&b3.index_axis(Axis(0), i)));
    }
    out.mapv(|x| x as f32)
        .into_shape_with_order(with([m, n]))
        .expect("out reshape")
}

/// Matmul tolerance for an inner dimension of `k` with inputs in [-1, 1].
fn matmul_tol(k: usize) -> (f32, f32) {
    (1e-4, 1e-6 * k as f32)
}

/// Normalised, sorted reduction axes (empty means all), NumPy style.
fn norm_axes(rank: usize, axes: &[isize]) -> Vec<usize> {
    let mut v: Vec<usize> = if axes.is_empty() {
        (0..rank).collect()
    } else {
        axes.iter()
            .map(|&a| {
                if a < 0 {
                    (a + rank as isize) as usize
                } else {
                    a as usize
                }
            })
            .collect()
    };
    v.sort_unstable();
    v
}

/// A reduction in f64.
fn reduce_ref(a: &ArrayD<f32>, op: ReduceOp, axes: &[isize], keep: bool) -> ArrayD<f32> {
    let axes = norm_axes(a.ndim(), axes);
    let mut r = a.mapv(f64::from);
    let mut count = 1usize;
    for &ax in axes.iter().rev() {
        count *= r.shape()[ax];
        r = match op {
            ReduceOp::Sum | ReduceOp::Mean => r.sum_axis(Axis(ax)),
            ReduceOp::Max => r.fold_axis(Axis(ax), f64::NEG_INFINITY, |&m, &x| m.max(x)),
            ReduceOp::Min => r.fold_axis(Axis(ax), f64::INFINITY, |&m, &x| m.min(x)),
        };
    }
    if op == ReduceOp::Mean {
        r /= count as f64;
    }
    if keep {
        for &ax in &axes {
            r = r.insert_axis(Axis(ax));
        }
    }
    r.mapv(|x| x as f32)
}

fn reduce_ref_i32(a: &ArrayD<i32>, op: ReduceOp, axes: &[isize], keep: bool) -> ArrayD<i32> {
    let axes = norm_axes(a.ndim(), axes);
    let mut r = a.mapv(i64::from);
    let mut count = 1i64;
    for &ax in axes.iter().rev() {
        count *= r.shape()[ax] as i64;
        r = match op {
            ReduceOp::Sum | ReduceOp::Mean => r.sum_axis(Axis(ax)),
            ReduceOp::Max => r.fold_axis(Axis(ax), i64::MIN, |&m, &x| m.max(x)),
            ReduceOp::Min => r.fold_axis(Axis(ax), i64::MAX, |&m, &x| m.min(x)),
        };
    }
    if op == ReduceOp::Mean {
        // Integer division in Rust truncates toward zero.
        r.mapv_inplace(|x| x / count);
    }
    if keep {
        for &ax in &axes {
            r = r.insert_axis(Axis(ax));
        }
    }
    r.mapv(|x| i32::try_from(x).expect("test inputs keep i32 sums in range"))
}

fn reduce_tol(a: &ArrayD<f32>, op: ReduceOp, axes: &[isize]) -> (f32, f32) {
    let n: usize = norm_axes(a.ndim(), axes)
        .iter()
        .map(|&ax| a.shape()[ax])
        .product();
    match op {
        ReduceOp::Max | ReduceOp::Min => (0.0, 0.0),
        ReduceOp::Sum | ReduceOp::Mean => (1e-4, 1e-6 * n as f32),
    }
}

fn apply_reduce(t: &Tensor, op: ReduceOp, axes: &[isize], keep: bool) -> Tensor {
    let r = match op {
        ReduceOp::Sum => t.sum(axes, keep),
        ReduceOp::Mean => t.mean(axes, keep),
        ReduceOp::Max => t.max(axes, keep),
        ReduceOp::Min => t.min(axes, keep),
    };
    r.unwrap_or_else(|e| panic!("{}: {e}", op.name()))
}

/// Softmax along `axis` in f64.
fn softmax_ref(a: &ArrayD<f32>, axis: usize) -> ArrayD<f32> {
    let mut r = a.mapv(f64::from);
    for mut lane in r.lanes_mut(Axis(axis)) {
        let m = lane.fold(f64::NEG_INFINITY, |m, &x| m.max(x));
        lane.mapv_inplace(|x| (x - m).exp());
        let s = lane.sum();
        lane.mapv_inplace(|x| x / s);
    }
    r.mapv(|x| x as f32)
}

fn input_f32(g: &Graph, name: &str, a: &ArrayD<f32>) -> Tensor {
    g.input(name, DType::F32, a.shape().to_vec())
        .unwrap_or_else(|e| panic!("input {name}: {e}"))
}

fn input_i32(g: &Graph, name: &str, a: &ArrayD<i32>) -> Tensor {
    g.input(name, DType::I32, a.shape().to_vec())
        .unwrap_or_else(|e| panic!("input {name}: {e}"))
}

fn feed<'a>(name: &'a str, a: &ArrayD<f32>) -> (&'a str, Value) {
    (name, Value::F32(a.clone()))
}

fn feed_i32<'a>(name: &'a str, a: &ArrayD<i32>) -> (&'a str, Value) {
    (name, Value::I32(a.clone()))
}

/// Builds `a op b` from two fed inputs, runs it and checks it.
fn check_binary_f32(d: Device, op: BinaryOp, a: &ArrayD<f32>, b: &ArrayD<f32>) {
    let g = Graph::new();
    let (x, y) = (input_f32(&g, "a", a), input_f32(&g, "b", b));
    let out = x.apply_binary(op, &y).expect("binary builds");
    let what = format!("{d}: {:?} {} {:?}", a.shape(), op.name(), b.shape());
    if let Some(v) = run1(d, &g, &out, &[feed("a", a), feed("b", b)]) {
        let (rtol, atol) = f32_binary_tol(op);
        assert_close(
            &f32_of(v),
            &zip_broadcast(a, b, f32_binary_ref(op)),
            rtol,
            atol,
            &what,
        );
    }
}

fn check_binary_i32(d: Device, op: BinaryOp, a: &ArrayD<i32>, b: &ArrayD<i32>) {
    let g = Graph::new();
    let (x, y) = (input_i32(&g, "a", a), input_i32(&g, "b", b));
    let out = x.apply_binary(op, &y).expect("binary builds");
    let what = format!("{d}: i32 {:?} {} {:?}", a.shape(), op.name(), b.shape());
    if let Some(v) = run1(d, &g, &out, &[feed_i32("a", a), feed_i32("b", b)]) {
        assert_eq_i32(&i32_of(v), &zip_broadcast(a, b, i32_binary_ref(op)), &what);
    }
}

fn i32_vec(v: &[i32]) -> ArrayD<i32> {
    ArrayD::from_shape_vec(IxDyn(&[v.len()]), v.to_vec()).expect("1-D")
}

fn f32_vec(v: &[f32]) -> ArrayD<f32> {
    ArrayD::from_shape_vec(IxDyn(&[v.len()]), v.to_vec()).expect("1-D")
}

// ---------------------------------------------------------------------------
// Elementwise.

fn binary_f32_sizes(d: Device) {
    for (i, op) in BinaryOp::ALL.into_iter().enumerate() {
        for n in SIZES {
            let (a, b) = f32_binary_operands(op, (i * 100 + n) as u64, &[n], &[n]);
            check_binary_f32(d, op, &a, &b);
        }
    }
}

/// `[n,1] x [1,m]`, `[m] x [k,m]`, scalar x tensor both ways, rank-3.
const BROADCAST_PAIRS: &[(&[usize], &[usize])] = &[
    (&[5, 1], &[1, 7]),
    (&[65, 1], &[1, 63]),
    (&[7], &[4, 7]),
    (&[4, 7], &[7]),
    (&[], &[3, 5]),
    (&[3, 5], &[]),
    (&[], &[]),
    (&[2, 1, 4], &[3, 1]),
    (&[2, 3, 4], &[2, 1, 4]),
    (&[1, 3, 1], &[2, 1, 5]),
    (&[4, 1, 6], &[1, 5, 1]),
    (&[1], &[783]),
];

fn binary_f32_broadcasting(d: Device) {
    for (i, op) in BinaryOp::ALL.into_iter().enumerate() {
        for (j, &(sa, sb)) in BROADCAST_PAIRS.iter().enumerate() {
            let (a, b) = f32_binary_operands(op, (i * 1000 + j * 10) as u64, sa, sb);
            check_binary_f32(d, op, &a, &b);
        }
    }
}

fn binary_f32_nan_propagates_through_maximum_minimum(d: Device) {
    let a = f32_vec(&[f32::NAN, 1.0, f32::NAN, -3.0]);
    let b = f32_vec(&[2.0, f32::NAN, f32::NAN, 4.0]);
    check_binary_f32(d, BinaryOp::Max, &a, &b);
    check_binary_f32(d, BinaryOp::Min, &a, &b);
}

/// `&t op f32` and `f32 op &t` build a scalar constant of the tensor's
/// dtype; check their values (operand order matters for sub and div).
fn binary_f32_scalar_overloads(d: Device) {
    let a = rand_f32(7, &[3, 65], 0.5, 4.0);
    let g = Graph::new();
    let x = input_f32(&g, "x", &a);
    let outs = [
        &x + 2.0,
        &x - 2.0,
        &x * 2.0,
        &x / 2.0,
        2.0 - &x,
        2.0 / &x,
        -&x,
    ];
    let refs: [fn(f32) -> f32; 7] = [
        |v| v + 2.0,
        |v| v - 2.0,
        |v| v * 2.0,
        |v| v / 2.0,
        |v| 2.0 - v,
        |v| 2.0 / v,
        |v| -v,
    ];
    let outs_ref: Vec<&Tensor> = outs.iter().collect();
    if let Some(vals) = run_on(d, &g, &outs_ref, &[feed("x", &a)]) {
        for (i, (v, f)) in vals.into_iter().zip(refs).enumerate() {
            assert_close(
                &f32_of(v),
                &a.mapv(f),
                1e-6,
                0.0,
                &format!("{d}: scalar overload #{i}"),
            );
        }
    }
}

fn check_unary_f32(d: Device, op: UnaryOp, a: &ArrayD<f32>) {
    let g = Graph::new();
    let x = input_f32(&g, "x", a);
    let out = x.apply_unary(op).expect("unary builds");
    if let Some(v) = run1(d, &g, &out, &[feed("x", a)]) {
        let f = unary_ref(op);
        let (rtol, atol) = unary_tol(op);
        let expected = a.mapv(|x| f(f64::from(x)) as f32);
        let what = format!("{d}: {} on {:?}", op.name(), a.shape());
        assert_close(&f32_of(v), &expected, rtol, atol, &what);
    }
}

fn unary_f32_sizes(d: Device) {
    for (i, op) in UnaryOp::ALL.into_iter().enumerate() {
        for n in SIZES {
            check_unary_f32(d, op, &unary_input(op, (i * 100 + n) as u64, &[n]));
        }
    }
}

fn unary_f32_rank3(d: Device) {
    for (i, op) in UnaryOp::ALL.into_iter().enumerate() {
        check_unary_f32(d, op, &unary_input(op, 900 + i as u64, &[2, 3, 65]));
        check_unary_f32(d, op, &unary_input(op, 950 + i as u64, &[]));
    }
}

/// The i32 ops that are defined: add sub mul div maximum minimum (pow has
/// its own case for non-negative exponents).
const I32_OPS: [BinaryOp; 6] = [
    BinaryOp::Add,
    BinaryOp::Sub,
    BinaryOp::Mul,
    BinaryOp::Div,
    BinaryOp::Max,
    BinaryOp::Min,
];

fn binary_i32_broadcasting(d: Device) {
    for (i, op) in I32_OPS.into_iter().enumerate() {
        for n in [1, 3, 63, 64, 65, 783, 4096] {
            let a = rand_i32((i * 100 + n) as u64, &[n], -1000, 1000);
            let b = rand_i32((i * 100 + n + 1) as u64, &[n], -50, 50);
            check_binary_i32(d, op, &a, &b);
        }
        for (j, &(sa, sb)) in BROADCAST_PAIRS.iter().enumerate() {
            let a = rand_i32((i * 1000 + j) as u64, sa, -1000, 1000);
            let b = rand_i32((i * 1000 + j + 500) as u64, sb, -50, 50);
            check_binary_i32(d, op, &a, &b);
        }
    }
}

fn binary_i32_division_truncates_and_by_zero_is_zero(d: Device) {
    let a = i32_vec(&[7, -7, 7, -7, 5, 0, -5, 1, i32::MAX, i32::MIN]);
    let b = i32_vec(&[2, 2, -2, -2, 0, 3, 0, 0, 7, 2]);
    // Spelled out: truncation toward zero, x / 0 == 0.
    let expected = i32_vec(&[3, -3, -3, 3, 0, 0, 0, 0, i32::MAX / 7, i32::MIN / 2]);
    let g = Graph::new();
    let (x, y) = (input_i32(&g, "a", &a), input_i32(&g, "b", &b));
    let q = x.div(&y).expect("div builds");
    if let Some(v) = run1(d, &g, &q, &[feed_i32("a", &a), feed_i32("b", &b)]) {
        assert_eq_i32(&i32_of(v), &expected, &format!("{d}: i32 div"));
    }
}

/// "On i32, arithmetic wraps" (op.rs): overflowing add, sub, mul, pow and
/// `i32::MIN / -1` wrap instead of trapping.
fn binary_i32_overflow_wraps(d: Device) {
    let cases: [(BinaryOp, i32, i32, i32); 6] = [
        (BinaryOp::Add, i32::MAX, 1, i32::MIN),
        (BinaryOp::Sub, i32::MIN, 1, i32::MAX),
        (BinaryOp::Mul, 65536, 65536, 0),
        (BinaryOp::Mul, i32::MAX, 2, -2),
        (BinaryOp::Pow, 2, 31, i32::MIN),
        (BinaryOp::Div, i32::MIN, -1, i32::MIN),
    ];
    for (op, a, b, expected) in cases {
        let (a, b) = (i32_vec(&[a]), i32_vec(&[b]));
        let g = Graph::new();
        let (x, y) = (input_i32(&g, "a", &a), input_i32(&g, "b", &b));
        let out = x.apply_binary(op, &y).expect("builds");
        if let Some(v) = run1(d, &g, &out, &[feed_i32("a", &a), feed_i32("b", &b)]) {
            let what = format!("{d}: i32 {} {} {} wraps", a[0], op.name(), b[0]);
            assert_eq_i32(&i32_of(v), &i32_vec(&[expected]), &what);
        }
    }
}

fn binary_i32_pow_non_negative_exponents(d: Device) {
    let a = i32_vec(&[0, 0, 1, -1, -1, 2, -2, 3, -3, 6, 10]);
    let b = i32_vec(&[0, 3, 9, 2, 3, 10, 5, 4, 3, 8, 9]);
    let expected = i32_vec(&[1, 0, 1, 1, -1, 1024, -32, 81, -27, 1_679_616, 1_000_000_000]);
    assert_eq_i32(
        &zip_broadcast(&a, &b, i32_binary_ref(BinaryOp::Pow)),
        &expected,
        "reference",
    );
    check_binary_i32(d, BinaryOp::Pow, &a, &b);
    let a = rand_i32(31, &[4, 65], -6, 6);
    let b = rand_i32(32, &[65], 0, 8);
    check_binary_i32(d, BinaryOp::Pow, &a, &b);
}

/// op.rs: "`pow` with a negative exponent truncates `1 / x^|e|`" (and
/// 1 / 0 is 0, as for division).
fn binary_i32_pow_negative_exponents(d: Device) {
    let a = i32_vec(&[1, 1, -1, -1, 2, -3, 5, 0]);
    let b = i32_vec(&[-1, -5, -1, -2, -1, -1, -3, -1]);
    let expected = i32_vec(&[1, 1, -1, 1, 0, 0, 0, 0]);
    let g = Graph::new();
    let (x, y) = (input_i32(&g, "a", &a), input_i32(&g, "b", &b));
    let out = x.pow(&y).expect("pow builds");
    if let Some(v) = run1(d, &g, &out, &[feed_i32("a", &a), feed_i32("b", &b)]) {
        assert_eq_i32(
            &i32_of(v),
            &expected,
            &format!("{d}: i32 pow, negative exponents"),
        );
    }
}

/// An i32 unary op and its reference.
type I32Unary = (UnaryOp, fn(i32) -> i32);

fn unary_i32(d: Device) {
    let refs: [I32Unary; 3] = [
        (UnaryOp::Neg, i32::wrapping_neg),
        (UnaryOp::Abs, i32::wrapping_abs),
        (UnaryOp::Relu, |x| x.max(0)),
    ];
    for (op, f) in refs {
        for n in [1, 3, 63, 64, 65, 783, 4096] {
            let a = rand_i32(n as u64, &[n], -1000, 1000);
            let g = Graph::new();
            let x = input_i32(&g, "x", &a);
            let out = x.apply_unary(op).expect("builds");
            if let Some(v) = run1(d, &g, &out, &[feed_i32("x", &a)]) {
                assert_eq_i32(
                    &i32_of(v),
                    &a.mapv(f),
                    &format!("{d}: i32 {} [{n}]", op.name()),
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Matmul.

fn check_matmul(d: Device, a: &ArrayD<f32>, b: &ArrayD<f32>, expected: &ArrayD<f32>, k: usize) {
    let g = Graph::new();
    let (x, y) = (input_f32(&g, "a", a), input_f32(&g, "b", b));
    let out = x.matmul(&y).expect("matmul builds");
    assert_eq!(
        out.shape().dims(),
        expected.shape(),
        "static shape of {:?} x {:?}",
        a.shape(),
        b.shape()
    );
    if let Some(v) = run1(d, &g, &out, &[feed("a", a), feed("b", b)]) {
        let (rtol, atol) = matmul_tol(k);
        let what = format!("{d}: matmul {:?} x {:?}", a.shape(), b.shape());
        assert_close(&f32_of(v), expected, rtol, atol, &what);
    }
}

fn check_matmul_nd(d: Device, sa: &[usize], sb: &[usize], seed: u64) {
    let a = rand_f32(seed, sa, -1.0, 1.0);
    let b = rand_f32(seed + 1, sb, -1.0, 1.0);
    check_matmul(d, &a, &b, &matmul_ref(&a, &b), sa[sa.len() - 1]);
}

fn matmul_2d(d: Device) {
    let shapes = [
        (1, 1, 1),
        (3, 3, 3),
        (1, 783, 3),
        (63, 64, 65),
        (64, 64, 64),
        (65, 63, 1),
        (1, 65, 64),
        (17, 1, 9),
    ];
    for (i, (m, k, n)) in shapes.into_iter().enumerate() {
        check_matmul_nd(d, &[m, k], &[k, n], 40 + i as u64 * 2);
    }
}

fn matmul_large_non_multiple(d: Device) {
    check_matmul_nd(d, &[300, 257], &[257, 129], 77);
}

fn matmul_batched_broadcast(d: Device) {
    check_matmul_nd(d, &[2, 1, 5, 4], &[3, 4, 6], 80);
    check_matmul_nd(d, &[4, 7, 3], &[4, 3, 5], 82);
    check_matmul_nd(d, &[7, 3], &[5, 3, 2], 84);
    check_matmul_nd(d, &[5, 7, 3], &[3, 2], 86);
    check_matmul_nd(d, &[2, 1, 65, 63], &[1, 3, 63, 64], 88);
}

fn matmul_1d_promotions(d: Device) {
    let v = rand_f32(90, &[65], -1.0, 1.0);
    let w = rand_f32(91, &[65], -1.0, 1.0);
    let m = rand_f32(92, &[65, 3], -1.0, 1.0);
    let mt = rand_f32(93, &[4, 65], -1.0, 1.0);
    let batched = rand_f32(94, &[2, 65, 3], -1.0, 1.0);
    let to64 = |a: &ArrayD<f32>| a.mapv(f64::from);
    let vec1 = |a: ArrayD<f64>| a.into_dimensionality::<ndarray::Ix1>().expect("1-D");
    let mat2 = |a: ArrayD<f64>| a.into_dimensionality::<ndarray::Ix2>().expect("2-D");
    let back = |a: ArrayD<f64>| a.mapv(|x| x as f32);

    // vec x mat -> [n]
    let e = vec1(to64(&v)).dot(&mat2(to64(&m)));
    check_matmul(d, &v, &m, &back(e.into_dyn()), 65);
    // mat x vec -> [m]
    let e = mat2(to64(&mt)).dot(&vec1(to64(&v)));
    check_matmul(d, &mt, &v, &back(e.into_dyn()), 65);
    // vec x vec -> scalar
    let e = vec1(to64(&v)).dot(&vec1(to64(&w)));
    check_matmul(d, &v, &w, &back(arr0(e).into_dyn()), 65);
    // vec x [2, k, n] -> [2, n]
    let mut e = ndarray::Array2::<f64>::zeros((2, 3));
    for b in 0..2 {
        let slab = to64(&batched).index_axis_move(Axis(0), b);
        e.row_mut(b).assign(&vec1(to64(&v)).dot(&mat2(slab)));
    }
    check_matmul(d, &v, &batched, &back(e.into_dyn()), 65);
}

fn matmul_i32(d: Device) {
    for (i, (sa, sb)) in [
        (vec![5, 7], vec![7, 3]),
        (vec![65, 63], vec![63, 64]),
        (vec![2, 1, 4, 6], vec![3, 6, 5]),
    ]
    .into_iter()
    .enumerate()
    {
        let a = rand_i32(100 + i as u64, &sa, -20, 20);
        let b = rand_i32(200 + i as u64, &sb, -20, 20);
        // Reference in f64 (exact for these magnitudes), then back to i32.
        let expected =
            matmul_ref(&a.mapv(|x| x as f32), &b.mapv(|x| x as f32)).mapv(|x| x.round() as i32);
        let g = Graph::new();
        let (x, y) = (input_i32(&g, "a", &a), input_i32(&g, "b", &b));
        let out = x.matmul(&y).expect("i32 matmul builds");
        if let Some(v) = run1(d, &g, &out, &[feed_i32("a", &a), feed_i32("b", &b)]) {
            assert_eq_i32(
                &i32_of(v),
                &expected,
                &format!("{d}: i32 matmul {sa:?} x {sb:?}"),
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Reductions.

fn check_reduce(d: Device, a: &ArrayD<f32>, op: ReduceOp, axes: &[isize], keep: bool) {
    let g = Graph::new();
    let x = input_f32(&g, "x", a);
    let out = apply_reduce(&x, op, axes, keep);
    let expected = reduce_ref(a, op, axes, keep);
    assert_eq!(
        out.shape().dims(),
        expected.shape(),
        "static shape of {} over {axes:?}",
        op.name()
    );
    if let Some(v) = run1(d, &g, &out, &[feed("x", a)]) {
        let (rtol, atol) = reduce_tol(a, op, axes);
        let what = format!(
            "{d}: {} of {:?} over {axes:?} keep_dims={keep}",
            op.name(),
            a.shape()
        );
        assert_close(&f32_of(v), &expected, rtol, atol, &what);
    }
}

const RANK3_AXES: &[&[isize]] = &[
    &[0],
    &[1],
    &[2],
    &[-1],
    &[-3],
    &[0, 2],
    &[2, 0],
    &[-1, 1],
    &[0, 1, 2],
    &[],
];

fn reduce_rank3_every_axis(d: Device) {
    let a = rand_f32(300, &[4, 5, 6], -1.0, 1.0);
    for op in ReduceOp::ALL {
        for axes in RANK3_AXES {
            for keep in [false, true] {
                check_reduce(d, &a, op, axes, keep);
            }
        }
    }
}

fn reduce_i32(d: Device) {
    // Negative values so the mean truncates toward zero in both directions.
    let a = rand_i32(301, &[4, 5, 6], -100, 100);
    for op in ReduceOp::ALL {
        for axes in RANK3_AXES {
            for keep in [false, true] {
                let g = Graph::new();
                let x = input_i32(&g, "x", &a);
                let out = apply_reduce(&x, op, axes, keep);
                if let Some(v) = run1(d, &g, &out, &[feed_i32("x", &a)]) {
                    let what = format!("{d}: i32 {} over {axes:?} keep_dims={keep}", op.name());
                    assert_eq_i32(&i32_of(v), &reduce_ref_i32(&a, op, axes, keep), &what);
                }
            }
        }
    }
    // Spelled out: mean of [-7, 2] is -2 (truncated), of [7, 2] is 4.
    let a = ArrayD::from_shape_vec(IxDyn(&[2, 2]), vec![-7, 2, 7, 2]).expect("2x2");
    let g = Graph::new();
    let x = input_i32(&g, "x", &a);
    let out = x.mean(&[1], false).expect("mean builds");
    if let Some(v) = run1(d, &g, &out, &[feed_i32("x", &a)]) {
        assert_eq_i32(
            &i32_of(v),
            &i32_vec(&[-2, 4]),
            &format!("{d}: i32 mean truncates"),
        );
    }
}

fn reduce_sizes(d: Device) {
    for n in [1, 3, 63, 64, 65, 783, 4096] {
        let a = rand_f32(400 + n as u64, &[n], -1.0, 1.0);
        let b = rand_f32(500 + n as u64, &[3, n], -1.0, 1.0);
        for op in ReduceOp::ALL {
            check_reduce(d, &a, op, &[0], false);
            check_reduce(d, &b, op, &[1], false);
            check_reduce(d, &b, op, &[0], true);
        }
    }
}

fn reduce_large(d: Device) {
    let a = rand_f32(600, &[1000, 1000], 0.0, 1.0);
    for op in ReduceOp::ALL {
        check_reduce(d, &a, op, &[], false);
        check_reduce(d, &a, op, &[0], false);
        check_reduce(d, &a, op, &[1], true);
    }
    let b = rand_f32(601, &[1 << 20], -1.0, 1.0);
    for op in ReduceOp::ALL {
        check_reduce(d, &b, op, &[0], false);
    }
}

fn reduce_sum_over_empty_axis_is_zero(d: Device) {
    let a = ArrayD::<f32>::zeros(IxDyn(&[3, 0]));
    check_reduce(d, &a, ReduceOp::Sum, &[1], false);
    check_reduce(d, &a, ReduceOp::Sum, &[1], true);
}

// ---------------------------------------------------------------------------
// Layout.

/// Runs a one-input layout op on `a` and compares with `expected`.
fn check_layout(
    d: Device,
    a: &ArrayD<f32>,
    build: impl Fn(&Tensor) -> Tensor,
    expected: &ArrayD<f32>,
    what: &str,
) {
    let g = Graph::new();
    let x = input_f32(&g, "x", a);
    let out = build(&x);
    assert_eq!(
        out.shape().dims(),
        expected.shape(),
        "static shape of {what}"
    );
    if let Some(v) = run1(d, &g, &out, &[feed("x", a)]) {
        assert_close(&f32_of(v), expected, 0.0, 0.0, &format!("{d}: {what}"));
    }
}

fn check_layout_i32(
    d: Device,
    a: &ArrayD<i32>,
    build: impl Fn(&Tensor) -> Tensor,
    expected: &ArrayD<i32>,
    what: &str,
) {
    let g = Graph::new();
    let x = input_i32(&g, "x", a);
    let out = build(&x);
    if let Some(v) = run1(d, &g, &out, &[feed_i32("x", a)]) {
        assert_eq_i32(&i32_of(v), expected, &format!("{d}: i32 {what}"));
    }
}

fn reshape_ref<T: Clone>(a: &ArrayD<T>, to: &[usize]) -> ArrayD<T> {
    a.as_standard_layout()
        .into_owned()
        .into_shape_with_order(IxDyn(to))
        .expect("reference reshape")
}

fn reshape(d: Device) {
    let a = rand_f32(700, &[2, 3, 4], -1.0, 1.0);
    let cases: [(&[isize], &[usize]); 6] = [
        (&[4, -1], &[4, 6]),
        (&[-1], &[24]),
        (&[24, 1], &[24, 1]),
        (&[2, 12], &[2, 12]),
        (&[1, -1, 1, 2], &[1, 12, 1, 2]),
        (&[2, 3, 4], &[2, 3, 4]),
    ];
    for (to, dims) in cases {
        let build = |x: &Tensor| x.reshape(to).expect("reshape builds");
        check_layout(
            d,
            &a,
            build,
            &reshape_ref(&a, dims),
            &format!("reshape to {to:?}"),
        );
    }
    let s = rand_f32(701, &[], -1.0, 1.0);
    check_layout(
        d,
        &s,
        |x| x.reshape(&[1, 1]).expect("builds"),
        &reshape_ref(&s, &[1, 1]),
        "scalar to [1, 1]",
    );
    let big = rand_f32(702, &[783, 65], -1.0, 1.0);
    check_layout(
        d,
        &big,
        |x| x.reshape(&[-1, 5]).expect("builds"),
        &reshape_ref(&big, &[10179, 5]),
        "[783, 65] to [-1, 5]",
    );
    let ai = rand_i32(703, &[6, 4], -9, 9);
    check_layout_i32(
        d,
        &ai,
        |x| x.reshape(&[3, -1]).expect("builds"),
        &reshape_ref(&ai, &[3, 8]),
        "reshape",
    );
}

/// A reshape of a permuted tensor must follow the permuted (logical)
/// order, not the input's memory.
fn reshape_after_permute(d: Device) {
    let a = iota_f32(&[2, 3, 4]);
    let permuted = a.view().permuted_axes(vec![2, 0, 1]).to_owned();
    let expected = reshape_ref(&permuted, &[4, 6]);
    let build = |x: &Tensor| {
        x.permute(&[2, 0, 1])
            .and_then(|p| p.reshape(&[4, 6]))
            .expect("builds")
    };
    check_layout(
        d,
        &a,
        build,
        &expected,
        "permute [2, 0, 1] then reshape [4, 6]",
    );
}

fn permute_and_transpose(d: Device) {
    let a = rand_f32(710, &[2, 3, 4], -1.0, 1.0);
    let perms: [[usize; 3]; 6] = [
        [0, 1, 2],
        [0, 2, 1],
        [1, 0, 2],
        [1, 2, 0],
        [2, 0, 1],
        [2, 1, 0],
    ];
    for p in perms {
        let ip: Vec<isize> = p.iter().map(|&x| x as isize).collect();
        let expected = a.view().permuted_axes(p.to_vec()).to_owned();
        check_layout(
            d,
            &a,
            |x| x.permute(&ip).expect("builds"),
            &expected,
            &format!("permute {p:?}"),
        );
    }
    let expected = a.view().permuted_axes(vec![2, 0, 1]).to_owned();
    check_layout(
        d,
        &a,
        |x| x.permute(&[-1, 0, 1]).expect("builds"),
        &expected,
        "permute [-1, 0, 1]",
    );
    let expected = a.view().permuted_axes(vec![2, 1, 0]).to_owned();
    check_layout(
        d,
        &a,
        |x| x.transpose(0, 2).expect("builds"),
        &expected,
        "transpose(0, 2)",
    );
    let expected = a.view().permuted_axes(vec![0, 2, 1]).to_owned();
    check_layout(
        d,
        &a,
        |x| x.transpose(-1, -2).expect("builds"),
        &expected,
        "transpose(-1, -2)",
    );
    for n in [1, 63, 64, 65, 783] {
        let m = rand_f32(720 + n as u64, &[n, 3], -1.0, 1.0);
        let expected = m.t().to_owned();
        check_layout(
            d,
            &m,
            |x| x.transpose(0, 1).expect("builds"),
            &expected,
            &format!("transpose [{n}, 3]"),
        );
    }
    let ai = iota_i32(&[2, 3, 4]);
    let expected = ai.view().permuted_axes(vec![1, 2, 0]).to_owned();
    check_layout_i32(
        d,
        &ai,
        |x| x.permute(&[1, 2, 0]).expect("builds"),
        &expected,
        "permute",
    );
}

fn broadcast_to(d: Device) {
    let cases: [(&[usize], &[usize]); 6] = [
        (&[3, 1], &[2, 3, 4]),
        (&[], &[5]),
        (&[4], &[3, 4]),
        (&[1], &[783]),
        (&[2, 1, 3], &[2, 65, 3]),
        (&[2, 3], &[2, 3]),
    ];
    for (i, (from, to)) in cases.into_iter().enumerate() {
        let a = rand_f32(730 + i as u64, from, -1.0, 1.0);
        let expected = a
            .broadcast(IxDyn(to))
            .expect("reference broadcast")
            .to_owned();
        let build = |x: &Tensor| x.broadcast_to(to.to_vec()).expect("builds");
        check_layout(
            d,
            &a,
            build,
            &expected,
            &format!("broadcast_to {from:?} -> {to:?}"),
        );
    }
}

/// NumPy's `a[start:end:step]` indices on an axis of length `len`.
fn numpy_slice(len: usize, start: isize, end: isize, step: usize) -> Vec<usize> {
    let len = len as isize;
    let clamp = |i: isize| if i < 0 { (i + len).max(0) } else { i.min(len) };
    (clamp(start)..clamp(end))
        .step_by(step)
        .map(|i| i as usize)
        .collect()
}

fn slice(d: Device) {
    // Spelled out on 0..10.
    let a = iota_f32(&[10]);
    let cases: [(isize, isize, isize, &[f32]); 8] = [
        (0, 10, 1, &[0., 1., 2., 3., 4., 5., 6., 7., 8., 9.]),
        (2, 5, 1, &[2., 3., 4.]),
        (1, 10, 3, &[1., 4., 7.]),
        (-3, -1, 1, &[7., 8.]),
        (-100, 100, 4, &[0., 4., 8.]),
        (5, 2, 1, &[]),
        (8, 100, 1, &[8., 9.]),
        (-1, 10, 2, &[9.]),
    ];
    for (start, end, step, expected) in cases {
        let build = |x: &Tensor| x.slice_step(0, start, end, step).expect("builds");
        check_layout(
            d,
            &a,
            build,
            &f32_vec(expected),
            &format!("0..10 [{start}:{end}:{step}]"),
        );
    }
    // Each axis of a rank-3 tensor, checked against ndarray's `select`.
    let b = rand_f32(740, &[4, 10, 65], -1.0, 1.0);
    let windows: [(isize, isize, usize); 5] =
        [(1, 3, 1), (0, 100, 2), (-2, 65, 1), (-60, -3, 7), (3, 3, 1)];
    for axis in [0isize, 1, 2, -1] {
        let ax = if axis < 0 {
            (axis + 3) as usize
        } else {
            axis as usize
        };
        for (start, end, step) in windows {
            let indices = numpy_slice(b.shape()[ax], start, end, step);
            let expected = b.select(Axis(ax), &indices);
            let build = |x: &Tensor| {
                x.slice_step(axis, start, end, step as isize)
                    .expect("builds")
            };
            check_layout(
                d,
                &b,
                build,
                &expected,
                &format!("axis {axis} [{start}:{end}:{step}]"),
            );
        }
    }
    // Two slices in a row, and a plain `slice`.
    let build = |x: &Tensor| {
        x.slice(1, 2, 9)
            .and_then(|s| s.slice_step(2, 1, 64, 3))
            .expect("builds")
    };
    let expected = b
        .slice_axis(Axis(1), Slice::from(2..9))
        .slice_axis(Axis(2), Slice::new(1, Some(64), 3))
        .to_owned();
    check_layout(d, &b, build, &expected, "two slices");
    let ai = iota_i32(&[10]);
    check_layout_i32(
        d,
        &ai,
        |x| x.slice_step(0, 1, 10, 3).expect("builds"),
        &i32_vec(&[1, 4, 7]),
        "slice",
    );
}

/// A step larger than the axis takes just the first element (NumPy:
/// `a[0:10:huge] == a[0:1]`); the length arithmetic must not overflow.
fn slice_huge_step(d: Device) {
    let a = iota_f32(&[10]);
    let build = |x: &Tensor| x.slice_step(0, 0, 10, isize::MAX).expect("slice builds");
    check_layout(d, &a, build, &f32_vec(&[0.0]), "0..10 [0:10:isize::MAX]");
}

fn concat_three_inputs(d: Device) {
    for (axis, shapes) in [
        (0isize, [[2, 3, 4], [1, 3, 4], [3, 3, 4]]),
        (1, [[2, 1, 4], [2, 63, 4], [2, 2, 4]]),
        (-1, [[2, 3, 1], [2, 3, 65], [2, 3, 3]]),
    ] {
        let ax = if axis < 0 { 2 } else { axis as usize };
        let arrays: Vec<ArrayD<f32>> = shapes
            .iter()
            .enumerate()
            .map(|(i, s)| rand_f32(760 + i as u64, s, -1.0, 1.0))
            .collect();
        let views: Vec<_> = arrays.iter().map(|a| a.view()).collect();
        let expected = ndarray::concatenate(Axis(ax), &views).expect("reference concat");
        let g = Graph::new();
        let names = ["a", "b", "c"];
        let xs: Vec<Tensor> = names
            .iter()
            .zip(&arrays)
            .map(|(n, a)| input_f32(&g, n, a))
            .collect();
        let out = g
            .concat(&[&xs[0], &xs[1], &xs[2]], axis)
            .expect("concat builds");
        let feeds: Vec<(&str, Value)> =
            names.iter().zip(&arrays).map(|(n, a)| feed(n, a)).collect();
        if let Some(v) = run1(d, &g, &out, &feeds) {
            assert_close(
                &f32_of(v),
                &expected,
                0.0,
                0.0,
                &format!("{d}: concat on axis {axis}"),
            );
        }
    }
    // i32, rank 1.
    let (a, b, c) = (i32_vec(&[1, 2]), i32_vec(&[3]), i32_vec(&[4, 5, 6]));
    let g = Graph::new();
    let (x, y, z) = (
        input_i32(&g, "a", &a),
        input_i32(&g, "b", &b),
        input_i32(&g, "c", &c),
    );
    let out = g.concat(&[&x, &y, &z], 0).expect("builds");
    let feeds = [feed_i32("a", &a), feed_i32("b", &b), feed_i32("c", &c)];
    if let Some(v) = run1(d, &g, &out, &feeds) {
        assert_eq_i32(
            &i32_of(v),
            &i32_vec(&[1, 2, 3, 4, 5, 6]),
            &format!("{d}: i32 concat"),
        );
    }
}

fn check_split(d: Device, a: &ArrayD<f32>, axis: isize, spec: SplitSpec, sizes: &[usize]) {
    let ax = if axis < 0 {
        (axis + a.ndim() as isize) as usize
    } else {
        axis as usize
    };
    let g = Graph::new();
    let x = input_f32(&g, "x", a);
    let parts = x.split(axis, spec.clone()).expect("split builds");
    assert_eq!(parts.len(), sizes.len(), "number of parts of {spec:?}");
    let outs: Vec<&Tensor> = parts.iter().collect();
    if let Some(vals) = run_on(d, &g, &outs, &[feed("x", a)]) {
        let mut start = 0;
        for (i, (v, &len)) in vals.into_iter().zip(sizes).enumerate() {
            let expected = a
                .slice_axis(Axis(ax), Slice::from(start..start + len))
                .to_owned();
            let what = format!(
                "{d}: part {i} of {spec:?} on axis {axis} of {:?}",
                a.shape()
            );
            assert_close(&f32_of(v), &expected, 0.0, 0.0, &what);
            start += len;
        }
    }
}

fn split_all_outputs(d: Device) {
    let a = rand_f32(780, &[2, 6, 5], -1.0, 1.0);
    check_split(d, &a, 1, SplitSpec::Parts(3), &[2, 2, 2]);
    check_split(d, &a, 0, SplitSpec::Parts(2), &[1, 1]);
    check_split(d, &a, -1, SplitSpec::Sizes(vec![1, 3, 1]), &[1, 3, 1]);
    let b = rand_f32(781, &[3, 783], -1.0, 1.0);
    check_split(
        d,
        &b,
        1,
        SplitSpec::Sizes(vec![63, 64, 65, 591]),
        &[63, 64, 65, 591],
    );
    check_split(d, &b, 1, SplitSpec::Parts(1), &[783]);
}

fn split_with_empty_part(d: Device) {
    let a = rand_f32(782, &[3, 7], -1.0, 1.0);
    check_split(d, &a, 1, SplitSpec::Sizes(vec![2, 0, 5]), &[2, 0, 5]);
}

fn cast_both_ways(d: Device) {
    // f32 -> i32 truncates toward zero and saturates; NaN becomes 0
    // (op.rs, `Op::Cast`), i.e. Rust's `as`.
    let a = f32_vec(&[
        -2.7,
        -0.5,
        0.5,
        2.9,
        7.0,
        -7.0,
        1e10,
        -1e10,
        f32::NAN,
        16_777_216.0,
    ]);
    let expected = i32_vec(&[-2, 0, 0, 2, 7, -7, i32::MAX, i32::MIN, 0, 16_777_216]);
    let g = Graph::new();
    let x = input_f32(&g, "x", &a);
    let out = x.cast(DType::I32).expect("cast builds");
    assert_eq!(out.dtype(), DType::I32);
    if let Some(v) = run1(d, &g, &out, &[feed("x", &a)]) {
        assert_eq_i32(&i32_of(v), &expected, &format!("{d}: cast f32 -> i32"));
    }
    // i32 -> f32 rounds to nearest.
    let b = i32_vec(&[-5, 0, 3, 16_777_217, i32::MAX, i32::MIN]);
    let expected = f32_vec(&[
        -5.0,
        0.0,
        3.0,
        16_777_216.0,
        2_147_483_648.0,
        -2_147_483_648.0,
    ]);
    let g = Graph::new();
    let x = input_i32(&g, "x", &b);
    let out = x.cast(DType::F32).expect("cast builds");
    if let Some(v) = run1(d, &g, &out, &[feed_i32("x", &b)]) {
        assert_close(
            &f32_of(v),
            &expected,
            0.0,
            0.0,
            &format!("{d}: cast i32 -> f32"),
        );
    }
    // Random round trip at the workgroup edges, with a cast to the same type.
    for n in [1, 3, 63, 64, 65, 783] {
        let a = rand_f32(790 + n as u64, &[n], -1000.0, 1000.0);
        let g = Graph::new();
        let x = input_f32(&g, "x", &a);
        let out = x
            .cast(DType::I32)
            .and_then(|i| i.cast(DType::I32))
            .and_then(|i| i.cast(DType::F32))
            .expect("builds");
        if let Some(v) = run1(d, &g, &out, &[feed("x", &a)]) {
            let expected = a.mapv(|x| (x as i32) as f32);
            assert_close(
                &f32_of(v),
                &expected,
                0.0,
                0.0,
                &format!("{d}: round trip [{n}]"),
            );
        }
    }
}

fn check_softmax(d: Device, a: &ArrayD<f32>, axis: isize) {
    let ax = if axis < 0 {
        (axis + a.ndim() as isize) as usize
    } else {
        axis as usize
    };
    let g = Graph::new();
    let x = input_f32(&g, "x", a);
    let out = x.softmax(axis).expect("softmax builds");
    if let Some(v) = run1(d, &g, &out, &[feed("x", a)]) {
        let got = f32_of(v);
        let what = format!("{d}: softmax of {:?} on axis {axis}", a.shape());
        assert_close(&got, &softmax_ref(a, ax), 1e-5, 1e-6, &what);
        let n = a.shape()[ax];
        let sums = got.mapv(f64::from).sum_axis(Axis(ax)).mapv(|x| x as f32);
        let ones = ArrayD::from_elem(sums.raw_dim(), 1.0f32);
        assert_close(
            &sums,
            &ones,
            0.0,
            1e-6 * n as f32 + 1e-6,
            &format!("{what}: sums"),
        );
    }
}

fn softmax(d: Device) {
    check_softmax(d, &rand_f32(800, &[5, 10], -3.0, 3.0), -1);
    check_softmax(d, &rand_f32(801, &[5, 10], -3.0, 3.0), 0);
    check_softmax(d, &rand_f32(802, &[2, 65, 3], -3.0, 3.0), 1);
    check_softmax(d, &rand_f32(803, &[3, 783], -3.0, 3.0), 1);
    check_softmax(d, &rand_f32(804, &[1, 1], -3.0, 3.0), 1);
}

fn softmax_is_stable_for_large_inputs(d: Device) {
    let a = ArrayD::from_shape_vec(
        IxDyn(&[2, 3]),
        vec![1000.0, 1001.0, 1002.0, -1000.0, -1001.0, -1002.0],
    )
    .expect("2x3");
    check_softmax(d, &a, 1);
}

// ---------------------------------------------------------------------------
// Plans.

fn plan_runs_twice_with_new_feeds(d: Device) {
    let g = Graph::new();
    let x = g.input("x", DType::F32, [4, 65]).expect("input");
    let w = g.input("w", DType::F32, [65, 3]).expect("input");
    let y = x.matmul(&w).and_then(|h| h.tanh()).expect("builds");
    let Some(plan) = compile_on(d, &g, &[&y]) else {
        return;
    };
    for round in 0..3u64 {
        let a = rand_f32(810 + round, &[4, 65], -1.0, 1.0);
        let b = rand_f32(820 + round, &[65, 3], -1.0, 1.0);
        let out = plan
            .run(&[feed("x", &a), feed("w", &b)])
            .unwrap_or_else(|e| panic!("{d}: run {round}: {e}"));
        let expected = matmul_ref(&a, &b).mapv(f32::tanh);
        let got = f32_of(out.into_iter().next().expect("one output"));
        assert_close(&got, &expected, 1e-4, 1e-5, &format!("{d}: round {round}"));
    }
}

/// Deferred evaluation: only ancestors of the requested outputs are
/// compiled, and an input only an unrelated node needs may go unfed.
fn compile_prunes_unrelated_nodes(d: Device) {
    let g = Graph::new();
    let x = g.input("x", DType::F32, [3]).expect("input");
    let y = g.input("y", DType::F32, [3]).expect("input");
    let wanted = (&x * 2.0).named("wanted");
    let unrelated = (&y + 1.0).exp().expect("exp").named("unrelated");
    let also_unrelated = (&wanted + &unrelated).named("also_unrelated");
    let Some(plan) = compile_on(d, &g, &[&wanted]) else {
        return;
    };
    let names: Vec<&str> = plan.steps().iter().map(|s| s.name.as_str()).collect();
    let nodes: Vec<_> = plan.steps().iter().map(|s| s.node).collect();
    for t in [&y, &unrelated, &also_unrelated] {
        assert!(
            !nodes.contains(&t.node()),
            "{d}: step for `{}` in plan {names:?}",
            t.name()
        );
    }
    assert!(
        names.contains(&"wanted") && names.contains(&"x"),
        "{d}: steps {names:?}"
    );
    assert_eq!(
        plan.steps().len(),
        3,
        "{d}: input, constant, mul; got {names:?}"
    );
    let a = f32_vec(&[1.0, -2.0, 3.5]);
    let out = plan
        .run(&[feed("x", &a)])
        .unwrap_or_else(|e| panic!("{d}: {e}"));
    let got = f32_of(out.into_iter().next().expect("one output"));
    assert_close(
        &got,
        &f32_vec(&[2.0, -4.0, 7.0]),
        0.0,
        0.0,
        &format!("{d}: pruned plan"),
    );
    // Feeding the unneeded input is accepted and ignored.
    let out = plan
        .run(&[feed("x", &a), feed("y", &a)])
        .unwrap_or_else(|e| panic!("{d}: {e}"));
    let got = f32_of(out.into_iter().next().expect("one output"));
    assert_close(
        &got,
        &f32_vec(&[2.0, -4.0, 7.0]),
        0.0,
        0.0,
        &format!("{d}: extra feed"),
    );
}

/// Outputs that are graph inputs, repeated outputs, a constant output,
/// and one part of a multi-output node.
fn outputs_that_are_inputs_or_repeated(d: Device) {
    let a = rand_f32(830, &[4, 6], -1.0, 1.0);
    let g = Graph::new();
    let x = input_f32(&g, "x", &a);
    let c = g.constant(f32_vec(&[1.0, 2.0]));
    let parts = x.split(1, SplitSpec::Parts(3)).expect("split");
    let r = parts[1].relu().expect("relu");
    if let Some(vals) = run_on(d, &g, &[&x, &r, &x, &c, &r], &[feed("x", &a)]) {
        let [v0, v1, v2, v3, v4]: [Value; 5] = vals.try_into().expect("five outputs");
        let part = a
            .slice_axis(Axis(1), Slice::from(2..4))
            .mapv(|v| v.max(0.0));
        assert_close(&f32_of(v0), &a, 0.0, 0.0, &format!("{d}: input as output"));
        assert_close(
            &f32_of(v1),
            &part,
            0.0,
            0.0,
            &format!("{d}: relu of split part"),
        );
        assert_close(&f32_of(v2), &a, 0.0, 0.0, &format!("{d}: input repeated"));
        assert_close(
            &f32_of(v3),
            &f32_vec(&[1.0, 2.0]),
            0.0,
            0.0,
            &format!("{d}: constant"),
        );
        assert_close(
            &f32_of(v4),
            &part,
            0.0,
            0.0,
            &format!("{d}: repeated output"),
        );
    }
}

/// A small network mixing every family, against a reference built step
/// by step in ndarray.
fn mlp_forward(d: Device) {
    let (x, w1, b1, w2, b2) = (
        rand_f32(840, &[8, 16], -1.0, 1.0),
        rand_f32(841, &[16, 32], -0.5, 0.5),
        rand_f32(842, &[32], -0.1, 0.1),
        rand_f32(843, &[32, 10], -0.5, 0.5),
        rand_f32(844, &[10], -0.1, 0.1),
    );
    let g = Graph::new();
    let tx = input_f32(&g, "x", &x);
    let tw1 = input_f32(&g, "w1", &w1);
    let tb1 = input_f32(&g, "b1", &b1);
    let tw2 = input_f32(&g, "w2", &w2);
    let tb2 = input_f32(&g, "b2", &b2);
    let h = tx
        .matmul(&tw1)
        .and_then(|h| h.add(&tb1))
        .and_then(|h| h.relu())
        .expect("layer 1");
    let logits = h.matmul(&tw2).and_then(|l| l.add(&tb2)).expect("layer 2");
    let probs = logits.softmax(-1).expect("softmax");
    let loss = probs
        .log()
        .and_then(|l| l.mean(&[], false))
        .and_then(|m| m.neg())
        .expect("loss");
    let feeds = [
        feed("x", &x),
        feed("w1", &w1),
        feed("b1", &b1),
        feed("w2", &w2),
        feed("b2", &b2),
    ];
    if let Some(vals) = run_on(d, &g, &[&probs, &loss], &feeds) {
        let hr = (matmul_ref(&x, &w1) + &b1).mapv(|v| v.max(0.0));
        let lr = matmul_ref(&hr, &w2) + &b2;
        let pr = softmax_ref(&lr, 1);
        let loss_ref = -pr.mapv(|p| f64::from(p).ln()).mean().expect("non-empty") as f32;
        let mut it = vals.into_iter();
        let p = f32_of(it.next().expect("probs"));
        assert_close(&p, &pr, 1e-4, 1e-6, &format!("{d}: mlp probs"));
        let l = f32_of(it.next().expect("loss"));
        assert_close(
            &l,
            &arr0(loss_ref).into_dyn(),
            1e-4,
            1e-6,
            &format!("{d}: mlp loss"),
        );
    }
}

/// Tensors with no elements flow through every family.
fn zero_size_tensors(d: Device) {
    let a = ArrayD::<f32>::zeros(IxDyn(&[0, 3]));
    let b = rand_f32(850, &[3], -1.0, 1.0);
    check_binary_f32(d, BinaryOp::Add, &a, &b);
    check_unary_f32(d, UnaryOp::Exp, &a);
    check_reduce(d, &a, ReduceOp::Sum, &[0], false);
    check_reduce(d, &a, ReduceOp::Max, &[1], false);
    check_layout(
        d,
        &a,
        |x| x.transpose(0, 1).expect("builds"),
        &ArrayD::zeros(IxDyn(&[3, 0])),
        "transpose [0, 3]",
    );
    // [2, 0] x [0, 3] is a [2, 3] of zeros; [0, 3] x [3, 2] is [0, 2].
    let l = ArrayD::<f32>::zeros(IxDyn(&[2, 0]));
    let r = ArrayD::<f32>::zeros(IxDyn(&[0, 3]));
    check_matmul(d, &l, &r, &ArrayD::zeros(IxDyn(&[2, 3])), 0);
    let r2 = rand_f32(851, &[3, 2], -1.0, 1.0);
    check_matmul(d, &a, &r2, &ArrayD::zeros(IxDyn(&[0, 2])), 3);
}

/// Work whose natural grid passes 65,535 along one dimension (the WebGPU
/// per-dimension dispatch cap): a matmul with 65,537 batches, a reduction
/// with 65,537 rows. [`elementwise_past_16m_elements`] does the same
/// for a 256-wide elementwise kernel.
fn dispatch_counts_past_one_grid_dimension(d: Device) {
    check_matmul_nd(d, &[65_537, 1, 2], &[65_537, 2, 1], 860);
    let rows = rand_f32(862, &[65_537, 2], -1.0, 1.0);
    check_reduce(d, &rows, ReduceOp::Sum, &[1], false);
    check_reduce(d, &rows, ReduceOp::Max, &[1], true);
}

/// 2^24 + 3 elements: past 65,535 workgroups of 256 in one dimension.
fn elementwise_past_16m_elements(d: Device) {
    let n = (1 << 24) + 3;
    let a = ArrayD::from_shape_fn(IxDyn(&[n]), |i| (i[0] % 2001) as i32 - 1000);
    let g = Graph::new();
    let x = input_i32(&g, "x", &a);
    let out = x.relu().expect("relu builds");
    if let Some(v) = run1(d, &g, &out, &[feed_i32("x", &a)]) {
        assert_eq_i32(
            &i32_of(v),
            &a.mapv(|v| v.max(0)),
            &format!("{d}: relu of 2^24 + 3"),
        );
    }
}

// ---------------------------------------------------------------------------
// Device-independent checks.

/// The CPU backend is the reference device: it must support every op
/// (so no CPU case is ever skipped through `supports()`).
#[test]
fn cpu_supports_every_op() {
    let g = Graph::new();
    let x = g.input("x", DType::F32, [2, 3]).expect("input");
    let xi = g.input("xi", DType::I32, [2, 3]).expect("input");
    let mut outs: Vec<Tensor> = Vec::new();
    for op in UnaryOp::ALL {
        outs.push(x.apply_unary(op).expect("unary"));
    }
    for op in [UnaryOp::Neg, UnaryOp::Abs, UnaryOp::Relu] {
        outs.push(xi.apply_unary(op).expect("i32 unary"));
    }
    for op in BinaryOp::ALL {
        outs.push(x.apply_binary(op, &x).expect("binary"));
        outs.push(xi.apply_binary(op, &xi).expect("i32 binary"));
    }
    for op in ReduceOp::ALL {
        outs.push(apply_reduce(&x, op, &[1], false));
        outs.push(apply_reduce(&xi, op, &[0], true));
    }
    outs.push(x.matmul(&x.transpose(0, 1).expect("t")).expect("matmul"));
    outs.push(
        xi.matmul(&xi.transpose(0, 1).expect("t"))
            .expect("i32 matmul"),
    );
    outs.push(x.reshape(&[3, 2]).expect("reshape"));
    outs.push(x.broadcast_to([4, 2, 3]).expect("broadcast_to"));
    outs.push(x.slice_step(1, 0, 3, 2).expect("slice"));
    outs.push(g.concat(&[&x, &x], 0).expect("concat"));
    outs.extend(x.split(1, SplitSpec::Sizes(vec![1, 2])).expect("split"));
    outs.push(x.cast(DType::I32).expect("cast"));
    outs.push(xi.cast(DType::F32).expect("cast"));
    let refs: Vec<&Tensor> = outs.iter().collect();
    let options = tensorgraph::options(Device::Cpu).expect("the CPU is always available");
    if let Err(e) = g.compile(&refs, &options) {
        panic!("the CPU backend must support every op: {e}");
    }
}

/// `Device::Auto` resolves to a present device and runs.
#[test]
fn auto_device_runs() {
    let (device, name) = tensorgraph::resolve(Device::Auto).expect("auto resolves");
    assert!(
        matches!(device, Device::Cpu | Device::Gpu),
        "resolved to {device:?} ({name})"
    );
    let g = Graph::new();
    let x = g.input("x", DType::F32, [3]).expect("input");
    let y = (&x * &x).sqrt().expect("sqrt");
    let options = tensorgraph::options(Device::Auto).expect("auto options");
    let plan = g.compile(&[&y], &options).expect("compile");
    let a = f32_vec(&[-3.0, 0.0, 4.0]);
    let out = plan.run(&[feed("x", &a)]).expect("run");
    let got = f32_of(out.into_iter().next().expect("one output"));
    assert_close(
        &got,
        &f32_vec(&[3.0, 0.0, 4.0]),
        1e-6,
        0.0,
        "auto: sqrt(x*x)",
    );
}
