//! The compile-time rewrites through the public API: for each pass a graph
//! it applies to, the plan's steps showing the rewrite happened, and the
//! results equal to the plan compiled with every pass off, on every device.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use ndarray::{ArrayD, Axis, IxDyn, arr1};
use tensorgraph::core::PassOptions;
use tensorgraph::core::passes::{self, Ir};
use tensorgraph::{DType, Device, Graph, Op, Plan, SplitSpec, Tensor, Value};

/// Compiles `outputs` for `device` with the given passes.
#[track_caller]
fn compile_with(device: Device, g: &Graph, outputs: &[&Tensor], passes: PassOptions) -> Plan {
    let mut options = tensorgraph::options(device)
        .unwrap_or_else(|e| panic!("options({device}) failed for an available device: {e}"));
    options.passes = passes;
    g.compile(outputs, &options)
        .unwrap_or_else(|e| panic!("compile on {device} with {passes:?} failed: {e}"))
}

/// How many steps of the plan run the op called `name` (transfers apart).
fn count(plan: &Plan, name: &str) -> usize {
    plan.steps()
        .iter()
        .filter(|s| s.kernel.op.name() == name)
        .count()
}

/// The op names of the plan's steps, transfers left out, sorted.
fn ops(plan: &Plan) -> Vec<&'static str> {
    let mut v: Vec<&'static str> = plan
        .steps()
        .iter()
        .map(|s| s.kernel.op.name())
        .filter(|&n| n != "transfer")
        .collect();
    v.sort_unstable();
    v
}

/// Asserts two runs' outputs agree: `f32` within `1e-5` relative plus
/// `1e-6` absolute (folding computes on the CPU what a GPU plan would
/// compute on the GPU), `i32` exactly.
#[track_caller]
fn assert_same_values(got: &[Value], expected: &[Value], what: &str) {
    assert_eq!(got.len(), expected.len(), "{what}: number of outputs");
    for (i, (g, e)) in got.iter().zip(expected).enumerate() {
        let what = format!("{what}: output {i}");
        match (g, e) {
            (Value::F32(g), Value::F32(e)) => assert_close(g, e, 1e-5, 1e-6, &what),
            (Value::I32(g), Value::I32(e)) => assert_eq_i32(g, e, &what),
            _ => panic!("{what}: dtypes differ ({} vs {})", g.dtype(), e.dtype()),
        }
    }
}

/// The passes this file is about, with elementwise fusion off so that
/// plans show their rewrites op by op.
fn rewrites() -> PassOptions {
    PassOptions {
        fusion: false,
        epilogues: false,
        ..PassOptions::default()
    }
}

/// Compiles `outputs` with the rewrites on and with every pass off, runs
/// both on `feeds`, asserts equal results and returns the plan with the
/// rewrites and the one without, for the caller to inspect. The default
/// passes (fusion included) must agree too.
#[track_caller]
fn on_and_off(
    device: Device,
    g: &Graph,
    outputs: &[&Tensor],
    feeds: &[(&str, Value)],
) -> (Plan, Plan) {
    let on = compile_with(device, g, outputs, rewrites());
    let off = compile_with(device, g, outputs, PassOptions::none());
    let all = compile_with(device, g, outputs, PassOptions::default());
    let run = |plan: &Plan, what: &str| {
        plan.run(feeds)
            .unwrap_or_else(|e| panic!("{device}: run {what}: {e}"))
    };
    let expected = run(&off, "without passes");
    let got = run(&on, "with the rewrites");
    assert_same_values(&got, &expected, &format!("{device}: rewrites on vs off"));
    let got = run(&all, "with every pass");
    assert_same_values(&got, &expected, &format!("{device}: every pass vs none"));
    (on, off)
}

fn feed_f32(name: &str, a: ArrayD<f32>) -> (&str, Value) {
    (name, Value::F32(a))
}

// --- constant folding ------------------------------------------------------

