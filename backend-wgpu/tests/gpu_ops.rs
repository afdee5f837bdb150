//! GPU elementwise, cast and layout kernels against ndarray, the integer
//! and NaN semantics shared with the CPU backend, zero-size tensors, the
//! pipeline cache and the memory meter.

mod common;

use common::*;
use ndarray::{ArrayD, IxDyn, Zip, arr1};
use tensorgraph_core::{Backend, BinaryOp, DType, SplitSpec, UnaryOp, Value};

fn f32_binary(op: BinaryOp, a: f32, b: f32) -> f32 {
    match op {
        BinaryOp::Add => a + b,
        BinaryOp::Sub => a - b,
        BinaryOp::Mul => a * b,
        BinaryOp::Div => a / b,
        BinaryOp::Max if a.is_nan() || b.is_nan() => f32::NAN,
        BinaryOp::Max => a.max(b),
        BinaryOp::Min if a.is_nan() || b.is_nan() => f32::NAN,
        BinaryOp::Min => a.min(b),
        BinaryOp::Pow => a.powf(b),
    }
}

#[test]
fn adapter_is_named() {
    let Some(gpu) = gpu() else { return };
    eprintln!("adapter: {:?}", gpu.adapter_info());
    assert!(gpu.name().starts_with("wgpu:"), "{}", gpu.name());
    assert_eq!(gpu.device(), tensorgraph_core::Device::Gpu);
}

#[test]
fn binary_ops_broadcast() {
    let Some(gpu) = gpu() else { return };
    let cases: [(&[usize], &[usize]); 5] = [
        (&[4, 1, 6], &[5, 1]),
        (&[65], &[65]),
        (&[], &[3, 2]),
        (&[2, 3, 1, 4, 1], &[3, 5, 1, 7]),
        (&[300, 1], &[1, 257]),
    ];
    for (ad, bd) in cases {
        let (a, b) = (array(ad, 7), array(bd, 8).mapv(|v| v * 2.0 + 0.5));
        for op in BinaryOp::ALL {
            let g = graph();
            let x = g.input("a", DType::F32, ad.to_vec()).expect("input");
            let y = g.input("b", DType::F32, bd.to_vec()).expect("input");
            let z = x.apply_binary(op, &y).expect("binary");
            let out = run(
                &gpu,
                &[&z],
                &[("a", a.clone().into()), ("b", b.clone().into())],
            );
            let shape = z.shape().dims().to_vec();
            let (ab, bb) = (
                a.broadcast(IxDyn(&shape)).expect("a"),
                b.broadcast(IxDyn(&shape)).expect("b"),
            );
            let want = Zip::from(&ab)
                .and(&bb)
                .map_collect(|&p, &q| f32_binary(op, p, q));
            assert_close(
                &out[0],
                &want,
                2e-5,
                &format!("{} {ad:?} {bd:?}", op.name()),
            );
        }
    }
}

#[test]
fn integer_semantics_match_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let a = arr1(&[7, -7, 7, i32::MIN, 2, 1, -1, -1, 0, 3, i32::MAX, 5]).into_dyn();
    let b = arr1(&[0, 2, -2, -1, -1, -5, -3, -2, -2, 3, 2, 31]).into_dyn();
    let g = graph();
    let (x, y) = (g.constant(a.clone()), g.constant(b.clone()));
    let ops = BinaryOp::ALL.map(|op| x.apply_binary(op, &y).expect("binary"));
    let refs: Vec<&_> = ops.iter().collect();
    let out = run(&gpu, &refs, &[]);
    for (op, got) in BinaryOp::ALL.iter().zip(&out) {
        let want = Zip::from(&a)
            .and(&b)
            .map_collect(|&p: &i32, &q: &i32| match op {
                BinaryOp::Add => p.wrapping_add(q),
                BinaryOp::Sub => p.wrapping_sub(q),
                BinaryOp::Mul => p.wrapping_mul(q),
                BinaryOp::Div if q == 0 => 0,
                BinaryOp::Div => p.wrapping_div(q),
                BinaryOp::Max => p.max(q),
                BinaryOp::Min => p.min(q),
                BinaryOp::Pow if q >= 0 => p.wrapping_pow(q as u32),
                BinaryOp::Pow => match p {
                    1 => 1,
                    -1 if q % 2 == 0 => 1,
                    -1 => -1,
                    _ => 0,
                },
            });
        assert_ints(got, &want, op.name());
    }
}

