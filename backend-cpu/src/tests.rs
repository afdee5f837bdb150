//! Kernel tests through small hand-built plans, checked against plain
//! ndarray or naive loops.

use std::sync::Arc;

use ndarray::{Array, ArrayD, Dimension, IxDyn};
use tensorgraph_core::{
    CompileOptions, DType, Device, Graph, Plan, Result, SplitSpec, Tensor, Value,
};

use crate::CpuBackend;

fn backend() -> Arc<CpuBackend> {
    Arc::new(CpuBackend::with_threads(2))
}

fn compile_on(b: &Arc<CpuBackend>, g: &Graph, outs: &[&Tensor]) -> Result<Plan> {
    g.compile(outs, &CompileOptions::new(Device::Cpu, vec![b.clone()]))
}

/// Runs `outs` of `g` and checks the metered peak against the plan and
/// that every buffer was released.
fn run(g: &Graph, outs: &[&Tensor], feeds: &[(&str, Value)]) -> Result<Vec<Value>> {
    let b = backend();
    let plan = compile_on(&b, g, outs)?;
    let (values, stats) = plan.run_with_stats(feeds)?;
    assert_eq!(stats.peak_bytes, vec![plan.planned_peak_bytes()]);
    assert_eq!(tensorgraph_core::Backend::live_buffers(b.as_ref()), 0);
    Ok(values)
}

/// Deterministic pseudo-random floats in [-1, 1).
fn floats(shape: &[usize], seed: u32) -> ArrayD<f32> {
    crate::test_data::xorshift_floats(shape, seed, 1, 1)
}

fn close(a: &ArrayD<f32>, b: &ArrayD<f32>, tol: f32) {
    assert_eq!(a.shape(), b.shape());
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() <= tol * (1.0 + y.abs()), "{x} vs {y}");
    }
}

#[test]
fn broadcast_binary_matches_ndarray() -> Result<()> {
    for (sa, sb) in [
        (vec![2, 1, 3], vec![4, 1]),
        (vec![300, 200], vec![200]),
        (vec![1], vec![5, 7]),
        (vec![], vec![3]),
        (vec![0, 3], vec![1, 3]),
        (vec![400, 100], vec![400, 100]),
    ] {
        let (a, b) = (floats(&sa, 1), floats(&sb, 2));
        let g = Graph::new();
        let x = g.input("a", DType::F32, sa.clone())?;
        let y = g.input("b", DType::F32, sb.clone())?;
        let sum = x.add(&y)?;
        let max = x.maximum(&y)?;
        let out = run(
            &g,
            &[&sum, &max],
            &[("a", a.clone().into()), ("b", b.clone().into())],
        )?;
        close(&out[0].clone().into_f32()?, &(&a + &b), 0.0);
        let want = ndarray::Zip::from(&a.broadcast(out[1].shape().0.clone()).expect("broadcast"))
            .and(&b.broadcast(out[1].shape().0.clone()).expect("broadcast"))
            .map_collect(|&p, &q| p.max(q));
        close(&out[1].clone().into_f32()?, &want, 0.0);
    }
    Ok(())
}

#[test]
fn integer_division_and_pow() -> Result<()> {
    let a = Array::from(vec![7, -7, 5, i32::MIN, 0, 3]);
    let b = Array::from(vec![2, 2, 0, -1, 0, -2]);
    let g = Graph::new();
    let x = g.input("a", DType::I32, [6])?;
    let y = g.input("b", DType::I32, [6])?;
    let (q, p) = (x.div(&y)?, x.pow(&y)?);
    let out = run(&g, &[&q, &p], &[("a", a.into()), ("b", b.into())])?;
    assert_eq!(
        out[0].clone().into_i32()?.into_raw_vec_and_offset().0,
        [3, -3, 0, i32::MIN, 0, -1]
    );
    assert_eq!(
        out[1].clone().into_i32()?.into_raw_vec_and_offset().0,
        [49, 49, 1, 0, 1, 0]
    );
    Ok(())
}

