//! GPU matmul against a plain reference: sizes across the 64-wide tile
//! edges, k = 0, i32, and batch axes that broadcast.

mod common;

use common::*;
use ndarray::{ArrayD, IxDyn};
use tensorgraph_core::{DType, Value};

/// Reference `[.., m, k] x [.., k, n]` with NumPy batch broadcasting, in f64.
fn reference<T: Copy>(
    a: &ArrayD<T>,
    b: &ArrayD<T>,
    to: impl Fn(T) -> f64,
) -> (Vec<usize>, Vec<f64>) {
    let (ad, bd) = (a.shape(), b.shape());
    let (m, k, n) = (ad[ad.len() - 2], ad[ad.len() - 1], bd[bd.len() - 1]);
    let rank = ad.len().max(bd.len());
    let pad = |d: &[usize]| {
        let mut v = vec![1; rank - d.len()];
        v.extend_from_slice(d);
        v
    };
    let (pa, pb) = (pad(ad), pad(bd));
    let batch: Vec<usize> = (0..rank - 2).map(|i| pa[i].max(pb[i])).collect();
    let a = a.view().into_shape_with_order(IxDyn(&pa)).expect("pad a");
    let b = b.view().into_shape_with_order(IxDyn(&pb)).expect("pad b");
    let count: usize = batch.iter().product();
    let mut out = Vec::with_capacity(count * m * n);
    for lin in 0..count {
        let mut idx = vec![0; rank - 2];
        let mut rest = lin;
        for d in (0..rank - 2).rev() {
            idx[d] = rest % batch[d];
            rest /= batch[d];
        }
        let at = |p: &[usize], i: usize, j: usize| {
            let mut v: Vec<usize> = idx
                .iter()
                .zip(p)
                .map(|(&c, &d)| if d == 1 { 0 } else { c })
                .collect();
            v.extend([i, j]);
            v
        };
        for i in 0..m {
            for j in 0..n {
                let s: f64 = (0..k)
                    .map(|q| to(a[IxDyn(&at(&pa, i, q))]) * to(b[IxDyn(&at(&pb, q, j))]))
                    .sum();
                out.push(s);
            }
        }
    }
    let mut dims = batch;
    dims.extend([m, n]);
    (dims, out)
}

fn check_f32(adims: &[usize], bdims: &[usize]) {
    let Some(gpu) = gpu() else { return };
    let g = graph();
    let (a, b) = (array(adims, 1), array(bdims, 2));
    let x = g.input("a", DType::F32, adims.to_vec()).expect("input");
    let y = g.input("b", DType::F32, bdims.to_vec()).expect("input");
    let z = x.matmul(&y).expect("matmul");
    let out = run(
        &gpu,
        &[&z],
        &[("a", a.clone().into()), ("b", b.clone().into())],
    );
    let (dims, want) = reference(&a, &b, f64::from);
    let want = ArrayD::from_shape_vec(IxDyn(&dims), want.into_iter().map(|v| v as f32).collect())
        .expect("shape");
    assert_close(
        &out[0],
        &want,
        1e-4,
        &format!("matmul {adims:?} x {bdims:?}"),
    );
}

#[test]
fn matmul_sizes_across_tile_edges() {
    for &(m, k, n) in &[
        (1, 1, 1),
        (3, 3, 3),
        (63, 63, 63),
        (64, 64, 64),
        (65, 65, 65),
        (257, 257, 257),
        (1, 257, 3),
        (65, 3, 63),
        (257, 64, 1),
        (3, 65, 257),
        (64, 63, 65),
        (2, 8, 12),
    ] {
        check_f32(&[m, k], &[k, n]);
    }
}

#[test]
fn matmul_batched_broadcast() {
    check_f32(&[2, 1, 5, 7], &[3, 7, 4]);
    check_f32(&[4, 65, 8], &[8, 66]);
    check_f32(&[3, 1], &[2, 1, 4]);
    check_f32(&[5, 2, 3, 64, 64], &[1, 3, 64, 4]);
}

#[test]
fn matmul_empty_inner_axis_gives_zeros() {
    let Some(gpu) = gpu() else { return };
    let g = graph();
    let a = g.constant(ArrayD::<f32>::zeros(IxDyn(&[3, 0])));
    let b = g.constant(ArrayD::<f32>::zeros(IxDyn(&[0, 5])));
    let out = run(&gpu, &[&a.matmul(&b).expect("matmul")], &[]);
    assert_close(&out[0], &ArrayD::zeros(IxDyn(&[3, 5])), 0.0, "k = 0");
    let e = g.constant(ArrayD::<f32>::zeros(IxDyn(&[0, 4])));
    let f = g.constant(ArrayD::<f32>::zeros(IxDyn(&[4, 2])));
    let out = run(&gpu, &[&e.matmul(&f).expect("matmul")], &[]);
    assert_eq!(out[0].shape().dims(), &[0, 2]);
}

#[test]
fn matmul_i32_wraps() {
    let Some(gpu) = gpu() else { return };
    for &(m, k, n) in &[(3, 5, 7), (65, 64, 67), (1, 1, 1)] {
        let g = graph();
        let (a, b) = (int_array(&[2, m, k], 3, 100), int_array(&[k, n], 4, 100));
        let x = g.constant(a.clone());
        let y = g.constant(b.clone());
        let out = run(&gpu, &[&x.matmul(&y).expect("matmul")], &[]);
        let (dims, want) = reference(&a, &b, |v| v as f64);
        let want =
            ArrayD::from_shape_vec(IxDyn(&dims), want.into_iter().map(|v| v as i32).collect())
                .expect("shape");
        assert_ints(&out[0], &want, &format!("i32 matmul {m}x{k}x{n}"));
    }
    // Overflow wraps like i32::wrapping_mul / wrapping_add.
    let g = graph();
    let big = g.constant(ArrayD::from_elem(IxDyn(&[1, 2]), 65536));
    let col = g.constant(ArrayD::from_elem(IxDyn(&[2, 1]), 65536));
    let out = run(&gpu, &[&big.matmul(&col).expect("matmul")], &[]);
    let want = 65536i32
        .wrapping_mul(65536)
        .wrapping_add(65536i32.wrapping_mul(65536));
    assert_eq!(out[0], Value::I32(ArrayD::from_elem(IxDyn(&[1, 1]), want)));
}