#[test]
fn float_edge_cases() {
    let Some(gpu) = gpu() else { return };
    let a = arr1(&[-2.0f32, -2.0, 2.0, 0.0, f32::NAN, 1.0, -8.0, 4.0]).into_dyn();
    let b = arr1(&[3.0f32, 0.5, -2.0, -1.0, 0.0, f32::NAN, 1.0 / 3.0, 0.5]).into_dyn();
    let g = graph();
    let (x, y) = (g.constant(a.clone()), g.constant(b.clone()));
    let out = run(
        &gpu,
        &[&x.pow(&y).expect("pow"), &x.maximum(&y).expect("max")],
        &[],
    );
    assert_close(
        &out[0],
        &Zip::from(&a).and(&b).map_collect(|&p, &q| p.powf(q)),
        1e-5,
        "pow",
    );
    let want = Zip::from(&a)
        .and(&b)
        .map_collect(|&p, &q| f32_binary(BinaryOp::Max, p, q));
    assert_close(&out[1], &want, 0.0, "maximum");
}

#[test]
fn unary_ops_and_casts() {
    let Some(gpu) = gpu() else { return };
    let x = array(&[3, 67], 21).mapv(|v| v * 4.0);
    let g = graph();
    let t = g.constant(x.clone());
    let ys: Vec<_> = UnaryOp::ALL
        .iter()
        .map(|&u| t.apply_unary(u).expect("unary"))
        .collect();
    let refs: Vec<&_> = ys.iter().collect();
    let out = run(&gpu, &refs, &[]);
    for (u, got) in UnaryOp::ALL.iter().zip(&out) {
        let f = |v: f32| match u {
            UnaryOp::Neg => -v,
            UnaryOp::Abs => v.abs(),
            UnaryOp::Exp => v.exp(),
            UnaryOp::Log => v.ln(),
            UnaryOp::Sqrt => v.sqrt(),
            UnaryOp::Relu => {
                if v < 0.0 {
                    0.0
                } else {
                    v
                }
            }
            UnaryOp::Tanh => v.tanh(),
            UnaryOp::Sigmoid => 1.0 / (1.0 + (-v).exp()),
            UnaryOp::Sin => v.sin(),
            UnaryOp::Cos => v.cos(),
        };
        assert_close(got, &x.mapv(f), 1e-5, u.name());
    }
    // tanh: relative accuracy near 0, saturation (not NaN) far from it.
    let xs = arr1(&[
        1e-6f32, -1e-3, 0.1, 0.124, -0.126, 0.7, 5.0, 20.0, -100.0, 1e30,
    ])
    .into_dyn();
    let g = graph();
    let out = run(&gpu, &[&g.constant(xs.clone()).tanh().expect("tanh")], &[]);
    let got = out[0].as_f32().expect("f32");
    for (&x, &t) in xs.iter().zip(got) {
        let want = f64::from(x).tanh() as f32;
        assert!(
            (t - want).abs() <= 2e-6 * want.abs(),
            "tanh({x}) = {t}, want {want}"
        );
    }
    // Integer unary ops wrap; f32 -> i32 truncates and saturates, NaN -> 0.
    let ints = arr1(&[i32::MIN, -3, 0, 5]).into_dyn();
    let floats = arr1(&[1.9f32, -1.9, f32::NAN, 3e9, -3e9, f32::INFINITY, -0.5]).into_dyn();
    let g = graph();
    let i = g.constant(ints.clone());
    let f = g.constant(floats.clone());
    let outs = [
        i.neg().expect("neg"),
        i.abs().expect("abs"),
        i.relu().expect("relu"),
        f.cast(DType::I32).expect("cast"),
        i.cast(DType::F32).expect("cast"),
        i.cast(DType::I32).expect("cast"),
    ];
    let out = run(&gpu, &outs.iter().collect::<Vec<_>>(), &[]);
    assert_ints(&out[0], &ints.mapv(i32::wrapping_neg), "neg");
    assert_ints(&out[1], &ints.mapv(i32::wrapping_abs), "abs");
    assert_ints(&out[2], &ints.mapv(|v| v.max(0)), "relu");
    assert_ints(&out[3], &floats.mapv(|v| v as i32), "f32 -> i32");
    assert_close(&out[4], &ints.mapv(|v| v as f32), 0.0, "i32 -> f32");
    assert_ints(&out[5], &ints, "i32 -> i32");
}