#[test]
fn float_op_on_int_is_an_error_not_a_panic() {
    let k = tensorgraph_core::Kernel {
        op: tensorgraph_core::Op::Unary(tensorgraph_core::UnaryOp::Exp),
        inputs: vec![],
        outputs: vec![],
    };
    let v = Value::from(Array::from(vec![1i32, 2]));
    assert!(crate::compute(&k, &[&v]).is_err());
}

/// Naive reduction of `x` over `axes`, keeping reduced axes as 1.
fn naive_reduce(x: &ArrayD<f32>, axes: &[usize], f: fn(f64, f64) -> f64, init: f64) -> ArrayD<f64> {
    let mut dims = x.shape().to_vec();
    for &a in axes {
        dims[a] = 1;
    }
    let mut out = ArrayD::from_elem(IxDyn(&dims), init);
    for (idx, &v) in x.indexed_iter() {
        let mut o = idx.slice().to_vec();
        for &a in axes {
            o[a] = 0;
        }
        let slot = &mut out[IxDyn(&o)];
        *slot = f(*slot, f64::from(v));
    }
    out
}

#[test]
fn multi_axis_reduce_with_keep_dims() -> Result<()> {
    let shape = [3usize, 4, 5, 6];
    let a = floats(&shape, 3);
    for axes in [
        vec![0, 2],
        vec![1, 2],
        vec![3],
        vec![0],
        vec![0, 1, 2, 3],
        vec![1, 3],
    ] {
        let g = Graph::new();
        let x = g.input("x", DType::F32, shape)?;
        let ax: Vec<isize> = axes.iter().map(|&a| a as isize).collect();
        let outs = [
            x.sum(&ax, true)?,
            x.mean(&ax, true)?,
            x.max(&ax, true)?,
            x.min(&ax, false)?,
        ];
        let out = run(
            &g,
            &outs.iter().collect::<Vec<_>>(),
            &[("x", a.clone().into())],
        )?;
        let count: usize = axes.iter().map(|&i| shape[i]).product();
        let sum = naive_reduce(&a, &axes, |p, q| p + q, 0.0).mapv(|v| v as f32);
        let max = naive_reduce(&a, &axes, f64::max, f64::NEG_INFINITY).mapv(|v| v as f32);
        let min = naive_reduce(&a, &axes, f64::min, f64::INFINITY).mapv(|v| v as f32);
        close(&out[0].clone().into_f32()?, &sum, 1e-5);
        close(
            &out[1].clone().into_f32()?,
            &sum.mapv(|v| v / count as f32),
            1e-5,
        );
        close(&out[2].clone().into_f32()?, &max, 0.0);
        let min_dims: Vec<usize> = (0..4)
            .filter(|i| !axes.contains(i))
            .map(|i| shape[i])
            .collect();
        close(
            &out[3].clone().into_f32()?,
            &min.into_shape_with_order(IxDyn(&min_dims)).expect("shape"),
            0.0,
        );
    }
    Ok(())
}

#[test]
fn large_sums_are_accurate() -> Result<()> {
    // One long lane, many short lanes, and a column sum over many rows.
    let a = floats(&[1000, 1200], 4).mapv(|v| v + 0.5);
    let g = Graph::new();
    let x = g.input("x", DType::F32, [1000, 1200])?;
    let (all, rows, cols) = (x.sum(&[], false)?, x.sum(&[1], false)?, x.sum(&[0], false)?);
    let out = run(&g, &[&all, &rows, &cols], &[("x", a.clone().into())])?;
    let exact = a.mapv(f64::from);
    let total = exact.sum() as f32;
    close(
        &out[0].clone().into_f32()?,
        &ArrayD::from_elem(IxDyn(&[]), total),
        1e-5,
    );
    close(
        &out[1].clone().into_f32()?,
        &exact
            .sum_axis(ndarray::Axis(1))
            .mapv(|v| v as f32)
            .into_dyn(),
        1e-5,
    );
    close(
        &out[2].clone().into_f32()?,
        &exact
            .sum_axis(ndarray::Axis(0))
            .mapv(|v| v as f32)
            .into_dyn(),
        1e-5,
    );
    Ok(())
}

