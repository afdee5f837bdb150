//! Reuse of freed storage: a plan run twice on one backend takes its
//! kernels' outputs from the pool the second time, with the same values,
//! the same metered memory and every buffer released; and no kernel lets
//! the old contents of pooled storage show through.

use std::collections::HashSet;
use std::sync::Arc;

use ndarray::{ArrayD, IxDyn};
use tensorgraph_core::{Backend, CompileOptions, DType, Device, Graph, Op, Plan, Result, Value};

use crate::CpuBackend;
use crate::pool::{DEFAULT_LIMIT, Pool};

/// Deterministic pseudo-random floats in [-1, 1).
fn floats(shape: &[usize], seed: u32) -> ArrayD<f32> {
    crate::test_data::xorshift_floats(shape, seed, 5, 1)
}

/// `x` and `w` fed, two fused intermediates (one of them freed inside the
/// run), two products, a fused output.
fn compile(b: &Arc<CpuBackend>) -> Result<Plan> {
    let g = Graph::new();
    let x = g.input("x", DType::F32, vec![96, 96])?;
    let w = g.input("w", DType::F32, vec![96, 96])?;
    let a = x.mul(&x)?.exp()?.tanh()?;
    let p = a.matmul(&w)?;
    let c = x.sub(&w)?.sigmoid()?;
    let q = p.matmul(&c)?;
    let out = q.sub(&x)?.abs()?;
    g.compile(
        &[&out, &p],
        &CompileOptions::new(Device::Cpu, vec![b.clone()]),
    )
}

fn feeds() -> Vec<(&'static str, Value)> {
    vec![
        ("x", floats(&[96, 96], 1).into()),
        ("w", floats(&[96, 96], 2).into()),
    ]
}

/// Runs `plan`, checking measured against planned memory and that no
/// buffer outlives the run.
fn run_checked(b: &CpuBackend, plan: &Plan) -> Result<Vec<Value>> {
    let feeds = feeds();
    let (values, stats) = plan.run_with_stats(&feeds)?;
    let planned = plan.planned_memory()[0];
    assert_eq!(stats.peak_bytes, vec![planned.peak_bytes], "peak bytes");
    assert_eq!(stats.allocations, vec![planned.allocations], "allocations");
    assert_eq!(b.live_buffers(), 0, "live buffers after a run");
    Ok(values)
}

fn same(a: &[Value], b: &[Value]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (
            x.clone().into_f32().expect("f32"),
            y.clone().into_f32().expect("f32"),
        );
        assert_eq!(x.shape(), y.shape());
        assert!(
            x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()),
            "values differ"
        );
    }
}

#[test]
fn second_run_takes_fused_outputs_from_the_pool() -> Result<()> {
    let b = Arc::new(CpuBackend::with_threads(2));
    let plan = compile(&b)?;
    let fused_steps = plan
        .steps()
        .iter()
        .filter(|s| matches!(s.kernel.op, Op::Fused(_)) && s.in_place.is_none())
        .count();
    assert!(fused_steps >= 2, "{fused_steps} fused steps");

    let first = run_checked(&b, &plan)?;
    let after_first = b.pool_hits();
    assert!(
        b.pooled_bytes() > 0,
        "the first run's intermediates are kept"
    );
    let second = run_checked(&b, &plan)?;
    let hits = b.pool_hits() - after_first;
    // Every fused output of the second run: the first run freed more
    // buffers of that size than the plan has fused steps.
    assert!(
        hits >= fused_steps as u64,
        "second run: {hits} pool hits for {fused_steps} fused steps"
    );
    let third = run_checked(&b, &plan)?;

    // The same values as on a backend that never reused anything.
    let fresh = Arc::new(CpuBackend::with_threads(2));
    let want = run_checked(&fresh, &compile(&fresh)?)?;
    same(&first, &want);
    same(&second, &want);
    same(&third, &want);
    assert!(b.pooled_bytes() <= DEFAULT_LIMIT);
    Ok(())
}

