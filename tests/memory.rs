//! The memory planner: on an MLP, a residual chain and a chain of
//! diamonds, the planned peak bytes and allocation count per device equal
//! what a run measures, the peak is at most half of keeping every value,
//! and results match plain ndarray.

mod common;

use common::*;
use ndarray::{ArrayD, Ix2};
use tensorgraph::{DType, Device, Graph, Plan, Tensor, Value};

/// Runs `plan`, checks measured memory against the plan, returns outputs.
#[track_caller]
fn run_checked(d: Device, plan: &Plan, feeds: &[(&str, Value)], what: &str) -> Vec<Value> {
    let (out, stats) = plan.run_with_stats(feeds).expect("run");
    let peaks: Vec<usize> = plan.planned_memory().iter().map(|m| m.peak_bytes).collect();
    let allocations: Vec<usize> = plan
        .planned_memory()
        .iter()
        .map(|m| m.allocations)
        .collect();
    assert_eq!(
        stats.peak_bytes, peaks,
        "{d} {what}: measured peak bytes per device"
    );
    assert_eq!(
        stats.allocations, allocations,
        "{d} {what}: measured allocations per device"
    );
    let total: usize = plan.planned_memory().iter().map(|m| m.total_bytes).sum();
    let peak: usize = peaks.iter().sum();
    assert!(
        2 * peak <= total,
        "{d} {what}: peak {peak} B is more than half of keeping every value ({total} B)"
    );
    out
}

fn dot(a: &ArrayD<f32>, b: &ArrayD<f32>) -> ArrayD<f32> {
    let a = a.view().into_dimensionality::<Ix2>().expect("2-D");
    let b = b.view().into_dimensionality::<Ix2>().expect("2-D");
    a.dot(&b).into_dyn()
}

#[test]
fn mlp() {
    on_every_device(|d| {
        let (n, k) = (256, 64);
        let g = Graph::new();
        let x = g.input("x", DType::F32, [n, k]).expect("x");
        let ws: Vec<ArrayD<f32>> = (0..3)
            .map(|i| rand_f32(20 + i, &[k, k], -0.2, 0.2))
            .collect();
        let bs: Vec<ArrayD<f32>> = (0..3).map(|i| rand_f32(30 + i, &[k], -0.1, 0.1)).collect();
        let mut h: Tensor = x.clone();
        for (w, b) in ws.iter().zip(&bs) {
            h = h
                .matmul(&g.constant(w.clone()))
                .and_then(|t| t.add(&g.constant(b.clone())))
                .and_then(|t| t.relu())
                .expect("layer");
        }
        let y = h.softmax(-1).expect("softmax");
        let Some(plan) = compile_on(d, &g, &[&y]) else {
            return;
        };
        let xv = rand_f32(7, &[n, k], -1.0, 1.0);
        let out = run_checked(d, &plan, &[("x", Value::from(xv.clone()))], "mlp");
        let mut want = xv;
        for (w, b) in ws.iter().zip(&bs) {
            want = (dot(&want, w) + b).mapv(|v| v.max(0.0));
        }
        let m = want.map_axis(ndarray::Axis(1), |r| r.fold(f32::MIN, |a, &b| a.max(b)));
        let e = (&want - &m.insert_axis(ndarray::Axis(1))).mapv(f32::exp);
        let s = e.sum_axis(ndarray::Axis(1)).insert_axis(ndarray::Axis(1));
        assert_close(&f32_of(out[0].clone()), &(&e / &s), 1e-4, 1e-6, "mlp");
    });
}

#[test]
fn residual_chain() {
    on_every_device(|d| {
        let (n, k, blocks) = (512, 32, 8);
        let g = Graph::new();
        let x = g.input("x", DType::F32, [n, k]).expect("x");
        let w = rand_f32(40, &[k, k], -0.1, 0.1);
        let wt = g.constant(w.clone());
        let mut h = x.clone();
        for _ in 0..blocks {
            let r = h.matmul(&wt).and_then(|t| t.tanh()).expect("block");
            h = h.add(&r).expect("residual");
        }
        let Some(plan) = compile_on(d, &g, &[&h]) else {
            return;
        };
        let xv = rand_f32(8, &[n, k], -1.0, 1.0);
        let out = run_checked(d, &plan, &[("x", Value::from(xv.clone()))], "residual");
        let mut want = xv;
        for _ in 0..blocks {
            want = &want + &dot(&want, &w).mapv(f32::tanh);
        }
        assert_close(&f32_of(out[0].clone()), &want, 1e-4, 1e-5, "residual");
    });
}

