//! The `Backend` trait surface of the wgpu backend: transfers, the meter,
//! capability errors past the adapter's limits, and plans run from several
//! threads at once on one device.

mod common;

use std::sync::Arc;

use common::*;
use ndarray::{ArrayD, IxDyn};
use tensorgraph_core::{Backend, BinaryOp, DType, Kernel, Meter, Op, TensorType, UnaryOp, Value};

#[test]
fn upload_download_round_trip() {
    let Some(gpu) = new_backend() else { return };
    let meter = Meter::default();
    let a = array(&[3, 5, 7], 3);
    // A non-contiguous view uploads in logical order.
    let t = a.view().permuted_axes(IxDyn(&[2, 0, 1])).to_owned();
    let ints = int_array(&[9], 4, 50);
    let empty = Value::F32(ArrayD::zeros(IxDyn(&[4, 0])));
    for v in [Value::F32(t), Value::I32(ints), empty, Value::from(2.5f32)] {
        let id = gpu.upload(&v, &meter).expect("upload");
        assert_eq!(gpu.download(id).expect("download"), v);
        gpu.free(id, &meter).expect("free");
    }
    assert_eq!(meter.live(), 0);
    assert_eq!(meter.peak(), 3 * 5 * 7 * 4);
    assert_eq!(meter.allocations(), 4);
    let ty = TensorType::new(DType::I32, [10usize, 3]);
    let id = gpu.alloc(&ty, &meter).expect("alloc");
    assert_eq!(gpu.live_buffers(), 1);
    assert_eq!(meter.live(), 120);
    gpu.free(id, &meter).expect("free");
    assert!(
        gpu.free(id, &meter).is_err(),
        "a double free is an error, not a panic"
    );
    assert_eq!(gpu.live_buffers(), 0);
    gpu.synchronize().expect("synchronize");
}

#[test]
fn tensors_past_the_limits_are_refused_clearly() {
    let Some(gpu) = gpu() else { return };
    let limits = gpu.limits().clone();
    let huge = TensorType::new(
        DType::F32,
        [(limits.max_storage_buffer_binding_size as usize) / 4 + 16],
    );
    let kernel = Kernel {
        op: Op::Unary(UnaryOp::Neg),
        inputs: vec![huge.clone()],
        outputs: vec![huge],
    };
    let err = gpu.supports(&kernel).expect_err("too large");
    assert!(
        err.contains("max_storage_buffer_binding_size") || err.contains("max_buffer_size"),
        "{err}"
    );
    let deep = TensorType::new(DType::F32, vec![1usize; 9]);
    let kernel = Kernel {
        op: Op::Binary(BinaryOp::Add),
        inputs: vec![deep.clone(), deep.clone()],
        outputs: vec![deep],
    };
    assert!(
        gpu.supports(&kernel)
            .expect_err("rank 9")
            .contains("rank 9")
    );
    let ok = TensorType::new(DType::I32, [4usize]);
    let exp = Kernel {
        op: Op::Unary(UnaryOp::Exp),
        inputs: vec![ok.clone()],
        outputs: vec![ok.clone()],
    };
    assert!(gpu.supports(&exp).is_err(), "exp on i32");
    let neg = Kernel {
        op: Op::Unary(UnaryOp::Neg),
        inputs: vec![ok.clone()],
        outputs: vec![ok],
    };
    assert_eq!(gpu.supports(&neg), Ok(()));
}

#[test]
fn plans_run_from_many_threads() {
    let Some(gpu) = new_backend() else { return };
    let g = graph();
    let x = g.input("x", DType::F32, [70usize, 33]).expect("input");
    let w = g.constant(array(&[33, 20], 9));
    let y = x
        .matmul(&w)
        .expect("matmul")
        .tanh()
        .expect("tanh")
        .sum(&[0], false)
        .expect("sum");
    let plan = Arc::new(compile(&gpu, &[&y]));
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let plan = plan.clone();
            std::thread::spawn(move || {
                let feed = array(&[70, 33], 100 + t);
                let first = plan.run(&[("x", feed.clone().into())]).expect("run");
                for _ in 0..5 {
                    assert_eq!(plan.run(&[("x", feed.clone().into())]).expect("run"), first);
                }
                (feed, first)
            })
        })
        .collect();
    for handle in threads {
        let (feed, got) = handle.join().expect("thread");
        let want = feed
            .into_dimensionality::<ndarray::Ix2>()
            .expect("2d")
            .dot(
                &array(&[33, 20], 9)
                    .into_dimensionality::<ndarray::Ix2>()
                    .expect("2d"),
            )
            .mapv(f32::tanh)
            .sum_axis(ndarray::Axis(0))
            .into_dyn();
        assert_close(&got[0], &want, 1e-4, "threaded run");
    }
    assert_eq!(gpu.live_buffers(), 0);
}