#[test]
fn taken_outputs_leave_the_pool_alone() -> Result<()> {
    let b = Arc::new(CpuBackend::with_threads(1));
    let plan = compile(&b)?;
    let outs = run_checked(&b, &plan)?;
    let kept = b.pooled_bytes();
    // The caller owns the outputs; dropping them returns nothing to the
    // backend.
    drop(outs);
    assert_eq!(b.pooled_bytes(), kept);
    Ok(())
}

#[test]
fn a_full_pool_drops_what_it_cannot_keep() {
    let p = Pool::new(3 * 4096);
    for _ in 0..10 {
        p.put(Value::F32(ArrayD::zeros(IxDyn(&[32, 32]))));
        assert!(p.bytes() <= 3 * 4096);
    }
    assert_eq!(p.bytes(), 3 * 4096);
    // Three kept, three reused, then none.
    for _ in 0..3 {
        assert_eq!(p.take::<f32>(1000, "t").map(|v| v.len()), Some(1000));
    }
    assert!(p.take::<f32>(1000, "t").is_none());
    assert_eq!((p.hits(), p.bytes()), (3, 0));
}

/// A pool keeping, for each size class up to 2^19 elements, three vectors
/// of each dtype full of a sentinel no kernel computes (a NaN with its own
/// payload; an odd i32), and where their storage starts.
fn poisoned() -> (Pool, HashSet<usize>) {
    let pool = Pool::new(usize::MAX);
    let mut starts = HashSet::new();
    for class in 0..=19 {
        for _ in 0..3 {
            let f = vec![f32::from_bits(0x7fc0_dead); 1 << class];
            let i = vec![0x5a5a_5a5b_i32; 1 << class];
            starts.extend([f.as_ptr() as usize, i.as_ptr() as usize]);
            pool.put_vec(f);
            pool.put_vec(i);
        }
    }
    (pool, starts)
}

/// Where a value's storage starts.
fn start(v: &Value) -> usize {
    match v {
        Value::F32(a) => a.as_ptr() as usize,
        Value::I32(a) => a.as_ptr() as usize,
    }
}

fn bits(v: &Value) -> (Vec<usize>, Vec<u32>) {
    let shape = v.shape().dims().to_vec();
    let bits = match v {
        Value::F32(a) => a.iter().map(|x| x.to_bits()).collect(),
        Value::I32(a) => a.iter().map(|&x| x as u32).collect(),
    };
    (shape, bits)
}

/// Runs every kernel of `outs`' plan (each reading only fed values) twice:
/// its outputs in pooled storage full of a sentinel, and in fresh storage.
/// They must agree bit for bit, and the pooled run must have drawn from
/// the pool. Returns how many kernels ran.
fn pooled_equals_fresh(
    g: &Graph,
    outs: &[&tensorgraph_core::Tensor],
    feeds: &[(&str, Value)],
    passes: tensorgraph_core::PassOptions,
) -> Result<usize> {
    let b = Arc::new(CpuBackend::with_threads(2));
    let mut options = CompileOptions::new(Device::Cpu, vec![b.clone()]);
    options.passes = passes;
    let plan = g.compile(outs, &options)?;
    let mut fed = std::collections::HashMap::new();
    for step in plan.steps() {
        if let Op::Input { name } = &step.kernel.op {
            let value = &feeds.iter().find(|(n, _)| n == name).expect("a feed").1;
            fed.insert(step.outputs[0], value);
        }
    }
    let mut kernels = 0;
    for step in plan.steps() {
        if matches!(step.kernel.op, Op::Input { .. } | Op::Constant(_)) {
            continue;
        }
        let inputs: Vec<&Value> = step
            .inputs
            .iter()
            .map(|v| {
                *fed.get(v)
                    .unwrap_or_else(|| panic!("{}: reads no feed", step.name))
            })
            .collect();
        let want = crate::compute(&step.kernel, &inputs).expect("fresh");
        let (pool, starts) = poisoned();
        let alloc = crate::pool::Alloc {
            pool: Some(&pool),
            what: &step.name,
        };
        let got = crate::compute_with(&step.kernel, &inputs, alloc).expect("pooled");
        assert_eq!(got.len(), want.len(), "{}", step.name);
        for (g, w) in got.iter().zip(&want) {
            assert!(
                bits(g) == bits(w),
                "{}: pooled storage shows through",
                step.name
            );
            assert!(
                g.shape().numel() == 0 || starts.contains(&start(g)),
                "{}: an output not in pooled storage",
                step.name
            );
        }
        kernels += 1;
    }
    Ok(kernels)
}

