//! `Plan::run_into`: outputs written into caller-provided slots, checked
//! against plain ndarray on every device, with the slots' storage reused,
//! bad slots rejected before anything runs, and failed runs leaving
//! well-typed slots behind.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ndarray::{ArrayD, Axis, Ix2};
use tensorgraph::{DType, Device, Error, Graph, TensorType, Value};

/// The address of a value's first element.
fn addr(v: &Value) -> usize {
    match v {
        Value::F32(a) => a.as_ptr() as usize,
        Value::I32(a) => a.as_ptr() as usize,
    }
}

/// A fused chain, a matmul, a row sum and one output requested twice,
/// over 300x257 (past a workgroup edge on both axes).
#[test]
fn run_into_matches_ndarray_and_refills_the_same_slots() {
    common::on_every_device(|device| {
        let (m, k) = (300, 257);
        let g = Graph::new();
        let x = g.input("x", DType::F32, [m, k]).expect("x");
        let w = g.input("w", DType::F32, [k, 33]).expect("w");
        let chain = ((&x * 1.5 + 0.5).relu().expect("relu") * &x - 0.25)
            .abs()
            .expect("abs")
            .sqrt()
            .expect("sqrt");
        let prod = x.matmul(&w).expect("matmul");
        let rows = chain.sum(&[1], false).expect("sum");
        let Some(plan) = common::compile_on(device, &g, &[&chain, &prod, &rows, &chain]) else {
            return;
        };
        let reference = |xv: &ArrayD<f32>, wv: &ArrayD<f32>| {
            let chain =
                (xv.mapv(|v| (v * 1.5 + 0.5).max(0.0)) * xv - 0.25).mapv(|v| v.abs().sqrt());
            let x2 = xv.view().into_dimensionality::<Ix2>().expect("2-D");
            let w2 = wv.view().into_dimensionality::<Ix2>().expect("2-D");
            let prod = x2.dot(&w2).into_dyn();
            let rows = chain.sum_axis(Axis(1));
            (chain, prod, rows)
        };
        let mut slots = plan
            .run(&[
                ("x", Value::from(common::rand_f32(1, &[m, k], -1.0, 1.0))),
                ("w", Value::from(common::rand_f32(2, &[k, 33], -1.0, 1.0))),
            ])
            .expect("first run");
        for seed in [3u64, 4] {
            let xv = common::rand_f32(seed, &[m, k], -2.0, 2.0);
            let wv = common::rand_f32(seed + 10, &[k, 33], -1.0, 1.0);
            plan.run_into(
                &[
                    ("x", Value::from(xv.clone())),
                    ("w", Value::from(wv.clone())),
                ],
                &mut slots,
            )
            .expect("run_into");
            let (chain, prod, rows) = reference(&xv, &wv);
            let got = |i: usize| common::f32_of(slots[i].clone());
            common::assert_close(&got(0), &chain, 1e-5, 1e-5, "chain");
            common::assert_close(&got(1), &prod, 1e-4, 1e-4, "matmul");
            common::assert_close(&got(2), &rows, 1e-3, 1e-4, "row sums");
            common::assert_close(&got(3), &chain, 1e-5, 1e-5, "chain, again");
        }
    });
}

/// A lone elementwise output lands in the very storage the caller handed
/// in: copied into it from the GPU, built in it on the CPU (the slot's
/// storage goes to the CPU pool, and the fused kernel draws from there).
/// The CPU backend is this test's own: the process-wide one's pool is
/// shared with the tests running beside it, whose freed buffers of the
/// same size class the kernel may draw instead (still correct, and still
/// moved into the slot without a copy, but not the slot's own storage).
#[test]
fn a_lone_output_is_written_into_the_callers_storage() {
    common::on_every_device(|device| {
        let n = 100_003;
        let g = Graph::new();
        let x = g.input("x", DType::F32, [n]).expect("x");
        let y = (&x * 2.0 + 1.0).tanh().expect("tanh");
        let mut options = common::options_on(device);
        options.backends[0] = Arc::new(tensorgraph_cpu::CpuBackend::new());
        let plan = g.compile(&[&y], &options).expect("compile");
        let xv = common::rand_f32(7, &[n], -3.0, 3.0);
        let mut slots = vec![Value::zeros(&TensorType::new(DType::F32, [n]))];
        let before = addr(&slots[0]);
        plan.run_into(&[("x", Value::from(xv.clone()))], &mut slots)
            .expect("run_into");
        assert_eq!(
            addr(&slots[0]),
            before,
            "output moved to new storage on {device}"
        );
        common::assert_close(
            &common::f32_of(slots[0].clone()),
            &xv.mapv(|v| (v * 2.0 + 1.0).tanh()),
            1e-5,
            1e-5,
            "tanh chain",
        );
    });
}

