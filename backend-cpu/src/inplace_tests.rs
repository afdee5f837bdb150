//! In-place execution: elementwise steps (fused, or lone ops run as
//! one-op programs) that write their result over a dying operand's
//! buffer, checked against the same graphs compiled without passes and
//! with in-place writing off, plain ndarray, and the memory plan.

use std::sync::Arc;

use ndarray::{ArrayD, IxDyn};
use tensorgraph_core::{
    Backend, BinaryOp, CompileOptions, DType, Device, FusedExpr, Graph, Instr, Meter, PassOptions,
    Plan, Result, Scalar, Tensor, TensorType, UnaryOp, Value,
};

use crate::CpuBackend;
use crate::fused::{fused, fused_into};
use crate::store::Held;

/// Compiles `outs` with the default passes, or with every pass and
/// in-place writing off (the plain reference).
fn compile(b: &Arc<CpuBackend>, g: &Graph, outs: &[&Tensor], passes: bool) -> Result<Plan> {
    let mut options = CompileOptions::new(Device::Cpu, vec![b.clone()]);
    // Epilogues would fold these fused tails into their matmuls; the tests
    // are about a fused step writing into a dying buffer.
    options.passes.epilogues = false;
    if !passes {
        options.passes = PassOptions::none();
        options.in_place = false;
    }
    g.compile(outs, &options)
}

/// Deterministic pseudo-random floats in [-1, 1).
fn floats(shape: &[usize], seed: u32) -> ArrayD<f32> {
    crate::test_data::xorshift_floats(shape, seed, 3, 1)
}

fn in_place_steps(plan: &Plan) -> usize {
    plan.steps().iter().filter(|s| s.in_place.is_some()).count()
}

/// Runs `plan` and checks the measured memory against the plan and that
/// every buffer is released.
fn run_checked(b: &CpuBackend, plan: &Plan, feeds: &[(&str, Value)]) -> Result<Vec<Value>> {
    let (values, stats) = plan.run_with_stats(feeds)?;
    let planned = plan.planned_memory()[0];
    assert_eq!(stats.peak_bytes, vec![planned.peak_bytes], "peak bytes");
    assert_eq!(stats.allocations, vec![planned.allocations], "allocations");
    assert_eq!(b.live_buffers(), 0, "live buffers after a run");
    Ok(values)
}

/// Compiles `outs` with and without passes, checks the first has an
/// in-place step and saves memory, and that both agree (bit for bit)
/// over several runs and from two threads at once. Returns the values.
fn check_in_place(g: &Graph, outs: &[&Tensor], feeds: &[(&str, Value)]) -> Result<Vec<Value>> {
    let b = Arc::new(CpuBackend::with_threads(2));
    let plan = compile(&b, g, outs, true)?;
    let plain = compile(&b, g, outs, false)?;
    assert!(in_place_steps(&plan) > 0, "no in-place step");
    assert_eq!(in_place_steps(&plain), 0, "in place when switched off");
    let want = run_checked(&b, &plain, feeds)?;
    for _ in 0..4 {
        assert_eq!(run_checked(&b, &plan, feeds)?, want);
    }
    std::thread::scope(|s| {
        let runs: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    for _ in 0..3 {
                        assert_eq!(plan.run(feeds)?, want);
                    }
                    Ok(())
                })
            })
            .collect();
        runs.into_iter()
            .try_for_each(|r| r.join().expect("run thread"))
    })?;
    assert_eq!(b.live_buffers(), 0);
    Ok(want)
}

fn close(a: &ArrayD<f32>, b: &ArrayD<f32>) {
    assert_eq!(a.shape(), b.shape());
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "{x} vs {y}");
    }
}

#[test]
fn matmul_result_is_overwritten_by_the_fused_step() -> Result<()> {
    // Small (one chunk) and large (parallel chunks, a ragged last one).
    for (m, k, n) in [(8, 5, 6), (300, 40, 450)] {
        let g = Graph::new();
        let x = g.input("x", DType::F32, [m, k])?;
        let w = g.input("w", DType::F32, [k, n])?;
        let y = x.matmul(&w)?;
        let z = y.mul(&g.scalar(2.0))?.add(&g.scalar(1.0))?.relu()?;
        let (xa, wa) = (floats(&[m, k], 1), floats(&[k, n], 2));
        let feeds = [("x", xa.clone().into()), ("w", wa.clone().into())];
        let out = check_in_place(&g, &[&z], &feeds)?;
        let x2 = xa.into_dimensionality::<ndarray::Ix2>().expect("2-d");
        let w2 = wa.into_dimensionality::<ndarray::Ix2>().expect("2-d");
        let want = x2.dot(&w2).mapv(|v| (v * 2.0 + 1.0).max(0.0)).into_dyn();
        close(&out[0].clone().into_f32()?, &want);
    }
    Ok(())
}

