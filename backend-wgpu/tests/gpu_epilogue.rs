//! Matmul epilogues and reduction prologues on the GPU, planned through
//! the graph compiler with `PassOptions::epilogues`: each graph's plan holds
//! the fused op, its values equal the same graph compiled without the pass
//! and a plain ndarray computation, and measured memory equals planned.

mod common;

use std::sync::Arc;

use common::*;
use ndarray::{ArrayD, Axis, Ix2, IxDyn};
use tensorgraph_core::{
    Backend, BinaryOp, DType, FusedExpr, Instr, Kernel, Op, PassOptions, Plan, ReduceOp, Tensor,
    TensorType, Value,
};
use tensorgraph_wgpu::WgpuBackend;

/// Compiles `outputs` for `gpu` with the default passes, epilogues on or off.
fn compile_with(gpu: &Arc<WgpuBackend>, outputs: &[&Tensor], epilogues: bool) -> Plan {
    let passes = PassOptions {
        epilogues,
        ..Default::default()
    };
    common::compile_passes(gpu, outputs, passes)
}

/// How many steps of `plan` run an op `is` accepts.
fn count(plan: &Plan, is: impl Fn(&Op) -> bool) -> usize {
    plan.steps().iter().filter(|s| is(&s.kernel.op)).count()
}

/// Compiles `out` with and without the pass; asserts the fused plan holds
/// `is` ops and the other none; runs both as planned. Returns the fused
/// result, asserted equal to the unfused one.
fn fused_and_plain(
    gpu: &Arc<WgpuBackend>,
    out: &Tensor,
    feeds: &[(&str, Value)],
    is: impl Fn(&Op) -> bool,
    what: &str,
) -> Value {
    let fused = compile_with(gpu, &[out], true);
    let plain = compile_with(gpu, &[out], false);
    assert_eq!(
        count(&fused, &is),
        1,
        "{what}: fused plan\n{:?}",
        fused.steps()
    );
    assert_eq!(count(&plain, &is), 0, "{what}: plain plan");
    let got = common::run_as_planned(&fused, feeds, what).remove(0);
    let want = common::run_as_planned(&plain, feeds, what).remove(0);
    match want.as_f32() {
        Some(w) => assert_close(&got, w, 1e-6, &format!("{what}: fused vs unfused")),
        None => assert_eq!(got, want, "{what}: fused vs unfused"),
    }
    got
}

fn is_epilogue(op: &Op) -> bool {
    matches!(op, Op::MatMulEpilogue(_))
}

fn is_prologue(op: &Op) -> bool {
    matches!(op, Op::ReducePrologue { .. })
}

/// `x @ w` of 2-D arrays on the host.
fn matmul<T: ndarray::LinalgScalar>(x: &ArrayD<T>, w: &ArrayD<T>) -> ArrayD<T> {
    let x = x.view().into_dimensionality::<Ix2>().expect("2d");
    let w = w.view().into_dimensionality::<Ix2>().expect("2d");
    x.dot(&w).into_dyn()
}

#[test]
fn bias_and_relu_across_tile_edges() {
    let Some(gpu) = gpu() else { return };
    for s in [1usize, 3, 63, 64, 65, 257] {
        let (m, k, n) = (s, s + 2, s);
        let g = graph();
        let x = g.input("x", DType::F32, [m, k]).expect("x");
        let w = g.input("w", DType::F32, [k, n]).expect("w");
        let b = g.input("b", DType::F32, [n]).expect("b");
        let y = x.matmul(&w).and_then(|t| t.add(&b)).and_then(|t| t.relu());
        let y = y.expect("y");
        let (xv, wv, bv) = (array(&[m, k], s as u64), array(&[k, n], 7), array(&[n], 8));
        let feeds = [
            ("x", xv.clone().into()),
            ("w", wv.clone().into()),
            ("b", bv.clone().into()),
        ];
        let what = format!("relu(x @ w + b) at {m}x{k}x{n}");
        let got = fused_and_plain(&gpu, &y, &feeds, is_epilogue, &what);
        let want = (matmul(&xv, &wv) + &bv).mapv(|v| v.max(0.0));
        assert_close(&got, &want, 1e-4, &what);
    }
}

