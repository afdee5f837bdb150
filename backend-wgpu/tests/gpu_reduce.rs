//! GPU reductions against ndarray: every axis and axis set of a rank-3
//! tensor, every reduction, both dtypes, with and without kept axes.

mod common;

use common::*;
use ndarray::{ArrayD, Axis, IxDyn};
use tensorgraph_core::ReduceOp;

/// Reduces `x` over `axes` with `f` folding one lane (as f64).
fn reference<T: Copy>(
    x: &ArrayD<T>,
    axes: &[usize],
    keep: bool,
    f: impl Fn(&[T]) -> T,
) -> ArrayD<T> {
    let dims = x.shape();
    let kept: Vec<usize> = (0..dims.len()).filter(|a| !axes.contains(a)).collect();
    let perm: Vec<usize> = kept.iter().chain(axes).copied().collect();
    let moved = x
        .view()
        .permuted_axes(IxDyn(&perm))
        .as_standard_layout()
        .into_owned();
    let outer: usize = kept.iter().map(|&a| dims[a]).product();
    let lane: usize = axes.iter().map(|&a| dims[a]).product();
    let flat = moved
        .into_shape_with_order(IxDyn(&[outer, lane]))
        .expect("flatten");
    let vals: Vec<T> = flat
        .axis_iter(Axis(0))
        .map(|row| f(&row.iter().copied().collect::<Vec<T>>()))
        .collect();
    let out: Vec<usize> = (0..dims.len())
        .filter_map(|a| {
            if axes.contains(&a) {
                keep.then_some(1)
            } else {
                Some(dims[a])
            }
        })
        .collect();
    ArrayD::from_shape_vec(IxDyn(&out), vals).expect("shape")
}

fn f32_fold(op: ReduceOp) -> impl Fn(&[f32]) -> f32 {
    move |xs: &[f32]| match op {
        ReduceOp::Sum => xs.iter().map(|&v| f64::from(v)).sum::<f64>() as f32,
        ReduceOp::Mean => (xs.iter().map(|&v| f64::from(v)).sum::<f64>() / xs.len() as f64) as f32,
        ReduceOp::Max => xs.iter().copied().fold(f32::NEG_INFINITY, f32::max),
        ReduceOp::Min => xs.iter().copied().fold(f32::INFINITY, f32::min),
    }
}

fn i32_fold(op: ReduceOp) -> impl Fn(&[i32]) -> i32 {
    move |xs: &[i32]| {
        let sum = xs.iter().fold(0i32, |a, &v| a.wrapping_add(v));
        match op {
            ReduceOp::Sum => sum,
            ReduceOp::Mean if xs.is_empty() => 0,
            ReduceOp::Mean => sum / xs.len() as i32,
            ReduceOp::Max => xs.iter().copied().fold(i32::MIN, i32::max),
            ReduceOp::Min => xs.iter().copied().fold(i32::MAX, i32::min),
        }
    }
}

const AXIS_SETS: [&[usize]; 7] = [&[0], &[1], &[2], &[0, 1], &[0, 2], &[1, 2], &[0, 1, 2]];

#[test]
fn every_axis_set_of_a_rank3_tensor() {
    let Some(gpu) = gpu() else { return };
    let dims = [7, 300, 5];
    let x = array(&dims, 11);
    let xi = int_array(&dims, 12, 1000);
    for op in ReduceOp::ALL {
        for axes in AXIS_SETS {
            for keep in [false, true] {
                let g = graph();
                let a: Vec<isize> = axes.iter().map(|&a| a as isize).collect();
                let t = g
                    .constant(x.clone())
                    .apply_reduce(op, &a, keep)
                    .expect("reduce");
                let ti = g
                    .constant(xi.clone())
                    .apply_reduce(op, &a, keep)
                    .expect("reduce");
                let out = run(&gpu, &[&t, &ti], &[]);
                let what = format!("{} over {axes:?} keep={keep}", op.name());
                assert_close(
                    &out[0],
                    &reference(&x, axes, keep, f32_fold(op)),
                    1e-5,
                    &what,
                );
                assert_ints(&out[1], &reference(&xi, axes, keep, i32_fold(op)), &what);
            }
        }
    }
}

#[test]
fn long_and_tiny_lanes() {
    let Some(gpu) = gpu() else { return };
    for dims in [[1usize, 100_003, 1], [3, 1, 2], [4096, 2, 1]] {
        let x = array(&dims, 5);
        let g = graph();
        let s = g.constant(x.clone()).sum(&[1], false).expect("sum");
        let m = g.constant(x.clone()).max(&[0, 1], true).expect("max");
        let out = run(&gpu, &[&s, &m], &[]);
        assert_close(
            &out[0],
            &reference(&x, &[1], false, f32_fold(ReduceOp::Sum)),
            1e-4,
            "sum",
        );
        assert_close(
            &out[1],
            &reference(&x, &[0, 1], true, f32_fold(ReduceOp::Max)),
            0.0,
            "max",
        );
    }
}

#[test]
fn nan_propagates_and_empty_means() {
    let Some(gpu) = gpu() else { return };
    let g = graph();
    let x = g.constant(ndarray::arr2(&[[1.0f32, f32::NAN, 3.0], [4.0, 5.0, 6.0]]).into_dyn());
    let mx = x.max(&[1], false).expect("max");
    let mn = x.min(&[1], false).expect("min");
    let empty = g.constant(ArrayD::<f32>::zeros(IxDyn(&[2, 0])));
    let mean = empty.mean(&[1], false).expect("mean");
    let sum = empty.sum(&[1], false).expect("sum");
    let ei = g.constant(ArrayD::<i32>::zeros(IxDyn(&[3, 0])));
    let mean_i = ei.mean(&[1], false).expect("mean");
    let neg = g
        .constant(ndarray::arr1(&[-7i32, 0]).into_dyn())
        .mean(&[0], false)
        .expect("mean");
    let out = run(&gpu, &[&mx, &mn, &mean, &sum, &mean_i, &neg], &[]);
    let v = |i: usize| out[i].as_f32().expect("f32").to_owned();
    assert!(v(0)[0].is_nan() && v(0)[1] == 6.0);
    assert!(v(1)[0].is_nan() && v(1)[1] == 4.0);
    assert!(v(2).iter().all(|x| x.is_nan()), "empty f32 mean is NaN");
    assert!(v(3).iter().all(|&x| x == 0.0));
    assert_ints(&out[4], &ArrayD::zeros(IxDyn(&[3])), "empty i32 mean");
    assert_ints(&out[5], &ndarray::arr0(-3).into_dyn(), "i32 mean truncates");
}
