//! Reuse of freed storage: a plan run twice on one backend takes its fused
//! outputs from the pool the second time, with the same values, the same
//! metered memory and every buffer released.

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
