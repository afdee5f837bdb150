//! Matmul epilogues and reduction prologues: graphs compiled with the
//! epilogue pass must hold the fused op, agree bit for bit with the same
//! graph compiled without it, match plain ndarray, and meter exactly the
//! planned memory.

use std::sync::Arc;

use ndarray::{Array2, ArrayD, Axis, IxDyn};
use tensorgraph_core::{
    Backend, CompileOptions, DType, Device, Graph, Op, PassOptions, Plan, Result, Tensor, Value,
};

use crate::CpuBackend;

/// Sizes crossing the fused kernel's and the reductions' chunk edges.
const SIZES: [usize; 6] = [1, 63, 64, 65, 783, 2100];

fn compile(b: &Arc<CpuBackend>, g: &Graph, outs: &[&Tensor], epilogues: bool) -> Result<Plan> {
    let mut options = CompileOptions::new(Device::Cpu, vec![b.clone()]);
    options.passes = PassOptions {
        epilogues,
        ..Default::default()
    };
    g.compile(outs, &options)
}

/// Deterministic pseudo-random floats in [-1, 1).
fn floats(shape: &[usize], seed: u32) -> ArrayD<f32> {
    crate::test_data::xorshift_floats(shape, seed, 7, 1)
}

/// Deterministic pseudo-random integers in `[-span, span]`.
fn ints(shape: &[usize], seed: u32, span: i32) -> ArrayD<i32> {
    floats(shape, seed).mapv(|x| (x * span as f32).round() as i32)
}

fn is_epilogue(op: &Op) -> bool {
    matches!(op, Op::MatMulEpilogue(_))
}

fn is_prologue(op: &Op) -> bool {
    matches!(op, Op::ReducePrologue { .. })
}

/// Runs `plan`, checking the measured memory against the plan and that
/// every buffer is released.
fn run_checked(b: &CpuBackend, plan: &Plan, feeds: &[(&str, Value)]) -> Result<Vec<Value>> {
    let (values, stats) = plan.run_with_stats(feeds)?;
    let planned = plan.planned_memory()[0];
    assert_eq!(stats.peak_bytes, vec![planned.peak_bytes], "peak bytes");
    assert_eq!(stats.allocations, vec![planned.allocations], "allocations");
    assert_eq!(b.live_buffers(), 0, "live buffers after a run");
    Ok(values)
}

/// Equal types and equal bits (so NaNs compare equal).
fn assert_same(got: &[Value], want: &[Value]) {
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g.ty(), w.ty());
        match (g, w) {
            (Value::F32(g), Value::F32(w)) => {
                for (x, y) in g.iter().zip(w) {
                    assert_eq!(x.to_bits(), y.to_bits(), "{x} vs {y}");
                }
            }
            (g, w) => assert_eq!(g, w),
        }
    }
}

/// Compiles `outs` with and without the epilogue pass, checks the first
/// plan holds an op `is_fused` accepts and the second none, runs both
/// (twice, on two- and one-thread backends) and checks they agree bit for
/// bit. Returns the two-thread values.
fn check(
    g: &Graph,
    outs: &[&Tensor],
    feeds: &[(&str, Value)],
    is_fused: fn(&Op) -> bool,
) -> Result<Vec<Value>> {
    let mut first = Vec::new();
    for threads in [2, 1] {
        let b = Arc::new(CpuBackend::with_threads(threads));
        let fused = compile(&b, g, outs, true)?;
        let plain = compile(&b, g, outs, false)?;
        assert!(
            fused.steps().iter().any(|s| is_fused(&s.kernel.op)),
            "no fused op in {:?}",
            fused
                .steps()
                .iter()
                .map(|s| &s.kernel.op)
                .collect::<Vec<_>>()
        );
        assert!(!plain.steps().iter().any(|s| is_fused(&s.kernel.op)));
        let want = run_checked(&b, &plain, feeds)?;
        for _ in 0..2 {
            assert_same(&run_checked(&b, &fused, feeds)?, &want);
        }
        if first.is_empty() {
            first = want;
        }
    }
    Ok(first)
}

fn close(a: &ArrayD<f32>, b: &ArrayD<f32>, tol: f32) {
    assert_eq!(a.shape(), b.shape());
    for (x, y) in a.iter().zip(b) {
        let ok = (x.is_nan() && y.is_nan()) || (x - y).abs() <= tol * (1.0 + y.abs());
        assert!(ok, "{x} vs {y}");
    }
}