/// `(c1 + c2) * x`: the add runs at compile time, a constant holds its sum.
#[test]
fn folding_turns_constant_subgraphs_into_constants() {
    on_every_device(|d| {
        let g = Graph::new();
        let c1 = g.constant(rand_f32(1, &[4], -1.0, 1.0));
        let c2 = g.constant(rand_f32(2, &[4], -1.0, 1.0));
        let x = g.input("x", DType::F32, [3, 4]).expect("input");
        let y = c1.add(&c2).and_then(|s| s.mul(&x)).expect("builds");
        let a = rand_f32(3, &[3, 4], -2.0, 2.0);
        let (on, off) = on_and_off(d, &g, &[&y], &[feed_f32("x", a)]);
        assert_eq!(ops(&off), ["add", "constant", "constant", "input", "mul"]);
        assert_eq!(
            ops(&on),
            ["constant", "input", "mul"],
            "{d}: the add was folded"
        );
        let folded = on
            .steps()
            .iter()
            .find_map(|s| match &s.kernel.op {
                Op::Constant(c) => Some(c.clone()),
                _ => None,
            })
            .expect("a constant step");
        let sum = rand_f32(1, &[4], -1.0, 1.0) + rand_f32(2, &[4], -1.0, 1.0);
        assert_close(&f32_of((*folded).clone()), &sum, 1e-6, 0.0, "folded sum");
    });
}

/// A chain of constant steps of every family folds whole, a split into one
/// constant per part, and integer arithmetic exactly.
#[test]
fn folding_follows_chains_and_splits() {
    on_every_device(|d| {
        let g = Graph::new();
        let c = g.constant(rand_f32(4, &[2, 6], 0.5, 2.0));
        let k = g.constant(iota_f32(&[6, 3]));
        let chained = c
            .log()
            .and_then(|t| t.exp())
            .and_then(|t| t.matmul(&k))
            .and_then(|t| t.permute(&[1, 0]))
            .and_then(|t| t.reshape(&[6]))
            .and_then(|t| t.slice_step(0, 1, 6, 2))
            .and_then(|t| t.sum(&[], true))
            .expect("chain");
        let parts = c.split(1, SplitSpec::Sizes(vec![1, 2, 3])).expect("split");
        let joined = g.concat(&[&parts[2], &parts[0]], 1).expect("concat");
        let i = g.constant(ndarray::arr1(&[7i32, -9, 2147483647]));
        let ints = (&i * 3.0)
            .cast(DType::F32)
            .and_then(|t| t.cast(DType::I32))
            .expect("ints");
        let x = g.input("x", DType::F32, [1]).expect("input");
        let y = chained.add(&x).expect("add");
        let a = rand_f32(5, &[1], -1.0, 1.0);
        let (on, off) = on_and_off(d, &g, &[&y, &joined, &parts[1], &ints], &[feed_f32("x", a)]);
        assert!(off.steps().len() > 15, "{d}: {:?}", ops(&off));
        // Left: the input, the add of it, and one constant per operand or
        // result the folded parts feed: the sum, the joined array, the
        // middle part and the integers.
        assert_eq!(
            ops(&on),
            [
                "add", "constant", "constant", "constant", "constant", "input"
            ]
        );
    });
}

/// Custom ops are never evaluated at compile time, even on constants.
#[test]
fn folding_leaves_custom_ops_to_run_time() {
    on_every_device(|d| {
        let calls = Arc::new(AtomicUsize::new(0));
        let g = Graph::new();
        let c = g.constant(arr1(&[1.0f32, 2.0]));
        let seen = calls.clone();
        let y = g
            .custom("count", &[&c], vec![c.ty().clone()], move |ins| {
                seen.fetch_add(1, Ordering::SeqCst);
                Ok(vec![ins[0].clone()])
            })
            .expect("custom")
            .remove(0);
        let y = y.exp().expect("exp");
        let plan = compile_with(d, &g, &[&y], rewrites());
        assert_eq!(
            calls.load(Ordering::SeqCst),
            0,
            "{d}: not called while compiling"
        );
        assert_eq!(count(&plan, "custom"), 1);
        assert_eq!(
            count(&plan, "exp"),
            1,
            "{d}: an op after a custom one is not folded"
        );
        let out = f32_of(plan.run(&[]).expect("run").remove(0));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_close(
            &out,
            &arr1(&[1.0f32.exp(), 2.0f32.exp()]).into_dyn(),
            1e-6,
            0.0,
            "exp",
        );
    });
}