#[test]
fn chain_of_diamonds() {
    on_every_device(|d| {
        let n = 100_000;
        let g = Graph::new();
        let x = g.input("x", DType::F32, [n]).expect("x");
        let mut t = x.clone();
        for _ in 0..6 {
            // Two branches that meet again; a reduction keeps fusion from
            // swallowing the whole chain.
            let a = t.exp().expect("exp");
            let b = t.sin().expect("sin");
            let m = t.mean(&[], true).expect("mean");
            t = a
                .mul(&b)
                .and_then(|p| p.sub(&m))
                .and_then(|p| p.tanh())
                .expect("diamond");
        }
        let Some(plan) = compile_on(d, &g, &[&t]) else {
            return;
        };
        let xv = rand_f32(9, &[n], -1.0, 1.0);
        let out = run_checked(d, &plan, &[("x", Value::from(xv.clone()))], "diamonds");
        let mut want = xv.mapv(f64::from);
        for _ in 0..6 {
            let m = want.mean().expect("mean");
            want = want.mapv(|v| (v.exp() * v.sin() - m).tanh());
        }
        assert_close(
            &f32_of(out[0].clone()),
            &want.mapv(|v| v as f32),
            1e-4,
            1e-5,
            "diamonds",
        );
    });
}

/// Node by node (every pass off), each lone unary, binary and cast step
/// whose operand of the result's exact type dies there writes over that
/// operand: operand 0 or 1, with the other operand broadcast or a
/// literal, in f32 and i32, over a shape that crosses workgroup and
/// vector edges. Feeds, smaller broadcast operands, dtype changes and
/// values read twice are never donors. Results match ndarray; measured memory matches the plan.
#[test]
fn lone_elementwise_ops_run_in_place() {
    on_every_device(|d| {
        let (m, n) = (37, 129);
        let g = Graph::new();
        let x = g.input("x", DType::F32, [m, n]).expect("x");
        let b = g.input("b", DType::F32, [n]).expect("b");
        let i = g.input("i", DType::I32, [m, n]).expect("i");
        let e = x.exp().expect("exp"); // x is a feed: a new buffer
        let eb = b.exp().expect("exp b"); // [n]: dies at the add, but smaller
        let s = eb.add(&e).expect("add").named("eb_plus_e"); // over e (operand 1)
        let t = b.sub(&s).expect("sub").named("b_minus_s"); // over s (operand 1)
        let u = &t * 0.5; // over t, with a literal
        let v = u.neg().expect("neg"); // over u
        let w = v.add(&v).expect("double").named("v_plus_v"); // v read twice: a new buffer
        let f = w.tanh().expect("tanh"); // over w
        let c = x.cast(DType::I32).expect("cast"); // a feed, and a new dtype
        let k = g.constant(ndarray::arr0(3).into_dyn());
        let p = c.mul(&k).expect("mul"); // over c
        let q = p.sub(&i).and_then(|q| q.neg()).expect("sub, neg"); // both in place
        let mut options = tensorgraph::options(d).expect("device");
        options.passes = tensorgraph::PassOptions::none();
        let plan = g.compile(&[&f, &q], &options).expect("compile");
        let in_place: Vec<(&str, usize)> = plan
            .steps()
            .iter()
            .filter_map(|s| s.in_place.map(|k| (s.kernel.op.name(), k)))
            .collect();
        let mut names: Vec<&str> = in_place.iter().map(|&(n, _)| n).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            ["add", "mul", "mul", "neg", "neg", "sub", "sub", "tanh"],
            "{d}: steps in place: {in_place:?}"
        );
        let donor_of = |name: &str| {
            let step = plan.steps().iter().find(|s| s.name == name);
            step.unwrap_or_else(|| panic!("{d}: no step {name}"))
                .in_place
        };
        assert_eq!(donor_of("eb_plus_e"), Some(1), "{d}: exp(b) + e over e");
        assert_eq!(donor_of("b_minus_s"), Some(1), "{d}: b - s over s");
        assert_eq!(donor_of("v_plus_v"), None, "{d}: v + v reads v twice");
        for step in plan.steps() {
            if matches!(step.kernel.op.name(), "exp" | "cast") {
                assert_eq!(step.in_place, None, "{d}: {} in place", step.name);
            }
        }

        let (xv, bv) = (
            rand_f32(50, &[m, n], -2.0, 2.0),
            rand_f32(51, &[n], -1.0, 1.0),
        );
        let iv = rand_i32(52, &[m, n], -100, 100);
        let feeds = [
            ("x", Value::from(xv.clone())),
            ("b", Value::from(bv.clone())),
            ("i", Value::from(iv.clone())),
        ];
        let (out, stats) = plan.run_with_stats(&feeds).expect("run");
        let planned = plan.planned_memory();
        let peaks: Vec<usize> = planned.iter().map(|p| p.peak_bytes).collect();
        let allocations: Vec<usize> = planned.iter().map(|p| p.allocations).collect();
        assert_eq!(stats.peak_bytes, peaks, "{d}: measured peak bytes");
        assert_eq!(stats.allocations, allocations, "{d}: measured allocations");

        let uv = (&bv - &(xv.mapv(f32::exp) + &bv.mapv(f32::exp))) * 0.5;
        let fv = uv.mapv(|a| (-a + -a).tanh());
        assert_close(&f32_of(out[0].clone()), &fv, 1e-5, 1e-6, "f32 chain");
        // f32 -> i32 truncates toward zero (|x| <= 2: no saturation).
        let qv = ndarray::Zip::from(&xv)
            .and(&iv)
            .map_collect(|&a, &i| -(a as i32 * 3 - i));
        assert_eq_i32(&i32_of(out[1].clone()), &qv, "i32 chain");
    });
}