fn matmul2(a: &ArrayD<f32>, b: &ArrayD<f32>) -> Result<ArrayD<f32>> {
    let a: Array2<f32> = a.clone().into_dimensionality().map_err(shape_err)?;
    let b: Array2<f32> = b.clone().into_dimensionality().map_err(shape_err)?;
    Ok(a.dot(&b).into_dyn())
}

fn shape_err(e: ndarray::ShapeError) -> tensorgraph_core::Error {
    tensorgraph_core::Error::Backend {
        backend: "test".into(),
        node: "reference".into(),
        message: e.to_string(),
    }
}

#[test]
fn bias_relu_epilogue_matches_plain_and_ndarray() -> Result<()> {
    for (i, &m) in SIZES.iter().enumerate() {
        let (k, n) = (37, if m > 1000 { 96 } else { 65 });
        let g = Graph::new();
        let x = g.input("x", DType::F32, [m, k])?;
        let w = g.input("w", DType::F32, [k, n])?;
        let b = g.input("b", DType::F32, [n])?;
        let y = x.matmul(&w)?.add(&b)?.relu()?;
        let (xv, wv, bv) = (
            floats(&[m, k], i as u32),
            floats(&[k, n], 10 + i as u32),
            floats(&[n], 20),
        );
        let feeds = [
            ("x", xv.clone().into()),
            ("w", wv.clone().into()),
            ("b", bv.clone().into()),
        ];
        let out = check(&g, &[&y], &feeds, is_epilogue)?;
        let want = (matmul2(&xv, &wv)? + &bv).mapv(|v| v.max(0.0));
        close(&out[0].clone().into_f32()?, &want, 1e-5);
    }
    Ok(())
}

#[test]
fn batched_broadcast_epilogue_with_cast() -> Result<()> {
    // Integer-valued floats: every product is exact, so the cast is too.
    let (m, k, n) = (65, 9, 70);
    let g = Graph::new();
    let a = g.input("a", DType::F32, [3, 1, m, k])?;
    let b = g.input("b", DType::F32, [4, k, n])?;
    let c = g.input("c", DType::F32, [m, 1])?;
    let two = g.scalar(2.0);
    let y = a.matmul(&b)?.mul(&two)?.sub(&c)?.cast(DType::I32)?;
    let (av, bv, cv) = (
        floats(&[3, 1, m, k], 1).mapv(|x| (x * 4.0).round()),
        floats(&[4, k, n], 2).mapv(|x| (x * 4.0).round()),
        floats(&[m, 1], 3).mapv(|x| (x * 9.0).round() + 0.5),
    );
    let feeds = [
        ("a", av.clone().into()),
        ("b", bv.clone().into()),
        ("c", cv.clone().into()),
    ];
    let out = check(&g, &[&y], &feeds, is_epilogue)?;
    let got = out[0].clone().into_i32()?;
    assert_eq!(got.shape(), &[3, 4, m, n]);
    for i in 0..3 {
        for j in 0..4 {
            let p = matmul2(
                &av.index_axis(Axis(0), i).index_axis(Axis(0), 0).to_owned(),
                &bv.index_axis(Axis(0), j).to_owned(),
            )?;
            let want = (p * 2.0 - &cv).mapv(|v| v as i32);
            let got = got.index_axis(Axis(0), i).index_axis(Axis(0), j).to_owned();
            assert_eq!(got, want, "batch {i} {j}");
        }
    }
    Ok(())
}

#[test]
fn i32_epilogue_wraps() -> Result<()> {
    for &m in &[1, 64, 783] {
        let (k, n) = (5, 33);
        let g = Graph::new();
        let x = g.input("x", DType::I32, [m, k])?;
        let w = g.input("w", DType::I32, [k, n])?;
        let b = g.input("b", DType::I32, [n])?;
        let p = x.matmul(&w)?;
        let y = p.mul(&p)?.add(&b)?.relu()?;
        let (xv, wv, bv) = (
            ints(&[m, k], 4, 60_000),
            ints(&[k, n], 5, 60_000),
            ints(&[n], 6, 1000),
        );
        let feeds = [
            ("x", xv.clone().into()),
            ("w", wv.clone().into()),
            ("b", bv.clone().into()),
        ];
        let out = check(&g, &[&y], &feeds, is_epilogue)?;
        let got = out[0].clone().into_i32()?;
        for ((r, c), &v) in ndarray::indices((m, n)).into_iter().zip(got.iter()) {
            let mut acc = 0i32;
            for t in 0..k {
                acc = acc.wrapping_add(xv[[r, t]].wrapping_mul(wv[[t, c]]));
            }
            let want = acc.wrapping_mul(acc).wrapping_add(bv[[c]]).max(0);
            assert_eq!(v, want);
        }
    }
    Ok(())
}

