//! Elementwise fusion through the public API: which steps a plan fuses,
//! and fused results equal to plain ndarray and to the same graph
//! compiled with fusion off, on every device.

mod common;

use std::time::Instant;

use common::*;
use ndarray::{ArrayD, Zip};
use tensorgraph::{DType, Device, Graph, Op, Plan, Tensor, Value};

/// Compiles `outputs` for `device`, fusion on or off (other passes on).
#[track_caller]
fn compile(device: Device, g: &Graph, outputs: &[&Tensor], fusion: bool) -> Plan {
    let mut opts = tensorgraph::options(device)
        .unwrap_or_else(|e| panic!("options({device}) failed for an available device: {e}"));
    opts.passes.fusion = fusion;
    g.compile(outputs, &opts)
        .unwrap_or_else(|e| panic!("compile on {device} (fusion {fusion}) failed: {e}"))
}

/// The plan's steps that compute (sources and transfers left out).
fn computing(plan: &Plan) -> Vec<&'static str> {
    plan.steps()
        .iter()
        .map(|s| s.kernel.op.name())
        .filter(|&n| !matches!(n, "input" | "constant" | "transfer"))
        .collect()
}

/// Runs `outputs` fused and unfused, asserts both agree (f32 within
/// `1e-5` relative, i32 exactly) and returns the fused plan and results.
#[track_caller]
fn fused_and_unfused(
    device: Device,
    g: &Graph,
    outputs: &[&Tensor],
    feeds: &[(&str, Value)],
) -> (Plan, Vec<Value>) {
    let on = compile(device, g, outputs, true);
    let off = compile(device, g, outputs, false);
    assert!(
        !computing(&off).contains(&"fused"),
        "{device}: fusion off still fused"
    );
    let got = on
        .run(feeds)
        .unwrap_or_else(|e| panic!("{device}: fused run: {e}"));
    let want = off
        .run(feeds)
        .unwrap_or_else(|e| panic!("{device}: unfused run: {e}"));
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        let what = format!("{device}: output {i}, fused vs unfused");
        match (g, w) {
            (Value::F32(g), Value::F32(w)) => assert_close(g, w, 1e-5, 1e-6, &what),
            (Value::I32(g), Value::I32(w)) => assert_eq_i32(g, w, &what),
            _ => panic!("{what}: dtypes differ"),
        }
    }
    (on, got)
}

/// Eight elementwise ops over `x` and `y`, with literals.
fn chain8(x: &Tensor, y: &Tensor) -> Tensor {
    let t = &(x * 2.0) + y;
    let t = (&t - 0.5).tanh().expect("tanh");
    let t = (&t * y).relu().expect("relu");
    let t = t.maximum(x).expect("maximum");
    (&t.abs().expect("abs") * 3.0).sqrt().expect("sqrt")
}

fn chain8_ndarray(x: &ArrayD<f32>, y: &ArrayD<f32>) -> ArrayD<f32> {
    Zip::from(x).and(y).map_collect(|&x, &y| {
        let t = ((x * 2.0 + y - 0.5).tanh() * y).max(0.0).max(x);
        (t.abs() * 3.0).sqrt()
    })
}

#[test]
fn an_eight_op_chain_is_one_kernel() {
    on_every_device(|d| {
        for n in [1usize, 63, 64, 65, 783, 4096, 100_000] {
            let g = Graph::new();
            let x = g.input("x", DType::F32, [n]).expect("input");
            let y = g.input("y", DType::F32, [n]).expect("input");
            let out = chain8(&x, &y);
            let (xa, ya) = (rand_f32(1, &[n], -2.0, 2.0), rand_f32(2, &[n], -2.0, 2.0));
            let feeds = [("x", Value::F32(xa.clone())), ("y", Value::F32(ya.clone()))];
            let (plan, got) = fused_and_unfused(d, &g, &[&out], &feeds);
            assert_eq!(computing(&plan), ["fused"], "{d}, n = {n}");
            assert_eq!(
                plan.steps().len(),
                3,
                "{d}: two inputs, one kernel, literals inlined"
            );
            let got = f32_of(got[0].clone());
            assert_close(
                &got,
                &chain8_ndarray(&xa, &ya),
                1e-5,
                1e-6,
                &format!("{d}, n = {n}"),
            );
        }
    });
}

