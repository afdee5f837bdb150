//! Fused kernel tests: programs run through `compute()` and compared,
//! bit for bit, with the same instructions run one at a time by the
//! unfused kernels, and with plain ndarray closures.

use std::sync::Arc;

use ndarray::{ArrayD, IxDyn, s};
use tensorgraph_core::{
    BinaryOp, DType, FusedExpr, Instr, Kernel, Op, Scalar, TensorType, UnaryOp, Value,
};

use crate::compute;

/// Deterministic pseudo-random floats in [-2, 2).
fn floats(shape: &[usize], seed: u32) -> ArrayD<f32> {
    crate::test_data::xorshift_floats(shape, seed, 7, 2)
}

/// Deterministic pseudo-random ints in [-50, 50).
fn ints(shape: &[usize], seed: u32) -> ArrayD<i32> {
    floats(shape, seed).mapv(|x| (x * 25.0) as i32)
}

fn fused_kernel(expr: &FusedExpr, inputs: &[&Value], out: &[usize]) -> Kernel {
    let dtype = *expr.dtypes.last().expect("non-empty program");
    Kernel {
        op: Op::Fused(Arc::new(expr.clone())),
        inputs: inputs.iter().map(|v| v.ty()).collect(),
        outputs: vec![TensorType::new(dtype, out.to_vec())],
    }
}

/// Runs `expr` through the fused kernel.
fn run_fused(expr: &FusedExpr, inputs: &[&Value], out: &[usize]) -> Result<Value, String> {
    let mut outs = compute(&fused_kernel(expr, inputs, out), inputs)?;
    Ok(outs.remove(0))
}

/// A value broadcast to `out` as an owned row-major array.
fn broadcast(v: &Value, out: &[usize]) -> Value {
    match v {
        Value::F32(a) => Value::F32(a.broadcast(IxDyn(out)).expect("broadcasts").to_owned()),
        Value::I32(a) => Value::I32(a.broadcast(IxDyn(out)).expect("broadcasts").to_owned()),
    }
}

/// The program run instruction by instruction through the unfused
/// unary, binary and cast kernels, every value at the output shape.
fn run_unfused(expr: &FusedExpr, inputs: &[&Value], out: &[usize]) -> Value {
    let mut vals: Vec<Value> = Vec::new();
    for (instr, &dtype) in expr.instrs.iter().zip(&expr.dtypes) {
        let ty = TensorType::new(dtype, out.to_vec());
        let one = |op: Op, args: &[&Value]| {
            let k = Kernel {
                op,
                inputs: args.iter().map(|v| v.ty()).collect(),
                outputs: vec![ty.clone()],
            };
            compute(&k, args).expect("unfused kernel").remove(0)
        };
        let v = match *instr {
            Instr::Input(k) => broadcast(inputs[k], out),
            Instr::Scalar(Scalar::F32(x)) => broadcast(&Value::from(x), out),
            Instr::Scalar(Scalar::I32(x)) => broadcast(&Value::from(x), out),
            Instr::Unary(op, a) => one(Op::Unary(op), &[&vals[a]]),
            Instr::Binary(op, a, b) => one(Op::Binary(op), &[&vals[a], &vals[b]]),
            Instr::Cast(to, a) => one(Op::Cast(to), &[&vals[a]]),
        };
        vals.push(v);
    }
    vals.pop().expect("non-empty program")
}

/// Bitwise equality, NaN included.
fn same(a: &Value, b: &Value, what: &str) {
    assert_eq!(a.ty(), b.ty(), "{what}: types");
    match (a, b) {
        (Value::F32(x), Value::F32(y)) => {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                assert!(
                    p.to_bits() == q.to_bits(),
                    "{what}: element {i}: {p} vs {q}"
                );
            }
        }
        (Value::I32(x), Value::I32(y)) => assert_eq!(x, y, "{what}"),
        _ => panic!("{what}: dtypes differ"),
    }
}