#[test]
fn donor_read_several_times_and_beside_broadcast_operands() -> Result<()> {
    // `y` is read by three instructions of the fused step, next to a
    // broadcast bias; the result has `y`'s type.
    let (m, k, n) = (200, 16, 333);
    let g = Graph::new();
    let x = g.input("x", DType::F32, [m, k])?;
    let w = g.input("w", DType::F32, [k, n])?;
    let bias = g.input("b", DType::F32, [n])?;
    let y = x.matmul(&w)?;
    let z = y.add(&bias)?.tanh()?.mul(&y)?.sub(&y.exp()?)?;
    let (xa, wa, ba) = (floats(&[m, k], 3), floats(&[k, n], 4), floats(&[n], 5));
    let feeds = [
        ("x", xa.clone().into()),
        ("w", wa.clone().into()),
        ("b", ba.clone().into()),
    ];
    let out = check_in_place(&g, &[&z], &feeds)?;
    let x2 = xa.into_dimensionality::<ndarray::Ix2>().expect("2-d");
    let w2 = wa.into_dimensionality::<ndarray::Ix2>().expect("2-d");
    let y = x2.dot(&w2);
    let want = (&(&y + &ba).mapv(f32::tanh) * &y - y.mapv(f32::exp)).into_dyn();
    close(&out[0].clone().into_f32()?, &want);
    Ok(())
}

#[test]
fn integer_chain_of_fused_steps_reuses_one_buffer() -> Result<()> {
    // Two fused steps split by a reduction-free op the fuser cannot
    // cross (a matmul), each in place over its dying operand.
    let g = Graph::new();
    let a = g.input("a", DType::I32, [40, 40])?;
    let p = a.matmul(&a)?;
    let q = p.mul(&p)?.sub(&a)?;
    let r = q.matmul(&a)?.abs()?.neg()?;
    let av = ArrayD::from_shape_fn(IxDyn(&[40, 40]), |i| (i[0] * 7 + i[1] * 3) as i32 % 11 - 5);
    let out = check_in_place(&g, &[&r], &[("a", av.clone().into())])?;
    let a2 = av.into_dimensionality::<ndarray::Ix2>().expect("2-d");
    let p = a2.dot(&a2);
    let q = &p * &p - &a2;
    let want = q.dot(&a2).mapv(|v| -v.abs()).into_dyn();
    assert_eq!(out[0].clone().into_i32()?, want);
    Ok(())
}

#[test]
fn requested_or_shared_operands_are_not_donors() -> Result<()> {
    let b = Arc::new(CpuBackend::with_threads(2));
    // `y` is requested: the fused step must allocate.
    let g = Graph::new();
    let x = g.input("x", DType::F32, [4, 4])?;
    let y = x.matmul(&x)?;
    let z = y.mul(&g.scalar(3.0))?.relu()?;
    assert_eq!(in_place_steps(&compile(&b, &g, &[&y, &z], true)?), 0);
    // A fed input is never overwritten, nor is a result of another type.
    let g = Graph::new();
    let x = g.input("x", DType::F32, [4, 4])?;
    let z = x.mul(&g.scalar(3.0))?.relu()?;
    let c = x.matmul(&x)?.cast(DType::I32)?.add(&g.constant(1i32))?;
    assert_eq!(in_place_steps(&compile(&b, &g, &[&z], true)?), 0);
    let plan = compile(&b, &g, &[&c], true)?;
    assert_eq!(in_place_steps(&plan), 0);
    let xa = floats(&[4, 4], 9);
    let out = run_checked(&b, &plan, &[("x", xa.into())])?;
    assert_eq!(out[0].dtype(), DType::I32);
    Ok(())
}