/// Across two devices at once: branches pinned to the GPU and to the CPU
/// run on their own lanes, at the same time, with transfers between them.
/// Each device's measured peak and allocation count still equal the plan's
/// (the planner walks one order; each device's own steps and the
/// transfers into it keep that order on its lane), run after run, and
/// the results match ndarray.
#[test]
fn two_devices_at_once_use_memory_as_planned() {
    if !devices().contains(&Device::Gpu) {
        return;
    }
    let (n, k) = (300, 64);
    let g = Graph::new();
    let x = g.input("x", DType::F32, [n, k]).expect("x");
    let w = g.input("w", DType::F32, [k, k]).expect("w");
    // GPU: a matmul chain; CPU: elementwise work on x; joined on the CPU.
    let mut h = x.clone().on(Device::Gpu);
    for _ in 0..3 {
        h = h
            .matmul(&w)
            .and_then(|t| t.tanh())
            .expect("gpu layer")
            .on(Device::Gpu);
    }
    let c = x
        .sin()
        .and_then(|t| t.mul(&x))
        .and_then(|t| t.exp())
        .expect("cpu branch")
        .on(Device::Cpu);
    let y = h
        .add(&c)
        .and_then(|t| t.sum(&[1], false))
        .expect("join")
        .on(Device::Cpu);
    let mut options = tensorgraph::options(Device::Auto).expect("options");
    options.passes = tensorgraph::PassOptions::none();
    let plan = g.compile(&[&y], &options).expect("compile");
    let on_gpu = plan.steps().iter().filter(|s| s.device == 1).count();
    assert!(on_gpu >= 6, "{on_gpu} steps on the GPU");
    let (xv, wv) = (
        rand_f32(60, &[n, k], -1.0, 1.0),
        rand_f32(61, &[k, k], -0.2, 0.2),
    );
    let feeds = [
        ("x", Value::from(xv.clone())),
        ("w", Value::from(wv.clone())),
    ];
    let mut hv = xv.clone();
    for _ in 0..3 {
        hv = dot(&hv, &wv).mapv(f32::tanh);
    }
    let cv = xv.mapv(|v| (v.sin() * v).exp());
    let want = (&hv + &cv).sum_axis(ndarray::Axis(1));
    for run in 0..4 {
        let (out, stats) = plan.run_with_stats(&feeds).expect("run");
        let planned = plan.planned_memory();
        let peaks: Vec<usize> = planned.iter().map(|m| m.peak_bytes).collect();
        let allocations: Vec<usize> = planned.iter().map(|m| m.allocations).collect();
        assert_eq!(
            stats.peak_bytes, peaks,
            "run {run}: measured peak bytes per device"
        );
        assert_eq!(
            stats.allocations, allocations,
            "run {run}: allocations per device"
        );
        assert_close(&f32_of(out[0].clone()), &want, 1e-4, 1e-4, "two devices");
    }
}
