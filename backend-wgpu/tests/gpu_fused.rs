//! Fused elementwise kernels on the GPU, driven through the backend one
//! kernel at a time (no graph builder makes `Op::Fused`): programs against
//! a plain ndarray evaluation, broadcast operands, sizes across workgroup
//! edges, bit-for-bit agreement with the unfused kernels, the storage
//! binding limit and the pipeline cache.

mod common;

use std::sync::Arc;

use common::reference::reference;
use common::*;
use ndarray::{ArrayD, arr1};
use tensorgraph_core::{
    Backend, BinaryOp, DType, FusedExpr, Instr, Kernel, Meter, Op, Scalar, TensorType, UnaryOp,
    Value,
};
use tensorgraph_wgpu::WgpuBackend;

use DType::{F32, I32};

/// A program from `(instr, dtype)` pairs.
fn program(steps: &[(Instr, DType)]) -> Arc<FusedExpr> {
    Arc::new(FusedExpr {
        instrs: steps.iter().map(|s| s.0).collect(),
        dtypes: steps.iter().map(|s| s.1).collect(),
    })
}

/// Runs `op` on `inputs` producing `out`: upload, one kernel, download.
fn run_op(gpu: &WgpuBackend, op: Op, inputs: &[Value], out: TensorType) -> Value {
    let meter = Meter::default();
    let ids: Vec<_> = inputs
        .iter()
        .map(|v| gpu.upload(v, &meter).expect("upload"))
        .collect();
    let kernel = Kernel {
        op,
        inputs: inputs.iter().map(Value::ty).collect(),
        outputs: vec![out],
    };
    let outs = gpu.run_kernel(&kernel, &ids, &meter).expect("runs");
    let value = gpu.download(outs[0]).expect("download");
    for id in ids.into_iter().chain(outs) {
        gpu.free(id, &meter).expect("free");
    }
    assert_eq!(meter.live(), 0);
    value
}

/// Runs `expr` over `inputs`, the output of `dtype` and `dims`.
fn run_fused(gpu: &WgpuBackend, expr: &Arc<FusedExpr>, inputs: &[Value], dims: &[usize]) -> Value {
    let dtype = expr.dtypes[expr.dtypes.len() - 1];
    let out = TensorType::new(dtype, dims.to_vec());
    run_op(gpu, Op::Fused(expr.clone()), inputs, out)
}

/// Asserts the GPU result of `expr` matches the reference within `tol`
/// (f32, relative) or exactly (i32).
#[track_caller]
fn check(gpu: &WgpuBackend, expr: &Arc<FusedExpr>, inputs: &[Value], dims: &[usize], tol: f32) {
    let got = run_fused(gpu, expr, inputs, dims);
    let what = format!(
        "{expr} on {:?} -> {dims:?}",
        inputs.iter().map(Value::ty).collect::<Vec<_>>()
    );
    match reference(expr, inputs, dims) {
        Value::F32(want) => assert_close(&got, &want, tol, &what),
        Value::I32(want) => assert_ints(&got, &want, &what),
    }
}

/// `tanh(x * y + 0.5)`, max with x, exp, plus sigmoid(y), halved, then
/// |.|, sqrt: an eight-op f32 chain over two operands (with no
/// cancellation, so a relative tolerance holds).
fn chain_f32() -> Arc<FusedExpr> {
    program(&[
        (Instr::Input(0), F32),
        (Instr::Input(1), F32),
        (Instr::Binary(BinaryOp::Mul, 0, 1), F32),
        (Instr::Scalar(Scalar::F32(0.5)), F32),
        (Instr::Binary(BinaryOp::Add, 2, 3), F32),
        (Instr::Unary(UnaryOp::Tanh, 4), F32),
        (Instr::Binary(BinaryOp::Max, 5, 0), F32),
        (Instr::Unary(UnaryOp::Exp, 6), F32),
        (Instr::Unary(UnaryOp::Sigmoid, 1), F32),
        (Instr::Binary(BinaryOp::Add, 7, 8), F32),
        (Instr::Scalar(Scalar::F32(2.0)), F32),
        (Instr::Binary(BinaryOp::Div, 9, 10), F32),
        (Instr::Unary(UnaryOp::Abs, 11), F32),
        (Instr::Unary(UnaryOp::Sqrt, 12), F32),
    ])
}

