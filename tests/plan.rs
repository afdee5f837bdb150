//! Plans as objects: planned memory equals measured memory, deep graphs
//! do not overflow the stack, one plan runs on several threads at once,
//! and runs leave no buffer behind.

mod common;

use std::sync::Arc;

use common::*;
use ndarray::ArrayD;
use tensorgraph::core::PassOptions;
use tensorgraph::{Backend, CompileOptions, DType, Device, Graph, Plan, Tensor, Value};

// Plans are shared across threads by reference (`Send + Sync`).
const _: fn() = || {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Plan>();
    send_sync::<Graph>();
    send_sync::<Tensor>();
};

/// A CPU backend of this test's own, so no other test's runs show in its
/// `live_buffers()`.
fn private_cpu() -> (Arc<dyn Backend>, CompileOptions) {
    let backend: Arc<dyn Backend> = Arc::new(tensorgraph_cpu::CpuBackend::new());
    let options = CompileOptions::new(Device::Cpu, vec![backend.clone()]);
    (backend, options)
}

fn feed<'a>(name: &'a str, a: &ArrayD<f32>) -> (&'a str, Value) {
    (name, Value::F32(a.clone()))
}

/// An MLP-ish graph of ~20 nodes: two layers, softmax, a scalar loss.
struct Mlp {
    g: Graph,
    probs: Tensor,
    loss: Tensor,
}

fn mlp() -> Mlp {
    let g = Graph::new();
    let x = g.input("x", DType::F32, [16, 64]).expect("input");
    let w1 = g.input("w1", DType::F32, [64, 128]).expect("input");
    let b1 = g.input("b1", DType::F32, [128]).expect("input");
    let w2 = g.input("w2", DType::F32, [128, 10]).expect("input");
    let b2 = g.input("b2", DType::F32, [10]).expect("input");
    let h = x
        .matmul(&w1)
        .and_then(|h| h.add(&b1))
        .and_then(|h| h.relu())
        .expect("layer 1");
    let h = (&h * 0.5).tanh().expect("tanh");
    let logits = h.matmul(&w2).and_then(|l| l.add(&b2)).expect("layer 2");
    let probs = logits.softmax(-1).expect("softmax");
    let loss = probs
        .log()
        .and_then(|l| l.mean(&[], false))
        .and_then(|m| m.neg())
        .expect("loss");
    Mlp { g, probs, loss }
}

fn mlp_feeds(seed: u64) -> Vec<(&'static str, Value)> {
    vec![
        ("x", Value::F32(rand_f32(seed, &[16, 64], -1.0, 1.0))),
        ("w1", Value::F32(rand_f32(seed + 1, &[64, 128], -0.2, 0.2))),
        ("b1", Value::F32(rand_f32(seed + 2, &[128], -0.1, 0.1))),
        ("w2", Value::F32(rand_f32(seed + 3, &[128, 10], -0.2, 0.2))),
        ("b2", Value::F32(rand_f32(seed + 4, &[10], -0.1, 0.1))),
    ]
}

/// Runs `plan` and asserts the measured peak and allocation count equal
/// the planned ones on every backend.
fn assert_memory_as_planned(device: Device, plan: &Plan, feeds: &[(&str, Value)], what: &str) {
    let (_, stats) = plan
        .run_with_stats(feeds)
        .unwrap_or_else(|e| panic!("{device}: {what}: {e}"));
    let planned = plan.planned_memory();
    assert_eq!(
        stats.peak_bytes.len(),
        planned.len(),
        "{device}: {what}: one figure per backend"
    );
    for (i, m) in planned.iter().enumerate() {
        assert_eq!(
            stats.peak_bytes[i], m.peak_bytes,
            "{device}: {what}: peak bytes on backend {i}"
        );
        assert_eq!(
            stats.allocations[i], m.allocations,
            "{device}: {what}: allocations on backend {i}"
        );
    }
    assert_eq!(
        plan.planned_peak_bytes(),
        stats.peak_bytes.iter().sum::<usize>(),
        "{device}: {what}"
    );
}

