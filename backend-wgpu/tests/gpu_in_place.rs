//! Fused steps run in place on the GPU: a result that takes over the
//! buffer of an operand dying at it. Planned through the graph compiler;
//! values against ndarray and against the same graph with every pass and
//! in-place writing off,
//! measured memory against planned memory, no buffer left behind.

mod common;

use std::sync::Arc;

use common::*;
use ndarray::{ArrayD, Axis, Ix2};
use tensorgraph_core::{
    Backend, CompileOptions, DType, Device, Graph, Op, PassOptions, Plan, Tensor, Value,
};
use tensorgraph_wgpu::WgpuBackend;

/// Compiles with the default passes, or with every pass and in-place
/// writing off (the plain reference).
fn compile_with(gpu: &Arc<WgpuBackend>, outputs: &[&Tensor], passes: bool) -> Plan {
    let mut options = CompileOptions::new(Device::Gpu, vec![gpu.clone() as Arc<dyn Backend>]);
    if passes {
        // Epilogues would fold these fused tails into their matmuls; the
        // tests are about a fused step writing into a dying buffer.
        options.passes.epilogues = false;
    } else {
        options.passes = PassOptions::none();
        options.in_place = false;
    }
    let g = outputs[0].graph();
    g.compile(outputs, &options).expect("compiles for the GPU")
}

/// `x @ w` on the host.
fn matmul(x: &ArrayD<f32>, w: &ArrayD<f32>) -> ArrayD<f32> {
    let x = x.view().into_dimensionality::<Ix2>().expect("2d");
    let w = w.view().into_dimensionality::<Ix2>().expect("2d");
    x.dot(&w).into_dyn()
}

/// The steps planned in place, as `(op, donor operand)`.
fn in_place_steps(plan: &Plan) -> Vec<(&'static str, usize)> {
    plan.steps()
        .iter()
        .filter_map(|s| s.in_place.map(|k| (s.kernel.op.name(), k)))
        .collect()
}

/// Builds `relu(x @ w * 2 + 1)` and, with a bias, `tanh(x @ w + b) * 0.5`
/// (a broadcast operand: the strided form of the fused kernel).
fn graph_of(m: usize, k: usize, n: usize, bias: bool) -> (Graph, Tensor) {
    let g = graph();
    let x = g.input("x", DType::F32, [m, k]).expect("x");
    let w = g.input("w", DType::F32, [k, n]).expect("w");
    let y = x.matmul(&w).expect("matmul");
    let z = if bias {
        let b = g.input("b", DType::F32, [n]).expect("b");
        (y.add(&b).expect("add").tanh().expect("tanh") * 0.5).named("z")
    } else {
        ((&y * 2.0 + 1.0).relu().expect("relu")).named("z")
    };
    (g, z)
}

fn feeds(m: usize, k: usize, n: usize, seed: u64) -> Vec<(&'static str, Value)> {
    vec![
        ("x", array(&[m, k], seed).into()),
        ("w", array(&[k, n], seed + 1).into()),
        ("b", array(&[n], seed + 2).into()),
    ]
}

fn reference(feeds: &[(&str, Value)], bias: bool) -> ArrayD<f32> {
    let get = |name: &str| {
        feeds
            .iter()
            .find(|f| f.0 == name)
            .and_then(|f| f.1.as_f32())
            .expect("fed")
            .clone()
    };
    let y = matmul(&get("x"), &get("w"));
    if bias {
        (y + get("b")).mapv(|v| v.tanh() * 0.5)
    } else {
        y.mapv(|v| (v * 2.0 + 1.0).max(0.0))
    }
}

