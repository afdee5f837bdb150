//! Data movement: reshape, permute, broadcast, slice, concat and split.
//! Every result is a fresh standard-layout (row-major) array.

use ndarray::{ArrayD, ArrayViewD, Axis, IxDyn, Slice};
use tensorgraph_core::{LayoutOp, SliceRange};

use crate::element::{Element, KResult, TypedKernel};

/// One [`LayoutOp`].
pub(crate) struct Layout<'a>(pub(crate) &'a LayoutOp);

impl TypedKernel for Layout<'_> {
    fn run<T: Element>(&self, inputs: &[ArrayViewD<'_, T>]) -> KResult<Vec<ArrayD<T>>> {
        let [x] = inputs else {
            return Err(format!(
                "{} takes 1 operand, got {}",
                self.0.name(),
                inputs.len()
            ));
        };
        let out = match self.0 {
            LayoutOp::Reshape(shape) => owned(x.view())?
                .into_shape_with_order(IxDyn(shape.dims()))
                .map_err(|e| format!("reshape {:?} to {shape}: {e}", x.shape()))?,
            LayoutOp::Permute(perm) => {
                if perm.len() != x.ndim() || (0..perm.len()).any(|a| !perm.contains(&a)) {
                    return Err(format!("{perm:?} is not a permutation of {:?}", x.shape()));
                }
                owned(x.view().permuted_axes(IxDyn(perm)))?
            }
            LayoutOp::BroadcastTo(shape) => owned(
                x.broadcast(IxDyn(shape.dims()))
                    .ok_or_else(|| format!("cannot broadcast {:?} to {shape}", x.shape()))?,
            )?,
            LayoutOp::Slice(ranges) => owned(slice(x, ranges)?)?,
        };
        Ok(vec![out])
    }
}

/// A row-major copy of `v` in fresh storage, asking for huge pages when
/// large (see `pool::huge_pages`) before the copy touches it.
fn owned<T: Element>(v: ArrayViewD<'_, T>) -> KResult<ArrayD<T>> {
    let data = vec![T::default(); v.len()];
    crate::pool::huge_pages(&data);
    let mut out = ArrayD::from_shape_vec(v.raw_dim(), data).map_err(|e| e.to_string())?;
    out.assign(&v);
    Ok(out)
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
    fn run<T: Element>(&self, inputs: &[ArrayViewD<'_, T>]) -> KResult<Vec<ArrayD<T>>> {
        if inputs.iter().any(|x| self.0 >= x.ndim()) {
            return Err(format!("concat axis {} out of range", self.0));
        }
        let out = ndarray::concatenate(Axis(self.0), inputs).map_err(|e| format!("concat: {e}"))?;
        Ok(vec![out.as_standard_layout().into_owned()])
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
    fn run<T: Element>(&self, inputs: &[ArrayViewD<'_, T>]) -> KResult<Vec<ArrayD<T>>> {
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
            out.push(owned(part)?);
            start += size;
        }
        Ok(out)
    }
}