/// A result over the size limit is computed at run time, not stored.
#[test]
fn folding_does_not_bloat_constants() {
    on_every_device(|d| {
        let g = Graph::new();
        let c = g.constant(arr1(&[0.5f32, -1.5]));
        let n = passes::fold::MAX_FOLDED_ELEMENTS / 2 + 1;
        let big = c
            .reshape(&[1, 2])
            .and_then(|t| t.broadcast_to([n, 2]))
            .expect("big");
        let x = g.input("x", DType::F32, [n, 2]).expect("input");
        let y = big.add(&x).expect("add");
        let a = rand_f32(6, &[n, 2], -1.0, 1.0);
        let (on, _) = on_and_off(d, &g, &[&y], &[feed_f32("x", a)]);
        assert_eq!(count(&on, "broadcast_to"), 1, "{d}: {:?}", ops(&on));
        assert_eq!(count(&on, "reshape"), 0, "{d}: the small reshape folds");
    });
}

// --- common subexpressions --------------------------------------------------

fn scores(q: &Tensor, k: &Tensor) -> Tensor {
    q.matmul(k).expect("matmul")
}

fn same_scores_built_elsewhere(q: &Tensor, k: &Tensor) -> Tensor {
    let s = q.matmul(k).expect("matmul");
    (&s * 0.125).softmax(-1).expect("softmax")
}

/// Two identical matmuls built in different functions run once, and equal
/// scalar constants built twice become one.
#[test]
fn cse_computes_each_expression_once() {
    on_every_device(|d| {
        let g = Graph::new();
        let q = g.input("q", DType::F32, [5, 8]).expect("input");
        let k = g.input("k", DType::F32, [8, 7]).expect("input");
        let raw = scores(&q, &k);
        let probs = same_scores_built_elsewhere(&q, &k);
        let again = (&raw * 0.125).softmax(-1).expect("softmax");
        let y = probs.add(&again).expect("add");
        let feeds = [
            feed_f32("q", rand_f32(7, &[5, 8], -1.0, 1.0)),
            feed_f32("k", rand_f32(8, &[8, 7], -1.0, 1.0)),
        ];
        let (on, off) = on_and_off(d, &g, &[&y, &raw], &feeds);
        assert_eq!(count(&off, "matmul"), 2);
        assert_eq!(count(&on, "matmul"), 1, "{d}: {:?}", ops(&on));
        assert_eq!(count(&off, "constant"), 2);
        assert_eq!(count(&on, "constant"), 1, "{d}: the two 0.125 merge");
        // The whole softmax is shared, so the add reads one value twice.
        assert_eq!(count(&on, "exp"), 1);
        let add = on
            .steps()
            .iter()
            .find(|s| s.kernel.op.name() == "add")
            .expect("add");
        assert_eq!(add.inputs[0], add.inputs[1]);
    });
}

/// Requesting two outputs that merge into one value returns it twice.
#[test]
fn cse_merged_outputs_are_returned_each_time() {
    on_every_device(|d| {
        let g = Graph::new();
        let x = g.input("x", DType::F32, [4]).expect("input");
        let a = x.exp().expect("exp");
        let b = x.exp().expect("exp");
        let (on, _) = on_and_off(d, &g, &[&a, &b, &a], &[feed_f32("x", iota_f32(&[4]))]);
        assert_eq!(count(&on, "exp"), 1);
        assert_eq!(on.outputs()[0], on.outputs()[1]);
    });
}

