//! Unary, binary (broadcasting) and cast kernels.

use tensorgraph_core::{BinaryOp, DType, UnaryOp};

use super::{Operand, WG};
use crate::params::{Params, broadcast_strides, collapse, to_u32};
use crate::record::Recorder;
use crate::shaders;

/// `y = op(x)`.
pub fn unary(rec: &mut Recorder<'_>, op: UnaryOp, x: &Operand, y: &Operand) -> Result<(), String> {
    let key = shaders::unary(op, x.ty.dtype)
        .ok_or_else(|| format!("{} is not defined for {}", op.name(), x.ty.dtype))?;
    let n = y.numel();
    let params = Params::new(&[to_u32(n)?]);
    rec.dispatch(
        &key,
        vec![x.binding(), y.binding()],
        params,
        (n as u64).div_ceil(WG),
    )
}

/// `z = op(a, b)` with NumPy broadcasting.
pub fn binary(
    rec: &mut Recorder<'_>,
    op: BinaryOp,
    a: &Operand,
    b: &Operand,
    z: &Operand,
) -> Result<(), String> {
    let out = z.dims();
    let (dims, strides) = collapse(
        out,
        &[
            broadcast_strides(a.dims(), out),
            broadcast_strides(b.dims(), out),
        ],
    );
    let n = z.numel();
    let params = Params::new(&[to_u32(n)?, to_u32(dims.len())?])
        .array(&dims)?
        .array(&strides[0])?
        .array(&strides[1])?;
    let key = shaders::binary(op, z.ty.dtype);
    rec.dispatch(
        &key,
        vec![a.binding(), b.binding(), z.binding()],
        params,
        (n as u64).div_ceil(WG),
    )
}

/// `y = x as to`; a cast to the same dtype is a copy.
pub fn cast(rec: &mut Recorder<'_>, to: DType, x: &Operand, y: &Operand) -> Result<(), String> {
    if x.ty.dtype == to {
        rec.copy(&x.buffer, &y.buffer, y.ty.bytes());
        return Ok(());
    }
    let n = y.numel();
    let params = Params::new(&[to_u32(n)?]);
    let key = shaders::cast(x.ty.dtype, to);
    rec.dispatch(
        &key,
        vec![x.binding(), y.binding()],
        params,
        (n as u64).div_ceil(WG),
    )
}