/// Checks the fused kernel against the unfused kernels.
fn check(expr: &FusedExpr, inputs: &[&Value], out: &[usize], what: &str) -> Value {
    let got = run_fused(expr, inputs, out).unwrap_or_else(|e| panic!("{what}: {e}"));
    same(&got, &run_unfused(expr, inputs, out), what);
    got
}

/// A program built by naming instructions as they are pushed.
struct B(FusedExpr);

impl Default for B {
    fn default() -> Self {
        B(FusedExpr {
            instrs: Vec::new(),
            dtypes: Vec::new(),
        })
    }
}

impl B {
    fn push(&mut self, i: Instr, d: DType) -> usize {
        self.0.instrs.push(i);
        self.0.dtypes.push(d);
        self.0.instrs.len() - 1
    }
    fn input(&mut self, k: usize, d: DType) -> usize {
        self.push(Instr::Input(k), d)
    }
    fn f(&mut self, x: f32) -> usize {
        self.push(Instr::Scalar(Scalar::F32(x)), DType::F32)
    }
    fn i(&mut self, x: i32) -> usize {
        self.push(Instr::Scalar(Scalar::I32(x)), DType::I32)
    }
    fn un(&mut self, op: UnaryOp, a: usize) -> usize {
        let d = self.0.dtypes[a];
        self.push(Instr::Unary(op, a), d)
    }
    fn bin(&mut self, op: BinaryOp, a: usize, b: usize) -> usize {
        let d = self.0.dtypes[a];
        self.push(Instr::Binary(op, a, b), d)
    }
    fn cast(&mut self, to: DType, a: usize) -> usize {
        self.push(Instr::Cast(to, a), to)
    }
}

/// `relu(tanh((x * 2 + y) - 0.5) * y) max x, then sqrt(abs) + exp(-|x|)`:
/// eight or so ops over two operands and literals.
fn chain8() -> FusedExpr {
    use BinaryOp::*;
    use UnaryOp::*;
    let mut b = B::default();
    let (x, y) = (b.input(0, DType::F32), b.input(1, DType::F32));
    let two = b.f(2.0);
    let t = b.bin(Mul, x, two);
    let t = b.bin(Add, t, y);
    let half = b.f(0.5);
    let t = b.bin(Sub, t, half);
    let t = b.un(Tanh, t);
    let t = b.bin(Mul, t, y);
    let t = b.un(Relu, t);
    let t = b.bin(Max, t, x);
    let t = b.un(Abs, t);
    let t = b.un(Sqrt, t);
    let ax = b.un(Abs, x);
    let nx = b.un(Neg, ax);
    let e = b.un(Exp, nx);
    b.bin(Add, t, e);
    b.0
}

#[test]
fn chain_matches_unfused_and_ndarray_at_every_size() {
    for n in [1usize, 63, 64, 65, 783, 2048, 2049, 1 << 20] {
        let (x, y) = (floats(&[n], 1), floats(&[n], 2));
        let (vx, vy) = (Value::F32(x.clone()), Value::F32(y.clone()));
        let got = check(&chain8(), &[&vx, &vy], &[n], &format!("n = {n}"));
        // The same chain written as plain ndarray closures.
        let want = ndarray::Zip::from(&x).and(&y).map_collect(|&x, &y| {
            let t = ((((x * 2.0 + y) - 0.5).tanh() * y).max(0.0)).max(x);
            t.abs().sqrt() + (-x.abs()).exp()
        });
        let got = got.into_f32().expect("f32");
        for (p, q) in got.iter().zip(&want) {
            assert!(
                (p - q).abs() <= 1e-6 * (1.0 + q.abs()),
                "n = {n}: {p} vs {q}"
            );
        }
    }
}

