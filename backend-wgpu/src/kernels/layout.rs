//! Data movement: reshape as a buffer copy; permute, broadcast_to, slice,
//! concat and split as strided copies through `layout.wgsl`.

use tensorgraph_core::{DType, SliceRange};

use super::{Operand, WG};
use crate::params::{Params, broadcast_strides, collapse, contiguous, to_u32};
use crate::record::{Binding, Recorder};
use crate::shaders;

/// One strided copy: for every coordinate `c` of `dims`,
/// `dst[dst_off + c . dst_strides] = src[src_off + c . src_strides]`.
struct Strided<'a> {
    dims: &'a [usize],
    src: (&'a Operand, usize, Vec<usize>),
    dst: (&'a Operand, usize, Vec<usize>),
}

fn strided(rec: &mut Recorder<'_>, dtype: DType, s: Strided<'_>) -> Result<(), String> {
    let n: usize = s.dims.iter().product();
    if n == 0 {
        return Ok(());
    }
    let (src, src_off, src_strides) = s.src;
    let (dst, dst_off, dst_strides) = s.dst;
    let (dims, strides) = collapse(s.dims, &[src_strides, dst_strides]);
    let params = Params::new(&[
        to_u32(n)?,
        to_u32(dims.len())?,
        to_u32(src_off)?,
        to_u32(dst_off)?,
    ])
    .array(&dims)?
    .array(&strides[0])?
    .array(&strides[1])?;
    let bindings = vec![
        Binding::scalars(&src.buffer, src.ty.bytes()),
        Binding::scalars(&dst.buffer, dst.ty.bytes()),
    ];
    rec.dispatch(
        &shaders::layout(dtype),
        bindings,
        params,
        (n as u64).div_ceil(WG),
    )
}

/// Same elements, new shape: a plain copy.
pub fn reshape(rec: &mut Recorder<'_>, x: &Operand, y: &Operand) {
    rec.copy(&x.buffer, &y.buffer, y.ty.bytes());
}

/// Output axis `i` is input axis `perm[i]`.
pub fn permute(
    rec: &mut Recorder<'_>,
    perm: &[usize],
    x: &Operand,
    y: &Operand,
) -> Result<(), String> {
    let own = contiguous(x.dims());
    let src = perm
        .iter()
        .map(|&p| {
            own.get(p)
                .copied()
                .ok_or_else(|| format!("bad permutation {perm:?}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    strided(
        rec,
        y.ty.dtype,
        Strided {
            dims: y.dims(),
            src: (x, 0, src),
            dst: (y, 0, contiguous(y.dims())),
        },
    )
}

/// NumPy broadcast to `y`'s shape.
pub fn broadcast_to(rec: &mut Recorder<'_>, x: &Operand, y: &Operand) -> Result<(), String> {
    strided(
        rec,
        y.ty.dtype,
        Strided {
            dims: y.dims(),
            src: (x, 0, broadcast_strides(x.dims(), y.dims())),
            dst: (y, 0, contiguous(y.dims())),
        },
    )
}

/// A strided window, one range per axis.
pub fn slice(
    rec: &mut Recorder<'_>,
    ranges: &[SliceRange],
    x: &Operand,
    y: &Operand,
) -> Result<(), String> {
    let own = contiguous(x.dims());
    if ranges.len() != own.len() {
        return Err(format!(
            "{} slice ranges for rank {}",
            ranges.len(),
            own.len()
        ));
    }
    let offset = ranges.iter().zip(&own).map(|(r, s)| r.start * s).sum();
    let src = ranges.iter().zip(&own).map(|(r, s)| r.step * s).collect();
    strided(
        rec,
        y.ty.dtype,
        Strided {
            dims: y.dims(),
            src: (x, offset, src),
            dst: (y, 0, contiguous(y.dims())),
        },
    )
}

/// Joins `xs` along `axis`: one strided copy per input into its window of `y`.
pub fn concat(
    rec: &mut Recorder<'_>,
    axis: usize,
    xs: &[Operand],
    y: &Operand,
) -> Result<(), String> {
    let out = contiguous(y.dims());
    let step = out
        .get(axis)
        .copied()
        .ok_or_else(|| format!("concat axis {axis} out of range"))?;
    let mut at = 0;
    for x in xs {
        strided(
            rec,
            y.ty.dtype,
            Strided {
                dims: x.dims(),
                src: (x, 0, contiguous(x.dims())),
                dst: (y, at * step, out.clone()),
            },
        )?;
        at += x.dims().get(axis).copied().unwrap_or(0);
    }
    Ok(())
}

/// Cuts `x` along `axis` into `ys`: one strided copy per part.
pub fn split(
    rec: &mut Recorder<'_>,
    axis: usize,
    x: &Operand,
    ys: &[Operand],
) -> Result<(), String> {
    let own = contiguous(x.dims());
    let step = own
        .get(axis)
        .copied()
        .ok_or_else(|| format!("split axis {axis} out of range"))?;
    let mut at = 0;
    for y in ys {
        strided(
            rec,
            y.ty.dtype,
            Strided {
                dims: y.dims(),
                src: (x, at * step, own.clone()),
                dst: (y, 0, contiguous(y.dims())),
            },
        )?;
        at += y.dims().get(axis).copied().unwrap_or(0);
    }
    Ok(())
}