#[test]
fn batched_broadcast_matmul_with_an_epilogue() {
    let Some(gpu) = gpu() else { return };
    let (m, k, n) = (65, 19, 70);
    let g = graph();
    let x = g.input("x", DType::F32, [2, 3, m, k]).expect("x");
    let w = g.input("w", DType::F32, [3, k, n]).expect("w");
    let b = g.input("b", DType::F32, [3, 1, n]).expect("b");
    let r = g.input("r", DType::F32, [2, 3, m, n]).expect("r");
    let t = x.matmul(&w).and_then(|t| t.add(&b)).and_then(|t| t.tanh());
    let y = t.and_then(|t| t.mul(&r)).expect("y") + 0.5;
    let (xv, wv) = (array(&[2, 3, m, k], 1), array(&[3, k, n], 2));
    let (bv, rv) = (array(&[3, 1, n], 3), array(&[2, 3, m, n], 4));
    let feeds = [
        ("x", xv.clone().into()),
        ("w", wv.clone().into()),
        ("b", bv.clone().into()),
        ("r", rv.clone().into()),
    ];
    let what = "tanh(x @ w + b) * r + 0.5, batched";
    let got = fused_and_plain(&gpu, &y, &feeds, is_epilogue, what);
    let mut want = ArrayD::<f32>::zeros(IxDyn(&[2, 3, m, n]));
    for i in 0..2 {
        for j in 0..3 {
            let xs = xv.index_axis(Axis(0), i).index_axis(Axis(0), j).to_owned();
            let ws = wv.index_axis(Axis(0), j).to_owned();
            let p = matmul(&xs.into_dyn(), &ws.into_dyn());
            let bs = bv.index_axis(Axis(0), j).to_owned();
            let rs = rv.index_axis(Axis(0), i).index_axis(Axis(0), j).to_owned();
            let v = ((p + &bs).mapv(f32::tanh) * &rs).mapv(|v| v + 0.5);
            want.index_axis_mut(Axis(0), i)
                .index_axis_mut(Axis(0), j)
                .assign(&v);
        }
    }
    assert_close(&got, &want, 1e-4, what);
}

#[test]
fn integer_matmul_with_a_casting_epilogue() {
    let Some(gpu) = gpu() else { return };
    for (m, k, n) in [(3, 5, 4), (65, 64, 63)] {
        let g = graph();
        let x = g.input("x", DType::I32, [m, k]).expect("x");
        let w = g.input("w", DType::I32, [k, n]).expect("w");
        let b = g.input("b", DType::I32, [m, 1]).expect("b");
        let y = x.matmul(&w).and_then(|t| t.sub(&b)).and_then(|t| t.relu());
        let y = y.and_then(|t| t.cast(DType::F32)).expect("y") * 0.5;
        let (xv, wv, bv) = (
            int_array(&[m, k], 1, 9),
            int_array(&[k, n], 2, 9),
            int_array(&[m, 1], 3, 50),
        );
        let feeds = [
            ("x", xv.clone().into()),
            ("w", wv.clone().into()),
            ("b", bv.clone().into()),
        ];
        let what = format!("f32(relu(x @ w - b)) * 0.5, i32 {m}x{k}x{n}");
        let got = fused_and_plain(&gpu, &y, &feeds, is_epilogue, &what);
        let want = (matmul(&xv, &wv) - &bv).mapv(|v| v.max(0) as f32 * 0.5);
        assert_close(&got, &want, 0.0, &what);
        // And an all-integer epilogue.
        let g = graph();
        let x = g.input("x", DType::I32, [m, k]).expect("x");
        let w = g.input("w", DType::I32, [k, n]).expect("w");
        let b = g.input("b", DType::I32, [m, 1]).expect("b");
        let y = x.matmul(&w).and_then(|t| t.add(&b)).and_then(|t| t.abs());
        let got = fused_and_plain(&gpu, &y.expect("y"), &feeds, is_epilogue, &what);
        let want = (matmul(&xv, &wv) + &bv).mapv(i32::abs);
        assert_ints(&got, &want, &what);
    }
}