/// i32 arithmetic that wraps and divides by zero, a power, a cast to f32
/// and back (saturating): `i32((f32((x * y + MAX) / y) + pow(x, y)) * z)`.
fn chain_mixed() -> Arc<FusedExpr> {
    program(&[
        (Instr::Input(0), I32),
        (Instr::Input(1), I32),
        (Instr::Binary(BinaryOp::Mul, 0, 1), I32),
        (Instr::Scalar(Scalar::I32(i32::MAX)), I32),
        (Instr::Binary(BinaryOp::Add, 2, 3), I32),
        (Instr::Binary(BinaryOp::Div, 4, 1), I32),
        (Instr::Cast(F32, 5), F32),
        (Instr::Binary(BinaryOp::Pow, 0, 1), I32),
        (Instr::Cast(F32, 7), F32),
        (Instr::Binary(BinaryOp::Add, 6, 8), F32),
        (Instr::Input(2), F32),
        (Instr::Binary(BinaryOp::Mul, 9, 10), F32),
        (Instr::Cast(I32, 11), I32),
    ])
}

const SIZES: [usize; 6] = [1, 63, 64, 65, 783, 1 << 20];

#[test]
fn eight_op_chain_matches_ndarray_across_sizes() {
    let Some(gpu) = gpu() else { return };
    let expr = chain_f32();
    for n in SIZES {
        let (x, y) = (array(&[n], 1), array(&[n], 2).mapv(|v| v * 3.0));
        check(&gpu, &expr, &[x.into(), y.into()], &[n], 1e-5);
    }
}

#[test]
fn integer_chain_with_casts_matches_ndarray_across_sizes() {
    let Some(gpu) = gpu() else { return };
    let expr = chain_mixed();
    for n in SIZES {
        let (x, y) = (int_array(&[n], 3, 5), int_array(&[n], 4, 5));
        // Large factors push the product past i32, so the cast saturates.
        let z = array(&[n], 5).mapv(|v| v * 1e9);
        check(&gpu, &expr, &[x.into(), y.into(), z.into()], &[n], 0.0);
    }
}

#[test]
fn broadcast_operands_match_ndarray() {
    let Some(gpu) = gpu() else { return };
    // (a + b * c) max d, a: [n, 1], b: [m] or [1, m], c: a scalar, d: whole.
    let expr = |d: DType, lit: Scalar| {
        program(&[
            (Instr::Input(0), d),
            (Instr::Input(1), d),
            (Instr::Input(2), d),
            (Instr::Binary(BinaryOp::Mul, 1, 2), d),
            (Instr::Binary(BinaryOp::Add, 0, 3), d),
            (Instr::Input(3), d),
            (Instr::Binary(BinaryOp::Max, 4, 5), d),
            (Instr::Scalar(lit), d),
            (Instr::Binary(BinaryOp::Sub, 6, 7), d),
        ])
    };
    let (ef, ei) = (expr(F32, Scalar::F32(0.25)), expr(I32, Scalar::I32(-3)));
    for (n, m) in [(1, 1), (1, 63), (64, 1), (65, 64), (7, 783), (783, 65)] {
        let b_dims: &[usize] = if n % 2 == 0 { &[m] } else { &[1, m] };
        let f: Vec<Value> = vec![
            array(&[n, 1], 1).into(),
            array(b_dims, 2).into(),
            Value::from(1.5f32),
            array(&[n, m], 3).into(),
        ];
        check(&gpu, &ef, &f, &[n, m], 1e-6);
        let i: Vec<Value> = vec![
            int_array(&[n, 1], 1, 100).into(),
            int_array(b_dims, 2, 100).into(),
            Value::from(-7i32),
            int_array(&[n, m], 3, 500).into(),
        ];
        check(&gpu, &ei, &i, &[n, m], 0.0);
    }
    // A higher-rank output with leading broadcast axes on every operand.
    let f: Vec<Value> = vec![
        array(&[3, 1, 5], 4).into(),
        array(&[4, 1], 5).into(),
        array(&[1, 1, 1, 1], 6).into(),
        array(&[2, 3, 4, 5], 7).into(),
    ];
    check(&gpu, &ef, &f, &[2, 3, 4, 5], 1e-6);
}

