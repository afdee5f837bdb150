//! Data movement: reshape, permute, broadcast, slice, concat and split.
//! Every result is a standard-layout (row-major) array in storage from the
//! kernel's [`Alloc`].

use ndarray::{ArrayD, ArrayView2, ArrayViewD, ArrayViewMut2, Axis, Ix2, IxDyn, Slice, s};
use rayon::prelude::*;
use tensorgraph_core::{LayoutOp, SliceRange};

use crate::element::{Element, KResult, PAR_THRESHOLD, TypedKernel};
use crate::pool::{Alloc, Pooled};

/// One [`LayoutOp`].
pub(crate) struct Layout<'a>(pub(crate) &'a LayoutOp);

impl TypedKernel for Layout<'_> {
    fn run<T: Pooled>(
        &self,
        inputs: &[ArrayViewD<'_, T>],
        alloc: Alloc<'_>,
    ) -> KResult<Vec<ArrayD<T>>> {
        let [x] = inputs else {
            return Err(format!(
                "{} takes 1 operand, got {}",
                self.0.name(),
                inputs.len()
            ));
        };
        let out = match self.0 {
            LayoutOp::Reshape(shape) => owned(x.view(), alloc)?
                .into_shape_with_order(IxDyn(shape.dims()))
                .map_err(|e| format!("reshape {:?} to {shape}: {e}", x.shape()))?,
            LayoutOp::Permute(perm) => {
                if perm.len() != x.ndim() || (0..perm.len()).any(|a| !perm.contains(&a)) {
                    return Err(format!("{perm:?} is not a permutation of {:?}", x.shape()));
                }
                owned(x.view().permuted_axes(IxDyn(perm)), alloc)?
            }
            LayoutOp::BroadcastTo(shape) => owned(
                x.broadcast(IxDyn(shape.dims()))
                    .ok_or_else(|| format!("cannot broadcast {:?} to {shape}", x.shape()))?,
                alloc,
            )?,
            LayoutOp::Slice(ranges) => owned(slice(x, ranges)?, alloc)?,
        };
        Ok(vec![out])
    }
}

/// A row-major copy of `v` in storage from `alloc` (fresh storage asks
/// for huge pages when large, see `pool::huge_pages`).
pub(crate) fn owned<T: Pooled>(v: ArrayViewD<'_, T>, alloc: Alloc<'_>) -> KResult<ArrayD<T>> {
    let mut out = alloc.array(v.raw_dim())?;
    if !transposed(&v, &mut out)? {
        out.assign(&v);
    }
    Ok(out)
}

/// Side of the square tiles a transposed copy moves at a time: a tile of
/// the source and one of the result (4 KiB each in f32) stay in L1.
const TILE: usize = 32;

/// Copies `v` into `out` (row-major, of `v`'s shape) when `v`'s last two
/// axes are a transposed matrix (the second-last axis contiguous in
/// memory, the last not), as a permute of the last two axes of a
/// row-major array makes, and large enough to split: in square tiles, in
/// parallel over the matrices and the tile rows. Copying element by
/// element in row-major order would read the source a cache line per
/// element (a 4096² transpose took 135 ms). `false`, `out` untouched, for
/// every other view.
fn transposed<T: Element>(v: &ArrayViewD<'_, T>, out: &mut ArrayD<T>) -> KResult<bool> {
    let nd = v.ndim();
    if nd < 2 || v.len() < PAR_THRESHOLD {
        return Ok(false);
    }
    let (st, dims) = (v.strides(), v.shape());
    if st[nd - 2] != 1 || st[nd - 1] == 1 || dims[nd - 2] < 2 || dims[nd - 1] < 2 {
        return Ok(false);
    }
    let (rows, cols) = (dims[nd - 2], dims[nd - 1]);
    // One matrix view per index of the leading axes, in row-major order.
    let mut mats: Vec<ArrayView2<'_, T>> = Vec::with_capacity(v.len() / (rows * cols));
    let mut pending = vec![v.clone()];
    while let Some(w) = pending.pop() {
        if w.ndim() == 2 {
            mats.push(w.into_dimensionality::<Ix2>().map_err(|e| e.to_string())?);
        } else {
            // Pushed in reverse, so popped (and so collected) in order.
            for i in (0..w.len_of(Axis(0))).rev() {
                pending.push(w.clone().index_axis_move(Axis(0), i));
            }
        }
    }
    let fits = out.shape() == dims && mats.len() * rows * cols == out.len();
    let data = match out.as_slice_mut() {
        Some(data) if fits => data,
        _ => {
            return Err(format!(
                "{} matrices of {rows}x{cols} for {dims:?} into {:?}",
                mats.len(),
                out.shape()
            ));
        }
    };
    data.par_chunks_mut(rows * cols)
        .zip(mats.par_iter())
        .try_for_each(|(chunk, src)| -> KResult<()> {
            let mut dst =
                ArrayViewMut2::from_shape((rows, cols), chunk).map_err(|e| e.to_string())?;
            dst.axis_chunks_iter_mut(Axis(0), TILE)
                .into_par_iter()
                .enumerate()
                .for_each(|(t, mut band)| {
                    let r0 = t * TILE;
                    let r1 = r0 + band.nrows();
                    for c0 in (0..cols).step_by(TILE) {
                        let c1 = (c0 + TILE).min(cols);
                        band.slice_mut(s![.., c0..c1])
                            .assign(&src.slice(s![r0..r1, c0..c1]));
                    }
                });
            Ok(())
        })?;
    Ok(true)
}