#[test]
fn broadcast_operands_fuse_into_one_tree_without_costly_repeats() {
    on_every_device(|d| {
        for (n, m) in [(1, 1), (3, 65), (64, 63), (783, 5)] {
            let g = Graph::new();
            let col = g.input("col", DType::F32, [n, 1]).expect("input");
            let row = g.input("row", DType::F32, [1, m]).expect("input");
            let bias = g.input("bias", DType::F32, [m]).expect("input");
            let t = &(&col * 2.0) + &row.exp().expect("exp");
            let out = (&t.tanh().expect("tanh") - &bias).sin().expect("sin");
            let (ca, ra, ba) = (
                rand_f32(3, &[n, 1], -1.0, 1.0),
                rand_f32(4, &[1, m], -1.0, 1.0),
                rand_f32(5, &[m], -1.0, 1.0),
            );
            let feeds = [
                ("col", Value::F32(ca.clone())),
                ("row", Value::F32(ra.clone())),
                ("bias", Value::F32(ba.clone())),
            ];
            let (plan, got) = fused_and_unfused(d, &g, &[&out], &feeds);
            // exp of the [1, m] row would run n times per element fused:
            // it stays a step of its own unless it is the root's size or
            // one element.
            let steps: &[&str] = if n > 1 && m > 1 {
                &["exp", "fused"]
            } else {
                &["fused"]
            };
            assert_eq!(computing(&plan), steps, "{d}: {n}x{m}");
            let t = zip_broadcast(&ca.mapv(|c| c * 2.0), &ra.mapv(f32::exp), |a, b| a + b);
            let want = zip_broadcast(&t, &ba, |t, b| (t.tanh() - b).sin());
            assert_close(
                &f32_of(got[0].clone()),
                &want,
                1e-5,
                1e-6,
                &format!("{d}: {n}x{m}"),
            );
        }
    });
}

#[test]
fn a_value_read_twice_is_computed_once() {
    on_every_device(|d| {
        let g = Graph::new();
        let x = g.input("x", DType::F32, [300]).expect("input");
        let shared = x.exp().expect("exp");
        let a = (&shared + 1.0).sin().expect("sin");
        let b = (&shared * 2.0).cos().expect("cos");
        let out = &a + &b;
        let xa = rand_f32(6, &[300], -1.0, 1.0);
        let (plan, got) = fused_and_unfused(d, &g, &[&out], &[("x", Value::F32(xa.clone()))]);
        let mut ops = computing(&plan);
        ops.sort_unstable();
        assert_eq!(
            ops,
            ["exp", "fused"],
            "{d}: exp is read by two steps, so stays"
        );
        let fused = plan
            .steps()
            .iter()
            .find(|s| matches!(s.kernel.op, Op::Fused(_)))
            .expect("fused step");
        assert_eq!(fused.inputs.len(), 1, "{d}: the fused tree reads exp once");
        let want = xa.mapv(|x| (x.exp() + 1.0).sin() + (x.exp() * 2.0).cos());
        assert_close(&f32_of(got[0].clone()), &want, 1e-5, 1e-6, &format!("{d}"));
    });
}

#[test]
fn requested_intermediates_stay_materialised() {
    on_every_device(|d| {
        let g = Graph::new();
        let x = g.input("x", DType::F32, [2, 50]).expect("input");
        let mid = (&x * 2.0).sin().expect("sin");
        let out = (&mid + 1.0).exp().expect("exp");
        let xa = rand_f32(7, &[2, 50], -1.0, 1.0);
        let (plan, got) = fused_and_unfused(d, &g, &[&out, &mid], &[("x", Value::F32(xa.clone()))]);
        assert_eq!(
            computing(&plan),
            ["fused", "fused"],
            "{d}: mid is its own kernel"
        );
        let want_mid = xa.mapv(|x| (x * 2.0).sin());
        assert_close(
            &f32_of(got[1].clone()),
            &want_mid,
            1e-5,
            1e-6,
            &format!("{d}: mid"),
        );
        let want = want_mid.mapv(|m| (m + 1.0).exp());
        assert_close(
            &f32_of(got[0].clone()),
            &want,
            1e-5,
            1e-6,
            &format!("{d}: out"),
        );
    });
}