#[test]
fn mlp_memory_is_as_planned_and_below_the_total() {
    on_every_device(|d| {
        let m = mlp();
        assert!(
            m.g.node_count() >= 15,
            "graph has {} nodes",
            m.g.node_count()
        );
        // Node by node (15+ steps) and with every pass (fused, in place).
        let Some(unfused) = compile_unfused(d, &m.g, &[&m.probs, &m.loss]) else {
            return;
        };
        assert!(
            unfused.steps().len() >= 15,
            "{} steps",
            unfused.steps().len()
        );
        let Some(fused) = compile_on(d, &m.g, &[&m.probs, &m.loss]) else {
            return;
        };
        let feeds = mlp_feeds(1);
        for (plan, what) in [(&unfused, "mlp node by node"), (&fused, "mlp with passes")] {
            assert_memory_as_planned(d, plan, &feeds, what);
            // Twice: a second run measures the same.
            assert_memory_as_planned(d, plan, &feeds, what);
            let total: usize = plan.planned_memory().iter().map(|m| m.total_bytes).sum();
            assert!(
                plan.planned_peak_bytes() < total,
                "{d}: {what}: peak {} should be below the sum of all values {total}",
                plan.planned_peak_bytes()
            );
        }
    });
}

/// Compiles node by node (every pass off), as liveness by hand assumes.
fn compile_unfused(d: Device, g: &Graph, outputs: &[&Tensor]) -> Option<Plan> {
    let mut options = tensorgraph::options(d).expect("device");
    options.passes = PassOptions::none();
    Some(g.compile(outputs, &options).expect("compile"))
}

/// Liveness worked out by hand: `x -> exp -> exp -> exp` on 1000 floats
/// holds at most two buffers at once and allocates two (the feed's and the
/// first exp's, which the later two write over in place); a diamond
/// `exp(x) * sin(x)` three. Compiled node by node (fusion would make each
/// one kernel).
#[test]
fn chain_and_diamond_peaks_by_hand() {
    const B: usize = 1000 * 4;
    on_every_device(|d| {
        let g = Graph::new();
        let x = g.input("x", DType::F32, [1000]).expect("input");
        let y = x
            .exp()
            .and_then(|t| t.exp())
            .and_then(|t| t.exp())
            .expect("chain");
        let Some(plan) = compile_unfused(d, &g, &[&y]) else {
            return;
        };
        let a = rand_f32(5, &[1000], -1.0, 0.0);
        assert_memory_as_planned(d, &plan, &[feed("x", &a)], "chain");
        assert_eq!(plan.planned_peak_bytes(), 2 * B, "{d}: chain peak");
        let total: usize = plan.planned_memory().iter().map(|m| m.total_bytes).sum();
        let allocations: usize = plan.planned_memory().iter().map(|m| m.allocations).sum();
        assert_eq!(total, 4 * B, "{d}: chain total");
        assert_eq!(allocations, 2, "{d}: chain allocations");

        let g = Graph::new();
        let x = g.input("x", DType::F32, [1000]).expect("input");
        let e = x.exp().expect("exp");
        let s = x.sin().expect("sin");
        let y = e.mul(&s).expect("mul");
        let Some(plan) = compile_unfused(d, &g, &[&y]) else {
            return;
        };
        assert_memory_as_planned(d, &plan, &[feed("x", &a)], "diamond");
        assert_eq!(plan.planned_peak_bytes(), 3 * B, "{d}: diamond peak");
        let total: usize = plan.planned_memory().iter().map(|m| m.total_bytes).sum();
        assert!(
            plan.planned_peak_bytes() < total,
            "{d}: diamond peak below total {total}"
        );
        let out = plan.run(&[feed("x", &a)]).expect("run");
        let expected = a.mapv(|v| (f64::from(v).exp() * f64::from(v).sin()) as f32);
        assert_close(
            &f32_of(out.into_iter().next().expect("one")),
            &expected,
            1e-5,
            1e-6,
            "diamond",
        );
    });
}

/// A chain of a million tiny nodes builds, compiles and runs on the
/// default test-thread stack (nothing recurses per node).
#[test]
fn million_node_chain() {
    const N: usize = 1_000_000;
    let g = Graph::new();
    let x = g.input("x", DType::F32, [1]).expect("input");
    let one = g.constant(ndarray::arr1(&[1.0f32]));
    let mut t = x.clone();
    for _ in 0..N {
        t = t.add(&one).expect("add");
    }
    assert_eq!(g.node_count(), N + 2);
    let (backend, mut options) = private_cpu();
    // With the passes on, fusion folds the chain into fused kernels.
    let fused = g.compile(&[&t], &options).expect("compile with passes");
    assert!(fused.steps().len() < 1000, "{} steps", fused.steps().len());
    let out = fused
        .run(&[("x", Value::F32(ndarray::arr1(&[0.5f32]).into_dyn()))])
        .expect("run fused");
    assert_eq!(
        f32_of(out.into_iter().next().expect("one")).as_slice(),
        Some(&[1_000_000.5f32][..])
    );
    drop(fused);
    // Node by node: a million steps.
    options.passes = PassOptions::none();
    let plan = g.compile(&[&t], &options).expect("compile");
    assert_eq!(plan.steps().len(), N + 2);
    let out = plan
        .run(&[("x", Value::F32(ndarray::arr1(&[0.5f32]).into_dyn()))])
        .expect("run");
    let got = f32_of(out.into_iter().next().expect("one output"));
    // Integers below 2^24 plus one half are exact in f32.
    assert_eq!(got.as_slice(), Some(&[1_000_000.5f32][..]));
    // Three [1] buffers at most: x (or the last sum), the constant, the new sum.
    assert_eq!(plan.planned_peak_bytes(), 12);
    drop(plan);
    assert_eq!(backend.live_buffers(), 0);
}