/// A view of the strided window `ranges` (one per axis), checked first so
/// ndarray never panics.
fn slice<'a, T>(x: &ArrayViewD<'a, T>, ranges: &[SliceRange]) -> KResult<ArrayViewD<'a, T>> {
    if ranges.len() != x.ndim() {
        return Err(format!(
            "{} slice ranges for shape {:?}",
            ranges.len(),
            x.shape()
        ));
    }
    for (r, &d) in ranges.iter().zip(x.shape()) {
        let end = if r.len == 0 {
            r.start
        } else {
            r.start + (r.len - 1) * r.step + 1
        };
        if r.step == 0 || r.start > d || end > d {
            return Err(format!(
                "slice {r:?} out of bounds for shape {:?}",
                x.shape()
            ));
        }
    }
    let mut v = x.clone();
    for (ax, r) in ranges.iter().enumerate() {
        let end = if r.len == 0 {
            r.start
        } else {
            r.start + (r.len - 1) * r.step + 1
        };
        v.slice_axis_inplace(
            Axis(ax),
            Slice::new(r.start as isize, Some(end as isize), r.step as isize),
        );
    }
    Ok(v)
}

/// Joins the operands along `axis`.
pub(crate) struct Concat(pub(crate) usize);

impl TypedKernel for Concat {
    fn run<T: Pooled>(
        &self,
        inputs: &[ArrayViewD<'_, T>],
        alloc: Alloc<'_>,
    ) -> KResult<Vec<ArrayD<T>>> {
        let axis = self.0;
        let shapes: Vec<&[usize]> = inputs.iter().map(|x| x.shape()).collect();
        let bad = || format!("cannot concat {shapes:?} along axis {axis}");
        let first = *shapes.first().ok_or_else(bad)?;
        if axis >= first.len() {
            return Err(format!("concat axis {axis} out of range for {shapes:?}"));
        }
        let same_but_axis = |s: &&[usize]| {
            s.len() == first.len() && (0..s.len()).all(|a| a == axis || s[a] == first[a])
        };
        if !shapes.iter().all(same_but_axis) {
            return Err(bad());
        }
        let mut dims = first.to_vec();
        dims[axis] = shapes.iter().map(|s| s[axis]).sum();
        let mut out = alloc.array(IxDyn(&dims))?;
        let mut at = 0;
        for x in inputs {
            let len = x.len_of(Axis(axis));
            out.slice_axis_mut(Axis(axis), Slice::from(at..at + len))
                .assign(x);
            at += len;
        }
        Ok(vec![out])
    }
}

/// Cuts the operand along `axis` into parts of `sizes`.
pub(crate) struct Split<'a> {
    /// The axis.
    pub(crate) axis: usize,
    /// Size of each part.
    pub(crate) sizes: &'a [usize],
}

impl TypedKernel for Split<'_> {
    fn run<T: Pooled>(
        &self,
        inputs: &[ArrayViewD<'_, T>],
        alloc: Alloc<'_>,
    ) -> KResult<Vec<ArrayD<T>>> {
        let [x] = inputs else {
            return Err(format!("split takes 1 operand, got {}", inputs.len()));
        };
        let dim = x.shape().get(self.axis).copied();
        if dim != Some(self.sizes.iter().sum()) {
            return Err(format!(
                "sizes {:?} do not cover axis {} of {:?}",
                self.sizes,
                self.axis,
                x.shape()
            ));
        }
        let mut start = 0;
        let mut out = Vec::with_capacity(self.sizes.len());
        for &size in self.sizes {
            let part = x.slice_axis(Axis(self.axis), Slice::from(start..start + size));
            out.push(owned(part, alloc)?);
            start += size;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use ndarray::{ArrayD, IxDyn};
    use tensorgraph_core::LayoutOp;

    use super::Layout;
    use crate::element::TypedKernel;
    use crate::pool::Alloc;

    /// Permutes that swap the last two axes go through the tiled copy
    /// (tiles cut at every edge: sizes not multiples of 32); others keep
    /// ndarray's copy. All equal ndarray's row-major copy.
    #[test]
    fn permutes_equal_ndarray_tiled_or_not() {
        let cases: [(&[usize], &[usize]); 6] = [
            (&[513, 300], &[1, 0]),
            (&[3, 130, 257], &[0, 2, 1]),
            (&[2, 3, 70, 190], &[0, 1, 3, 2]),
            (&[2, 3, 70, 190], &[1, 0, 3, 2]),
            (&[40, 50, 60], &[2, 1, 0]),
            (&[7, 5], &[1, 0]),
        ];
        for (shape, perm) in cases {
            let mut k = 0i32;
            let x = ArrayD::from_shape_simple_fn(IxDyn(shape), || {
                k = k.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                k >> 8
            });
            let want = x
                .view()
                .permuted_axes(IxDyn(perm))
                .as_standard_layout()
                .into_owned();
            let op = LayoutOp::Permute(perm.to_vec());
            let got = Layout(&op).run(&[x.view()], Alloc::NONE).expect("permute");
            assert_eq!(got[0], want, "{shape:?} permuted {perm:?}");
            assert!(got[0].is_standard_layout());
            let xf = x.mapv(|v| v as f32 * 0.5);
            let got = Layout(&op).run(&[xf.view()], Alloc::NONE).expect("permute");
            assert_eq!(
                got[0],
                want.mapv(|v| v as f32 * 0.5),
                "f32 {shape:?} {perm:?}"
            );
        }
    }
}