#[test]
fn slots_of_the_wrong_count_or_type_are_rejected_before_running() {
    let g = Graph::new();
    let x = g.input("x", DType::F32, [4, 5]).expect("x");
    let y = x.exp().expect("exp").named("activation");
    let plan = g
        .compile(&[&y], &tensorgraph::options(Device::Cpu).expect("cpu"))
        .expect("compile");
    let feeds = [(
        "x",
        Value::from(ArrayD::<f32>::zeros(ndarray::IxDyn(&[4, 5]))),
    )];

    let err = plan.run_into(&feeds, &mut []).expect_err("no slots");
    assert!(
        matches!(
            err,
            Error::OutputCount {
                expected: 1,
                found: 0
            }
        ),
        "{err}"
    );

    let mut wrong = vec![Value::zeros(&TensorType::new(DType::F32, [5, 4]))];
    let err = plan.run_into(&feeds, &mut wrong).expect_err("wrong shape");
    assert!(
        matches!(err, Error::OutputMismatch { index: 0, ref node, .. } if node == "activation"),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains("f32[4, 5]") && text.contains("f32[5, 4]"),
        "{text}"
    );
    assert_eq!(
        wrong[0].shape().dims(),
        &[5, 4],
        "a rejected slot is untouched"
    );

    let mut wrong = vec![Value::zeros(&TensorType::new(DType::I32, [4, 5]))];
    let err = plan.run_into(&feeds, &mut wrong).expect_err("wrong dtype");
    assert!(matches!(err, Error::OutputMismatch { .. }), "{err}");
}

#[test]
fn bad_feeds_fail_before_any_slot_gives_up_its_storage() {
    let g = Graph::new();
    let x = g.input("x", DType::F32, [1000]).expect("x");
    let y = (&x * 2.0).exp().expect("exp");
    let plan = g
        .compile(&[&y], &tensorgraph::options(Device::Cpu).expect("cpu"))
        .expect("compile");
    let xv = common::rand_f32(31, &[1000], -1.0, 1.0);
    let mut slots = plan.run(&[("x", Value::from(xv.clone()))]).expect("run");
    let (before, at) = (slots[0].clone(), addr(&slots[0]));
    let err = plan
        .run_into(&[("y", Value::from(xv.clone()))], &mut slots)
        .expect_err("unknown feed");
    assert!(matches!(err, Error::UnknownFeed { .. }), "{err}");
    let err = plan.run_into(&[], &mut slots).expect_err("missing feed");
    assert!(matches!(err, Error::MissingFeed { .. }), "{err}");
    assert_eq!(slots[0], before, "a rejected run changed the slot");
    assert_eq!(
        addr(&slots[0]),
        at,
        "a rejected run took the slot's storage"
    );
}

#[test]
fn a_failed_run_leaves_slots_of_the_outputs_types_and_the_next_run_fills_them() {
    let fail = Arc::new(AtomicBool::new(true));
    let g = Graph::new();
    let x = g.input("x", DType::F32, [64, 64]).expect("x");
    let a = (&x * 3.0).exp().expect("exp");
    let flag = fail.clone();
    let b = g
        .custom(
            "flaky",
            &[&x],
            vec![TensorType::new(DType::F32, [64, 64])],
            move |ins| {
                if flag.load(Ordering::SeqCst) {
                    return Err("not yet".into());
                }
                Ok(vec![ins[0].clone()])
            },
        )
        .expect("custom")
        .remove(0);
    let plan = g
        .compile(&[&a, &b], &tensorgraph::options(Device::Cpu).expect("cpu"))
        .expect("compile");
    let xv = common::rand_f32(9, &[64, 64], -1.0, 1.0);
    let feeds = [("x", Value::from(xv.clone()))];
    let ty = TensorType::new(DType::F32, [64, 64]);
    let mut slots = vec![Value::zeros(&ty), Value::zeros(&ty)];

    let err = plan
        .run_into(&feeds, &mut slots)
        .expect_err("custom op fails");
    assert!(err.to_string().contains("not yet"), "{err}");
    assert!(slots.iter().all(|s| s.ty() == ty), "slots lost their type");

    fail.store(false, Ordering::SeqCst);
    plan.run_into(&feeds, &mut slots).expect("second run");
    common::assert_close(
        &common::f32_of(slots[0].clone()),
        &xv.mapv(|v| (v * 3.0).exp()),
        1e-5,
        1e-6,
        "exp",
    );
    common::assert_close(&common::f32_of(slots[1].clone()), &xv, 0.0, 0.0, "custom");
}

#[test]
fn run_into_on_a_persisting_plan_fills_only_the_requested_outputs() {
    let g = Graph::new();
    let w = g.input("w", DType::F32, [16, 16]).expect("w");
    let x = g.input("x", DType::F32, [16]).expect("x");
    let prepared = w.tanh().expect("tanh").persist();
    let y = prepared.matmul(&x).expect("matvec");
    let plan = g
        .compile(&[&y], &tensorgraph::options(Device::Cpu).expect("cpu"))
        .expect("compile");
    assert_eq!(plan.outputs().len(), 1, "persisted values are not outputs");
    let wv = common::rand_f32(21, &[16, 16], -1.0, 1.0);
    let mut slots = vec![Value::zeros(&TensorType::new(DType::F32, [16]))];
    for seed in [22u64, 23] {
        let xv = common::rand_f32(seed, &[16], -1.0, 1.0);
        plan.run_into(
            &[
                ("w", Value::from(wv.clone())),
                ("x", Value::from(xv.clone())),
            ],
            &mut slots,
        )
        .expect("run_into");
        let w2 = wv
            .mapv(f32::tanh)
            .into_dimensionality::<Ix2>()
            .expect("2-D");
        let want = w2
            .dot(
                &xv.clone()
                    .into_dimensionality::<ndarray::Ix1>()
                    .expect("1-D"),
            )
            .into_dyn();
        common::assert_close(
            &common::f32_of(slots[0].clone()),
            &want,
            1e-5,
            1e-5,
            "matvec",
        );
    }
}