/// The same op on the same input with different attributes stays two
/// steps: sums over different axes (of a square input, so both results
/// have one type), with and without kept dimensions, reshapes to different
/// targets, casts to different dtypes.
#[test]
fn cse_keeps_ops_with_different_attributes_apart() {
    on_every_device(|d| {
        let g = Graph::new();
        let x = g.input("x", DType::F32, [4, 4]).expect("input");
        let outputs = [
            x.sum(&[0], false).expect("sum over rows"),
            x.sum(&[1], false).expect("sum over columns"),
            x.max(&[1], true).expect("max, dims kept"),
            x.max(&[1], false).expect("max, dims dropped"),
            x.reshape(&[2, 8]).expect("reshape"),
            x.reshape(&[8, 2]).expect("reshape"),
            x.cast(DType::I32).expect("cast"),
            x.cast(DType::F32).expect("cast"),
        ];
        let refs: Vec<&Tensor> = outputs.iter().collect();
        let cse_only = PassOptions {
            cse: true,
            ..PassOptions::none()
        };
        let plan = compile_with(d, &g, &refs, cse_only);
        for (op, n) in [("sum", 2), ("max", 2), ("reshape", 2), ("cast", 2)] {
            assert_eq!(count(&plan, op), n, "{d}: {op} steps in {:?}", ops(&plan));
        }
        assert_eq!(
            plan.steps().len(),
            9,
            "{d}: the input and eight ops: {:?}",
            ops(&plan)
        );
        let mut distinct = plan.outputs().to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), 8, "{d}: outputs {:?}", plan.outputs());

        let xs = rand_f32(11, &[4, 4], -4.0, 4.0);
        let rows = |a: &ArrayD<f32>| a.map_axis(Axis(1), |r| r.fold(f32::MIN, |m, &v| m.max(v)));
        let want_f32 = [
            (0, xs.sum_axis(Axis(0))),
            (1, xs.sum_axis(Axis(1))),
            (2, rows(&xs).insert_axis(Axis(1))),
            (3, rows(&xs)),
            (4, xs.to_shape(IxDyn(&[2, 8])).expect("2x8").to_owned()),
            (5, xs.to_shape(IxDyn(&[8, 2])).expect("8x2").to_owned()),
            (7, xs.clone()),
        ];
        let feeds = [feed_f32("x", xs.clone())];
        for passes in [cse_only, PassOptions::default()] {
            let got = compile_with(d, &g, &refs, passes)
                .run(&feeds)
                .unwrap_or_else(|e| panic!("{d}: run with {passes:?}: {e}"));
            for (i, want) in &want_f32 {
                let what = format!("{d}: output {i} with {passes:?}");
                assert_close(&f32_of(got[*i].clone()), want, 1e-5, 1e-6, &what);
            }
            assert_eq_i32(
                &i32_of(got[6].clone()),
                &xs.mapv(|v| v as i32),
                &format!("{d}: the cast to i32 with {passes:?}"),
            );
        }
    });
}

// --- algebraic simplification ---------------------------------------------

/// `x * 1.0` leaves no mul: the output is the input itself.
#[test]
fn simplify_drops_identity_arithmetic() {
    on_every_device(|d| {
        let g = Graph::new();
        let x = g.input("x", DType::F32, [3, 5]).expect("input");
        let y = &x * 1.0;
        let z = (&(&(1.0 * &x.exp().expect("exp")) + -0.0) - 0.0) / 1.0;
        let a = rand_f32(9, &[3, 5], -3.0, 3.0);
        let (on, off) = on_and_off(d, &g, &[&y, &z], &[feed_f32("x", a.clone())]);
        assert_eq!(count(&off, "mul"), 2);
        assert_eq!(ops(&on), ["exp", "input"], "{d}");
        let out = on.run(&[feed_f32("x", a.clone())]).expect("run");
        assert_eq!(f32_of(out[0].clone()), a, "{d}: x * 1 returns x unchanged");
    });
}

/// A broadcasting identity changes the shape, so it stays.
#[test]
fn simplify_keeps_identities_that_broadcast() {
    on_every_device(|d| {
        let g = Graph::new();
        let x = g.input("x", DType::F32, [4]).expect("input");
        let ones = g.constant(ArrayD::<f32>::ones(IxDyn(&[3, 4])));
        let y = &x * &ones;
        let (on, _) = on_and_off(d, &g, &[&y], &[feed_f32("x", iota_f32(&[4]))]);
        assert_eq!(count(&on, "mul"), 1);
        assert_eq!(on.value_types()[on.outputs()[0].0].shape.dims(), [3, 4]);
    });
}