/// An output past the streaming-store size (36 MB): the register machine
/// writes its full blocks around the caches, its first and last blocks
/// with plain stores; every element must still be right.
#[test]
fn an_output_large_enough_for_streaming_stores() {
    use BinaryOp::*;
    let n = 9_000_001;
    let mut b = B::default();
    let x = b.input(0, DType::F32);
    let three = b.f(3.0);
    let t = b.bin(Mul, x, three);
    let t = b.un(UnaryOp::Abs, t);
    b.bin(Sub, t, x);
    let xv = floats(&[n], 5);
    let got = run_fused(&b.0, &[&Value::F32(xv.clone())], &[n])
        .expect("runs")
        .into_f32()
        .expect("f32");
    let want = xv.mapv(|x| (x * 3.0).abs() - x);
    assert_eq!(got, want);
}

#[test]
fn broadcast_operands_row_column_and_bias() {
    use BinaryOp::*;
    let mut b = B::default();
    let (col, row, bias) = (
        b.input(0, DType::F32),
        b.input(1, DType::F32),
        b.input(2, DType::F32),
    );
    let t = b.bin(Mul, col, row);
    let t = b.bin(Add, t, bias);
    let t = b.un(UnaryOp::Sin, t);
    b.bin(Sub, t, col);
    for (n, m) in [(1, 1), (3, 65), (65, 63), (783, 5), (1024, 1030)] {
        let col = Value::F32(floats(&[n, 1], 3));
        let row = Value::F32(floats(&[1, m], 4));
        let bias = Value::F32(floats(&[m], 5));
        check(&b.0, &[&col, &row, &bias], &[n, m], &format!("{n}x{m}"));
        // A 3-D output whose operands broadcast along different axes.
        let a3 = Value::F32(floats(&[2, 1, m], 6));
        check(&b.0, &[&col, &a3, &bias], &[2, n, m], &format!("2x{n}x{m}"));
    }
}

#[test]
fn non_row_major_operands() {
    use BinaryOp::*;
    let mut b = B::default();
    let (x, y) = (b.input(0, DType::F32), b.input(1, DType::F32));
    let t = b.bin(Add, x, y);
    b.un(UnaryOp::Exp, t);
    let base = floats(&[70, 90], 7);
    // Column-major (a transposed owned array) and reversed (negative
    // strides) operands of the output's shape.
    let cm = Value::F32(floats(&[90, 70], 8).reversed_axes());
    let rev = Value::F32(floats(&[70, 90], 9).slice_move(s![..;-1, ..]).into_dyn());
    let row = Value::F32(base.clone());
    check(&b.0, &[&cm, &row], &[70, 90], "column-major");
    check(&b.0, &[&row, &rev], &[70, 90], "negative strides");
    check(&b.0, &[&cm, &rev], &[70, 90], "both");
}

#[test]
fn mixed_dtype_programs() {
    use BinaryOp::*;
    for n in [1usize, 64, 65, 783, 40_000] {
        // f32 -> i32 arithmetic (wrapping, truncating division) -> f32.
        let mut b = B::default();
        let (x, k) = (b.input(0, DType::F32), b.input(1, DType::I32));
        let ten = b.f(10.0);
        let t = b.bin(Mul, x, ten);
        let t = b.cast(DType::I32, t);
        let t = b.bin(Mul, t, k);
        let three = b.i(3);
        let t = b.bin(Div, t, three);
        let t = b.un(UnaryOp::Neg, t);
        let f = b.cast(DType::F32, t);
        let t = b.bin(Add, f, x);
        let f_expr = b.0.clone();
        // ... and the same ending in i32: a cast of an f32 result.
        b.cast(DType::I32, t);
        let xv = Value::F32(floats(&[n], 10));
        let kv = Value::I32(ints(&[n], 11));
        check(&f_expr, &[&xv, &kv], &[n], &format!("f32 result, n = {n}"));
        check(&b.0, &[&xv, &kv], &[n], &format!("i32 result, n = {n}"));
    }
}

#[test]
fn integer_chain_wraps_like_the_unfused_kernels() {
    use BinaryOp::*;
    let mut b = B::default();
    let (x, y) = (b.input(0, DType::I32), b.input(1, DType::I32));
    let big = b.i(i32::MAX);
    let t = b.bin(Mul, x, big);
    let t = b.bin(Div, t, y);
    let two = b.i(2);
    let t = b.bin(Pow, t, two);
    let t = b.bin(Min, t, x);
    let t = b.un(UnaryOp::Abs, t);
    b.bin(Sub, t, y);
    let n = 5000;
    let xv = Value::I32(ints(&[n], 12));
    let yv = Value::I32(ints(&[n], 13));
    check(&b.0, &[&xv, &yv], &[n], "i32 chain");
}