#[test]
fn empty_reductions() -> Result<()> {
    let g = Graph::new();
    let x = g.input("x", DType::F32, [2, 0])?;
    let i = g.input("i", DType::I32, [2, 0])?;
    let outs = [
        x.sum(&[1], false)?,
        x.mean(&[1], false)?,
        i.mean(&[1], false)?,
        x.sum(&[0], false)?,
    ];
    let feeds = [
        ("x", ArrayD::<f32>::zeros(IxDyn(&[2, 0])).into()),
        ("i", ArrayD::<i32>::zeros(IxDyn(&[2, 0])).into()),
    ];
    let out = run(&g, &outs.iter().collect::<Vec<_>>(), &feeds)?;
    assert_eq!(
        out[0].clone().into_f32()?.into_raw_vec_and_offset().0,
        [0.0, 0.0]
    );
    assert!(out[1].clone().into_f32()?.iter().all(|v| v.is_nan()));
    assert_eq!(
        out[2].clone().into_i32()?.into_raw_vec_and_offset().0,
        [0, 0]
    );
    assert_eq!(out[3].shape().0, vec![0]);
    Ok(())
}

fn naive_matmul(a: &ArrayD<f32>, b: &ArrayD<f32>, out: &[usize]) -> ArrayD<f32> {
    let r = out.len();
    let k = a.shape()[a.ndim() - 1];
    ArrayD::from_shape_fn(IxDyn(out), |idx| {
        let idx = idx.slice();
        let pick = |x: &ArrayD<f32>, i: usize, j: usize| {
            let lead = r - x.ndim();
            let mut at: Vec<usize> = (0..x.ndim() - 2)
                .map(|d| if x.shape()[d] == 1 { 0 } else { idx[lead + d] })
                .collect();
            at.extend([i, j]);
            x[IxDyn(&at)]
        };
        (0..k)
            .map(|p| f64::from(pick(a, idx[r - 2], p)) * f64::from(pick(b, p, idx[r - 1])))
            .sum::<f64>() as f32
    })
}

#[test]
fn batched_broadcast_matmul_matches_naive() -> Result<()> {
    for (sa, sb) in [
        (vec![2, 1, 3, 4], vec![3, 4, 5]),
        (vec![70, 90], vec![90, 110]),
        (vec![8, 16, 32], vec![1, 32, 16]),
        (vec![3, 0], vec![0, 2]),
        (vec![0, 2, 3], vec![3, 4]),
        (vec![260, 300], vec![300, 270]),
    ] {
        let (a, b) = (floats(&sa, 5), floats(&sb, 6));
        let g = Graph::new();
        let x = g.input("a", DType::F32, sa.clone())?;
        let y = g.input("b", DType::F32, sb.clone())?;
        let p = x.matmul(&y)?;
        let out = run(
            &g,
            &[&p],
            &[("a", a.clone().into()), ("b", b.clone().into())],
        )?;
        let got = out[0].clone().into_f32()?;
        close(&got, &naive_matmul(&a, &b, got.shape()), 1e-4);
    }
    Ok(())
}