#[test]
fn fused_steps_overwrite_the_dying_matmul_result() {
    let Some(gpu) = new_backend() else { return };
    for bias in [false, true] {
        for (m, k, n) in [
            (1, 3, 1),
            (3, 5, 7),
            (65, 17, 33),
            (64, 32, 64),
            (783, 8, 5),
        ] {
            let what = format!("{m}x{k}x{n} bias={bias}");
            let (_g, z) = graph_of(m, k, n, bias);
            let plan = compile_with(&gpu, &[&z], true);
            let plain = compile_with(&gpu, &[&z], false);
            assert_eq!(
                in_place_steps(&plan),
                [("fused", 0)],
                "{what}: the fused step takes the matmul's buffer"
            );
            assert!(
                in_place_steps(&plain).is_empty(),
                "{what}: nothing in place"
            );
            let planned = plan.planned_memory()[0];
            let unfused = plain.planned_memory()[0];
            assert!(
                planned.allocations < unfused.allocations,
                "{what}: {planned:?} vs {unfused:?}"
            );
            // Repeated runs, new values each time, buffers recycled.
            for seed in [1, 10, 100] {
                let feeds = feeds(m, k, n, seed);
                let feeds = if bias { &feeds[..] } else { &feeds[..2] };
                let want = reference(feeds, bias);
                let got = common::run_as_planned(&plan, feeds, &what);
                assert_close(&got[0], &want, 1e-4, &what);
                let off = common::run_as_planned(&plain, feeds, &what);
                let off = off[0].as_f32().expect("f32");
                assert_close(&got[0], off, 1e-5, &format!("{what}: against passes off"));
            }
            drop(plan);
            drop(plain);
            assert_eq!(gpu.live_buffers(), 0, "{what}: buffers left");
        }
    }
}

/// A requested value is never overwritten: when the matmul result is an
/// output too, the fused step gets a buffer of its own.
#[test]
fn a_requested_operand_is_not_overwritten() {
    let Some(gpu) = new_backend() else { return };
    let g = graph();
    let x = g.input("x", DType::F32, [65usize, 9]).expect("x");
    let w = g.input("w", DType::F32, [9usize, 33]).expect("w");
    let y = x.matmul(&w).expect("matmul");
    let z = (&y * 2.0 + 1.0).relu().expect("relu");
    let plan = compile_with(&gpu, &[&z, &y], true);
    assert!(
        plan.steps()
            .iter()
            .any(|s| matches!(s.kernel.op, Op::Fused(_)))
    );
    assert!(in_place_steps(&plan).is_empty(), "y is requested");
    let feeds = feeds(65, 9, 33, 7);
    let want_y = matmul(
        feeds[0].1.as_f32().expect("x"),
        feeds[1].1.as_f32().expect("w"),
    );
    let got = common::run_as_planned(&plan, &feeds[..2], "y requested");
    assert_close(&got[1], &want_y, 1e-4, "y untouched");
    assert_close(&got[0], &reference(&feeds[..2], false), 1e-4, "z");
    drop(plan);
    assert_eq!(gpu.live_buffers(), 0);
}

/// Two fused steps in a chain, the second reading the first's result
/// (which dies there) and a broadcast row sum: each runs in place, and
/// memory is as planned on every run.
#[test]
fn chained_fused_steps_each_run_in_place() {
    let Some(gpu) = new_backend() else { return };
    let (m, k, n) = (65, 17, 33);
    let g = graph();
    let x = g.input("x", DType::F32, [m, k]).expect("x");
    let w = g.input("w", DType::F32, [k, n]).expect("w");
    let h = (x.matmul(&w).expect("matmul") * 3.0).exp().expect("exp");
    // The sum splits the elementwise chain in two: exp(3 * x @ w), then
    // relu(h - mean(h)) with the mean broadcast along rows.
    let s = h.sum(&[1], true).expect("sum");
    let z = (&h - &(s / n as f32)).relu().expect("relu");
    let plan = compile_with(&gpu, &[&z], true);
    let fused = in_place_steps(&plan);
    assert!(fused.len() >= 2, "{fused:?}");
    let feeds = feeds(m, k, n, 3);
    let hv = matmul(
        feeds[0].1.as_f32().expect("x"),
        feeds[1].1.as_f32().expect("w"),
    )
    .mapv(|v| (v * 3.0).exp());
    let mean = hv.sum_axis(Axis(1)).insert_axis(Axis(1)) / n as f32;
    let want = (&hv - &mean).mapv(|v| v.max(0.0));
    for _ in 0..3 {
        let got = common::run_as_planned(&plan, &feeds[..2], "chain");
        assert_close(&got[0], &want, 1e-4, "chain");
    }
    drop(plan);
    assert_eq!(gpu.live_buffers(), 0);
}