#[test]
fn exp_times_x_sum_prologue() -> Result<()> {
    for &n in &SIZES {
        for shape in [vec![n, 7], vec![5, n], vec![n, 3, 300]] {
            let g = Graph::new();
            let x = g.input("x", DType::F32, shape.clone())?;
            let s = x.exp()?.mul(&x)?.sum(&[1], false)?;
            let xv = floats(&shape, n as u32);
            let out = check(&g, &[&s], &[("x", xv.clone().into())], is_prologue)?;
            let want = xv
                .mapv(|v| f64::from(v.exp() * v))
                .sum_axis(Axis(1))
                .mapv(|v| v as f32);
            close(&out[0].clone().into_f32()?, &want, 1e-4);
        }
    }
    Ok(())
}

/// `abs(x * y + 1)` (or `log(x)` with NaNs) reduced by every op over
/// several axis sets, kept or not.
#[test]
fn reductions_over_axes_with_keep_dims() -> Result<()> {
    let shape = [6, 65, 7, 33];
    let xv = floats(&shape, 8);
    let yv = floats(&[33], 9);
    for axes in [
        vec![1isize, 2],
        vec![0, 2],
        vec![2, 3],
        vec![0],
        vec![3],
        vec![0, 1, 2, 3],
        vec![-1, -3],
    ] {
        for keep in [false, true] {
            for nan in [false, true] {
                let g = Graph::new();
                let x = g.input("x", DType::F32, shape)?;
                let y = g.input("y", DType::F32, [33])?;
                let one = g.scalar(1.0);
                let e = if nan {
                    x.log()?
                } else {
                    x.mul(&y)?.add(&one)?.abs()?
                };
                let outs = [
                    e.sum(&axes, keep)?,
                    e.mean(&axes, keep)?,
                    e.max(&axes, keep)?,
                    e.min(&axes, keep)?,
                ];
                let refs: Vec<&Tensor> = outs.iter().collect();
                // One reduction per graph, so each one owns its prologue.
                for (i, t) in refs.iter().enumerate() {
                    let feeds = [("x", xv.clone().into()), ("y", yv.clone().into())];
                    let out = check(&g, &[t], &feeds, is_prologue)?;
                    let ev = if nan {
                        xv.mapv(f32::ln)
                    } else {
                        (&xv * &yv + 1.0).mapv(f32::abs)
                    };
                    let want = reference(&ev, &axes, keep, i);
                    close(&out[0].clone().into_f32()?, &want, 1e-4);
                }
            }
        }
    }
    Ok(())
}

/// Reduction `op` (0 sum, 1 mean, 2 max, 3 min) of `x` over `axes`.
fn reference(x: &ArrayD<f32>, axes: &[isize], keep: bool, op: usize) -> ArrayD<f32> {
    let rank = x.ndim() as isize;
    let mut axes: Vec<usize> = axes.iter().map(|&a| a.rem_euclid(rank) as usize).collect();
    axes.sort_unstable();
    let mut r = x.mapv(f64::from);
    let count: usize = axes.iter().map(|&a| x.shape()[a]).product();
    for &a in axes.iter().rev() {
        r = match op {
            0 | 1 => r.sum_axis(Axis(a)),
            2 => r.map_axis(Axis(a), |l| {
                l.fold(f64::NEG_INFINITY, |m, &v| nan_max(m, v))
            }),
            _ => r.map_axis(Axis(a), |l| l.fold(f64::INFINITY, |m, &v| -nan_max(-m, -v))),
        };
        if keep {
            r.insert_axis_inplace(Axis(a));
        }
    }
    if op == 1 {
        r.mapv_inplace(|v| v / count as f64);
    }
    r.mapv(|v| v as f32)
}

fn nan_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