#[test]
fn integer_matmul_wraps() -> Result<()> {
    let a = ArrayD::from_shape_fn(IxDyn(&[2, 40, 50]), |i| {
        (i[0] * 7 + i[1] * 3 + i[2]) as i32 * 100_000
    });
    let b = ArrayD::from_shape_fn(IxDyn(&[50, 30]), |i| (i[0] + 2 * i[1]) as i32 * 9_999);
    let g = Graph::new();
    let x = g.input("a", DType::I32, [2, 40, 50])?;
    let y = g.input("b", DType::I32, [50, 30])?;
    let p = x.matmul(&y)?;
    let out = run(
        &g,
        &[&p],
        &[("a", a.clone().into()), ("b", b.clone().into())],
    )?[0]
        .clone()
        .into_i32()?;
    for ((bi, i, j), &v) in out
        .clone()
        .into_dimensionality::<ndarray::Ix3>()
        .expect("rank 3")
        .indexed_iter()
    {
        let want = (0..50).fold(0i32, |acc, p| {
            acc.wrapping_add(a[[bi, i, p]].wrapping_mul(b[[p, j]]))
        });
        assert_eq!(v, want);
    }
    Ok(())
}

#[test]
fn layout_ops_and_zero_sizes() -> Result<()> {
    let a = floats(&[4, 6, 5], 7);
    let g = Graph::new();
    let x = g.input("x", DType::F32, [4, 6, 5])?;
    let perm = x.permute(&[2, 0, 1])?;
    let sl = x.slice_step(1, 1, 6, 2)?;
    let parts = x.split(1, SplitSpec::Sizes(vec![2, 0, 4]))?;
    let cat = g.concat(&[&parts[2], &parts[0], &parts[1]], 1)?;
    let bc = x.slice(0, 0, 1)?.broadcast_to([3, 4, 6, 5])?;
    let rs = perm.reshape(&[-1, 4])?;
    let outs = [&perm, &sl, &parts[0], &parts[1], &cat, &bc, &rs];
    let out = run(&g, &outs, &[("x", a.clone().into())])?;
    let get = |i: usize| out[i].clone().into_f32();
    assert_eq!(get(0)?, a.clone().permuted_axes(IxDyn(&[2, 0, 1])));
    assert_eq!(
        get(1)?,
        a.slice(ndarray::s![.., 1..6;2, ..]).to_owned().into_dyn()
    );
    assert_eq!(
        get(2)?,
        a.slice(ndarray::s![.., 0..2, ..]).to_owned().into_dyn()
    );
    assert_eq!(get(3)?.shape(), &[4, 0, 5]);
    let want = ndarray::concatenate(
        ndarray::Axis(1),
        &[
            a.slice(ndarray::s![.., 2.., ..]),
            a.slice(ndarray::s![.., ..2, ..]),
        ],
    )
    .expect("concat");
    assert_eq!(get(4)?, want.into_dyn());
    assert_eq!(get(5)?.shape(), &[3, 4, 6, 5]);
    assert_eq!(
        get(6)?.into_raw_vec_and_offset().0,
        a.clone()
            .permuted_axes(IxDyn(&[2, 0, 1]))
            .iter()
            .copied()
            .collect::<Vec<_>>()
    );
    Ok(())
}

#[test]
fn casts_and_unary() -> Result<()> {
    let a = Array::from(vec![1.7f32, -1.7, f32::NAN, 3e9, -3e9, 0.0]);
    let g = Graph::new();
    let x = g.input("x", DType::F32, [6])?;
    let c = x.cast(DType::I32)?;
    let n = c.neg()?.abs()?.relu()?;
    let back = n.cast(DType::F32)?;
    let s = x.sigmoid()?;
    let out = run(&g, &[&c, &back, &s], &[("x", a.clone().into())])?;
    assert_eq!(
        out[0].clone().into_i32()?.into_raw_vec_and_offset().0,
        [1, -1, 0, i32::MAX, i32::MIN, 0]
    );
    assert_eq!(
        out[1].clone().into_f32()?.into_raw_vec_and_offset().0,
        [1.0, 1.0, 0.0, i32::MAX as f32, 0.0, 0.0]
    );
    let sig = out[2].clone().into_f32()?;
    assert!((sig[0] - 1.0 / (1.0 + (-1.7f32).exp())).abs() < 1e-6);
    assert!(sig[2].is_nan() && sig[3] == 1.0 && sig[4] == 0.0);
    Ok(())
}