#[test]
fn column_major_donor_from_a_custom_op() -> Result<()> {
    // A custom op may return any layout; the fused step still writes into
    // the donor's buffer, replacing its array by a row-major result.
    let g = Graph::new();
    let x = g.input("x", DType::F32, [30, 20])?;
    let t = g
        .custom(
            "transpose",
            &[&x],
            vec![TensorType::new(DType::F32, [20, 30])],
            |ins| {
                let a = ins[0].as_f32().ok_or("expected f32")?;
                Ok(vec![Value::F32(a.t().to_owned())])
            },
        )?
        .remove(0);
    let z = t.exp()?.add(&g.scalar(1.0))?;
    let xa = floats(&[30, 20], 11);
    let out = check_in_place(&g, &[&z], &[("x", xa.clone().into())])?;
    close(&out[0].clone().into_f32()?, &xa.t().mapv(|v| v.exp() + 1.0));
    Ok(())
}

fn expr(instrs: Vec<Instr>, dtypes: Vec<DType>) -> FusedExpr {
    FusedExpr { instrs, dtypes }
}

#[test]
fn fused_into_matches_fused_for_every_donor_position() -> std::result::Result<(), String> {
    use DType::F32;
    let shape = [70, 50];
    let ty = TensorType::new(F32, shape);
    let (a, b) = (floats(&shape, 21), floats(&[50], 22));
    let programs = [
        // a * b + exp(a), a read twice.
        expr(
            vec![
                Instr::Input(0),
                Instr::Input(1),
                Instr::Binary(BinaryOp::Mul, 0, 1),
                Instr::Unary(UnaryOp::Exp, 0),
                Instr::Binary(BinaryOp::Add, 2, 3),
            ],
            vec![F32; 5],
        ),
        // The result is the donor itself.
        expr(vec![Instr::Input(0)], vec![F32]),
        // The donor read by the last instruction only.
        expr(
            vec![
                Instr::Scalar(Scalar::F32(2.0)),
                Instr::Input(1),
                Instr::Binary(BinaryOp::Max, 0, 1),
                Instr::Input(0),
                Instr::Binary(BinaryOp::Sub, 3, 2),
            ],
            vec![F32; 5],
        ),
    ];
    for p in &programs {
        let (av, bv) = (Value::F32(a.clone()), Value::F32(b.clone()));
        let want = fused(p, &ty, &[&av, &bv])?;
        let mut target = av.clone();
        fused_into(p, &ty, &[None, Some(&bv)], &mut target)?;
        assert_eq!(target, want);
        // A column-major donor is replaced by a row-major result.
        let mut target = Value::F32(a.t().as_standard_layout().into_owned().reversed_axes());
        assert_eq!(target, av);
        fused_into(p, &ty, &[None, Some(&bv)], &mut target)?;
        assert_eq!(target, want);
    }
    // Exactly one donor, of the result's type.
    let av = Value::F32(a.clone());
    let mut target = av.clone();
    assert!(fused_into(&programs[1], &ty, &[Some(&av)], &mut target).is_err());
    let mut small = Value::F32(floats(&[7], 1));
    assert!(fused_into(&programs[1], &ty, &[None], &mut small).is_err());
    Ok(())
}

#[test]
fn a_shared_donor_is_replaced_not_written() -> std::result::Result<(), String> {
    let b = CpuBackend::with_threads(2);
    let meter = Meter::default();
    let ty = TensorType::new(DType::F32, [5, 3]);
    let a = Arc::new(Value::F32(floats(&[5, 3], 31)));
    let buffer = b.store.insert(a.clone(), &meter);
    let p = expr(
        vec![Instr::Input(0), Instr::Unary(UnaryOp::Neg, 0)],
        vec![DType::F32; 2],
    );
    let others: Vec<Option<Held<'_>>> = vec![None];
    b.compute_into(&p, &ty, &others, buffer, "neg")?;
    // The other holder still sees the old value; the buffer the new one.
    assert_eq!(*a, Value::F32(floats(&[5, 3], 31)));
    let got = b.store.get_owned(buffer).map_err(|e| e.to_string())?;
    assert_eq!(*got, Value::F32(floats(&[5, 3], 31).mapv(|v| -v)));
    assert_eq!((meter.allocations(), meter.live()), (1, ty.bytes()));
    b.free(buffer, &meter).map_err(|e| e.to_string())?;
    assert_eq!((meter.live(), b.live_buffers()), (0, 0));
    Ok(())
}