/// Values with the edge cases of every op: zeros, signs, NaN, infinities,
/// integral and fractional exponents.
fn edge_floats() -> ArrayD<f32> {
    let mut v = vec![
        0.0f32,
        -0.0,
        1.0,
        -1.0,
        2.0,
        -2.0,
        0.5,
        -8.0,
        3.0,
        1e-3,
        0.1,
        -0.126,
        20.0,
        -100.0,
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        1e30,
        -1e-30,
        1.0 / 3.0,
    ];
    v.extend(common::values(45, 9).iter().map(|x| x * 5.0));
    arr1(&v).into_dyn()
}

fn edge_ints() -> ArrayD<i32> {
    let mut v = vec![
        0,
        1,
        -1,
        2,
        -2,
        7,
        -7,
        3,
        i32::MIN,
        i32::MAX,
        31,
        -5,
        5,
        0,
        1,
        -1,
    ];
    v.extend(int_array(&[49], 10, 9).iter());
    arr1(&v).into_dyn()
}

#[test]
fn every_op_agrees_bit_for_bit_with_the_unfused_kernels() {
    let Some(gpu) = gpu() else { return };
    let (f, i) = (edge_floats(), edge_ints());
    let n = f.len();
    assert_eq!(n, i.len());
    // The flat form (whole operands), then the strided one (a reversed
    // operand read through a broadcast axis: [n, 1] against [1, n]).
    let same = |got: &Value, want: &Value, what: &str| match (got, want) {
        (Value::F32(g), Value::F32(w)) => {
            for (k, (a, b)) in g.iter().zip(w).enumerate() {
                assert!(
                    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                    "{what}: element {k}: fused {a}, unfused {b}"
                );
            }
        }
        _ => assert_eq!(got, want, "{what}"),
    };
    for (d, x, y) in [
        (
            F32,
            Value::F32(f.clone()),
            Value::F32(f.slice(ndarray::s![..;-1]).to_owned().into_dyn()),
        ),
        (
            I32,
            Value::I32(i.clone()),
            Value::I32(i.slice(ndarray::s![..;-1]).to_owned().into_dyn()),
        ),
    ] {
        let ty = TensorType::new(d, [n]);
        for u in UnaryOp::ALL
            .into_iter()
            .filter(|u| d == F32 || !u.float_only())
        {
            let expr = program(&[(Instr::Input(0), d), (Instr::Unary(u, 0), d)]);
            let fused = run_fused(&gpu, &expr, std::slice::from_ref(&x), &[n]);
            let plain = run_op(&gpu, Op::Unary(u), std::slice::from_ref(&x), ty.clone());
            same(&fused, &plain, &format!("{} {d}", u.name()));
        }
        for b in BinaryOp::ALL {
            let expr = program(&[
                (Instr::Input(0), d),
                (Instr::Input(1), d),
                (Instr::Binary(b, 0, 1), d),
            ]);
            let xy = [x.clone(), y.clone()];
            let fused = run_fused(&gpu, &expr, &xy, &[n]);
            let plain = run_op(&gpu, Op::Binary(b), &xy, ty.clone());
            same(&fused, &plain, &format!("{} {d}", b.name()));
            // Strided: every pair, as an [n, n] outer table.
            let col = |v: &Value| match v {
                Value::F32(a) => Value::F32(
                    a.clone()
                        .into_shape_with_order((n, 1))
                        .expect("col")
                        .into_dyn(),
                ),
                Value::I32(a) => Value::I32(
                    a.clone()
                        .into_shape_with_order((n, 1))
                        .expect("col")
                        .into_dyn(),
                ),
            };
            let outer = [col(&x), y.clone()];
            let out = TensorType::new(d, [n, n]);
            let fused = run_fused(&gpu, &expr, &outer, &[n, n]);
            let plain = run_op(&gpu, Op::Binary(b), &outer, out);
            same(&fused, &plain, &format!("{} {d} outer", b.name()));
        }
        let to = if d == F32 { I32 } else { F32 };
        let expr = program(&[(Instr::Input(0), d), (Instr::Cast(to, 0), to)]);
        let fused = run_fused(&gpu, &expr, std::slice::from_ref(&x), &[n]);
        let plain = run_op(
            &gpu,
            Op::Cast(to),
            std::slice::from_ref(&x),
            TensorType::new(to, [n]),
        );
        same(&fused, &plain, &format!("cast {d} -> {to}"));
    }
}