#[test]
fn two_threads_share_one_plan() -> Result<()> {
    let b = backend();
    let g = Graph::new();
    let x = g.input("x", DType::F32, [64, 64])?;
    let y = x.matmul(&x)?.relu()?.sum(&[1], false)?;
    let plan = compile_on(&b, &g, &[&y])?;
    let a = floats(&[64, 64], 9);
    let want = plan.run(&[("x", a.clone().into())])?;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    for _ in 0..50 {
                        let got = plan.run(&[("x", a.clone().into())]).expect("run");
                        assert_eq!(got, want);
                    }
                })
            })
            .collect();
        for h in handles {
            assert!(h.join().is_ok());
        }
    });
    assert_eq!(tensorgraph_core::Backend::live_buffers(b.as_ref()), 0);
    Ok(())
}

#[test]
fn a_fed_input_can_be_an_output() -> Result<()> {
    let a = floats(&[3, 2], 10);
    let g = Graph::new();
    let x = g.input("x", DType::F32, [3, 2])?;
    let y = x.neg()?;
    let out = run(&g, &[&x, &y, &x], &[("x", a.clone().into())])?;
    assert_eq!(out[0].clone().into_f32()?, a);
    assert_eq!(out[1].clone().into_f32()?, a.mapv(|v| -v));
    assert_eq!(out[2].clone().into_f32()?, a);
    Ok(())
}

#[test]
fn column_major_feeds_and_nan_propagation() -> Result<()> {
    use ndarray::ShapeBuilder;
    // The same logical matrix, stored column-major.
    let c = floats(&[40, 30], 11);
    let f = ArrayD::from_shape_vec(IxDyn(&[40, 30]).f(), c.t().iter().copied().collect())
        .expect("shape");
    assert_eq!(c, f);
    let g = Graph::new();
    let x = g.input("x", DType::F32, [40, 30])?;
    let outs = [
        x.sum(&[0], false)?,
        x.max(&[1], true)?,
        x.add(&x.slice(0, 0, 1)?)?,
        x.reshape(&[30, 40])?,
        x.matmul(&x.permute(&[1, 0])?)?,
    ];
    let refs: Vec<&Tensor> = outs.iter().collect();
    let want = run(&g, &refs, &[("x", c.into())])?;
    let got = run(&g, &refs, &[("x", f.into())])?;
    for (w, v) in want.iter().zip(&got) {
        close(&v.clone().into_f32()?, &w.clone().into_f32()?, 1e-5);
    }

    let a = Array::from(vec![1.0f32, f32::NAN, 3.0]);
    let g = Graph::new();
    let x = g.input("x", DType::F32, [3])?;
    let out = run(
        &g,
        &[
            &x.max(&[], false)?,
            &x.min(&[], false)?,
            &x.maximum(&g.scalar(0.0))?,
        ],
        &[("x", a.into())],
    )?;
    assert!(out[0].clone().into_f32()?.iter().all(|v| v.is_nan()));
    assert!(out[1].clone().into_f32()?.iter().all(|v| v.is_nan()));
    assert!(out[2].clone().into_f32()?[1].is_nan());

    let big = Array::from(vec![i32::MAX; 3]);
    let g = Graph::new();
    let x = g.input("x", DType::I32, [3])?;
    let out = run(
        &g,
        &[&x.sum(&[], false)?, &x.mean(&[], false)?],
        &[("x", big.into())],
    )?;
    let wrapped = i32::MAX.wrapping_mul(3);
    assert_eq!(
        out[0].clone().into_i32()?.into_raw_vec_and_offset().0,
        [wrapped]
    );
    assert_eq!(
        out[1].clone().into_i32()?.into_raw_vec_and_offset().0,
        [wrapped / 3]
    );
    Ok(())
}