/// Folds `x` over `axes` with `op`, as NumPy does (f32 sums in f64).
fn reduce_f32(x: &ArrayD<f32>, op: ReduceOp, axes: &[usize], keep: bool) -> ArrayD<f32> {
    let mut a = x.mapv(f64::from);
    let mut count = 1usize;
    for &ax in axes.iter().rev() {
        count *= x.shape()[ax];
        a = match op {
            ReduceOp::Sum | ReduceOp::Mean => a.sum_axis(Axis(ax)),
            ReduceOp::Max => a.fold_axis(Axis(ax), f64::NEG_INFINITY, |m, &v| m.max(v)),
            ReduceOp::Min => a.fold_axis(Axis(ax), f64::INFINITY, |m, &v| m.min(v)),
        };
        if keep {
            a.insert_axis_inplace(Axis(ax));
        }
    }
    if op == ReduceOp::Mean {
        a.mapv_inplace(|v| v / count as f64);
    }
    a.mapv(|v| v as f32)
}

/// Folds `x` over `axes` with `op` (wrapping sums, truncating means).
fn reduce_i32(x: &ArrayD<i32>, op: ReduceOp, axes: &[usize], keep: bool) -> ArrayD<i32> {
    let mut a = x.clone();
    let mut count = 1i32;
    for &ax in axes.iter().rev() {
        count *= x.shape()[ax] as i32;
        a = match op {
            ReduceOp::Sum | ReduceOp::Mean => a.fold_axis(Axis(ax), 0, |s, &v| s.wrapping_add(v)),
            ReduceOp::Max => a.fold_axis(Axis(ax), i32::MIN, |m, &v| *m.max(&v)),
            ReduceOp::Min => a.fold_axis(Axis(ax), i32::MAX, |m, &v| *m.min(&v)),
        };
        if keep {
            a.insert_axis_inplace(Axis(ax));
        }
    }
    if op == ReduceOp::Mean {
        a.mapv_inplace(|v| v / count);
    }
    a
}

#[test]
fn sum_of_exp_x_times_x() {
    let Some(gpu) = gpu() else { return };
    for dims in [[1usize, 1], [37, 300], [5, 4097]] {
        let g = graph();
        let x = g.input("x", DType::F32, dims).expect("x");
        let s = x
            .exp()
            .and_then(|e| e.mul(&x))
            .and_then(|t| t.sum(&[1], false));
        let xv = array(&dims, 9);
        let feeds = [("x", xv.clone().into())];
        let what = format!("(exp(x) * x).sum(1) on {dims:?}");
        let got = fused_and_plain(&gpu, &s.expect("s"), &feeds, is_prologue, &what);
        let want = reduce_f32(&xv.mapv(|v| v.exp() * v), ReduceOp::Sum, &[1], false);
        assert_close(&got, &want, 1e-4, &what);
    }
}

const AXIS_SETS: [&[usize]; 5] = [&[0], &[1], &[2], &[0, 2], &[0, 1, 2]];

#[test]
fn mean_max_min_of_a_broadcast_prologue() {
    let Some(gpu) = gpu() else { return };
    let dims = [7, 30, 5];
    let (xv, yv) = (array(&dims, 21), array(&[30, 1], 22));
    let (xi, yi) = (int_array(&dims, 23, 100), int_array(&[30, 1], 24, 100));
    let feeds = [
        ("x", xv.clone().into()),
        ("y", yv.clone().into()),
        ("xi", xi.clone().into()),
        ("yi", yi.clone().into()),
    ];
    let pre = (&xv * &yv) + xv.mapv(f32::abs);
    let pre_i = (&xi * &yi) - &xi;
    for op in [ReduceOp::Mean, ReduceOp::Max, ReduceOp::Min, ReduceOp::Sum] {
        for axes in AXIS_SETS {
            for keep in [true, false] {
                let a: Vec<isize> = axes.iter().map(|&a| a as isize).collect();
                let g = graph();
                let x = g.input("x", DType::F32, dims).expect("x");
                let y = g.input("y", DType::F32, [30, 1]).expect("y");
                let xi_t = g.input("xi", DType::I32, dims).expect("xi");
                let yi_t = g.input("yi", DType::I32, [30, 1]).expect("yi");
                let t = x.mul(&y).and_then(|t| t.add(&x.abs()?));
                let r = t.and_then(|t| t.apply_reduce(op, &a, keep)).expect("r");
                let ti = xi_t.mul(&yi_t).and_then(|t| t.sub(&xi_t));
                let ri = ti.and_then(|t| t.apply_reduce(op, &a, keep)).expect("ri");
                let what = format!("{} over {axes:?} keep={keep}", op.name());
                let got = fused_and_plain(&gpu, &r, &feeds, is_prologue, &what);
                assert_close(&got, &reduce_f32(&pre, op, axes, keep), 1e-5, &what);
                let got = fused_and_plain(&gpu, &ri, &feeds, is_prologue, &what);
                assert_ints(&got, &reduce_i32(&pre_i, op, axes, keep), &what);
            }
        }
    }
}