#[test]
fn every_op_matches_ndarray() {
    let Some(gpu) = gpu() else { return };
    let x = array(&[7, 9], 11).mapv(|v| v * 4.0);
    let pos = array(&[9], 12).mapv(|v| v.abs() * 3.0 + 0.25);
    for u in UnaryOp::ALL {
        let expr = program(&[(Instr::Input(0), F32), (Instr::Unary(u, 0), F32)]);
        check(&gpu, &expr, &[x.clone().into()], &[7, 9], 1e-5);
    }
    for b in BinaryOp::ALL {
        let expr = program(&[
            (Instr::Input(0), F32),
            (Instr::Input(1), F32),
            (Instr::Binary(b, 0, 1), F32),
        ]);
        check(
            &gpu,
            &expr,
            &[pos.clone().into(), x.clone().into()],
            &[7, 9],
            2e-5,
        );
        let expr = program(&[
            (Instr::Input(0), I32),
            (Instr::Input(1), I32),
            (Instr::Binary(b, 0, 1), I32),
        ]);
        let (p, q) = (int_array(&[7, 1], 13, 9), int_array(&[9], 14, 6));
        check(&gpu, &expr, &[p.into(), q.into()], &[7, 9], 0.0);
    }
}

#[test]
fn literals_and_casts_keep_their_edge_semantics() {
    let Some(gpu) = gpu() else { return };
    // Literal-only programs naga would refuse to fold: overflow, 1 / 0.
    let wrap = program(&[
        (Instr::Scalar(Scalar::I32(i32::MAX)), I32),
        (Instr::Scalar(Scalar::I32(1)), I32),
        (Instr::Binary(BinaryOp::Add, 0, 1), I32),
        (Instr::Scalar(Scalar::I32(0)), I32),
        (Instr::Binary(BinaryOp::Div, 0, 3), I32),
        (Instr::Binary(BinaryOp::Add, 2, 4), I32),
    ]);
    check(&gpu, &wrap, &[], &[5], 0.0);
    let inf = program(&[
        (Instr::Scalar(Scalar::F32(1.0)), F32),
        (Instr::Scalar(Scalar::F32(0.0)), F32),
        (Instr::Binary(BinaryOp::Div, 0, 1), F32),
    ]);
    check(&gpu, &inf, &[], &[2, 3], 0.0);
    // NaN, infinite and negative-zero literals against edge values, then
    // a saturating f32 -> i32 cast.
    let floats = arr1(&[1.9f32, -1.9, f32::NAN, 3e9, -3e9, f32::INFINITY, -0.5, 0.0]).into_dyn();
    for lit in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0, 2.5] {
        let expr = program(&[
            (Instr::Input(0), F32),
            (Instr::Scalar(Scalar::F32(lit)), F32),
            (Instr::Binary(BinaryOp::Min, 0, 1), F32),
            (Instr::Cast(I32, 2), I32),
            (Instr::Cast(F32, 0), F32),
            (Instr::Binary(BinaryOp::Max, 4, 1), F32),
            (Instr::Cast(I32, 5), I32),
            (Instr::Binary(BinaryOp::Sub, 3, 6), I32),
        ]);
        check(&gpu, &expr, &[floats.clone().into()], &[8], 0.0);
    }
}