/// Every kernel writes every element of its output: storage drawn from
/// the pool (full of a sentinel here) never shows through. Shapes cross
/// the parallel threshold and fall between SIMD widths; operands are
/// contiguous, column-major, broadcast and single elements.
#[test]
fn every_kernel_overwrites_pooled_storage() -> Result<()> {
    use tensorgraph_core::{PassOptions, SplitSpec};
    let ints = |shape: &[usize], seed: u32| floats(shape, seed).mapv(|v| (v * 1000.0) as i32 | 1);
    let feeds: Vec<(&str, Value)> = vec![
        ("a", floats(&[300, 257], 1).into()),
        ("b", floats(&[300, 257], 2).into()),
        // Column-major: the transpose of a row-major array.
        ("c", floats(&[257, 300], 3).reversed_axes().into()),
        ("r", floats(&[257], 4).into()),
        ("q", floats(&[130], 15).into()),
        ("s", floats(&[1], 5).into()),
        ("t", floats(&[300, 1], 6).into()),
        ("m", floats(&[257, 130], 7).into()),
        ("e", floats(&[300, 0], 8).into()),
        ("z", floats(&[0, 130], 9).into()),
        ("x3", floats(&[3, 40, 50], 10).into()),
        ("w3", floats(&[50, 60], 11).into()),
        ("ai", ints(&[300, 257], 12).into()),
        ("bi", ints(&[300, 257], 13).into()),
        ("mi", ints(&[257, 130], 14).into()),
        ("ei", ints(&[300, 0], 16).into()),
        ("zi", ints(&[0, 130], 17).into()),
        // Below the parallel threshold.
        ("u", floats(&[7, 9], 18).into()),
        ("v", floats(&[7, 9], 19).into()),
        ("col", floats(&[7, 1], 20).into()),
    ];
    let g = Graph::new();
    let input = |name: &str| {
        let v = &feeds.iter().find(|(n, _)| *n == name).expect("feed").1;
        g.input(name, v.dtype(), v.shape().clone())
    };
    let (a, b, c, r, s, t) = (
        input("a")?,
        input("b")?,
        input("c")?,
        input("r")?,
        input("s")?,
        input("t")?,
    );
    let (m, e, z, x3, w3) = (
        input("m")?,
        input("e")?,
        input("z")?,
        input("x3")?,
        input("w3")?,
    );
    let q = input("q")?;
    let (ai, bi, mi) = (input("ai")?, input("bi")?, input("mi")?);
    let (ei, zi, u, v) = (input("ei")?, input("zi")?, input("u")?, input("v")?);
    let col = input("col")?;
    let split_i = ai.split(0, SplitSpec::Sizes(vec![1, 299]))?;
    let split = a.split(1, SplitSpec::Sizes(vec![100, 157]))?;
    let unfused = vec![
        a.exp()?,
        a.relu()?,
        c.sqrt()?,
        ai.abs()?,
        a.add(&b)?,
        a.mul(&r)?,
        a.sub(&s)?,
        s.sub(&a)?,
        a.maximum(&t)?,
        c.add(&a)?,
        ai.div(&bi)?,
        a.cast(DType::I32)?,
        ai.cast(DType::F32)?,
        a.matmul(&m)?,
        ai.matmul(&mi)?,
        e.matmul(&z)?,
        x3.matmul(&w3)?,
        a.sum(&[1], false)?,
        a.sum(&[0], true)?,
        a.mean(&[0, 1], false)?,
        x3.max(&[0, 2], false)?,
        c.sum(&[1], false)?,
        e.sum(&[1], false)?,
        ai.sum(&[0], false)?,
        a.reshape(&[257, 300])?,
        a.transpose(0, 1)?,
        c.transpose(0, 1)?,
        r.broadcast_to(vec![300, 257])?,
        a.slice_step(1, 3, 250, 2)?,
        g.concat(&[&a, &b], 0)?,
        g.concat(&[&a, &t], 1)?,
        split[0].clone(),
        split[1].clone(),
        ei.matmul(&zi)?,
        ai.mean(&[1], false)?,
        ai.transpose(0, 1)?,
        ai.slice_step(0, 1, 300, 3)?,
        g.concat(&[&ai, &bi], 1)?,
        split_i[0].clone(),
        split_i[1].clone(),
        u.exp()?,
        u.add(&v)?,
        u.mul(&s)?,
        u.maximum(&col)?,
    ];
    let outs: Vec<&tensorgraph_core::Tensor> = unfused.iter().collect();
    let kernels = pooled_equals_fresh(&g, &outs, &feeds, PassOptions::none())?;
    // The two parts of each split are one kernel.
    assert_eq!(kernels, unfused.len() - 2);

    // Fused kernels: a chain, a matmul epilogue, reductions of a prologue
    // (streamed, and over axes that are not contiguous, evaluated whole).
    let fused = [
        a.mul(&b)?.add(&r)?.relu()?,
        a.matmul(&m)?.add(&q)?.tanh()?,
        a.sub(&b)?.abs()?.sum(&[1], false)?,
        a.add(&b)?.exp()?.sum(&[0], false)?,
        x3.mul(&x3)?.exp()?.max(&[0, 2], false)?,
    ];
    let outs: Vec<&tensorgraph_core::Tensor> = fused.iter().collect();
    let kernels = pooled_equals_fresh(&g, &outs, &feeds, PassOptions::default())?;
    assert!(kernels >= fused.len(), "{kernels} kernels");
    Ok(())
}