/// One plan, two threads, different feeds, at the same time.
#[test]
fn two_threads_share_one_plan() {
    on_every_device(|d| {
        let g = Graph::new();
        let x = g.input("x", DType::F32, [33, 65]).expect("input");
        let w = g.input("w", DType::F32, [65, 17]).expect("input");
        let y = x.matmul(&w).and_then(|y| y.sigmoid()).expect("builds");
        let Some(plan) = compile_on(d, &g, &[&y]) else {
            return;
        };
        std::thread::scope(|s| {
            for thread in 0..2u64 {
                let plan = &plan;
                s.spawn(move || {
                    for round in 0..20u64 {
                        let seed = 1000 * thread + 2 * round;
                        let a = rand_f32(seed, &[33, 65], -1.0, 1.0);
                        let b = rand_f32(seed + 1, &[65, 17], -1.0, 1.0);
                        let out = plan
                            .run(&[feed("x", &a), feed("w", &b)])
                            .unwrap_or_else(|e| panic!("{d}: thread {thread} round {round}: {e}"));
                        let got = f32_of(out.into_iter().next().expect("one output"));
                        let expected = a
                            .clone()
                            .into_dimensionality::<ndarray::Ix2>()
                            .expect("2-D")
                            .dot(
                                &b.clone()
                                    .into_dimensionality::<ndarray::Ix2>()
                                    .expect("2-D"),
                            )
                            .mapv(|v| 1.0 / (1.0 + (-v).exp()))
                            .into_dyn();
                        let what = format!("{d}: thread {thread} round {round}");
                        assert_close(&got, &expected, 1e-4, 1e-5, &what);
                    }
                });
            }
        });
    });
}

/// No buffer outlives a run: after plain runs, runs with several and
/// repeated outputs, unrequested split parts, inputs as outputs, failed
/// runs, and concurrent runs.
#[test]
fn runs_leave_no_live_buffers() {
    let (backend, options) = private_cpu();
    assert_eq!(backend.live_buffers(), 0, "fresh backend");

    let m = mlp();
    let plan =
        m.g.compile(&[&m.probs, &m.loss], &options)
            .expect("compile");
    assert_eq!(backend.live_buffers(), 0, "after compile");
    for seed in 0..3 {
        plan.run(&mlp_feeds(seed)).expect("run");
        assert_eq!(backend.live_buffers(), 0, "after mlp run {seed}");
    }
    let _ = plan.run_with_stats(&mlp_feeds(9)).expect("run");
    assert_eq!(backend.live_buffers(), 0, "after run_with_stats");
    assert!(plan.run(&[]).is_err());
    assert_eq!(backend.live_buffers(), 0, "after a failed run");

    let g = Graph::new();
    let x = g.input("x", DType::F32, [4, 6]).expect("input");
    let parts = x.split(1, tensorgraph::SplitSpec::Parts(3)).expect("split");
    let r = parts[2].exp().expect("exp");
    let c = g.constant(1.0f32);
    let plan = g.compile(&[&r, &x, &r, &c], &options).expect("compile");
    let a = rand_f32(3, &[4, 6], -1.0, 1.0);
    plan.run(&[feed("x", &a)]).expect("run");
    assert_eq!(
        backend.live_buffers(),
        0,
        "after split/repeated/input outputs"
    );

    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                for _ in 0..10 {
                    plan.run(&[feed("x", &a)]).expect("run");
                }
            });
        }
    });
    assert_eq!(backend.live_buffers(), 0, "after concurrent runs");
    drop(plan);
    assert_eq!(backend.live_buffers(), 0, "after dropping the plan");
}