#[test]
fn shared_values_literals_and_long_programs() {
    use BinaryOp::*;
    // x*x reads one instruction twice; literal-only parts fold.
    let mut b = B::default();
    let x = b.input(0, DType::F32);
    let sq = b.bin(Mul, x, x);
    let (one, two) = (b.f(1.0), b.f(2.0));
    let c = b.bin(Add, one, two);
    let c = b.un(UnaryOp::Exp, c);
    let t = b.bin(Div, sq, c);
    b.bin(Add, t, sq);
    let xv = Value::F32(floats(&[783], 14));
    check(&b.0, &[&xv], &[783], "shared and folded");
    // A long program: registers are reused, results stay equal.
    let mut b = B::default();
    let (x, y) = (b.input(0, DType::F32), b.input(1, DType::F32));
    let mut t = x;
    for i in 0..60 {
        let op = [Add, Mul, Sub, Max][i % 4];
        t = b.bin(op, t, if i % 3 == 0 { x } else { y });
        if i % 5 == 0 {
            t = b.un(UnaryOp::Tanh, t);
        }
    }
    let (xv, yv) = (
        Value::F32(floats(&[5000], 15)),
        Value::F32(floats(&[5000], 16)),
    );
    check(&b.0, &[&xv, &yv], &[5000], "long program");
}

#[test]
fn degenerate_programs() {
    // The result is an operand, a broadcast operand, or a literal.
    let mut b = B::default();
    b.input(0, DType::F32);
    let xv = Value::F32(floats(&[4, 5], 17));
    check(&b.0, &[&xv], &[4, 5], "operand");
    let row = Value::F32(floats(&[5], 18));
    check(&b.0, &[&row], &[4, 5], "broadcast operand");
    let mut b = B::default();
    let x = b.i(7);
    b.cast(DType::F32, x);
    check(&b.0, &[], &[3, 2], "literal");
    check(&b.0, &[], &[], "rank 0");
    check(&b.0, &[], &[0, 4], "empty");
}

#[test]
fn bad_programs_are_errors() {
    let xv = Value::I32(ints(&[8], 19));
    // A float-only op on i32.
    let mut b = B::default();
    let x = b.input(0, DType::I32);
    b.un(UnaryOp::Exp, x);
    assert!(run_fused(&b.0, &[&xv], &[8]).is_err());
    // An operand of the wrong dtype, or missing.
    let mut b = B::default();
    let x = b.input(0, DType::F32);
    b.un(UnaryOp::Neg, x);
    assert!(run_fused(&b.0, &[&xv], &[8]).is_err());
    assert!(run_fused(&b.0, &[], &[8]).is_err());
    // An operand that does not broadcast.
    let wide = Value::F32(floats(&[9], 20));
    assert!(run_fused(&b.0, &[&wide], &[8]).is_err());
}