#[test]
fn integer_and_mixed_cast_chains() {
    on_every_device(|d| {
        let g = Graph::new();
        let k = g.input("k", DType::I32, [783]).expect("input");
        let x = g.input("x", DType::F32, [783]).expect("input");
        // i32: wrapping products, truncating division, then abs.
        let c = |v: i32| g.constant(v);
        let ints = (&(&(&k * &c(7)) + &c(3)) / &c(2)).abs().expect("abs");
        let ints = &ints - &k;
        // f32 -> i32 -> f32 with i32 arithmetic in between.
        let scaled = (&x * 10.0).cast(DType::I32).expect("cast");
        let mixed = (&(&scaled + &k) * &c(3)).cast(DType::F32).expect("cast");
        let mixed = (&mixed * 0.25).tanh().expect("tanh");
        let (ka, xa) = (
            rand_i32(8, &[783], -1000, 1000),
            rand_f32(9, &[783], -3.0, 3.0),
        );
        let feeds = [("k", Value::I32(ka.clone())), ("x", Value::F32(xa.clone()))];
        let (plan, got) = fused_and_unfused(d, &g, &[&ints, &mixed], &feeds);
        assert_eq!(computing(&plan), ["fused", "fused"], "{d}");
        let want_ints = ka.mapv(|k| ((k.wrapping_mul(7) + 3) / 2).abs() - k);
        assert_eq_i32(
            &i32_of(got[0].clone()),
            &want_ints,
            &format!("{d}: i32 chain"),
        );
        let want = Zip::from(&xa)
            .and(&ka)
            .map_collect(|&x, &k| ((((x * 10.0) as i32 + k) * 3) as f32 * 0.25).tanh());
        assert_close(
            &f32_of(got[1].clone()),
            &want,
            1e-5,
            1e-6,
            &format!("{d}: mixed"),
        );
    });
}

#[test]
fn wide_trees_split_at_the_backends_binding_limit() {
    on_every_device(|d| {
        // The tightest limit of the plan's backends sets the cap: 16 on
        // the CPU alone or on an adapter with 18 or more storage buffers.
        let options = options_on(d);
        let buffers = options
            .backends
            .iter()
            .filter_map(|b| b.max_kernel_buffers())
            .min();
        let cap = tensorgraph::core::passes::OperandCaps::within(buffers).fused;
        let n: usize = 20;
        let g = Graph::new();
        let names: Vec<String> = (0..n).map(|i| format!("x{i}")).collect();
        let xs: Vec<Tensor> = names
            .iter()
            .map(|n| g.input(n, DType::F32, [65]).expect("input"))
            .collect();
        let mut out = xs[0].sin().expect("sin");
        for x in &xs[1..] {
            out = &out + &(x * 0.5);
        }
        let arrays: Vec<ArrayD<f32>> = (0..n as u64)
            .map(|i| rand_f32(20 + i, &[65], -1.0, 1.0))
            .collect();
        let feeds: Vec<(&str, Value)> = names
            .iter()
            .zip(&arrays)
            .map(|(n, a)| (n.as_str(), Value::F32(a.clone())))
            .collect();
        let (plan, got) = fused_and_unfused(d, &g, &[&out], &feeds);
        let fused: Vec<_> = plan
            .steps()
            .iter()
            .filter(|s| matches!(s.kernel.op, Op::Fused(_)))
            .collect();
        assert!(
            fused.len() >= n.div_ceil(cap),
            "{d}: {n} operands need {} kernels of {cap}",
            n.div_ceil(cap)
        );
        assert!(
            fused.iter().all(|s| s.inputs.len() <= cap),
            "{d}: at most {cap} operands"
        );
        if cap > 6 {
            assert!(
                fused.iter().any(|s| s.inputs.len() > 6),
                "{d}: kernels as wide as the limit allows, past WebGPU's default"
            );
        }
        assert_eq!(
            computing(&plan).len(),
            fused.len(),
            "{d}: every op is in a kernel"
        );
        let mut want = arrays[0].mapv(f32::sin);
        for a in &arrays[1..] {
            want = &want + &a.mapv(|x| x * 0.5);
        }
        assert_close(&f32_of(got[0].clone()), &want, 1e-5, 1e-6, &format!("{d}"));
    });
}

#[test]
fn a_long_chain_compiles_quickly() {
    let g = Graph::new();
    let x = g.input("x", DType::F32, [16]).expect("input");
    let mut t = x.clone();
    for i in 0..10_000 {
        t = if i % 2 == 0 {
            t.sin().expect("sin")
        } else {
            &t * 0.999
        };
    }
    let start = Instant::now();
    let plan = compile(Device::Cpu, &g, &[&t], true);
    let took = start.elapsed();
    eprintln!("10,000-node chain compiled with all passes in {took:?}");
    assert_eq!(computing(&plan), ["fused"]);
    // Generous: debug builds run the passes many times slower than release.
    assert!(took.as_secs_f64() < 5.0, "took {took:?}");
    let xa = rand_f32(30, &[16], -1.0, 1.0);
    let got = f32_of(
        plan.run(&[("x", Value::F32(xa.clone()))])
            .expect("run")
            .remove(0),
    );
    let want = xa.mapv(|mut v| {
        for i in 0..10_000 {
            v = if i % 2 == 0 { v.sin() } else { v * 0.999 };
        }
        v
    });
    assert_close(&got, &want, 1e-5, 1e-6, "long chain");
}