#[test]
fn take_moves_a_sole_buffer_and_copies_a_shared_one() -> Result<()> {
    use tensorgraph_core::{Backend, Meter};
    let b = backend();
    let meter = Meter::default();
    let a = floats(&[1000], 12);
    let inserted = a.clone();
    let ptr = inserted.as_ptr();
    let sole = b.store.insert(Arc::new(Value::F32(inserted)), &meter);
    let shared_value = Arc::new(Value::F32(a.clone()));
    let shared = b.store.insert(shared_value.clone(), &meter);
    assert_eq!(meter.live(), 2 * 4000);

    let Value::F32(moved) = b.take(sole, &meter)? else {
        panic!("dtype changed");
    };
    assert_eq!(moved, a);
    assert_eq!(moved.as_ptr(), ptr, "the sole reference was copied");
    let Value::F32(copied) = b.take(shared, &meter)? else {
        panic!("dtype changed");
    };
    assert_eq!(copied, a);
    assert_eq!(*shared_value, Value::F32(a));
    assert_eq!(meter.live(), 0);
    assert_eq!(b.live_buffers(), 0);
    assert!(b.take(sole, &meter).is_err(), "taken twice");
    Ok(())
}

#[test]
fn constant_outputs_survive_being_taken() -> Result<()> {
    let g = Graph::new();
    let c = g.constant(Value::F32(floats(&[4, 5], 13)));
    let x = g.input("x", DType::F32, [4, 5])?;
    let y = x.add(&c)?;
    let a = floats(&[4, 5], 14);
    for _ in 0..2 {
        let out = run(&g, &[&c, &y, &c], &[("x", a.clone().into())])?;
        assert_eq!(out[0].clone().into_f32()?, floats(&[4, 5], 13));
        assert_eq!(out[2], out[0]);
        close(
            &out[1].clone().into_f32()?,
            &(&a + &floats(&[4, 5], 13)),
            0.0,
        );
    }
    Ok(())
}

/// A segment runs on the caller's thread exactly when no kernel in it
/// would split its work: a fused chain below the split size does not,
/// however many instructions it has; a matrix product does by its work.
#[test]
fn serial_follows_where_kernels_split() -> Result<()> {
    use tensorgraph_core::{Kernel, Op, TensorType};
    let g = Graph::new();
    let x = g.input("x", DType::F32, [30_000])?;
    let chain = ((&x * 1.5 + 0.5).relu()? * &x - 0.25).abs()?.sqrt()?;
    let plan = compile_on(&backend(), &g, &[&chain])?;
    let fused: Vec<&Kernel> = plan
        .steps()
        .iter()
        .map(|s| &s.kernel)
        .filter(|k| matches!(k.op, Op::Fused(_)))
        .collect();
    assert_eq!(fused.len(), 1, "the chain fuses");
    assert!(
        crate::serial(fused[0]),
        "30k elements: the fused kernel never splits"
    );

    let big = Kernel {
        op: fused[0].op.clone(),
        inputs: vec![TensorType::new(DType::F32, [32 * 1024])],
        outputs: vec![TensorType::new(DType::F32, [32 * 1024])],
    };
    assert!(!crate::serial(&big), "32k elements: it splits");

    let m = |r: usize, c: usize| TensorType::new(DType::F32, [r, c]);
    let matmul = |n: usize| Kernel {
        op: Op::MatMul,
        inputs: vec![m(n, n), m(n, n)],
        outputs: vec![m(n, n)],
    };
    assert!(
        crate::serial(&matmul(16)),
        "16^3 multiply-adds stay on one thread"
    );
    assert!(
        crate::serial(&matmul(31)),
        "31^3 < 32k multiply-adds stay too"
    );
    assert!(
        !crate::serial(&matmul(32)),
        "32^3 = 32k multiply-adds split"
    );
    Ok(())
}