#[test]
fn prologue_keeps_nan_and_empty_reductions() {
    let Some(gpu) = gpu() else { return };
    let g = graph();
    let x = g.input("x", DType::F32, [3, 4]).expect("x");
    let e = g.input("e", DType::F32, [2, 0]).expect("e");
    let m = x.add(&x).and_then(|t| t.max(&[1], false)).expect("m");
    let z = e.exp().and_then(|t| t.mean(&[1], true)).expect("z");
    let mut xv = array(&[3, 4], 5);
    xv[IxDyn(&[1, 2])] = f32::NAN;
    let feeds = [
        ("x", xv.clone().into()),
        ("e", ArrayD::<f32>::zeros(IxDyn(&[2, 0])).into()),
    ];
    let got = fused_and_plain(&gpu, &m, &feeds, is_prologue, "max with a NaN");
    let v = got.as_f32().expect("f32");
    assert!(v[IxDyn(&[1])].is_nan(), "NaN propagates: {v}");
    assert!(!v[IxDyn(&[0])].is_nan() && !v[IxDyn(&[2])].is_nan(), "{v}");
    let got = fused_and_plain(&gpu, &z, &feeds, is_prologue, "empty mean");
    let v = got.as_f32().expect("f32");
    assert_eq!(v.shape(), &[2, 1]);
    assert!(
        v.iter().all(|x| x.is_nan()),
        "an empty f32 mean is NaN: {v}"
    );
}

/// `x @ w + b1 + b2 + ...` over `extras` operands of shape `[n]`, as one
/// `MatMulEpilogue` kernel.
fn add_chain(m: usize, k: usize, n: usize, extras: usize) -> Kernel {
    let f32s = |d: &[usize]| TensorType::new(DType::F32, d.to_vec());
    let mut inputs = vec![f32s(&[m, k]), f32s(&[k, n])];
    inputs.extend((0..extras).map(|_| f32s(&[n])));
    let mut instrs = vec![Instr::Input(0)];
    for j in 1..=extras {
        instrs.push(Instr::Input(j));
        let last = instrs.len() - 1;
        instrs.push(Instr::Binary(BinaryOp::Add, last - 1, last));
    }
    let expr = FusedExpr {
        dtypes: vec![DType::F32; instrs.len()],
        instrs,
    };
    Kernel {
        op: Op::MatMulEpilogue(Arc::new(expr)),
        inputs,
        outputs: vec![f32s(&[m, n])],
    }
}

/// Five extra operands (the pass's most): past 8 storage bindings with
/// A's and B's `vec4` views, so on an adapter at WebGPU's default the
/// views give way. Past the adapter's limit even without them, `supports`
/// refuses with the reason.
#[test]
fn five_extra_operands_and_the_binding_limit() {
    let Some(gpu) = gpu() else { return };
    let (m, k, n) = (33, 8, 65);
    let g = graph();
    let x = g.input("x", DType::F32, [m, k]).expect("x");
    let w = g.input("w", DType::F32, [k, n]).expect("w");
    let names = ["b1", "b2", "b3", "b4", "b5"];
    let shapes: [&[usize]; 5] = [&[n], &[m, 1], &[m, n], &[1, n], &[]];
    let mut y = x.matmul(&w).expect("p");
    let mut feeds: Vec<(&str, Value)> = vec![
        ("x", array(&[m, k], 1).into()),
        ("w", array(&[k, n], 2).into()),
    ];
    let mut want = matmul(&array(&[m, k], 1), &array(&[k, n], 2));
    for (j, (name, dims)) in names.iter().zip(shapes).enumerate() {
        let b = g.input(name, DType::F32, dims.to_vec()).expect("b");
        let v = array(dims, 10 + j as u64);
        y = if j % 2 == 0 { y.add(&b) } else { y.mul(&b) }.expect("y");
        want = if j % 2 == 0 { want + &v } else { want * &v };
        feeds.push((name, v.into()));
    }
    let y = y.relu().expect("relu");
    let want = want.mapv(|v| v.max(0.0));
    let plan = compile_with(&gpu, &[&y], true);
    let step = plan
        .steps()
        .iter()
        .find(|s| is_epilogue(&s.kernel.op))
        .expect("an epilogue step");
    assert_eq!(step.kernel.inputs.len(), 7, "x, w and five extras");
    assert!(!gpu.supports_in_place(&step.kernel));
    let what = "relu(x @ w + b1) * b2 + b3 ... over five extras";
    let got = fused_and_plain(&gpu, &y, &feeds, is_epilogue, what);
    assert_close(&got, &want, 1e-4, what);

    // One extra operand more than the adapter binds, without the views.
    let max = gpu.limits().max_storage_buffers_per_shader_stage as usize;
    let err = gpu
        .supports(&add_chain(m, k, n, max - 2))
        .expect_err("past the binding limit");
    assert!(
        err.contains("max_storage_buffers_per_shader_stage"),
        "{err}"
    );
    let mut kernel = add_chain(m, k, n, max - 3);
    assert_eq!(gpu.supports(&kernel), Ok(()), "at the binding limit");
    kernel.inputs.pop();
    assert!(
        gpu.supports(&kernel).is_err(),
        "the program reads a missing operand"
    );
}