/// `i32` `x * 0` is zeros, and then `x` needs no feed at all; on `f32` it
/// stays, since `inf * 0` is NaN.
#[test]
fn simplify_integer_times_zero() {
    on_every_device(|d| {
        let g = Graph::new();
        let x = g.input("x", DType::I32, [2, 3]).expect("input");
        let y = &x * 0.0;
        let plan = compile_with(d, &g, &[&y], rewrites());
        assert_eq!(ops(&plan), ["constant"], "{d}");
        let out = i32_of(plan.run(&[]).expect("runs without a feed for x").remove(0));
        assert_eq_i32(&out, &ArrayD::zeros(IxDyn(&[2, 3])), "zeros");
        let fed = [("x", Value::I32(iota_i32(&[2, 3])))];
        let (on, _) = on_and_off(d, &g, &[&y], &fed);
        assert_eq!(ops(&on), ["constant"]);

        let f = g.input("f", DType::F32, [3]).expect("input");
        let z = &f * 0.0;
        let inf = arr1(&[f32::INFINITY, 1.0, -2.0]).into_dyn();
        let (on, _) = on_and_off(d, &g, &[&z], &[feed_f32("f", inf)]);
        assert_eq!(count(&on, "mul"), 1);
    });
}

/// `--x`, reshape chains and permute chains.
#[test]
fn simplify_negations_and_layout_chains() {
    on_every_device(|d| {
        let g = Graph::new();
        let x = g.input("x", DType::F32, [2, 3, 4]).expect("input");
        let negs = -&(-&(-&(-&x.sin().expect("sin"))));
        let reshaped = x
            .reshape(&[6, 4])
            .and_then(|t| t.reshape(&[24]))
            .and_then(|t| t.reshape(&[4, 6]))
            .and_then(|t| t.exp())
            .expect("reshapes");
        let permuted = x
            .permute(&[2, 0, 1])
            .and_then(|t| t.transpose(0, 1))
            .and_then(|t| t.cos())
            .expect("permutes");
        let back = x
            .permute(&[1, 2, 0])
            .and_then(|t| t.permute(&[2, 0, 1]))
            .and_then(|t| t.reshape(&[24]))
            .and_then(|t| t.reshape(&[2, 3, 4]))
            .and_then(|t| t.abs())
            .expect("back");
        let a = rand_f32(10, &[2, 3, 4], -2.0, 2.0);
        let outs = [&negs, &reshaped, &permuted, &back];
        let (on, off) = on_and_off(d, &g, &outs, &[feed_f32("x", a)]);
        assert_eq!(count(&off, "neg"), 4);
        assert_eq!(count(&on, "neg"), 0, "{d}");
        assert_eq!(count(&off, "reshape"), 5);
        assert_eq!(count(&on, "reshape"), 1, "{d}");
        assert_eq!(count(&off, "permute"), 4);
        assert_eq!(count(&on, "permute"), 1, "{d}");
        assert_eq!(
            ops(&on),
            ["abs", "cos", "exp", "input", "permute", "reshape", "sin"]
        );
    });
}

// --- dead code ---------------------------------------------------------------

/// Steps the other passes cut off are dropped: the constant `1.0` of
/// `x * 1.0`, the first reshape of a chain, a merged duplicate's operands.
#[test]
fn dce_drops_what_other_passes_cut_off() {
    on_every_device(|d| {
        let g = Graph::new();
        let x = g.input("x", DType::F32, [2, 6]).expect("input");
        let y = (&x * 1.0)
            .reshape(&[12])
            .and_then(|t| t.reshape(&[3, 4]))
            .and_then(|t| t.tanh())
            .expect("builds");
        let feeds = [feed_f32("x", rand_f32(11, &[2, 6], -1.0, 1.0))];
        let no_dce = PassOptions {
            dce: false,
            ..rewrites()
        };
        let kept = compile_with(d, &g, &[&y], no_dce);
        assert_eq!(
            ops(&kept),
            ["constant", "input", "reshape", "reshape", "tanh"],
            "{d}"
        );
        let (on, _) = on_and_off(d, &g, &[&y], &feeds);
        assert_eq!(ops(&on), ["input", "reshape", "tanh"], "{d}");
        let got = kept.run(&feeds).expect("run without dce");
        let expected = on.run(&feeds).expect("run");
        assert_same_values(&got, &expected, "dce on vs off");
    });
}

// --- switches, a whole model, compile time ---------------------------------