#[test]
fn one_to_six_operands_of_mixed_shapes() {
    let Some(gpu) = gpu() else { return };
    let shapes: [&[usize]; 6] = [&[5, 65], &[5, 1], &[65], &[], &[1, 65], &[5, 65]];
    for k in 1..=6 {
        let mut steps = vec![(Instr::Input(0), F32)];
        for j in 1..k {
            steps.push((Instr::Input(j), F32));
            let op = [BinaryOp::Add, BinaryOp::Mul, BinaryOp::Min][j % 3];
            steps.push((Instr::Binary(op, steps.len() - 2, steps.len() - 1), F32));
        }
        steps.push((Instr::Unary(UnaryOp::Cos, steps.len() - 1), F32));
        let inputs: Vec<Value> = (0..k).map(|j| array(shapes[j], j as u64).into()).collect();
        check(&gpu, &program(&steps), &inputs, &[5, 65], 1e-5);
        // The same program over whole operands (the flat form).
        let whole: Vec<Value> = (0..k)
            .map(|j| array(&[5, 65], 20 + j as u64).into())
            .collect();
        check(&gpu, &program(&steps), &whole, &[5, 65], 1e-5);
    }
    // An operand the program never reads is not bound.
    let expr = program(&[(Instr::Input(1), F32), (Instr::Unary(UnaryOp::Neg, 0), F32)]);
    check(
        &gpu,
        &expr,
        &[array(&[4], 1).into(), array(&[4], 2).into()],
        &[4],
        0.0,
    );
}

#[test]
fn zero_size_and_huge_grids() {
    let Some(gpu) = gpu() else { return };
    let expr = chain_f32();
    check(
        &gpu,
        &expr,
        &[array(&[0, 3], 1).into(), array(&[3], 2).into()],
        &[0, 3],
        0.0,
    );
    // 4097 x 4096 elements in the strided form: one thread each, past
    // 65,535 workgroups of 256 along x, so the grid folds into y.
    let (n, m) = (4097, 4096);
    assert!(n * m > 65_535 * 256);
    check(
        &gpu,
        &expr,
        &[array(&[n, 1], 3).into(), array(&[n, m], 4).into()],
        &[n, m],
        1e-5,
    );
}

#[test]
fn storage_binding_limit_is_refused_clearly() {
    let Some(gpu) = gpu() else { return };
    let max = gpu.limits().max_storage_buffers_per_shader_stage as usize;
    eprintln!("max_storage_buffers_per_shader_stage = {max}");
    let kernel = |k: usize| {
        let mut steps = vec![(Instr::Input(0), F32)];
        for j in 1..k {
            steps.push((Instr::Input(j), F32));
            steps.push((
                Instr::Binary(BinaryOp::Add, steps.len() - 2, steps.len() - 1),
                F32,
            ));
        }
        let t = TensorType::new(F32, [4usize]);
        Kernel {
            op: Op::Fused(program(&steps)),
            inputs: vec![t.clone(); k],
            outputs: vec![t],
        }
    };
    // Operands plus the output fill the limit exactly: accepted.
    assert_eq!(gpu.supports(&kernel(max - 1)), Ok(()));
    let err = gpu
        .supports(&kernel(max))
        .expect_err("one storage buffer too many");
    assert!(
        err.contains("max_storage_buffers_per_shader_stage"),
        "{err}"
    );
    assert!(err.contains(&format!("reads {max} operands")), "{err}");
    // Malformed programs are refused too, not run.
    let t = TensorType::new(I32, [4usize]);
    let exp_i32 = Kernel {
        op: Op::Fused(program(&[
            (Instr::Input(0), I32),
            (Instr::Unary(UnaryOp::Exp, 0), I32),
        ])),
        inputs: vec![t.clone()],
        outputs: vec![t],
    };
    assert!(
        gpu.supports(&exp_i32)
            .expect_err("exp on i32")
            .contains("exp")
    );
}

