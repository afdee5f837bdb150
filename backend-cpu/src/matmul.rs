//! Batched matrix products with NumPy batch broadcasting. Each matrix
//! product goes to [`Element::gemm`]: the `gemm` crate for f32, a wrapping
//! loop for i32.

use ndarray::{ArrayD, ArrayViewD, IxDyn};
use rayon::prelude::*;
use tensorgraph_core::Shape;

use crate::element::{KResult, PAR_THRESHOLD, TypedKernel};
use crate::pool::{Alloc, Pooled};

/// Products below this many multiply-adds run on one thread; above it,
/// each product is split across the pool unless there are enough batches
/// to keep the pool busy one product per thread.
const BIG_PRODUCT: usize = 1 << 21;

/// `[..batch, m, k] x [..batch, k, n] -> [..batch, m, n]`.
pub(crate) struct MatMul<'a> {
    /// The output shape.
    pub(crate) shape: &'a Shape,
}

/// Offset (in matrices) into an operand with batch dims `dims` for each
/// output batch index, broadcasting dims of 1 NumPy-style.
fn batch_offsets(dims: &[usize], out: &[usize]) -> KResult<Vec<usize>> {
    if dims.len() > out.len() {
        return Err(format!("batch dims {dims:?} do not broadcast to {out:?}"));
    }
    let lead = out.len() - dims.len();
    // Row-major strides of the operand's own batch dims, 0 where it
    // broadcasts (or is missing).
    let mut strides = vec![0usize; out.len()];
    let mut acc = 1;
    for (i, &d) in dims.iter().enumerate().rev() {
        let o = out[lead + i];
        if d == o {
            strides[lead + i] = acc;
        } else if d != 1 {
            return Err(format!("batch dims {dims:?} do not broadcast to {out:?}"));
        }
        acc *= d;
    }
    let total: usize = out.iter().product();
    let mut offsets = Vec::with_capacity(total);
    let mut index = vec![0usize; out.len()];
    for _ in 0..total {
        offsets.push(index.iter().zip(&strides).map(|(i, s)| i * s).sum());
        // Advance the row-major counter.
        for ax in (0..out.len()).rev() {
            index[ax] += 1;
            if index[ax] < out[ax] {
                break;
            }
            index[ax] = 0;
        }
    }
    Ok(offsets)
}

impl TypedKernel for MatMul<'_> {
    fn run<T: Pooled>(
        &self,
        inputs: &[ArrayViewD<'_, T>],
        alloc: Alloc<'_>,
    ) -> KResult<Vec<ArrayD<T>>> {
        let [a, b] = inputs else {
            return Err(format!("matmul takes 2 operands, got {}", inputs.len()));
        };
        let (ad, bd, od) = (a.shape(), b.shape(), self.shape.dims());
        if ad.len() < 2 || bd.len() < 2 || od.len() < 2 {
            return Err(format!("matmul needs rank >= 2, got {ad:?} x {bd:?}"));
        }
        let (m, k) = (ad[ad.len() - 2], ad[ad.len() - 1]);
        let (k2, n) = (bd[bd.len() - 2], bd[bd.len() - 1]);
        if k != k2 || od[od.len() - 2] != m || od[od.len() - 1] != n {
            return Err(format!("cannot multiply {ad:?} by {bd:?} into {od:?}"));
        }
        let out_batch = &od[..od.len() - 2];
        let a_off = batch_offsets(&ad[..ad.len() - 2], out_batch)?;
        let b_off = batch_offsets(&bd[..bd.len() - 2], out_batch)?;
        // Pooled or fresh: `gemm` writes every element, zeros when k = 0.
        let mut out = alloc.vec::<T>(self.shape.numel());
        if m * n > 0 {
            let a = a.as_standard_layout();
            let b = b.as_standard_layout();
            let (a, b) = match (a.as_slice(), b.as_slice()) {
                (Some(a), Some(b)) => (a, b),
                _ => return Err("standard layout is not contiguous".into()),
            };
            let product = m * n * k;
            let threads = rayon::current_num_threads();
            let one = |(i, c): (usize, &mut [T]), threads: usize| {
                let a = &a[a_off[i] * m * k..][..m * k];
                let b = &b[b_off[i] * k * n..][..k * n];
                T::gemm(m, n, k, a, b, c, threads);
            };
            let batches = a_off.len();
            if product * batches < PAR_THRESHOLD || threads == 1 {
                out.chunks_mut(m * n).enumerate().for_each(|p| one(p, 1));
            } else if batches >= threads && product < BIG_PRODUCT {
                out.par_chunks_mut(m * n)
                    .enumerate()
                    .for_each(|p| one(p, 1));
            } else {
                out.chunks_mut(m * n)
                    .enumerate()
                    .for_each(|p| one(p, threads));
            }
        }
        Ok(vec![
            ArrayD::from_shape_vec(IxDyn(od), out).map_err(|e| e.to_string())?,
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_broadcast() {
        assert_eq!(batch_offsets(&[2, 1], &[2, 3]), Ok(vec![0, 0, 0, 1, 1, 1]));
        assert_eq!(batch_offsets(&[3], &[2, 3]), Ok(vec![0, 1, 2, 0, 1, 2]));
        assert_eq!(batch_offsets(&[], &[2]), Ok(vec![0, 0]));
        assert_eq!(batch_offsets(&[], &[]), Ok(vec![0]));
        assert!(batch_offsets(&[4], &[3]).is_err());
    }
}