/// On a device held to WebGPU's default of 8 storage buffers a stage, an
/// epilogue of 4 or 5 extra operands drops A's and B's `vec4` views (the
/// scalar form of the tile loads) and still computes the same values; 6
/// are refused by `supports`, naming the limit.
#[test]
fn at_webgpu_default_limits_the_views_give_way() {
    let Some(full) = gpu() else { return };
    let gpu = match WgpuBackend::with_limits(|l| l.max_storage_buffers_per_shader_stage = 8) {
        Ok(b) => Arc::new(b),
        Err(e) => panic!("the adapter opened once already: {e}"),
    };
    assert_eq!(gpu.limits().max_storage_buffers_per_shader_stage, 8);
    // k and n multiples of 4: the vec4 load path, here through scalars.
    for (m, k, n, extras) in [(65, 8, 68, 5), (3, 5, 7, 4), (64, 64, 64, 5)] {
        let g = graph();
        let x = g.input("x", DType::F32, [m, k]).expect("x");
        let w = g.input("w", DType::F32, [k, n]).expect("w");
        let names = ["b1", "b2", "b3", "b4", "b5"];
        let shapes: [&[usize]; 5] = [&[n], &[m, 1], &[m, n], &[1, n], &[]];
        let mut y = x.matmul(&w).expect("p");
        let mut feeds: Vec<(&str, Value)> = vec![
            ("x", array(&[m, k], 1).into()),
            ("w", array(&[k, n], 2).into()),
        ];
        let mut want = matmul(&array(&[m, k], 1), &array(&[k, n], 2));
        for (j, (name, dims)) in names.iter().zip(shapes).enumerate().take(extras) {
            let b = g.input(name, DType::F32, dims.to_vec()).expect("b");
            let v = array(dims, 10 + j as u64);
            y = if j % 2 == 0 { y.add(&b) } else { y.mul(&b) }.expect("y");
            want = if j % 2 == 0 { want + &v } else { want * &v };
            feeds.push((name, v.into()));
        }
        let y = y.tanh().expect("tanh");
        let want = want.mapv(f32::tanh);
        let what = format!("{extras} extras at {m}x{k}x{n}, 8 storage buffers");
        let got = fused_and_plain(&gpu, &y, &feeds, is_epilogue, &what);
        assert_close(&got, &want, 1e-4, &what);
        // The same graph on the unrestricted device (with views) agrees.
        let plan = compile_with(&full, &[&y], true);
        let with_views = common::run_as_planned(&plan, &feeds, &what).remove(0);
        assert_close(&got, with_views.as_f32().expect("f32"), 1e-6, &what);
    }
    assert_eq!(gpu.supports(&add_chain(4, 4, 4, 5)), Ok(()));
    let err = gpu
        .supports(&add_chain(4, 4, 4, 6))
        .expect_err("9 storage buffers");
    assert!(
        err.contains("max_storage_buffers_per_shader_stage (8)") && err.contains("at most 5"),
        "{err}"
    );
}