#[test]
fn layout_ops() {
    let Some(gpu) = gpu() else { return };
    let x = array(&[4, 5, 6], 31);
    let g = graph();
    let t = g.constant(x.clone());
    let permuted = t.permute(&[2, 0, 1]).expect("permute");
    let sliced = t
        .slice_step(1, 1, 5, 2)
        .expect("slice")
        .slice(2, -4, 6)
        .expect("slice");
    let wide = g
        .constant(array(&[5, 1], 32))
        .broadcast_to([3, 5, 7])
        .expect("broadcast");
    let reshaped = t.reshape(&[6, -1]).expect("reshape");
    let other = g.constant(array(&[4, 2, 6], 33));
    let joined = g.concat(&[&t, &other, &t], 1).expect("concat");
    let parts = t.split(2, SplitSpec::Sizes(vec![1, 3, 2])).expect("split");
    let outs = [
        &permuted, &sliced, &wide, &reshaped, &joined, &parts[0], &parts[1], &parts[2],
    ];
    let out = run(&gpu, &outs, &[]);
    let std = |v: ndarray::ArrayViewD<'_, f32>| v.as_standard_layout().into_owned();
    assert_close(
        &out[0],
        &std(x.view().permuted_axes(IxDyn(&[2, 0, 1]))),
        0.0,
        "permute",
    );
    let s = x.slice(ndarray::s![.., 1..5;2, 2..6]).into_dyn();
    assert_close(&out[1], &std(s), 0.0, "slice");
    let w = array(&[5, 1], 32);
    assert_close(
        &out[2],
        &std(w.broadcast(IxDyn(&[3, 5, 7])).expect("b")),
        0.0,
        "broadcast_to",
    );
    assert_close(
        &out[3],
        &x.clone().into_shape_with_order(IxDyn(&[6, 20])).expect("r"),
        0.0,
        "reshape",
    );
    let o = array(&[4, 2, 6], 33);
    let cat = ndarray::concatenate(ndarray::Axis(1), &[x.view(), o.view(), x.view()]).expect("cat");
    assert_close(&out[4], &cat, 0.0, "concat");
    for (k, (lo, hi)) in [(0, 1), (1, 4), (4, 6)].into_iter().enumerate() {
        let part = std(x.slice(ndarray::s![.., .., lo..hi]).into_dyn());
        assert_close(&out[5 + k], &part, 0.0, "split");
    }
}

#[test]
fn zero_size_tensors() {
    let Some(gpu) = gpu() else { return };
    let g = graph();
    let x = g.input("x", DType::F32, [0usize, 3]).expect("input");
    let y = x
        .relu()
        .expect("relu")
        .add(&g.constant(array(&[3], 1)))
        .expect("add");
    let s = y.sum(&[0], false).expect("sum");
    let p = y.permute(&[1, 0]).expect("permute");
    let out = run(
        &gpu,
        &[&y, &s, &p],
        &[("x", Value::F32(ArrayD::zeros(IxDyn(&[0, 3]))))],
    );
    assert_eq!(out[0].shape().dims(), &[0, 3]);
    assert_close(&out[1], &ArrayD::zeros(IxDyn(&[3])), 0.0, "sum over empty");
    assert_eq!(out[2].shape().dims(), &[3, 0]);
}

#[test]
fn pipelines_are_cached_and_memory_matches_the_plan() {
    // A private backend: the counters must not see other tests' work.
    let Some(gpu) = new_backend() else { return };
    let build = || {
        let g = graph();
        let a = g.input("a", DType::F32, [64usize, 32]).expect("input");
        let b = g.input("b", DType::F32, [32usize, 16]).expect("input");
        let h = a.matmul(&b).expect("matmul").relu().expect("relu");
        let out = h
            .sum(&[1], false)
            .expect("sum")
            .mul(&g.scalar(2.0))
            .expect("mul");
        (g, out)
    };
    let feeds = [
        ("a", Value::from(array(&[64, 32], 1))),
        ("b", Value::from(array(&[32, 16], 2))),
    ];
    let (_g, out) = build();
    let plan = compile(&gpu, &[&out]);
    let (first, stats) = plan.run_with_stats(&feeds).expect("runs");
    let built = gpu.pipelines_created();
    // One pipeline per distinct kernel: the matmul (relu as its epilogue),
    // the sum and the mul.
    let kernels = plan
        .steps()
        .iter()
        .filter(|s| !s.kernel.op.is_source())
        .count();
    assert!(kernels >= 3, "{kernels} kernels");
    assert!(built >= kernels, "{built} pipelines for {kernels} kernels");
    assert_eq!(
        stats.peak_bytes[0],
        plan.planned_peak_bytes(),
        "measured peak equals planned peak"
    );
    assert_eq!(gpu.live_buffers(), 0, "every buffer freed after the run");
    let (_g2, out2) = build();
    let again = compile(&gpu, &[&out2]).run(&feeds).expect("runs");
    assert_eq!(
        gpu.pipelines_created(),
        built,
        "a recompiled graph builds no pipeline"
    );
    assert_eq!(first, again);
    assert_eq!(gpu.live_buffers(), 0);
}