/// Each switch turns exactly its pass off.
#[test]
fn each_pass_can_be_switched_off() {
    let g = Graph::new();
    let x = g.input("x", DType::F32, [4, 4]).expect("input");
    let c = g.constant(iota_f32(&[4])).exp().expect("exp");
    let a = x.matmul(&x).expect("matmul");
    let b = x.matmul(&x).expect("matmul");
    let y = (&(&a + &b) * 1.0).add(&c).expect("add");
    let with = |f: fn(&mut PassOptions)| {
        let mut p = rewrites();
        f(&mut p);
        compile_with(Device::Cpu, &g, &[&y], p)
    };
    let all = with(|_| {});
    assert_eq!(ops(&all), ["add", "add", "constant", "input", "matmul"]);
    let no_fold = with(|p| p.constant_folding = false);
    assert_eq!(count(&no_fold, "exp"), 1);
    let no_cse = with(|p| p.cse = false);
    assert_eq!(count(&no_cse, "matmul"), 2);
    let no_simplify = with(|p| p.simplify = false);
    assert_eq!(count(&no_simplify, "mul"), 1);
    let no_dce = with(|p| p.dce = false);
    assert!(
        no_dce.steps().len() > all.steps().len(),
        "{:?}",
        ops(&no_dce)
    );
    let none = compile_with(Device::Cpu, &g, &[&y], PassOptions::none());
    assert_eq!(none.steps().len(), 9);
}

/// A two-layer network built carelessly (repeated sub-expressions, scale
/// factors of one, constants computed in the graph) gives the same
/// results with fewer steps.
#[test]
fn a_whole_model_matches_with_passes_off() {
    on_every_device(|d| {
        let g = Graph::new();
        let x = g.input("x", DType::F32, [8, 16]).expect("input");
        let w1 = g.input("w1", DType::F32, [16, 32]).expect("input");
        let w2 = g.input("w2", DType::F32, [32, 4]).expect("input");
        let scale = g
            .constant(arr1(&[2.0f32]))
            .sqrt()
            .and_then(|s| s.powf(2.0))
            .expect("scale");
        let layer = |x: &Tensor, w: &Tensor| x.matmul(w).and_then(|h| h.relu()).expect("layer");
        let h = (&layer(&x, &w1) + &layer(&x, &w1)) / &scale;
        let logits = (&h * 1.0).matmul(&w2).expect("logits");
        let probs = logits.softmax(-1).expect("softmax");
        let loss = probs
            .log()
            .and_then(|l| l.mean(&[], false))
            .map(|m| -&(-&(-&m)))
            .expect("loss");
        let feeds = [
            feed_f32("x", rand_f32(12, &[8, 16], -1.0, 1.0)),
            feed_f32("w1", rand_f32(13, &[16, 32], -0.3, 0.3)),
            feed_f32("w2", rand_f32(14, &[32, 4], -0.3, 0.3)),
        ];
        let (on, off) = on_and_off(d, &g, &[&probs, &loss], &feeds);
        assert!(
            ops(&on).len() + 8 <= ops(&off).len(),
            "{d}: {:?} with passes, {:?} without",
            ops(&on),
            ops(&off)
        );
        assert_eq!(count(&on, "matmul"), 2);
    });
}

/// A graph of `nodes` nodes, most of them offering some rewrite: one
/// long chain, with a requested output every few steps.
fn big_graph(nodes: usize) -> (Graph, Vec<Tensor>) {
    let g = Graph::new();
    let x = g.input("x", DType::F32, [4, 4]).expect("input");
    let one = g.constant(ArrayD::<f32>::ones(IxDyn(&[4, 4])));
    let mut outs = Vec::new();
    let mut t = x.clone();
    for i in 0.. {
        if g.node_count() >= nodes {
            break;
        }
        t = match i % 7 {
            0 => t.matmul(&x).expect("matmul"),
            1 => t.mul(&one).expect("mul"),
            2 => t
                .tanh()
                .and_then(|u| u.neg())
                .and_then(|u| u.neg())
                .expect("negs"),
            3 => t
                .reshape(&[16])
                .and_then(|u| u.reshape(&[4, 4]))
                .expect("reshapes"),
            4 => {
                // The same sum built twice.
                let a = t.sum(&[0], true).expect("sum");
                let b = t.sum(&[0], true).expect("sum");
                t.sub(&a).and_then(|u| u.add(&b)).expect("sums")
            }
            5 => t
                .transpose(0, 1)
                .and_then(|u| u.transpose(0, 1))
                .expect("transposes"),
            _ => {
                outs.push(t.clone());
                t.sin().expect("sin")
            }
        };
    }
    outs.push(t);
    (g, outs)
}