/// Throughput of an 8-op chain over 16M f32, fused, against plain ndarray
/// op by op and a STREAM triad (writing a fresh output, as every kernel
/// does, and a reused one). Run with
/// `cargo test --release -p tensorgraph-cpu fused_throughput -- --ignored --nocapture`.
#[test]
#[ignore = "timing; run in release"]
fn fused_throughput() {
    use BinaryOp::*;
    let best = |f: &mut dyn FnMut()| {
        (0..7)
            .map(|_| {
                let t = std::time::Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .fold(f64::MAX, f64::min)
    };
    let n = 1 << 24;
    let (x, y) = (floats(&[n], 1), floats(&[n], 2));
    let mut b = B::default();
    let (xi, yi) = (b.input(0, DType::F32), b.input(1, DType::F32));
    let (c1, c2, c3, c0, c4) = (b.f(1.5), b.f(0.75), b.f(0.25), b.f(0.0), b.f(1.0));
    let t = b.bin(Mul, xi, c1);
    let t = b.bin(Add, t, yi);
    let t = b.bin(Mul, t, c2);
    let t = b.bin(Sub, t, c3);
    let t = b.bin(Max, t, c0);
    let t = b.bin(Mul, t, yi);
    let t = b.bin(Add, t, xi);
    b.bin(Min, t, c4);
    let (vx, vy) = (Value::F32(x.clone()), Value::F32(y.clone()));
    let pool = rayon::ThreadPoolBuilder::new().build().expect("pool");
    let fused =
        pool.install(|| best(&mut || drop(run_fused(&b.0, &[&vx, &vy], &[n]).expect("fused"))));
    // The same chain through the public API: graph, compile, `plan.run`
    // (feeds bound once; the output is handed over by `take`).
    let plan_run = {
        use tensorgraph_core::{CompileOptions, Device, Graph};
        let g = Graph::new();
        let (gx, gy) = (
            g.input("x", DType::F32, [n]).expect("x"),
            g.input("y", DType::F32, [n]).expect("y"),
        );
        let k = |v: f32| g.scalar(v);
        let t = gx.mul(&k(1.5)).and_then(|t| t.add(&gy));
        let t = t
            .and_then(|t| t.mul(&k(0.75)))
            .and_then(|t| t.sub(&k(0.25)));
        let t = t.and_then(|t| t.maximum(&k(0.0))).and_then(|t| t.mul(&gy));
        let t = t.and_then(|t| t.add(&gx)).and_then(|t| t.minimum(&k(1.0)));
        let t = t.expect("chain");
        let backend = Arc::new(crate::CpuBackend::new());
        let plan = g
            .compile(&[&t], &CompileOptions::new(Device::Cpu, vec![backend]))
            .expect("compile");
        let fused_steps = plan
            .steps()
            .iter()
            .filter(|s| matches!(s.kernel.op, Op::Fused(_)))
            .count();
        assert_eq!(fused_steps, 1, "the chain compiles to one fused kernel");
        let feeds = [("x", vx.clone()), ("y", vy.clone())];
        let want = run_fused(&b.0, &[&vx, &vy], &[n]).expect("fused");
        assert_eq!(plan.run(&feeds).expect("run")[0], want);
        best(&mut || drop(plan.run(&feeds).expect("run")))
    };
    let plain = best(&mut || {
        let t = &x * 1.5;
        let t = &t + &y;
        let t = &t * 0.75;
        let t = &t - 0.25;
        let t = t.mapv(|v| v.max(0.0));
        let t = &t * &y;
        let t = &t + &x;
        drop(t.mapv(|v| v.min(1.0)));
    });
    let (xs, ys) = (
        x.as_slice().expect("row-major"),
        y.as_slice().expect("row-major"),
    );
    let triad = |z: &mut [f32]| {
        use rayon::prelude::*;
        z.par_chunks_mut(1 << 16)
            .zip(xs.par_chunks(1 << 16).zip(ys.par_chunks(1 << 16)))
            .for_each(|(z, (x, y))| {
                for (z, (&x, &y)) in z.iter_mut().zip(x.iter().zip(y)) {
                    *z = x + 3.0 * y;
                }
            })
    };
    let mut reused = vec![0.0f32; n];
    let triad_reused = pool.install(|| best(&mut || triad(&mut reused)));
    let triad_fresh = pool.install(|| best(&mut || triad(&mut vec![0.0f32; n])));
    let gbs = |t: f64| 12.0 * n as f64 / t / 1e9;
    eprintln!("threads {}", pool.current_num_threads());
    eprintln!("ndarray op by op {:7.2} ms", plain * 1e3);
    eprintln!(
        "fused            {:7.2} ms {:5.1} GB/s, {:.2}x faster than ndarray",
        fused * 1e3,
        gbs(fused),
        plain / fused
    );
    eprintln!(
        "plan.run         {:7.2} ms {:5.1} GB/s, {:.2}x faster than ndarray",
        plan_run * 1e3,
        gbs(plan_run),
        plain / plan_run
    );
    eprintln!(
        "triad, fresh out {:7.2} ms {:5.1} GB/s, fused at {:.2}x of it",
        triad_fresh * 1e3,
        gbs(triad_fresh),
        triad_fresh / fused
    );
    eprintln!(
        "triad, reused    {:7.2} ms {:5.1} GB/s, fused at {:.2}x of it",
        triad_reused * 1e3,
        gbs(triad_reused),
        triad_reused / fused
    );
    eprintln!(
        "plan.run at {:.2}x of triad fresh, {:.2}x of triad reused",
        triad_fresh / plan_run,
        triad_reused / plan_run
    );
}

/// Compiled programs are kept by expression and operand kinds: running one
/// expression again with another single-element operand (folded into the
/// code as a literal), with a broadcast operand where a full one was, or
/// into other dims, must not reuse code compiled for the first.
#[test]
fn kept_programs_never_serve_other_operands() {
    use BinaryOp::*;
    let mut b = B::default();
    let (x, y) = (b.input(0, DType::F32), b.input(1, DType::F32));
    let t = b.bin(Mul, x, y);
    let t = b.un(UnaryOp::Tanh, t);
    b.bin(Sub, t, y);
    let expr = b.0;
    let x = floats(&[70, 300], 1);
    let cases: [(ArrayD<f32>, &[usize]); 6] = [
        (ArrayD::from_elem(IxDyn(&[1]), 2.0), &[70, 300]),
        (ArrayD::from_elem(IxDyn(&[1]), -3.0), &[70, 300]),
        (ArrayD::from_elem(IxDyn(&[1]), 2.0), &[70, 300]),
        (floats(&[300], 2), &[70, 300]),
        (floats(&[70, 300], 3), &[70, 300]),
        (floats(&[70, 1], 4), &[70, 300]),
    ];
    for round in 0..2 {
        for (i, (y, out)) in cases.iter().enumerate() {
            let (vx, vy) = (Value::F32(x.clone()), Value::F32(y.clone()));
            let got = check(&expr, &[&vx, &vy], out, &format!("round {round}, case {i}"));
            let yb = y.broadcast(IxDyn(out)).expect("broadcasts");
            let want = ndarray::Zip::from(&x)
                .and(&yb)
                .map_collect(|&x, &y| (x * y).tanh() - y);
            let got = got.into_f32().expect("f32");
            for (p, q) in got.iter().zip(&want) {
                assert!(
                    (p - q).abs() <= 1e-6 * (1.0 + q.abs()),
                    "round {round}, case {i}: {p} vs {q}"
                );
            }
        }
    }
    // Into other dims: a kept [70, 300] program must not serve [300].
    let x1 = floats(&[300], 5);
    let (vx, vy) = (Value::F32(x1.clone()), Value::F32(floats(&[300], 6)));
    check(&expr, &[&vx, &vy], &[300], "other dims");
}

/// A malformed expression is refused even after a well-formed one that
/// differs only where it is malformed was compiled and kept.
#[test]
fn a_malformed_expression_never_runs_kept_code() {
    let x = Value::I32(ArrayD::from_elem(IxDyn(&[5]), 3));
    let good = FusedExpr {
        instrs: vec![Instr::Input(0), Instr::Cast(DType::F32, 0)],
        dtypes: vec![DType::I32, DType::F32],
    };
    let got = run_fused(&good, &[&x], &[5]).expect("a cast runs");
    assert_eq!(got.into_f32().expect("f32").sum(), 15.0);
    let bad = FusedExpr {
        instrs: vec![Instr::Input(0), Instr::Cast(DType::I32, 0)],
        dtypes: vec![DType::I32, DType::F32],
    };
    let err = run_fused(&bad, &[&x], &[5]).expect_err("a cast to another dtype");
    assert!(err.contains("cast to another dtype"), "{err}");
}