/// Node by node (every pass off), a second run takes the outputs of
/// unfused kernels (elementwise, products, reductions, layout) from the
/// pool the first run filled, with the same values.
#[test]
fn second_run_takes_unfused_outputs_from_the_pool() -> Result<()> {
    let b = Arc::new(CpuBackend::with_threads(2));
    let g = Graph::new();
    let x = g.input("x", DType::F32, vec![96, 96])?;
    let w = g.input("w", DType::F32, vec![96, 96])?;
    let h = x.matmul(&w)?.relu()?.transpose(0, 1)?;
    let out = h.sub(&x)?.sum(&[1], true)?.mul(&x)?;
    let mut options = CompileOptions::new(Device::Cpu, vec![b.clone()]);
    options.passes = tensorgraph_core::PassOptions::none();
    // Every result in a buffer of its own (no relu over the product).
    options.in_place = false;
    let plan = g.compile(&[&out], &options)?;
    let computed = plan
        .steps()
        .iter()
        .filter(|s| !matches!(s.kernel.op, Op::Input { .. } | Op::Constant(_)))
        .count();
    assert_eq!(computed, 6);
    let first = run_checked(&b, &plan)?;
    let after_first = b.pool_hits();
    let second = run_checked(&b, &plan)?;
    // The first run freed five intermediates of 96x96 (the sum's is
    // smaller); the second takes storage for at least those five.
    let hits = b.pool_hits() - after_first;
    assert!(hits >= 5, "second run: {hits} pool hits");
    same(&first, &second);
    let as2 = |a: ArrayD<f32>| a.into_dimensionality::<ndarray::Ix2>().expect("2-D");
    let (xv, wv) = (as2(floats(&[96, 96], 1)), as2(floats(&[96, 96], 2)));
    let hv = xv.dot(&wv).mapv(|v| v.max(0.0)).reversed_axes();
    let d = &hv - &xv;
    let want = d.sum_axis(ndarray::Axis(1)).insert_axis(ndarray::Axis(1)) * &xv;
    let got = second[0].clone().into_f32().expect("f32");
    for (p, q) in got.iter().zip(&want) {
        assert!((p - q).abs() <= 1e-4 * (1.0 + q.abs()), "{p} vs {q}");
    }
    Ok(())
}