/// The passes' own time on a 10,000-node graph, measured on the lowered
/// steps; under 20 ms in a release build. Nothing in them recurses or
/// compares every step with every other.
#[test]
fn passes_on_ten_thousand_nodes_are_fast() {
    let (g, outs) = big_graph(10_000);
    let refs: Vec<&Tensor> = outs.iter().collect();
    let options = tensorgraph::options(Device::Cpu).expect("cpu");
    let mut plain = options.clone();
    plain.passes = PassOptions::none();
    let lowered = g.compile(&refs, &plain).expect("compile without passes");
    let ir = Ir {
        steps: lowered.steps().to_vec(),
        types: lowered.value_types().to_vec(),
        outputs: lowered.outputs().to_vec(),
    };
    let cpu = tensorgraph::cpu_backend();
    let mut best = Duration::MAX;
    let mut rewritten = None;
    for _ in 0..3 {
        let mut ir = ir.clone();
        let start = Instant::now();
        let caps = passes::OperandCaps::default();
        passes::pipeline(&mut ir, &PassOptions::default(), Some(&cpu), caps).expect("passes");
        best = best.min(start.elapsed());
        rewritten = Some(ir);
    }
    let rewritten = rewritten.expect("ran");
    // Each pass alone, in pipeline order, for the report.
    let mut each = ir.clone();
    let mut time = |name: &str, pass: &mut dyn FnMut(&mut Ir)| {
        let start = Instant::now();
        pass(&mut each);
        eprintln!(
            "  {name}: {:?} -> {} steps",
            start.elapsed(),
            each.steps.len()
        );
    };
    time("fold", &mut |ir| {
        passes::fold::fold_constants(ir, &cpu).expect("fold")
    });
    time("cse", &mut passes::cse::eliminate_common_subexpressions);
    time("simplify", &mut passes::simplify::simplify);
    time("dce", &mut passes::dce::eliminate_dead_code);
    let start = Instant::now();
    let plan = g.compile(&refs, &options).expect("compile");
    let compile = start.elapsed();
    eprintln!(
        "{} steps -> {}: passes {best:?}, whole compile {compile:?}",
        ir.steps.len(),
        rewritten.steps.len()
    );
    assert!(ir.steps.len() >= 10_000);
    assert!(rewritten.steps.len() * 2 < ir.steps.len(), "most steps go");
    assert_eq!(plan.steps().len(), rewritten.steps.len());
    let limit = if cfg!(debug_assertions) {
        Duration::from_millis(500)
    } else {
        Duration::from_millis(20)
    };
    assert!(
        best < limit,
        "passes took {best:?} on 10,000 nodes (limit {limit:?})"
    );
    let feeds = [feed_f32("x", rand_f32(15, &[4, 4], -0.5, 0.5))];
    let got = plan.run(&feeds).expect("run");
    let expected = lowered.run(&feeds).expect("run without passes");
    assert_same_values(&got, &expected, "10,000 nodes");
}

/// A million-node chain of rewritable steps: nothing recurses per node.
#[test]
fn passes_on_a_million_node_chain() {
    const N: usize = 1_000_000;
    let g = Graph::new();
    let x = g.input("x", DType::F32, [2]).expect("input");
    let mut t = x.clone();
    for _ in 0..N / 2 {
        t = t.neg().expect("neg");
    }
    let c = g.constant(arr1(&[1.0f32, 2.0]));
    let mut k = c.clone();
    for _ in 0..N / 2 {
        k = k.reshape(&[2]).expect("reshape");
    }
    let y = t.add(&k).expect("add");
    let plan = compile_with(Device::Cpu, &g, &[&y], rewrites());
    assert_eq!(ops(&plan), ["add", "constant", "input"]);
    let out = f32_of(
        plan.run(&[feed_f32("x", arr1(&[0.5f32, -4.0]).into_dyn())])
            .expect("run")
            .remove(0),
    );
    assert_eq!(out, arr1(&[1.5f32, -2.0]).into_dyn());
}