#[test]
fn i32_prologue_wraps_and_truncates_means() -> Result<()> {
    for &n in &SIZES {
        let shape = [n, 3, 5];
        let (xv, yv) = (ints(&shape, 11, 50_000), ints(&[5], 12, 7));
        for (axes, keep) in [
            (vec![0isize], false),
            (vec![1, 2], true),
            (vec![0, 2], false),
        ] {
            for op in 0..4 {
                let g = Graph::new();
                let x = g.input("x", DType::I32, shape)?;
                let y = g.input("y", DType::I32, [5])?;
                let e = x.mul(&x)?.sub(&y)?;
                let t = match op {
                    0 => e.sum(&axes, keep)?,
                    1 => e.mean(&axes, keep)?,
                    2 => e.max(&axes, keep)?,
                    _ => e.min(&axes, keep)?,
                };
                let feeds = [("x", xv.clone().into()), ("y", yv.clone().into())];
                let out = check(&g, &[&t], &feeds, is_prologue)?;
                let ev = ndarray::Zip::from(&xv)
                    .and_broadcast(&yv)
                    .map_collect(|&a, &b| a.wrapping_mul(a).wrapping_sub(b));
                let want = reference_i32(&ev, &axes, keep, op);
                assert_eq!(out[0].clone().into_i32()?, want, "{axes:?} op {op}");
            }
        }
    }
    Ok(())
}

fn reference_i32(x: &ArrayD<i32>, axes: &[isize], keep: bool, op: usize) -> ArrayD<i32> {
    let rank = x.ndim() as isize;
    let axes: Vec<usize> = axes.iter().map(|&a| a.rem_euclid(rank) as usize).collect();
    let count: usize = axes.iter().map(|&a| x.shape()[a]).product();
    let mut r = x.clone();
    for &a in axes.iter().rev() {
        r = match op {
            0 | 1 => r.map_axis(Axis(a), |l| l.fold(0i32, |s, &v| s.wrapping_add(v))),
            2 => r.map_axis(Axis(a), |l| l.fold(i32::MIN, |m, &v| m.max(v))),
            _ => r.map_axis(Axis(a), |l| l.fold(i32::MAX, |m, &v| m.min(v))),
        };
        if keep {
            r.insert_axis_inplace(Axis(a));
        }
    }
    if op == 1 {
        r.mapv_inplace(|v| v / count as i32);
    }
    r
}

/// Large tensors: many whole lanes, few long lanes (split across the
/// pool), long columns, and rows wider than one column chunk.
#[test]
fn large_prologues() -> Result<()> {
    for (shape, axes) in [
        (vec![300, 2000], vec![1isize]),
        (vec![3, 100_000], vec![1]),
        (vec![2000, 300], vec![0]),
        (vec![40, 70_000], vec![0]),
        (vec![7, 300, 50], vec![1]),
        (vec![3, 40, 5000], vec![1]),
    ] {
        let g = Graph::new();
        let x = g.input("x", DType::F32, shape.clone())?;
        let two = g.scalar(2.0);
        let e = x.mul(&two)?.sin()?;
        for op in 0..4 {
            let t = match op {
                0 => e.sum(&axes, false)?,
                1 => e.mean(&axes, true)?,
                2 => e.max(&axes, false)?,
                _ => e.min(&axes, false)?,
            };
            let xv = floats(&shape, 13);
            let out = check(&g, &[&t], &[("x", xv.clone().into())], is_prologue)?;
            let want = reference(&xv.mapv(|v| (v * 2.0).sin()), &axes, op == 1, op);
            close(&out[0].clone().into_f32()?, &want, 1e-4);
        }
    }
    Ok(())
}

#[test]
fn empty_reductions() -> Result<()> {
    let g = Graph::new();
    let x = g.input("x", DType::F32, [0, 5])?;
    let e = x.exp()?;
    for (t, want) in [
        (e.sum(&[0], false)?, 0.0f32),
        (e.mean(&[0], true)?, f32::NAN),
    ] {
        let out = check(
            &g,
            &[&t],
            &[("x", ArrayD::<f32>::zeros(IxDyn(&[0, 5])).into())],
            is_prologue,
        )?;
        let got = out[0].clone().into_f32()?;
        assert_eq!(got.len(), 5);
        assert!(
            got.iter()
                .all(|v| v == &want || (v.is_nan() && want.is_nan()))
        );
    }
    Ok(())
}