#[test]
fn fused_pipelines_are_cached_by_program_and_layout() {
    let Some(gpu) = new_backend() else { return };
    let expr = chain_f32();
    let xy = |n: usize, dims: &[usize]| -> Vec<Value> {
        vec![array(dims, 1).into(), array(&[n, 8], 2).into()]
    };
    run_fused(&gpu, &expr, &xy(3, &[3, 8]), &[3, 8]);
    let built = gpu.pipelines_created();
    // The same program and layout at another size: no new pipeline.
    run_fused(&gpu, &expr, &xy(50, &[50, 8]), &[50, 8]);
    assert_eq!(gpu.pipelines_created(), built);
    // A broadcast operand is another layout; an equal new Arc is not.
    run_fused(&gpu, &expr, &xy(50, &[50, 1]), &[50, 8]);
    assert_eq!(gpu.pipelines_created(), built + 1);
    run_fused(&gpu, &chain_f32(), &xy(50, &[50, 1]), &[50, 8]);
    assert_eq!(gpu.pipelines_created(), built + 1);
    assert_eq!(gpu.live_buffers(), 0);
}

/// The fusion pass sizes kernels to the adapter's storage-buffer limit:
/// a tree of 12 operands is one kernel where the adapter allows 14
/// buffers or more, and kernels of at most 6 operands on a device held
/// to WebGPU's default 8, with the same values either way.
#[test]
fn fusion_sizes_kernels_to_the_adapters_binding_limit() {
    let Some(full) = gpu() else { return };
    let held = match WgpuBackend::with_limits(|l| l.max_storage_buffers_per_shader_stage = 8) {
        Ok(b) => Arc::new(b),
        Err(e) => panic!("the adapter opened once already: {e}"),
    };
    let n = 12;
    let g = graph();
    let names: Vec<String> = (0..n).map(|i| format!("x{i}")).collect();
    let mut out = None::<tensorgraph_core::Tensor>;
    for name in &names {
        let x = g.input(name, F32, [67]).expect("input");
        let t = &x * 0.5;
        out = Some(match out {
            None => t,
            Some(acc) => &acc + &t,
        });
    }
    let out = out.expect("a tree");
    let arrays: Vec<ArrayD<f32>> = (0..n as u64).map(|i| array(&[67], 40 + i)).collect();
    let feeds: Vec<(&str, Value)> = names
        .iter()
        .zip(&arrays)
        .map(|(n, a)| (n.as_str(), a.clone().into()))
        .collect();
    let want = arrays
        .iter()
        .map(|a| a * 0.5)
        .reduce(|acc, t| acc + t)
        .expect("sum");
    let widths = |plan: &tensorgraph_core::Plan| -> Vec<usize> {
        let steps = plan.steps().iter();
        let fused = steps.filter(|s| matches!(s.kernel.op, Op::Fused(_)));
        fused.map(|s| s.inputs.len()).collect()
    };
    let max = full.limits().max_storage_buffers_per_shader_stage as usize;
    if max >= n + 2 {
        let plan = compile(&full, &[&out]);
        assert_eq!(widths(&plan), [n], "one kernel within {max} buffers");
        assert_close(
            &plan.run(&feeds).expect("runs")[0],
            &want,
            1e-5,
            "full limits",
        );
    }
    let plan = compile(&held, &[&out]);
    let w = widths(&plan);
    assert!(
        w.len() >= 2 && w.iter().all(|&k| k <= 6),
        "{w:?} within 8 buffers"
    );
    assert_close(
        &plan.run(&feeds).expect("runs")[0],
        &want,
        1e-5,
        "8 buffers",
    );
}
