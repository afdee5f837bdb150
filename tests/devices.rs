//! One graph on two devices: pins, transfers, overlap of a CPU branch and
//! a GPU branch, custom ops (failing ones too) and automatic placement.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ndarray::{Array2, ArrayD, Ix2};
use tensorgraph::{
    Backend, CompileOptions, DType, Device, Error, EventKind, Graph, Op, TensorType, Value,
};

fn gpu_present() -> bool {
    common::devices().contains(&Device::Gpu)
}

fn mat(v: &Value) -> Array2<f32> {
    v.as_f32()
        .expect("f32")
        .clone()
        .into_dimensionality::<Ix2>()
        .expect("2-D")
}

#[test]
fn pinned_branches_run_where_pinned_with_one_transfer_per_value_and_device() {
    if !gpu_present() {
        return;
    }
    let g = Graph::new();
    let x = g.input("x", DType::F32, [65, 33]).expect("x");
    // CPU: h = relu(x); GPU: two consumers of h, then back to the CPU.
    let h = x.relu().expect("relu").on(Device::Cpu);
    let (a, b) = g.on_device(Device::Gpu, |_| {
        (h.exp().expect("exp"), h.mul(&h).expect("mul"))
    });
    let y = a.add(&b).expect("add").on(Device::Cpu);
    let plan = g
        .compile(&[&y], &tensorgraph::options(Device::Cpu).expect("options"))
        .expect("compile");
    let device_of = |name: &str| {
        plan.steps()
            .iter()
            .find(|s| s.kernel.op.name() == name)
            .map(|s| plan.step_device(s))
    };
    assert_eq!(device_of("relu"), Some(Device::Cpu));
    assert_eq!(device_of("exp"), Some(Device::Gpu));
    assert_eq!(device_of("mul"), Some(Device::Gpu));
    assert_eq!(device_of("add"), Some(Device::Cpu));
    let transfers: Vec<_> = plan
        .steps()
        .iter()
        .filter(|s| matches!(s.kernel.op, Op::Transfer { .. }))
        .collect();
    // h goes to the GPU once (for both consumers); a and b come back in one
    // batched transfer.
    assert_eq!(
        transfers.len(),
        2,
        "{:#?}",
        plan.steps().iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    assert_eq!(transfers[0].inputs.len() + transfers[1].inputs.len(), 3);

    let xv = common::rand_f32(1, &[65, 33], -2.0, 2.0);
    let (out, stats) = plan
        .run_with_stats(&[("x", Value::from(xv.clone()))])
        .expect("run");
    // Memory per device as planned, transfers included: each device's
    // values are freed on that device.
    let planned: Vec<usize> = plan.planned_memory().iter().map(|m| m.peak_bytes).collect();
    assert_eq!(stats.peak_bytes, planned, "per-device peaks");
    let allocations: Vec<usize> = plan
        .planned_memory()
        .iter()
        .map(|m| m.allocations)
        .collect();
    assert_eq!(stats.allocations, allocations, "per-device allocations");
    let hv = xv.mapv(|v| v.max(0.0));
    let want: ArrayD<f32> = hv.mapv(f32::exp) + &hv * &hv;
    common::assert_close(
        &common::f32_of(out[0].clone()),
        &want,
        1e-5,
        1e-5,
        "mixed plan",
    );
}

/// An input read first on the GPU and then on the CPU stays on the host
/// and is uploaded once, rather than uploaded and downloaded again.
#[test]
fn a_source_read_on_both_devices_is_uploaded_once_and_never_downloaded() {
    if !gpu_present() {
        return;
    }
    let g = Graph::new();
    let x = g.input("x", DType::F32, [70, 65]).expect("x");
    let c = g.constant(common::rand_f32(8, &[65], -1.0, 1.0));
    let a = g.on_device(Device::Gpu, |_| x.add(&c).expect("add").exp().expect("exp"));
    let b = x.mul(&c).expect("mul").on(Device::Cpu);
    let y = a.sub(&b).expect("sub").on(Device::Cpu);
    // x itself is returned too: from the host, not brought back.
    let plan = g
        .compile(
            &[&y, &x],
            &tensorgraph::options(Device::Cpu).expect("options"),
        )
        .expect("compile");
    let moves: Vec<(Device, Device, usize)> = plan
        .steps()
        .iter()
        .filter_map(|s| match s.kernel.op {
            Op::Transfer { from, to } => Some((from, to, s.inputs.len())),
            _ => None,
        })
        .collect();
    // x and c go up together; only the GPU's result comes down.
    assert_eq!(
        moves,
        vec![(Device::Cpu, Device::Gpu, 2), (Device::Gpu, Device::Cpu, 1)],
        "{:#?}",
        plan.steps().iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    let xv = common::rand_f32(9, &[70, 65], -1.0, 1.0);
    let cv = common::rand_f32(8, &[65], -1.0, 1.0);
    let out = plan.run(&[("x", Value::from(xv.clone()))]).expect("run");
    let want = (&xv + &cv).mapv(f32::exp) - &xv * &cv;
    common::assert_close(&common::f32_of(out[0].clone()), &want, 1e-5, 1e-5, "y");
    assert_eq!(common::f32_of(out[1].clone()), xv, "x returned as fed");
}

#[test]
fn cpu_branch_and_gpu_branch_overlap_in_time() {
    if !gpu_present() {
        return;
    }
    let n = 192;
    let g = Graph::new();
    let x = g.input("x", DType::F32, [n, n]).expect("x");
    let w = g.constant(common::rand_f32(2, &[n, n], -0.1, 0.1));
    // Two branches of the same shape of work, one per device.
    let branch = |device: Device, depth: usize| {
        g.on_device(device, |_| {
            let mut t = x.clone();
            for _ in 0..depth {
                t = t.matmul(&w).expect("matmul").tanh().expect("tanh");
            }
            t
        })
    };
    let on_cpu = branch(Device::Cpu, 40);
    let on_gpu = branch(Device::Gpu, 4);
    let plan = g
        .compile(
            &[&on_cpu, &on_gpu],
            &tensorgraph::options(Device::Cpu).expect("options"),
        )
        .expect("compile");
    let xv = common::rand_f32(3, &[n, n], -1.0, 1.0);
    let (out, timeline) = plan
        .run_traced(&[("x", Value::from(xv.clone()))])
        .expect("run");

    // Values first: both branches against ndarray.
    let wv = common::rand_f32(2, &[n, n], -0.1, 0.1)
        .into_dimensionality::<Ix2>()
        .expect("2-D");
    let reference = |depth: usize| {
        let mut t = xv.clone().into_dimensionality::<Ix2>().expect("2-D");
        for _ in 0..depth {
            t = t.dot(&wv).mapv(f32::tanh);
        }
        t
    };
    let close =
        |a: &Array2<f32>, b: &Array2<f32>| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-3);
    assert!(close(&mat(&out[0]), &reference(40)), "cpu branch value");
    assert!(close(&mat(&out[1]), &reference(4)), "gpu branch value");

    // Overlap, from the recorded times: the CPU branch's matmul slices and
    // the GPU queue's busy slices.
    let span = |pred: &dyn Fn(&tensorgraph::TimelineEvent) -> bool| {
        let evs: Vec<_> = timeline.events.iter().filter(|e| pred(e)).collect();
        assert!(
            !evs.is_empty(),
            "no events for a branch: {:#?}",
            timeline.events
        );
        let start = evs.iter().map(|e| e.start_us).fold(f64::INFINITY, f64::min);
        let end = evs
            .iter()
            .map(|e| e.start_us + e.duration_us)
            .fold(0.0, f64::max);
        (start, end)
    };
    let cpu = span(&|e| {
        e.kind == EventKind::Step && e.op.starts_with("matmul") && e.track.starts_with("cpu")
    });
    let gpu = span(&|e| e.kind == EventKind::Queue);
    let overlap = cpu.1.min(gpu.1) - cpu.0.max(gpu.0);
    assert!(
        overlap > 0.0,
        "CPU branch {cpu:?} µs and GPU branch {gpu:?} µs did not overlap"
    );
}

#[test]
fn pin_to_a_missing_gpu_is_an_error_and_auto_without_gpu_stays_on_cpu() {
    let cpu_only = CompileOptions::new(Device::Auto, vec![tensorgraph::cpu_backend()]);
    let g = Graph::new();
    let x = g.input("x", DType::F32, [4]).expect("x");
    let y = x.exp().expect("exp").on(Device::Gpu);
    let err = g
        .compile(&[&y], &cpu_only)
        .expect_err("pinned to a missing GPU");
    assert!(
        matches!(
            err,
            Error::DeviceUnavailable {
                device: Device::Gpu,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("exp_"), "names the node: {err}");

    let z = x.sin().expect("sin").add(&x).expect("add");
    let plan = g.compile(&[&z], &cpu_only).expect("auto on cpu");
    assert!(
        plan.steps()
            .iter()
            .all(|s| plan.step_device(s) == Device::Cpu)
    );
    let out = plan
        .run(&[("x", Value::from(ndarray::arr1(&[0.0f32, 1.0, 2.0, 3.0])))])
        .expect("run");
    let got = common::f32_of(out[0].clone());
    for (i, v) in got.iter().enumerate() {
        let x = i as f32;
        assert!((v - (x.sin() + x)).abs() < 1e-6);
    }
}

#[test]
fn failing_custom_op_frees_everything_and_the_plan_still_works() {
    let backend: Arc<dyn Backend> = Arc::new(tensorgraph_cpu_backend());
    let options = CompileOptions::new(Device::Cpu, vec![backend.clone()]);
    let fail = Arc::new(AtomicBool::new(true));
    let g = Graph::new();
    let x = g.input("x", DType::F32, [1000]).expect("x");
    let a = x.exp().expect("exp");
    let b = x.sin().expect("sin");
    let flag = fail.clone();
    let c = g
        .custom(
            "flaky",
            &[&a],
            vec![TensorType::new(DType::F32, [1000])],
            move |ins| {
                if flag.load(Ordering::SeqCst) {
                    return Err("sensor offline".into());
                }
                Ok(vec![ins[0].clone()])
            },
        )
        .expect("custom")
        .remove(0);
    let panicky = g
        .custom(
            "panicky",
            &[&b],
            vec![TensorType::new(DType::F32, [1000])],
            |_| panic!("custom op bug"),
        )
        .expect("custom")
        .remove(0);
    let y = c.add(&b).expect("add");
    let plan = g.compile(&[&y, &b], &options).expect("compile");
    let feeds = [("x", Value::from(common::rand_f32(4, &[1000], -1.0, 1.0)))];

    let err = plan.run(&feeds).expect_err("custom op fails");
    assert!(
        matches!(err, Error::Backend { ref node, .. } if node == "flaky"),
        "{err}"
    );
    assert!(err.to_string().contains("sensor offline"), "{err}");
    assert_eq!(
        backend.live_buffers(),
        0,
        "buffers leaked after a failed run"
    );

    fail.store(false, Ordering::SeqCst);
    let out = plan.run(&feeds).expect("plan usable after the failure");
    let xv = common::f32_of(feeds[0].1.clone());
    let want = xv.mapv(f32::exp) + xv.mapv(f32::sin);
    common::assert_close(
        &common::f32_of(out[0].clone()),
        &want,
        1e-6,
        1e-6,
        "after recovery",
    );
    assert_eq!(backend.live_buffers(), 0);

    let plan = g.compile(&[&panicky], &options).expect("compile");
    let err = plan.run(&feeds).expect_err("custom op panics");
    assert!(
        matches!(err, Error::Backend { ref node, .. } if node == "panicky"),
        "{err}"
    );
    assert!(err.to_string().contains("custom op bug"), "{err}");
    assert_eq!(backend.live_buffers(), 0);
}

#[test]
fn custom_op_returning_the_wrong_type_is_an_error() {
    let g = Graph::new();
    let x = g.input("x", DType::F32, [3]).expect("x");
    let y = g
        .custom(
            "liar",
            &[&x],
            vec![TensorType::new(DType::F32, [3])],
            |_| Ok(vec![Value::from(ndarray::arr1(&[1i32, 2]))]),
        )
        .expect("custom")
        .remove(0);
    let plan = g
        .compile(&[&y], &tensorgraph::options(Device::Auto).expect("options"))
        .expect("compile");
    assert!(
        plan.steps()
            .iter()
            .all(|s| plan.step_device(s) == Device::Cpu || !matches!(s.kernel.op, Op::Custom(_)))
    );
    let err = plan
        .run(&[("x", Value::from(ndarray::arr1(&[1.0f32, 2.0, 3.0])))])
        .expect_err("wrong type");
    assert!(err.to_string().contains("i32[2]"), "{err}");
}

/// A private CPU backend, so buffer counts are not shared with other tests.
fn tensorgraph_cpu_backend() -> impl Backend {
    tensorgraph_cpu::CpuBackend::with_threads(2)
}

#[test]
fn persisted_values_are_reused_while_their_feeds_are_unchanged() {
    use std::sync::atomic::AtomicUsize;
    let calls = Arc::new(AtomicUsize::new(0));
    let g = Graph::new();
    let w = g.input("w", DType::F32, [8, 8]).expect("w");
    let x = g.input("x", DType::F32, [8]).expect("x");
    let counter = calls.clone();
    // An expensive preprocessing of w (counted), kept across runs.
    let prepared = g
        .custom(
            "prepare",
            &[&w],
            vec![TensorType::new(DType::F32, [8, 8])],
            move |ins| {
                counter.fetch_add(1, Ordering::SeqCst);
                Ok(vec![ins[0].clone()])
            },
        )
        .expect("custom")
        .remove(0)
        .tanh()
        .expect("tanh")
        .persist();
    let y = prepared.matmul(&x).expect("matvec");
    let plan = g
        .compile(&[&y], &tensorgraph::options(Device::Cpu).expect("options"))
        .expect("compile");
    let wv = common::rand_f32(5, &[8, 8], -1.0, 1.0);
    let reference = |w: &ArrayD<f32>, x: &ArrayD<f32>| {
        let w2 = w.mapv(f32::tanh).into_dimensionality::<Ix2>().expect("2-D");
        w2.dot(
            &x.clone()
                .into_dimensionality::<ndarray::Ix1>()
                .expect("1-D"),
        )
        .into_dyn()
    };
    for (round, seed) in [10u64, 11, 12].into_iter().enumerate() {
        let xv = common::rand_f32(seed, &[8], -1.0, 1.0);
        let feeds = [
            ("w", Value::from(wv.clone())),
            ("x", Value::from(xv.clone())),
        ];
        let out = plan.run(&feeds).expect("run");
        common::assert_close(
            &common::f32_of(out[0].clone()),
            &reference(&wv, &xv),
            1e-5,
            1e-5,
            "persisted",
        );
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "round {round}: w unchanged, prepare must not rerun"
        );
    }
    // A new w invalidates the kept value.
    let w2 = common::rand_f32(6, &[8, 8], -1.0, 1.0);
    let xv = common::rand_f32(13, &[8], -1.0, 1.0);
    let out = plan
        .run(&[
            ("w", Value::from(w2.clone())),
            ("x", Value::from(xv.clone())),
        ])
        .expect("run");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    common::assert_close(
        &common::f32_of(out[0].clone()),
        &reference(&w2, &xv),
        1e-5,
        1e-5,
        "after change",
    );
}
